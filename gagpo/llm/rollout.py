"""Group rollouts with a language-model policy: the LLM counterpart of :func:`gagpo.rollout.collect`.

``collect_lm(pool, policy, task_seeds, group_size, ...)`` runs ``len(task_seeds) × group_size``
episodes in lockstep — one batched ``generate`` call per time step for every episode still running —
and returns an :class:`LMRollout`: the same :class:`~gagpo.batch.StepBatch` as the toy rollouts (one
row per decision, ``obs_key`` = the raw observation text, so anchor states form exactly as they do
there) plus, per row, the prompt and response token ids and their log-probabilities under the
policy that sampled them.

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
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..rollout import EnvPool, Rollout, rollout_fields
from .policy import LMPolicy, SamplingSettings, unpad_rows
from .prompts import PromptTemplate

if TYPE_CHECKING:  # gagpo.envs.adapter imports gagpo.llm's string modules: imported in collect_lm
    from ..envs.adapter import EnvAdapter

__all__ = ["LMRollout", "collect_lm", "NO_ACTION"]

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
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1; got {group_size}")
    if history < 0:
        raise ValueError(f"history must be >= 0; got {history}")
    if invalid_penalty < 0:
        raise ValueError(f"invalid_penalty must be >= 0; got {invalid_penalty}")
    from ..envs.adapter import DEFAULT_ADAPTER

    sampling = sampling or SamplingSettings()
    adapter = adapter or DEFAULT_ADAPTER
    if template is not None:
        adapter = dataclasses.replace(adapter, template=template)
    n = len(task_seeds) * group_size
    group_of = np.repeat(np.arange(len(task_seeds)), group_size)
    task_of = np.repeat(np.asarray(task_seeds, dtype=np.int64), group_size)
    obs: list[str] = [""] * n
    adm: list[list[str]] = [[] for _ in range(n)]
    task: list[str] = [""] * n
    past: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    task_type: list[str] = [""] * n
    bootstrap: list[list[int]] = [[] for _ in range(n)]
    for i, (o, info) in enumerate(pool.reset_many(task_of.tolist())):
        obs[i], adm[i] = o, list(info["admissible_actions"])
        task[i] = adapter.task(o, info)
        task_type[i] = str(info.get("task_type") or "")

    def make_prompt(i: int, observation: str, admissible: list[str]) -> tuple[str, list[int], bool]:
        """Episode i's prompt at ``observation``: (text, token ids, whether history pairs were dropped)."""
        k = min(history, len(past[i]))
        while True:
            text = policy.render(adapter.prompt(task[i], observation, admissible,
                                                past[i][len(past[i]) - k:] if k else [], len(past[i])))
            ids = policy.encode_prompts([text])[0]
            if not max_prompt_tokens or len(ids) <= max_prompt_tokens or k == 0:
                return text, ids, k < min(history, len(past[i]))
            k -= 1
    rows: dict[str, list] = {k: [] for k in (
        "traj", "step", "obs", "next_obs", "key", "next_key", "adm", "action", "reward", "terminated", "truncated",
        "invalid", "prompt", "response", "prompt_ids", "response_ids", "command", "reason", "finished")}
    won = np.zeros(n, dtype=bool)
    lost = np.zeros(n, dtype=bool)
    ret = np.zeros(n)
    steps = np.zeros(n, dtype=np.int64)
    active = list(range(n))
    gen_time, dropped, t = 0.0, 0, 0
    while active:
        prompts, prompt_ids = [], []
        for i in active:
            text, ids, cut = make_prompt(i, obs[i], adm[i])
            dropped += cut
            prompts.append(text)
            prompt_ids.append(ids)
        t0 = time.perf_counter()
        gen = policy.generate(prompt_ids, sampling, seed=None if seed is None else seed + 1000 * t)
        gen_time += time.perf_counter() - t0
        parsed = [adapter.project(text, adm[i], require_think=require_think, strict=strict,
                                  finished=gen.finished[j] if gen.finished else True)
                  for j, (text, i) in enumerate(zip(gen.texts, active))]
        commands = [p.command if p.valid else (p.command or NO_ACTION) for p in parsed]
        results = pool.step_many(active, commands)
        still = []
        for j, i in enumerate(active):
            p = parsed[j]
            next_obs, reward, terminated, truncated, info = results[j]
            bad = (not p.valid) or bool(info.get("invalid_action", False))
            reward = float(reward) - (invalid_penalty if bad else 0.0)
            rows["traj"].append(i)
            rows["step"].append(steps[i])
            rows["obs"].append(obs[i])
            rows["next_obs"].append(next_obs)
            rows["key"].append(adapter.anchor_key(obs[i]))
            rows["next_key"].append(adapter.anchor_key(next_obs))
            rows["adm"].append(adm[i])
            rows["action"].append(adm[i].index(p.command) if p.valid and p.command in adm[i] else -1)
            rows["reward"].append(reward)
            rows["terminated"].append(bool(terminated))
            rows["truncated"].append(bool(truncated) and not terminated)
            rows["invalid"].append(bad)
            rows["prompt"].append(prompts[j])
            rows["response"].append(gen.texts[j])
            rows["prompt_ids"].append(gen.prompt_ids[j])
            rows["response_ids"].append(gen.response_ids[j])
            rows["command"].append(commands[j])
            rows["reason"].append(p.reason)
            rows["finished"].append(gen.finished[j])
            steps[i] += 1
            ret[i] += reward
            past[i].append((obs[i], commands[j]))
            if terminated or truncated:
                won[i] = bool(info.get("won", False))
                lost[i] = bool(info.get("worker_restarted") or info.get("env_error"))
                if truncated and not terminated:  # the critic bootstraps from the prompt at the cut
                    bootstrap[i] = make_prompt(i, next_obs, list(info.get("admissible_actions") or []))[1]
            else:
                obs[i], adm[i] = next_obs, list(info["admissible_actions"])
                still.append(i)
        active = still
        t += 1
    if lost.any():  # episodes whose environment was lost: neither trained on nor counted (traj_lost)
        keep = [k for k, i in enumerate(rows["traj"]) if not lost[i]]
        rows = {name: [values[k] for k in keep] for name, values in rows.items()}
    token_logp: list[np.ndarray] = []
    seq_logp = np.zeros(len(rows["traj"]))
    t0 = time.perf_counter()
    if compute_logp and rows["traj"]:
        with torch.no_grad():
            lp, mask = policy.token_logprobs(rows["prompt_ids"], rows["response_ids"], temperature=sampling.temperature)
        token_logp = unpad_rows(lp, mask)
        seq_logp = np.asarray([x.sum(dtype=np.float64) for x in token_logp])
    score_time = time.perf_counter() - t0
    return LMRollout(
        **rollout_fields(rows, group_of, task_of, ret, steps, won, seq_logp),
        prompts=rows["prompt"], responses=rows["response"], prompt_ids=rows["prompt_ids"],
        response_ids=rows["response_ids"], commands=rows["command"], parse_reason=rows["reason"],
        finished=np.asarray(rows["finished"], dtype=bool), token_logp=token_logp,
        generated_tokens=sum(len(r) for r in rows["response_ids"]), generation_time=gen_time,
        scoring_time=score_time, dropped_history=dropped, traj_task_type=task_type, bootstrap_prompt_ids=bootstrap,
        traj_lost=lost,
    )
