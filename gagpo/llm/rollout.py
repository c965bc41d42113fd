"""Group rollouts with a language-model policy: the LLM counterpart of :func:`gagpo.rollout.collect`.

``collect_lm(pool, policy, task_seeds, group_size, ...)`` runs ``len(task_seeds) × group_size``
episodes in lockstep — one batched ``generate`` call per time step for every episode still running —
and returns an :class:`LMRollout`: the same :class:`~gagpo.batch.StepBatch` as the toy rollouts (one
row per decision, ``obs_key`` = the raw observation text, so anchor states form exactly as they do
there) plus, per row, the prompt and response token ids and their log-probabilities under the
policy that sampled them. It is the episode loop of :mod:`gagpo.episodes` (:func:`~gagpo.episodes.run_episodes`,
the one :func:`gagpo.rollout.collect` runs too) with an :class:`LMActor`, which picks the actions by
writing text.

One step of one episode:

1. the prompt is built from the task, the current observation, the last ``history`` (observation,
   action) pairs and the admissible actions (the environment's adapter, :mod:`gagpo.envs.adapter`:
   :mod:`gagpo.llm.prompts` with its template);
2. the model samples a response; the adapter projects it onto a command
   (:func:`gagpo.llm.parsing.parse_action` on its last ``<action>…</action>``: an admissible command,
   or a free-text one the adapter accepts);
3. a valid action is sent to the environment in the environment's own spelling. An *invalid* one —
   tags missing, or a command that is not admissible — is penalised: ``invalid_penalty`` is
   subtracted from that step's reward, and the environment receives a no-op (the inadmissible
   command itself, or :data:`NO_ACTION` when there was none; the toy environments and ALFWorld
   answer both with "Nothing happens"-style no-ops). The episode goes on; nothing raises.

Environments follow the protocol of :mod:`gagpo.envs.pool` (:class:`~gagpo.envs.pool.EnvInfo`): text
observations, ``info["admissible_actions"]``, ``info["won"]`` at the end, optionally ``info["task"]``
(else the default adapter reads the task from the observation's "Your task is to: …" line). The
anchor key of each row is the adapter's ``anchor_key`` of the observation (the text itself by
default). Keep the environment's own ``invalid_penalty`` at 0, or invalid actions are penalised twice.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from ..episodes import ActorStep, run_episodes
from ..rollout import EnvPool, Rollout, rollout_fields
from .policy import LMPolicy, SamplingSettings, unpad_rows
from .prompts import PromptTemplate

if TYPE_CHECKING:  # gagpo.envs.adapter imports gagpo.llm's string modules: imported in LMActor
    from ..envs.adapter import EnvAdapter

__all__ = ["LMRollout", "LMActor", "collect_lm", "NO_ACTION"]

NO_ACTION = "<no action>"
"""Sent to the environment when a response holds no action at all (no environment admits it)."""


@dataclass
class LMRollout(Rollout):
    """A :class:`~gagpo.rollout.Rollout` whose actions are generated text; extra per-row fields.

    Inherited fields keep their meaning with two LLM specifics: ``actions`` is the index of the chosen
    command in ``admissible[i]`` or -1 for an invalid action (and for a valid free-text command outside
    the list, e.g. a ``search[...]``), and ``logp`` is the log-probability of
    the whole response (the sum of ``token_logp[i]``; 0 when ``compute_logp=False``). ``invalid``
    marks invalid actions (rewards already include the penalty); ``traj_return`` sums the penalised
    rewards.

    Per trajectory (indexed by ``traj_id``): ``traj_task_type`` is the reset ``info["task_type"]``
    ("" when the environment gives none; ALFWorld's six task types), and ``bootstrap_prompt_ids``
    holds, for an episode cut by the step limit (its last row ``truncated``), the token ids of the
    prompt the policy would have seen at the observation where it was cut — what a learned critic
    needs to bootstrap :math:`V(s'_T)` — and an empty list for an episode that terminated.
    ``traj_lost`` marks episodes whose environment was lost (its worker process crashed or hung and
    was restarted, or its ``step`` raised: ``info["worker_restarted"]`` / ``info["env_error"]``): their
    rows are left out of the batch (nothing is trained on a cut that the agent did not cause) and
    they count neither as successes nor as failures (:attr:`~gagpo.rollout.Rollout.success_rate`).
    """

    prompts: list[str]                 # (N,) rendered prompt strings
    responses: list[str]               # (N,) decoded responses
    prompt_ids: list[list[int]]        # (N,) prompt token ids
    response_ids: list[list[int]]      # (N,) response token ids (up to and including EOS)
    commands: list[str]                # (N,) what the environment received
    parse_reason: list[str]            # (N,) "ok" or why the action was invalid
    finished: np.ndarray               # (N,) bool: the response ended with EOS (not cut by the length limit)
    token_logp: list[np.ndarray]       # (N,) per-token log π_old of each response (float32), or empty
    generated_tokens: int = 0
    generation_time: float = 0.0       # seconds inside generate()
    scoring_time: float = 0.0          # seconds scoring log π_old
    dropped_history: int = 0           # prompts that lost history pairs to fit max_prompt_tokens
    traj_task_type: list[str] = field(default_factory=list)        # (n_traj,) reset info["task_type"] or ""
    bootstrap_prompt_ids: list[list[int]] = field(default_factory=list)  # (n_traj,) prompt at the cut, or []
    traj_lost: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (n_traj,) environment lost

    @property
    def format_error_rate(self) -> float:
        """Fraction of responses without a usable ``<action>…</action>`` (a subset of the invalid ones)."""
        if not self.parse_reason:
            return 0.0
        return float(np.mean([r not in ("ok", "not admissible") for r in self.parse_reason]))


def collect_lm(
    pool: EnvPool,
    policy: LMPolicy,
    task_seeds: Sequence[int],
    group_size: int,
    history: int = 2,
    sampling: SamplingSettings | None = None,
    invalid_penalty: float = 0.1,
    *,
    seed: int | None = None,
    compute_logp: bool = True,
    template: PromptTemplate | None = None,
    max_prompt_tokens: int = 0,
    require_think: bool = False,
    adapter: EnvAdapter | None = None,
    strict: bool = False,
) -> LMRollout:
    """Run ``group_size`` episodes from each task seed with a language-model policy.

    Args:
        pool: the environments (``reset_many`` / ``step_many``, see :class:`gagpo.rollout.EnvPool`).
        policy: the LM policy.
        task_seeds: one task seed per rollout group; group k holds the episodes of ``task_seeds[k]``.
        group_size: episodes per group (G).
        history: (observation, action) pairs of the past shown in each prompt (K ≥ 0).
        sampling: sampling settings (:class:`SamplingSettings`; ``greedy=True`` for evaluation).
        invalid_penalty: subtracted from the reward of every invalid action (≥ 0).
        seed: seeds the sampling of time step t with ``seed + 1000 * t`` (reproducible on a CPU).
        compute_logp: score every response under the sampling policy afterwards (``token_logp``,
            ``logp``); switch off for evaluation.
        template: the prompt wording (``None``: the adapter's).
        max_prompt_tokens: if > 0, drop history pairs (oldest first) from a prompt longer than this.
        require_think: also demand ``<think>…</think>`` for a valid action.
        strict: the strict format (:func:`gagpo.llm.parsing.parse_action`): exactly one action block,
            nothing after it, in a response not cut by the length limit.
        adapter: how to talk to the environment (:class:`~gagpo.envs.adapter.EnvAdapter`: task, prompt,
            text -> command, anchor key); ``None``: the household default. The LM trainer passes
            ``adapter_for(cfg.env)``.

    Returns:
        An :class:`LMRollout`.
    """
    actor = LMActor(policy, sampling, history=history, seed=seed, template=template,
                    max_prompt_tokens=max_prompt_tokens, require_think=require_think, adapter=adapter, strict=strict)
    episodes = run_episodes(pool, actor, task_seeds, group_size, invalid_penalty=invalid_penalty,
                            anchor_key=actor.adapter.anchor_key)
    column = episodes.column
    bootstrap: list[list[int]] = [[] for _ in episodes.traj_truncated]
    for i in np.flatnonzero(episodes.traj_truncated).tolist():  # the critic bootstraps from the prompt at the cut
        cut_at, info = episodes.last_observation[i], episodes.last_info[i]
        bootstrap[i] = actor.prompt(i, cut_at, list(info.get("admissible_actions") or []))[1]
    token_logp: list[np.ndarray] = []
    seq_logp = np.zeros(len(column("traj")))
    t0 = time.perf_counter()
    # (under FSDP a process without rows still scores: the forward passes are collectives, gagpo.llm.fsdp)
    if compute_logp and (column("traj") or getattr(getattr(policy, "actor", None), "lockstep", False)):
        with torch.no_grad():
            lp, mask = policy.token_logprobs(column("prompt_ids"), column("response_ids"),
                                             temperature=actor.sampling.temperature)
        token_logp = unpad_rows(lp, mask)
        seq_logp = np.asarray([x.sum(dtype=np.float64) for x in token_logp])
    score_time = time.perf_counter() - t0
    return LMRollout(
        **rollout_fields(episodes, seq_logp),
        prompts=column("prompt"), responses=column("response"), prompt_ids=column("prompt_ids"),
        response_ids=column("response_ids"), commands=column("command"), parse_reason=column("reason"),
        finished=np.asarray(column("finished"), dtype=bool), token_logp=token_logp,
        generated_tokens=sum(len(r) for r in column("response_ids")), generation_time=actor.generation_time,
        scoring_time=score_time, dropped_history=actor.dropped_history,
        traj_task_type=[str(info.get("task_type") or "") for info in episodes.reset_infos],
        bootstrap_prompt_ids=bootstrap, traj_lost=episodes.traj_lost,
    )


class LMActor:
    """The language-model actor (:class:`gagpo.episodes.Actor`): one batched ``generate`` per time step.

    Each active episode gets its prompt (the adapter's, from the task, the observation, the last
    ``history`` (observation, command) pairs and the admissible actions; history pairs dropped, oldest
    first, while it is longer than ``max_prompt_tokens`` > 0); the model answers; the adapter projects
    each answer onto a command. A valid one is sent in the environment's spelling; an invalid one is
    marked invalid and replaced by the inadmissible command itself, or :data:`NO_ACTION`. Per row it
    keeps ``action`` (index in the admissible list, or -1), ``prompt``, ``response``, ``prompt_ids``,
    ``response_ids``, ``command``, ``reason`` and ``finished``; it counts ``generation_time`` and
    ``dropped_history``. The arguments are those of :func:`collect_lm`.
    """

    def __init__(self, policy: LMPolicy, sampling: SamplingSettings | None = None, *, history: int = 2,
                 seed: int | None = None, template: PromptTemplate | None = None, max_prompt_tokens: int = 0,
                 require_think: bool = False, adapter: EnvAdapter | None = None, strict: bool = False):
        if history < 0:
            raise ValueError(f"history must be >= 0; got {history}")
        from ..envs.adapter import DEFAULT_ADAPTER

        self.adapter = adapter or DEFAULT_ADAPTER
        if template is not None:
            self.adapter = dataclasses.replace(self.adapter, template=template)
        self.policy, self.sampling, self.history, self.seed = policy, sampling or SamplingSettings(), history, seed
        self.max_prompt_tokens, self.require_think, self.strict = max_prompt_tokens, require_think, strict
        self.task: list[str] = []
        self.past: list[list[tuple[str, str]]] = []
        self.generation_time, self.dropped_history = 0.0, 0

    def reset(self, observations: Sequence[str], infos: Sequence[Mapping[str, Any]]) -> None:
        """Read each episode's task; no history yet."""
        self.task = [self.adapter.task(o, info) for o, info in zip(observations, infos)]
        self.past = [[] for _ in observations]

    def prompt(self, i: int, observation: str, admissible: list[str]) -> tuple[str, list[int], bool]:
        """Episode i's prompt at ``observation``: (text, token ids, whether history pairs were dropped)."""
        past = self.past[i]
        k = min(self.history, len(past))
        while True:
            text = self.policy.render(self.adapter.prompt(self.task[i], observation, admissible,
                                                          past[len(past) - k:] if k else [], len(past)))
            ids = self.policy.encode_prompts([text])[0]
            if not self.max_prompt_tokens or len(ids) <= self.max_prompt_tokens or k == 0:
                return text, ids, k < min(self.history, len(past))
            k -= 1

    def act(self, active: Sequence[int], observations: Sequence[str], admissible: Sequence[list[str]],
            infos: Sequence[Mapping[str, Any]], t: int) -> ActorStep:
        """Prompt, generate (seeded with ``seed + 1000 * t``), project; remember each (observation, command)."""
        prompts, prompt_ids = [], []
        for i, o, adm in zip(active, observations, admissible):
            text, ids, cut = self.prompt(i, o, adm)
            self.dropped_history += cut
            prompts.append(text)
            prompt_ids.append(ids)
        t0 = time.perf_counter()
        gen = self.policy.generate(prompt_ids, self.sampling, seed=None if self.seed is None else self.seed + 1000 * t)
        self.generation_time += time.perf_counter() - t0
        parsed = [self.adapter.project(text, adm, require_think=self.require_think, strict=self.strict,
                                       finished=gen.finished[j] if gen.finished else True)
                  for j, (text, adm) in enumerate(zip(gen.texts, admissible))]
        commands = [p.command if p.valid else (p.command or NO_ACTION) for p in parsed]
        for i, o, command in zip(active, observations, commands):
            self.past[i].append((o, command))
        actions = [adm.index(p.command) if p.valid and p.command in adm else -1 for p, adm in zip(parsed, admissible)]
        return ActorStep(commands=commands, valid=[p.valid for p in parsed], rows=dict(
            action=actions, prompt=prompts, response=gen.texts, prompt_ids=gen.prompt_ids,
            response_ids=gen.response_ids, command=commands, reason=[p.reason for p in parsed],
            finished=gen.finished))
