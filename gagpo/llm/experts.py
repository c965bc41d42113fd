r"""Expert trajectories, and the (prompt, response) pairs that teach a language model to act like them.

Reinforcement learning needs a policy that sometimes succeeds: a randomly initialised language model
never finds the reward of a multi-step task, and every advantage of its rollouts is zero. Published
agent-RL work therefore starts from a model that can already act — an instruct model, or supervised
fine-tuning (behaviour cloning) on expert trajectories. This module makes those trajectories and
turns them into training pairs:

* **MiniHousehold** (``toy_envs``) has an exact model of every task: value iteration on it
  (:func:`toy_envs.optimal_values`, :func:`toy_envs.q_values`) gives the optimal actions of every
  state (:func:`optimal_actions`), at every difficulty level. The expert knows the whole state,
  including what lies inside receptacles it has not opened yet (levels 2 and 3): a student who sees
  only the observation has to guess there, so it cannot copy the expert perfectly.
* **ALFWorld** games store a solution, the ``walkthrough`` of ``game.tw-pddl`` (for this repository's
  fixture games, the plan of the Fast Downward planner, checked by replaying it):
  :meth:`gagpo.envs.AlfworldEnv.walkthrough`. A game without one is refused (alfworld's hand-coded
  expert is not wired in).

:func:`expert_episodes` plays an expert in an environment and records what the agent saw
(:class:`ExpertEpisode`). :func:`expert_examples` renders every step **exactly as the RL rollouts
render it** (:func:`gagpo.llm.rollout.collect_lm`: the environment's adapter, :mod:`gagpo.envs.adapter`,
reads the task and writes the prompt — the task, the last ``history`` observation/action pairs, the
current observation and the admissible actions — through the policy's chat template and tokenizer;
history pairs dropped, oldest first, from a prompt longer than ``max_prompt_tokens``) and
answers it in the format the parser reads, the one the tiny model's format warm-up teaches::

    <think> i will go to fridge 1 </think> <action> go to fridge 1 </action><EOS>

so a model fine-tuned on these pairs meets, during RL, the very prompts it was trained on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .parsing import normalize_command
from .prompts import PromptTemplate

if TYPE_CHECKING:  # gagpo.envs.adapter imports gagpo.llm's string modules: imported where used
    from ..envs.adapter import EnvAdapter

__all__ = ["ExpertEpisode", "SFTExample", "DEFAULT_THOUGHT", "RESPONSE_FORMAT", "optimal_actions", "expert_episode",
           "expert_episodes", "expert_response", "step_prompt", "expert_examples"]

DEFAULT_THOUGHT = "i will {command}"
"""The expert's thought (``{command}`` is replaced): the tiny model's format warm-up uses the same."""
RESPONSE_FORMAT = "<think> {thought} </think> <action> {command} </action>"
"""An expert response; the tokenizer's end-of-sequence token follows it."""


