"""Group rollouts: G trajectories per task, all from the same task seed, stepped in lockstep.

``collect(envs, policy, task_seeds, group_size, generator)`` runs ``len(task_seeds) × group_size``
episodes at once — one policy forward pass per time step for every episode still running — and
returns a :class:`Rollout`: the :class:`~gagpo.batch.StepBatch` (one row per decision) plus what the
update needs per row (observation, admissible actions, chosen action, its log-probability) and
per-trajectory summaries (return, length, success). It is the episode loop of :mod:`gagpo.episodes`
(:func:`~gagpo.episodes.run_episodes`, shared with the language-model collector
:func:`gagpo.llm.rollout.collect_lm`) with a :class:`PolicyActor`, which picks the actions.

Environments follow the protocol of :mod:`gagpo.envs.pool` (gymnasium API, text observations, ``info``
with ``admissible_actions`` and ``won`` — :class:`~gagpo.envs.pool.EnvInfo`; ``step`` accepts an index into
the admissible list), and a pool keeps :class:`~gagpo.envs.pool.EnvPoolProtocol`. The observation text is
the anchor key: identical situations give identical text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .batch import StepBatch
from .envs.factory import EnvFactory, ensure_registered
from .envs.pool import EnvPool  # re-exported: its home is gagpo.envs.pool
from .episodes import ActorStep, Episodes, run_episodes
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


class PolicyActor:
    """The toy actor (:class:`gagpo.episodes.Actor`): a policy of :mod:`gagpo.policies` chooses an index into
    the admissible actions — sampled with ``generator`` (deterministic for a seeded generator), or the
    arg-max with ``greedy=True`` — and each row keeps it (``action``) and its log-probability (``logp``)."""

    def __init__(self, policy: torch.nn.Module, generator: torch.Generator | None = None, greedy: bool = False):
        self.policy, self.generator, self.greedy = policy, generator, greedy

    def reset(self, observations: Sequence[str], infos: Sequence[Mapping[str, Any]]) -> None:
        """Nothing to remember: the policy sees only the current observation."""

    @torch.no_grad()
    def act(self, active: Sequence[int], observations: Sequence[str], admissible: Sequence[list[str]],
            infos: Sequence[Mapping[str, Any]], t: int) -> ActorStep:
        """One forward pass for every active episode; the commands are the chosen indices."""
        logits = self.policy.logits(list(observations), list(admissible))
        acts = greedy_actions(logits) if self.greedy else sample_actions(logits, self.generator)
        logps = action_log_probs(logits, acts).double().numpy()
        chosen = [int(a) for a in acts.numpy()]
        return ActorStep(commands=chosen, rows={"action": chosen, "logp": list(logps)})


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
    ``generator`` (deterministic for a seeded generator).

    :func:`gagpo.episodes.run_episodes` with a :class:`PolicyActor`. An episode whose environment was lost
    keeps its rows (a truncated last transition), as it always did here; :func:`gagpo.llm.rollout.collect_lm`
    leaves such episodes out."""
    episodes = run_episodes(pool, PolicyActor(policy, generator, greedy), task_seeds, group_size, drop_lost=False)
    return Rollout(**rollout_fields(episodes, np.asarray(episodes.column("logp"))))


def rollout_fields(episodes: Episodes, logp: np.ndarray) -> dict[str, Any]:
    """The :class:`Rollout` fields of a collection (its rows' ``logp`` given apart: an actor may score its
    actions only after the loop); shared by every collector."""
    return dict(
        batch=episodes.batch(), observations=episodes.column("obs"), next_observations=episodes.column("next_obs"),
        admissible=episodes.column("adm"), actions=np.asarray(episodes.column("action"), dtype=np.int64), logp=logp,
        invalid=np.asarray(episodes.column("invalid"), dtype=bool), traj_return=episodes.traj_return,
        traj_length=episodes.traj_length, traj_won=episodes.traj_won, traj_task=episodes.task_of,
    )
