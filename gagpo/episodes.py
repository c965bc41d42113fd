"""The one episode-stepping loop of every rollout: a pool of environments, an *actor* that picks the actions.

``run_episodes(pool, actor, task_seeds, group_size)`` runs ``len(task_seeds) × group_size`` episodes in
lockstep — episode ``k * group_size + g`` is member g of rollout group k, reset with ``task_seeds[k]`` —
asking the actor once per time step for the commands of every episode still running. It returns
:class:`Episodes`: one row per decision (in the order the decisions were taken: time step by time step,
episodes in index order within a step), the :class:`~gagpo.batch.StepBatch` of those rows, and
per-trajectory summaries. The collectors are thin wrappers around it that differ only in their actor:

* :func:`gagpo.rollout.collect` — :class:`gagpo.rollout.PolicyActor`, a toy policy choosing an index
  into the admissible actions;
* :func:`gagpo.llm.rollout.collect_lm` — :class:`gagpo.llm.rollout.LMActor`, a language model writing
  text that the environment's adapter projects onto a command.

An actor keeps the :class:`Actor` protocol: ``reset`` once with the reset observations, then ``act`` per
time step, returning an :class:`ActorStep` (the commands, which of them were valid, and per-row extras
stored with the rows). A scripted actor is a few lines::

    class FirstAdmissible:
        def reset(self, observations, infos):
            pass

        def act(self, active, observations, admissible, infos, t):
            return ActorStep(commands=[0] * len(active))  # index 0 of each admissible list

What the loop does with each decision, whatever the actor:

* **invalid actions** — a command the actor marks invalid (``ActorStep.valid``) or that the environment
  rejects (``info["invalid_action"]``) is a row with ``invalid=True`` whose reward has ``invalid_penalty``
  subtracted (0 by default: the reward is the environment's);
* **truncation** — an episode cut by the step limit ends with a row ``truncated=True`` (never together
  with ``terminated``); :attr:`Episodes.traj_truncated` marks it and :attr:`Episodes.last_observation`
  / :attr:`Episodes.last_info` keep where it was cut, for a critic that bootstraps :math:`V(s'_T)`;
* **lost episodes** — an episode whose environment was lost (its worker crashed or hung and was restarted,
  or its ``step`` raised: ``info["worker_restarted"]`` / ``info["env_error"]``, see
  :class:`~gagpo.envs.pool.ProcessEnvPool`) is marked in :attr:`Episodes.traj_lost`, and with
  ``drop_lost=True`` its rows leave the batch (nothing is trained on a cut the agent did not cause).

This module imports numpy and :mod:`gagpo.batch` only: no torch, no gymnasium.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from .batch import StepBatch

if TYPE_CHECKING:  # gagpo.envs.pool imports gymnasium
    from .envs.pool import EnvPoolProtocol

__all__ = ["Actor", "ActorStep", "Episodes", "run_episodes", "ROW_COLUMNS"]

ROW_COLUMNS = ("traj", "step", "obs", "next_obs", "key", "next_key", "adm", "reward", "terminated", "truncated",
               "invalid")
"""The per-row columns the loop itself writes (an actor's extra columns take other names)."""


@dataclass
class ActorStep:
    """An actor's decisions at one time step; every list is aligned with the ``active`` episodes it was given.

    Attributes:
        commands: what each environment receives: an index into its admissible actions or a command string.
        valid: ``False`` where the actor's output was unusable (e.g. text without an action) and the
            command is a no-op stand-in: the row is invalid and penalised. ``None``: every one is valid.
        rows: extra per-row columns to store with the rows (name -> one value per active episode), e.g.
            ``{"action": [...], "logp": [...]}``; names other than :data:`ROW_COLUMNS`.
    """

    commands: Sequence[int | str]
    valid: Sequence[bool] | None = None
    rows: Mapping[str, Sequence[Any]] = field(default_factory=dict)


class Actor(Protocol):
    """What the loop asks of whoever picks the actions (a toy policy, a language model, a script)."""

    def reset(self, observations: Sequence[str], infos: Sequence[Mapping[str, Any]]) -> None:
        """A new collection starts: episode i was reset to ``observations[i]`` with ``infos[i]``."""
        ...

    def act(self, active: Sequence[int], observations: Sequence[str], admissible: Sequence[list[str]],
            infos: Sequence[Mapping[str, Any]], t: int) -> ActorStep:
        """The decisions at time step ``t`` of the episodes ``active`` (indices into the collection, in
        increasing order), which now see ``observations[j]``, may choose among ``admissible[j]`` and got
        ``infos[j]`` with that observation."""
        ...


@dataclass
class Episodes:
    """The rows of one collection (``rows``: per-row columns of length N) and per-trajectory arrays (n_traj,).

    ``rows`` holds :data:`ROW_COLUMNS` (``key``/``next_key``: the anchor keys of ``obs``/``next_obs``;
    ``reward`` with the invalid penalty applied) and the actors' extra columns; :meth:`column` reads one.
    """

    rows: dict[str, list]
    group_of: np.ndarray             # (n_traj,) rollout group of each episode
    task_of: np.ndarray              # (n_traj,) task seed of each episode
    traj_return: np.ndarray          # (n_traj,) undiscounted return (penalised rewards)
    traj_length: np.ndarray          # (n_traj,) number of decisions
    traj_won: np.ndarray             # (n_traj,) bool: info["won"] when the episode ended
    traj_truncated: np.ndarray       # (n_traj,) bool: cut by the step limit (its last row truncated)
    traj_lost: np.ndarray            # (n_traj,) bool: the environment was lost
    reset_infos: list[Mapping[str, Any]]       # (n_traj,) info of each reset
    last_observation: list[str]                # (n_traj,) the observation each episode ended in
    last_info: list[Mapping[str, Any]]         # (n_traj,) the info that came with it

    def column(self, name: str) -> list:
        """The per-row column ``name`` (an empty list when no row was written, e.g. no episode at all)."""
        return self.rows.get(name, [])

    def batch(self) -> StepBatch:
        """The :class:`~gagpo.batch.StepBatch` of the rows (``obs_key`` = the anchor key of each observation)."""
        traj = np.asarray(self.column("traj"), dtype=np.int64)
        return StepBatch(
            group_id=self.group_of[traj], traj_id=traj, step=np.asarray(self.column("step"), dtype=np.int64),
            obs_key=self.column("key"), next_obs_key=self.column("next_key"), reward=self.column("reward"),
            terminated=self.column("terminated"), truncated=self.column("truncated"),
        )


def run_episodes(
    pool: EnvPoolProtocol,
    actor: Actor,
    task_seeds: Sequence[int],
    group_size: int,
    *,
    invalid_penalty: float = 0.0,
    anchor_key: Callable[[str], str] | None = None,
    drop_lost: bool = True,
) -> Episodes:
    """Run ``group_size`` episodes from each task seed, the actor picking every action; rollout group k holds
    the episodes of ``task_seeds[k]``. Episodes end when the environment terminates or truncates them.

    Args:
        pool: the environments (:class:`~gagpo.envs.pool.EnvPoolProtocol`: ``reset_many``/``step_many``).
        actor: picks the actions (:class:`Actor`).
        task_seeds: one task seed per rollout group.
        group_size: episodes per group (G ≥ 1).
        invalid_penalty: subtracted from the reward of every invalid row (≥ 0).
        anchor_key: the anchor key of an observation (``None``: the observation text itself).
        drop_lost: leave the rows of lost episodes out (they stay marked in ``traj_lost``).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1; got {group_size}")
    if invalid_penalty < 0:
        raise ValueError(f"invalid_penalty must be >= 0; got {invalid_penalty}")
    key = anchor_key or (lambda observation: observation)
    n = len(task_seeds) * group_size
    group_of = np.repeat(np.arange(len(task_seeds)), group_size)
    task_of = np.repeat(np.asarray(task_seeds, dtype=np.int64), group_size)
    resets = pool.reset_many(task_of.tolist())
    obs = [o for o, _ in resets]
    infos = [info for _, info in resets]
    adm = [list(info["admissible_actions"]) for info in infos]
    actor.reset(list(obs), list(infos))
    rows: dict[str, list] = {name: [] for name in ROW_COLUMNS}
    won, truncated_at_end, lost = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    ret = np.zeros(n)
    steps = np.zeros(n, dtype=np.int64)
    active = list(range(n))
    t = 0
    while active:
        decision = actor.act(active, [obs[i] for i in active], [adm[i] for i in active], [infos[i] for i in active], t)
        extras = _checked_extras(decision, len(active), set(rows) - set(ROW_COLUMNS) if t else None)
        results = pool.step_many(active, decision.commands)
        still = []
        for j, i in enumerate(active):
            next_obs, reward, terminated, truncated, info = results[j]
            bad = (decision.valid is not None and not decision.valid[j]) or bool(info.get("invalid_action", False))
            reward = float(reward) - (invalid_penalty if bad else 0.0)
            row = dict(traj=i, step=steps[i], obs=obs[i], next_obs=next_obs, key=key(obs[i]), next_key=key(next_obs),
                       adm=adm[i], reward=reward, terminated=bool(terminated),
                       truncated=bool(truncated) and not terminated, invalid=bad)
            row.update((name, values[j]) for name, values in extras.items())
            for name, value in row.items():
                rows.setdefault(name, []).append(value)
            steps[i] += 1
            ret[i] += reward
            if terminated or truncated:
                won[i] = bool(info.get("won", False))
                truncated_at_end[i] = bool(truncated) and not terminated
                lost[i] = bool(info.get("worker_restarted") or info.get("env_error"))
                obs[i], infos[i] = next_obs, info
            else:
                obs[i], adm[i], infos[i] = next_obs, list(info["admissible_actions"]), info
                still.append(i)
        active = still
        t += 1
    if drop_lost and lost.any():  # neither trained on nor counted (traj_lost)
        keep = [k for k, i in enumerate(rows["traj"]) if not lost[i]]
        rows = {name: [values[k] for k in keep] for name, values in rows.items()}
    return Episodes(rows=rows, group_of=group_of, task_of=task_of, traj_return=ret, traj_length=steps, traj_won=won,
                    traj_truncated=truncated_at_end, traj_lost=lost, reset_infos=[info for _, info in resets],
                    last_observation=obs, last_info=infos)


def _checked_extras(decision: ActorStep, n_active: int, columns: set[str] | None) -> Mapping[str, Sequence[Any]]:
    """``decision.rows``, after checking that every list has one entry per active episode, that no extra
    column takes the name of one the loop writes, and that the extra columns are ``columns`` (those of
    the earlier time steps; ``None`` at the first)."""
    clash = sorted(set(decision.rows) & set(ROW_COLUMNS))
    if clash:
        raise ValueError(f"actor row column(s) {clash} clash with the loop's own {list(ROW_COLUMNS)}")
    if columns is not None and set(decision.rows) != columns:
        raise ValueError(f"the actor's row columns changed from {sorted(columns)} to {sorted(decision.rows)}")
    lengths = {"commands": len(decision.commands), **{name: len(v) for name, v in decision.rows.items()}}
    if decision.valid is not None:
        lengths["valid"] = len(decision.valid)
    wrong = {name: k for name, k in lengths.items() if k != n_active}
    if wrong:
        raise ValueError(f"the actor answered {wrong} entries for {n_active} active episodes")
    return decision.rows