@dataclass
class ExpertEpisode:
    """One episode of an expert: what the agent saw before each command, and the command.

    Attributes:
        task_seed: the reset seed (the task).
        task: the task sentence, as :func:`~gagpo.llm.rollout.collect_lm` reads it (the adapter's
            ``task``: ``info["task"]``, else the observation's "Your task is to: …").
        task_type: the reset ``info["task_type"]`` ("" when the environment gives none).
        observations: (T,) the observation before each command.
        admissible: (T,) the admissible commands there.
        commands: (T,) the expert's commands (in the environment's own spelling).
        rewards: (T,) the rewards received.
        won: the episode ended in success.
    """

    task_seed: int
    task: str
    task_type: str
    observations: list[str] = field(default_factory=list)
    admissible: list[list[str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    won: bool = False

    def __len__(self) -> int:
        return len(self.commands)


@dataclass(frozen=True)
class SFTExample:
    """One supervised pair: the rendered prompt of one step and the expert's response.

    ``prompt_ids`` are what :func:`~gagpo.llm.rollout.collect_lm` would feed the model at this step;
    ``response_ids`` end with the end-of-sequence token (the loss covers them, EOS included).
    """

    prompt: str
    response: str
    prompt_ids: list[int]
    response_ids: list[int]
    task_seed: int
    step: int


# ------------------------------------------------------------------------------ the experts
def optimal_actions(model: Any, gamma: float = 0.9) -> list[np.ndarray]:
    r"""The optimal actions of every state of a toy task's exact model (:class:`toy_envs.TabularModel`).

    Value iteration gives :math:`V^*` (:func:`toy_envs.optimal_values`), then
    :math:`Q^*(s, a) = r(s, a) + \gamma V^*(s')` (:func:`toy_envs.q_values`); the optimal actions of
    ``s`` are the indices into ``model.actions[s]`` whose :math:`Q^*` is the maximum (ties kept, in
    action order). With a reward of 1 on success only, they are the first commands of the shortest
    solutions from ``s``, for any :math:`0 < \gamma < 1`.
    """
    from toy_envs import optimal_values, q_values

    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must lie in (0, 1); got {gamma}")
    q = q_values(model, optimal_values(model, gamma), gamma)
    return [np.flatnonzero(qs >= qs.max() - 1e-9 * max(1.0, abs(qs.max()))) for qs in q]


def _admissible_spelling(command: str, admissible: Sequence[str]) -> str | None:
    wanted = normalize_command(command)
    return next((a for a in admissible if normalize_command(a) == wanted), None)


def _adapter(adapter: EnvAdapter | None, template: PromptTemplate | None = None) -> EnvAdapter:
    """``adapter`` (default: the household one, as in :func:`~gagpo.llm.rollout.collect_lm`), with
    ``template`` in place of its own when given."""
    from ..envs.adapter import DEFAULT_ADAPTER

    adapter = adapter or DEFAULT_ADAPTER
    return dataclasses.replace(adapter, template=template) if template is not None else adapter


def expert_episode(env: Any, task_seed: int, gamma: float = 0.9, adapter: EnvAdapter | None = None) -> ExpertEpisode:
    """Reset ``env`` with ``task_seed`` and play its expert until the episode ends.

    The expert is chosen from what the environment offers: an exact model (``exact_model()`` and
    ``info["state_id"]``, the toy environments: the first optimal action of :func:`optimal_actions` in
    every state), else a stored solution (``walkthrough()``, ALFWorld). ``ValueError`` when the
    environment has neither, when a walkthrough command is not admissible where it is played, or when
    the walkthrough runs out first. The step limit of ``env`` (gymnasium's ``TimeLimit``) may cut an
    episode: it is then not ``won``. ``adapter`` reads the task sentence (default: the household
    adapter; pass :func:`gagpo.envs.adapter.adapter_for` of the environment's id, as the LM trainer does).
    """
    base = env.unwrapped
    obs, info = env.reset(seed=int(task_seed))
    ep = ExpertEpisode(int(task_seed), _adapter(adapter).task(obs, info), str(info.get("task_type") or ""))
    if hasattr(base, "exact_model") and "state_id" in info:
        model = base.exact_model()
        best = optimal_actions(model, gamma)

        def choose(t: int, info: dict) -> str:
            s = int(info["state_id"])
            return model.actions[s][int(best[s][0])]
    elif hasattr(base, "walkthrough"):
        plan = base.walkthrough()
        if not plan:
            raise ValueError(f"task seed {task_seed}: the game has no stored walkthrough (game.tw-pddl without "
                             f"'walkthrough'), so there is no expert for it")

        def choose(t: int, info: dict) -> str:
            if t >= len(plan):
                raise ValueError(f"task seed {task_seed}: the walkthrough ({len(plan)} commands) ended before the game did")
            command = _admissible_spelling(plan[t], info["admissible_actions"])
            if command is None:
                raise ValueError(f"task seed {task_seed}: walkthrough command {t} {plan[t]!r} is not admissible there")
            return command
    else:
        raise ValueError(f"{type(base).__name__} has no expert: it offers neither exact_model() with info['state_id'] "
                         f"(toy_envs) nor walkthrough() (ALFWorld)")
    t, done = 0, False
    while not done:
        command = choose(t, info)
        ep.observations.append(obs)
        ep.admissible.append(list(info["admissible_actions"]))
        ep.commands.append(command)
        obs, reward, terminated, truncated, info = env.step(command)
        ep.rewards.append(float(reward))
        done = bool(terminated or truncated)
        ep.won = bool(info.get("won", False)) if done else False
        t += 1
    return ep


def expert_episodes(make_env: Callable[[], Any], task_seeds: Sequence[int], gamma: float = 0.9,
                    adapter: EnvAdapter | None = None) -> list[ExpertEpisode]:
    """One :func:`expert_episode` per task seed, in one environment built by ``make_env`` (e.g.
    :func:`gagpo.rollout.make_env_fn`), closed afterwards."""
    env = make_env()
    try:
        return [expert_episode(env, seed, gamma, adapter) for seed in task_seeds]
    finally:
        env.close()


# ------------------------------------------------------------------------------ the pairs
def expert_response(command: str, thought: str = DEFAULT_THOUGHT) -> str:
    """``<think> i will CMD </think> <action> CMD </action>`` (:data:`RESPONSE_FORMAT`) for ``command``."""
    return RESPONSE_FORMAT.format(thought=thought.format(command=command), command=command)


def step_prompt(policy: Any, task: str, observation: str, admissible: Sequence[str], past: Sequence[tuple[str, str]],
                history: int = 2, adapter: EnvAdapter | None = None,
                max_prompt_tokens: int = 0) -> tuple[str, list[int]]:
    """The rendered prompt and its token ids at one step, as :func:`~gagpo.llm.rollout.collect_lm` builds it.

    ``past`` holds every (observation, command) pair of the episode so far; the last ``history`` are
    shown, and dropped oldest first while the prompt is longer than ``max_prompt_tokens`` (> 0). The
    ``adapter`` writes the text (default: the household adapter). ``policy`` needs ``render(user_text)``
    and ``encode_prompts(texts)`` (an :class:`LMPolicy`).
    """
    adapter = _adapter(adapter)
    k = min(history, len(past))
    while True:
        shown = list(past[len(past) - k:]) if k else []
        text = policy.render(adapter.prompt(task, observation, admissible, shown, len(past)))
        ids = policy.encode_prompts([text])[0]
        if not max_prompt_tokens or len(ids) <= max_prompt_tokens or k == 0:
            return text, ids
        k -= 1


def expert_examples(episodes: Sequence[ExpertEpisode], policy: Any, history: int = 2,
                    template: PromptTemplate | None = None, max_prompt_tokens: int = 0,
                    thought: str = DEFAULT_THOUGHT, won_only: bool = True,
                    adapter: EnvAdapter | None = None) -> list[SFTExample]:
    """Every step of ``episodes`` as a (prompt, response) pair, rendered for ``policy``'s tokenizer.

    Args:
        episodes: expert episodes (:func:`expert_episodes`).
        policy: the :class:`~gagpo.llm.policy.LMPolicy` to be trained (its chat template, system prompt
            and tokenizer render the prompts, exactly as in its RL rollouts).
        history, template, max_prompt_tokens, adapter: as in :func:`~gagpo.llm.rollout.collect_lm` — use
            the values of the RL run that follows (the LM trainer's adapter is
            :func:`gagpo.envs.adapter.adapter_for` of its environment; ``None``: the household adapter).
        thought: the text inside ``<think>…</think>``; ``{command}`` is replaced by the command.
        won_only: skip episodes that did not end in success (e.g. cut by a step limit).

    Returns:
        The pairs, episode by episode and step by step.
    """
    tok = policy.tokenizer
    adapter = _adapter(adapter, template)
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token: a response could never end")
    out = []
    for ep in episodes:
        if won_only and not ep.won:
            continue
        past: list[tuple[str, str]] = []
        for t, (obs, adm, command) in enumerate(zip(ep.observations, ep.admissible, ep.commands)):
            prompt, prompt_ids = step_prompt(policy, ep.task, obs, adm, past, history, adapter, max_prompt_tokens)
            response = expert_response(command, thought)
            response_ids = list(tok(response, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
            out.append(SFTExample(prompt, response, prompt_ids, response_ids, ep.task_seed, t))
            past.append((obs, command))
    return out
