"""Group rollouts: G trajectories per task, all from the same task seed, stepped in lockstep.

``collect(envs, policy, task_seeds, group_size, generator)`` runs ``len(task_seeds) × group_size``
episodes at once — one policy forward pass per time step for every episode still running — and
returns a :class:`Rollout`: the :class:`~gagpo.batch.StepBatch` (one row per decision) plus what the
update needs per row (observation, admissible actions, chosen action, its log-probability) and
per-trajectory summaries (return, length, success).

Environments follow the protocol of :mod:`gagpo.envs.pool` (gymnasium API, text observations, ``info``
with ``admissible_actions`` and ``won`` — :class:`~gagpo.envs.pool.EnvInfo`; ``step`` accepts an index into
the admissible list), and a pool keeps :class:`~gagpo.envs.pool.EnvPoolProtocol`. The observation text is
the anchor key: identical situations give identical text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .batch import StepBatch
from .envs.factory import EnvFactory, ensure_registered
from .envs.pool import EnvPool  # re-exported: its home is gagpo.envs.pool
from .policies import action_log_probs, greedy_actions, sample_actions


@dataclass
class Rollout:
    """The rows of one collection, aligned with ``batch`` (shape (N,)), and per-trajectory summaries."""

    batch: StepBatch
    observations: list[str]
    next_observations: list[str]
    admissible: list[list[str]]
    actions: np.ndarray          # (N,) index into admissible[i]
    logp: np.ndarray             # (N,) log π_old(a|s) at collection time
    invalid: np.ndarray          # (N,) bool: the environment rejected the command (a no-op)
    traj_return: np.ndarray      # (n_traj,) undiscounted return
    traj_length: np.ndarray      # (n_traj,) number of decisions
    traj_won: np.ndarray         # (n_traj,) bool
    traj_task: np.ndarray        # (n_traj,) task seed

    @property
    def n_steps(self) -> int:
        """Environment steps taken (= rows)."""
        return len(self.batch)

    @property
    def invalid_rate(self) -> float:
        """Fraction of decisions the environment rejected as invalid (no-ops)."""
        return float(self.invalid.mean()) if len(self.invalid) else 0.0

    @property
    def kept(self) -> np.ndarray:
        """(n_traj,) bool: the trajectories that count — all of them, except episodes whose environment
        was lost (``traj_lost`` of :class:`gagpo.llm.rollout.LMRollout`)."""
        lost = getattr(self, "traj_lost", None)
        if lost is None or len(lost) == 0:
            return np.ones(len(self.traj_won), dtype=bool)
        return ~np.asarray(lost, dtype=bool)

    @property
    def lost_episodes(self) -> int:
        """Episodes whose environment was lost (not counted, not trained on)."""
        return int(len(self.traj_won) - self.kept.sum())

    @property
    def success_rate(self) -> float:
        """Fraction of the counted episodes (:attr:`kept`) that were won."""
        won = self.traj_won[self.kept]
        return float(won.mean()) if len(won) else 0.0

    @property
    def mean_return(self) -> float:
        """Mean undiscounted return of the counted episodes."""
        r = self.traj_return[self.kept]
        return float(r.mean()) if len(r) else 0.0

    @property
    def mean_length(self) -> float:
        """Mean length (decisions) of the counted episodes."""
        n = self.traj_length[self.kept]
        return float(n.mean()) if len(n) else 0.0


def make_env_fn(env_id: str, max_steps: int = 0, **kwargs) -> EnvFactory:
    """A picklable factory for ``gym.make(env_id, ...)``; ``max_steps > 0`` overrides the registered
    step limit. Checks now that the id exists (importing ``toy_envs`` or ``gagpo.envs`` as needed),
    so a typo fails before any rollout."""
    ensure_registered(env_id)
    return EnvFactory(env_id, max_steps, dict(kwargs))


@torch.no_grad()
def collect(
    pool: EnvPool,
    policy: torch.nn.Module,
    task_seeds: Sequence[int],
    group_size: int,
    generator: torch.Generator | None = None,
    greedy: bool = False,
) -> Rollout:
    """Run ``group_size`` episodes from each task seed; rollout group k holds the episodes of
    ``task_seeds[k]``. Episodes end when the environment terminates or truncates them.
    ``greedy=True`` takes the arg-max action (evaluation); otherwise actions are sampled with
    ``generator`` (deterministic for a seeded generator)."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1; got {group_size}")
    n = len(task_seeds) * group_size
    group_of = np.repeat(np.arange(len(task_seeds)), group_size)
    task_of = np.repeat(np.asarray(task_seeds, dtype=np.int64), group_size)
    obs: list[str] = [""] * n
    adm: list[list[str]] = [[] for _ in range(n)]
    for i, (o, info) in enumerate(pool.reset_many(task_of.tolist())):
        obs[i], adm[i] = o, list(info["admissible_actions"])
    active = list(range(n))
    step_count = np.zeros(n, dtype=np.int64)
    rows: dict[str, list] = {k: [] for k in (
        "traj", "step", "obs", "next_obs", "adm", "action", "logp", "reward", "terminated", "truncated", "invalid")}
    won = np.zeros(n, dtype=bool)
    ret = np.zeros(n)
    while active:
        logits = policy.logits([obs[i] for i in active], [adm[i] for i in active])
        acts = greedy_actions(logits) if greedy else sample_actions(logits, generator)
        logps = action_log_probs(logits, acts).double().numpy()
        acts = acts.numpy()
        still = []
        results = pool.step_many(active, [int(a) for a in acts])
        for j, i in enumerate(active):
            a = int(acts[j])
            next_obs, reward, terminated, truncated, info = results[j]
            rows["traj"].append(i)
            rows["step"].append(step_count[i])
            rows["obs"].append(obs[i])
            rows["next_obs"].append(next_obs)
            rows["adm"].append(adm[i])
            rows["action"].append(a)
            rows["logp"].append(logps[j])
            rows["reward"].append(float(reward))
            rows["terminated"].append(bool(terminated))
            rows["truncated"].append(bool(truncated) and not terminated)
            rows["invalid"].append(bool(info.get("invalid_action", False)))
            step_count[i] += 1
            ret[i] += reward
            if terminated or truncated:
                won[i] = bool(info.get("won", False))
            else:
                obs[i], adm[i] = next_obs, list(info["admissible_actions"])
                still.append(i)
        active = still
    return Rollout(**rollout_fields(rows, group_of, task_of, ret, step_count, won, np.asarray(rows["logp"])))


def rollout_fields(rows: dict[str, list], group_of: np.ndarray, task_of: np.ndarray, traj_return: np.ndarray,
                   traj_length: np.ndarray, traj_won: np.ndarray, logp: np.ndarray) -> dict[str, Any]:
    """The :class:`Rollout` fields from per-row lists (keys ``traj, step, obs, next_obs, adm, action,
    reward, terminated, truncated, invalid``; optionally ``key, next_key``, the anchor keys of ``obs`` and
    ``next_obs`` when they are not the observation text itself) and per-trajectory arrays; shared by every
    collector."""
    traj = np.asarray(rows["traj"], dtype=np.int64)
    batch = StepBatch(
        group_id=group_of[traj], traj_id=traj, step=np.asarray(rows["step"], dtype=np.int64),
        obs_key=rows.get("key", rows["obs"]), next_obs_key=rows.get("next_key", rows["next_obs"]), reward=rows["reward"],
        terminated=rows["terminated"], truncated=rows["truncated"],
    )
    return dict(
        batch=batch, observations=rows["obs"], next_observations=rows["next_obs"], admissible=rows["adm"],
        actions=np.asarray(rows["action"], dtype=np.int64), logp=logp,
        invalid=np.asarray(rows["invalid"], dtype=bool), traj_return=traj_return, traj_length=traj_length,
        traj_won=traj_won, traj_task=task_of,
    )
