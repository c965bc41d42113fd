"""The run loop that every trainer shares: rollout → advantages → update, with evaluation, metric files and checkpoints.

:class:`RunLoop` holds everything about a run except what is learned and how: the task seeds of each
iteration and the held-out seeds, the order of the phases of an iteration and their timing, the
stopping rule, the metric files, the progress bar, checkpoints and resuming, and closing the
environment pools. A trainer — :class:`gagpo.trainer.Trainer` (toy policies) or
:class:`gagpo.llm.train.LMTrainer` (language models) — subclasses it and implements its hooks:

* :meth:`RunLoop.rollout` — play this iteration's groups (task seeds :meth:`RunLoop.task_seeds`),
  return the rollout (a :class:`RolloutLike`: its :class:`~gagpo.batch.StepBatch` and episode summaries);
* :meth:`RunLoop.advantages` ``(rollout)`` — the *targets* of the update, a dict with ``advantages``
  (one per row, shape ``(N,)``) and, for an estimator with a critic, ``values`` and ``returns``;
* :meth:`RunLoop.update` ``(rollout, targets)`` — update the policy (and the critic); returns its
  diagnostics (``clip_fraction``, ``approx_kl``, ``nonfinite_steps``, ...);
* :meth:`RunLoop.evaluate` — held-out episodes; returns ``eval_*`` metrics;
* :meth:`RunLoop.save_checkpoint` and :meth:`RunLoop.load_checkpoint` — everything a resumed run needs.

Optional: :meth:`RunLoop.reference_logp` (a trainer with a reference policy sets
``SCORES_REFERENCE = True``; its scores reach :meth:`RunLoop.update` as ``targets["ref_logp"]``) and
:meth:`RunLoop.step_metrics` (the trainer's own per-iteration metrics).

One timing vocabulary (:data:`TIME_METRICS`): every iteration logs, in seconds, ``time_rollout``
(the rollout), ``time_advantage`` (the advantages, with the critic's values when there is one) and
``time_update`` (the update); a trainer that scores a reference policy also logs ``time_reference``
(that scoring only).

Determinism and exact resumption: the task seeds of iteration k derive from ``(seed, k)`` alone
(:meth:`RunLoop.task_seeds`), so a run resumed from the checkpoint of iteration k replays iterations
k+1… as an uninterrupted run would (on a CPU), provided the trainer's own random draws also derive
from ``(seed, k)``.

Data parallelism (:mod:`gagpo.distributed`; launched by ``accelerate launch`` or ``torchrun`` on N
processes): the iteration's ``tasks_per_iter`` task seeds are those of a one-process run, and each
process plays its block of whole groups (:meth:`RunLoop.rank_task_seeds`; :attr:`RunLoop.shard` says
which); the trainers' random draws also take the rank (:func:`gagpo.distributed.seed_key`). The loop
takes care of the rest: the main process alone holds the directory's lock, prepares it, evaluates, and
writes the metric files and checkpoints; a resumed run loads the checkpoint on the main process first,
then on the others; every iteration's metrics are pooled over the processes (:meth:`iteration_metrics`,
``env_steps`` counts every process's steps) and carry ``world_size``. A checkpoint holds the state of the
whole run (the weights and optimizer state are the same on every process), so a run may resume on
another number of processes (``tasks_per_iter`` a multiple of it). In one process all of this reduces
to the code paths of a one-process run (``world_size`` 1).
"""
from __future__ import annotations

import abc
import contextlib
import json
import os
import time
import warnings
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Protocol

import numpy as np
import torch

from . import distributed as dist
from .batch import StepBatch
from .config import config_mismatch
from .rundir import RunLock, atomic_write, prepare
from .tables import write_csv

TRAIN_SEED_RANGE = 10_000  # training task seeds are drawn below this; held-out seeds lie above
ANCHOR_BINS = (1, 2, 4, 8)  # anchor-group size histogram: 1, 2, 3–4, 5–8, > 8

#: The phases of an iteration, in order, and the metric that times each (seconds): ``time_reference``
#: only for a trainer that scores a reference policy (:attr:`RunLoop.SCORES_REFERENCE`).
TIME_METRICS = ("time_rollout", "time_reference", "time_advantage", "time_update")

#: environment variable naming a folder: a test hook, see :meth:`RunLoop.dump_iteration`
DUMP_ENV = "GAGPO_DUMP_ITERATIONS"


class RolloutLike(Protocol):
    """What the run loop reads from a rollout (:class:`gagpo.rollout.Rollout`,
    :class:`gagpo.llm.rollout.LMRollout`): the rows and the summaries of its episodes."""

    batch: StepBatch  #: one row per decision, with ``anchor_size`` for :func:`anchor_histogram`
    n_steps: int  #: environment steps taken
    success_rate: float  #: fraction of the counted episodes won (episodes whose environment was lost do not count)
    invalid_rate: float  #: fraction of decisions that were not admissible actions
    mean_return: float  #: mean undiscounted return of the counted episodes
    mean_length: float  #: mean steps of the counted episodes


def anchor_histogram(rollout: RolloutLike) -> dict[str, float]:
    """Fraction of rows whose anchor group has size 1, 2, 3–4, 5–8, > 8 (over every process's rows in a
    data-parallel run)."""
    sizes = dist.gather_rows(rollout.batch.anchor_size)
    edges = (0,) + ANCHOR_BINS + (np.inf,)
    labels = ["1", "2", "3-4", "5-8", ">8"]
    n = max(len(sizes), 1)
    return {f"anchor_frac_{lab}": float(((sizes > lo) & (sizes <= hi)).sum() / n) for lab, lo, hi in zip(labels, edges[:-1], edges[1:])}


@contextmanager
def timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall-clock seconds that the ``with`` block takes to ``seconds["time_<phase>"]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        key = f"time_{phase}"
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start


class RunLoop(abc.ABC):
    """What every training run shares, toy policy or language model: the task seeds and held-out
    seeds, one iteration's phases (:meth:`step`), the stopping rule, the metric files and the loop
    with its progress bar and checkpoints (:meth:`train`).

    A subclass calls ``RunLoop.__init__(self, cfg)`` (which sets ``cfg``, ``run_dir``, ``iteration``,
    ``env_steps``, ``history`` and the torch threads), sets ``pool`` and ``eval_pool``, and implements
    the hooks :meth:`rollout`, :meth:`advantages`, :meth:`update`, :meth:`evaluate`,
    :meth:`save_checkpoint` and :meth:`load_checkpoint` (see :mod:`gagpo.runloop`).
    """

    #: whether the trainer scores every rollout under a reference policy (:meth:`reference_logp`,
    #: timed as ``time_reference``, passed to :meth:`update` as ``targets["ref_logp"]``)
    SCORES_REFERENCE: ClassVar[bool] = False
    #: whether the trainer's hooks implement data parallelism (:mod:`gagpo.distributed`); one that does not
    #: refuses to start on several processes
    DATA_PARALLEL: ClassVar[bool] = True

    # The attributes of a run (RunLoop.__init__ sets all but the pools, which the subclass builds).
    cfg: Any  #: the configuration: the fields of gagpo.config.RunSettings, and algo (TrainConfig, LMTrainConfig)
    run_dir: str  #: where the metric files and checkpoints go (cfg.run_dir())
    pool: Any  #: the training environments (reset_many, step_many, close): an EnvPool or a ProcessEnvPool
    eval_pool: Any  #: the held-out environments (same protocol)
    iteration: int  #: iterations done
    env_steps: int  #: environment steps taken so far
    history: list[dict[str, Any]]  #: one metrics row per iteration (and the evaluation's, on evaluation iterations)
    shard: dist.Shard  #: this process's groups of an iteration (all of them in one process)

    def __init__(self, cfg: Any):
        if dist.is_distributed() and not self.DATA_PARALLEL:
            raise RuntimeError(f"{type(self).__name__} does not run data-parallel: launch it on one process "
                               f"(this one is {dist.rank()} of {dist.world_size()})")
        self.cfg = cfg
        if cfg.threads:  # 0 keeps torch's default
            torch.set_num_threads(cfg.threads)
        self.run_dir = cfg.run_dir()
        self.iteration = 0
        self.env_steps = 0
        self.history = []
        self.shard = (dist.Shard.of(cfg.tasks_per_iter, getattr(cfg, "group_size", 1)) if hasattr(cfg, "tasks_per_iter")
                      else dist.Shard())

    # ------------------------------------------------------------------ the hooks
    @abc.abstractmethod
    def rollout(self) -> RolloutLike:
        """Play ``cfg.group_size`` episodes of each task seed of :meth:`task_seeds` ``(self.iteration)``."""

    def reference_logp(self, rollout: RolloutLike) -> Any:
        """The rollout's scores under a reference policy (for a KL penalty); only called when
        :attr:`SCORES_REFERENCE` is true. Here: none."""
        return None

    @abc.abstractmethod
    def advantages(self, rollout: RolloutLike) -> dict[str, np.ndarray]:
        """The update's targets: ``{"advantages": (N,), ...}`` (a critic adds ``values`` and ``returns``)."""

    @abc.abstractmethod
    def update(self, rollout: RolloutLike, targets: dict[str, Any]) -> dict[str, Any]:
        """Update the policy (and critic) from the rollout and its targets; returns the update's diagnostics."""

    @abc.abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Play the held-out episodes; returns their ``eval_*`` metrics."""

    @abc.abstractmethod
    def save_checkpoint(self) -> None:
        """Write what a resumed run needs (weights, optimizer state, ``iteration``, ``env_steps``, ``history``)."""

    @abc.abstractmethod
    def load_checkpoint(self) -> bool:
        """Restore the checkpoint in :attr:`run_dir`; ``False`` when there is none."""

    def step_metrics(self, rollout: RolloutLike, targets: dict[str, Any], update: dict[str, Any],
                     seconds: dict[str, float]) -> dict[str, Any]:
        """The trainer's own metrics of an iteration, beside those of :meth:`iteration_metrics`, the
        update's and the phase times ``seconds``. Here: none."""
        return {}

    # ------------------------------------------------------------------ one iteration
    def step(self) -> dict[str, Any]:
        """One iteration: :meth:`rollout` → (:meth:`reference_logp`) → :meth:`advantages` → :meth:`update`,
        each timed (:data:`TIME_METRICS`); returns the iteration's metrics row, with an evaluation when
        one is due (:meth:`record`)."""
        self.iteration += 1
        seconds: dict[str, float] = {}
        with timed(seconds, "rollout"):
            rollout = self.rollout()
        if self.SCORES_REFERENCE:
            with timed(seconds, "reference"):
                ref_logp = self.reference_logp(rollout)
        with timed(seconds, "advantage"):
            targets = self.advantages(rollout)
        if self.SCORES_REFERENCE:
            targets = {**targets, "ref_logp": ref_logp}
        with timed(seconds, "update"):
            upd = self.update(rollout, targets)
        self.env_steps += dist.all_sum(rollout.n_steps)  # every process's steps
        row = {**self.iteration_metrics(rollout, targets["advantages"]), **upd, **anchor_histogram(rollout),
               **self.step_metrics(rollout, targets, upd, seconds), **seconds, "world_size": dist.world_size()}
        if os.environ.get(DUMP_ENV):
            self.dump_iteration(os.environ[DUMP_ENV], rollout, targets, upd)
        return self.record(row)

    def dump_iteration(self, folder: str, rollout: RolloutLike, targets: dict[str, Any], update: dict[str, Any]) -> None:
        """A test hook (``$GAGPO_DUMP_ITERATIONS``, tests/test_distributed.py): every process writes
        ``<folder>/rank<r>-iteration<k>.pt`` with its shard, rollout, targets, update diagnostics, and its
        trainable weights and their gradients after the update (:meth:`named_trainable`)."""
        named = list(self.named_trainable()) if hasattr(self, "named_trainable") else []
        state = {"rank": dist.rank(), "world_size": dist.world_size(), "iteration": self.iteration,
                 "shard": self.shard, "rollout": rollout, "targets": targets, "update": update,
                 "weights": {n: dist.full_tensor(p.detach()).cpu().clone() for n, p in named},  # FSDP: whole
                 "grads": {n: dist.full_tensor(p.grad.detach()).cpu().clone() for n, p in named if p.grad is not None}}
        os.makedirs(folder, exist_ok=True)
        torch.save(state, os.path.join(folder, f"rank{dist.rank()}-iteration{self.iteration}.pt"))

    # ------------------------------------------------------------------ seeds
    def rank_task_seeds(self, iteration: int) -> list[int]:
        """This process's task seeds of ``iteration``: its contiguous block of :meth:`task_seeds`
        (:func:`gagpo.distributed.shard`; all of them in one process)."""
        return dist.shard(self.task_seeds(iteration))

    def task_seeds(self, iteration: int) -> list[int]:
        """The training task seeds of ``iteration``: a function of ``(seed, iteration)`` alone (in a
        data-parallel run, those of every process: :meth:`rank_task_seeds` is this process's share).

        Drawn from ``0 .. n-1`` with ``n`` = ``cfg.n_train_tasks``, else the environment's number of
        tasks when it has a finite one (``self.n_env_tasks``, e.g. ALFWorld's games: each equally likely),
        else ``TRAIN_SEED_RANGE`` (procedurally generated toy tasks)."""
        rng = np.random.default_rng([self.cfg.seed, iteration, 1])
        high = self.cfg.n_train_tasks or getattr(self, "n_env_tasks", None) or TRAIN_SEED_RANGE
        return rng.choice(high, size=self.cfg.tasks_per_iter, replace=self.cfg.tasks_per_iter > high).tolist()

    def held_out_seeds(self) -> list[int]:
        """The first ``cfg.eval_episodes`` of the evaluation environment's ``EVAL_SEEDS`` (read through the
        pool's ``attribute``, :class:`gagpo.envs.pool.EnvPoolProtocol`; 10000, 10001, … when the environment
        has none, or the pool cannot say)."""
        seeds = range(TRAIN_SEED_RANGE, TRAIN_SEED_RANGE + 1000)
        declared = self.eval_pool.attribute("EVAL_SEEDS") if hasattr(self.eval_pool, "attribute") else None
        if declared is not None:
            seeds = declared
        out = [int(s) for s in list(seeds)[: self.cfg.eval_episodes]]
        if len(out) < self.cfg.eval_episodes:
            warnings.warn(f"eval_episodes {self.cfg.eval_episodes}: the environment has only {len(out)} held-out task "
                          f"seeds (EVAL_SEEDS); evaluating on {len(out)}", stacklevel=2)
        return out

    # ------------------------------------------------------------------ metrics
    def done(self) -> bool:
        """The run is over: all iterations done, or the environment-step budget (if any) spent."""
        budget = getattr(self.cfg, "env_step_budget", 0)  # language-model runs have no step budget
        return self.iteration >= self.cfg.iterations or (budget > 0 and self.env_steps >= budget)

    def iteration_metrics(self, rollout: RolloutLike, advantages: np.ndarray) -> dict[str, Any]:
        """The metrics every run logs for an iteration's rollout and advantages (in a data-parallel run,
        over every process's episodes and rows)."""
        a = dist.gather_rows(advantages)
        episodes = int(np.sum(getattr(rollout, "kept", np.ones(0))))  # the episodes the rates count
        decisions = len(getattr(rollout, "invalid", ()))
        return {
            "iteration": self.iteration, "env_steps": self.env_steps,
            "success": dist.weighted_mean(rollout.success_rate, episodes),
            "return": dist.weighted_mean(rollout.mean_return, episodes),
            "episode_length": dist.weighted_mean(rollout.mean_length, episodes),
            "invalid_rate": dist.weighted_mean(rollout.invalid_rate, decisions),
            "adv_mean": float(a.mean()), "adv_std": float(a.std()), "adv_zero_frac": float(np.mean(np.abs(a) < 1e-8)),
        }

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        """Evaluate when due (every ``cfg.eval_every`` iterations and at the end; on the main process only),
        append ``row`` to the history."""
        if self.cfg.eval_every and (self.iteration % self.cfg.eval_every == 0 or self.done()) and dist.is_main():
            row.update(self.evaluate())
        self.history.append(row)
        return row

    def check_resumable(self, saved_config: dict[str, Any], path: str) -> None:
        """Raise ``ValueError`` when a checkpoint's configuration differs in a field that matters."""
        diff = config_mismatch(saved_config, self.cfg.to_dict(), type(self.cfg).RESUMABLE)
        if diff:
            raise ValueError(f"checkpoint {path} was written with a different configuration: {diff} (saved, now)")

    def write_metrics(self) -> None:
        """``config.json``, ``metrics.jsonl`` and ``metrics.csv`` in the run directory, each replaced
        atomically (:func:`gagpo.rundir.atomic_write`: a crash leaves the old file or the new one)."""
        os.makedirs(self.run_dir, exist_ok=True)
        with atomic_write(os.path.join(self.run_dir, "config.json")) as fh:
            json.dump(self.cfg.to_dict(), fh, indent=2)
        with atomic_write(os.path.join(self.run_dir, "metrics.jsonl")) as fh:
            for row in self.history:
                fh.write(json.dumps(row) + "\n")
        write_csv(self.history, os.path.join(self.run_dir, "metrics.csv"))

    def progress_desc(self) -> str:
        return f"{self.cfg.algo} seed {self.cfg.seed}"

    def progress_postfix(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"succ": f"{row['success']:.2f}", "steps": row["env_steps"]}

    # ------------------------------------------------------------------ the loop
    def train(self) -> list[dict[str, Any]]:
        """Run (or, with ``cfg.resume``, continue) until :meth:`done`; returns the metrics history.

        The run holds its directory's lock throughout (:class:`gagpo.rundir.RunLock`: a second process
        into the same directory refuses at once) and starts with :func:`gagpo.rundir.prepare`: a write
        probe, and a directory that holds another run is refused unless ``cfg.resume`` continues it or
        ``cfg.overwrite`` replaces it (:class:`gagpo.rundir.RunDirError`). The environment pools are
        closed however it ends. In a data-parallel run the main process holds the lock, prepares the
        directory and writes the files; its errors are raised on every process
        (:func:`gagpo.distributed.call_on_main`), and it loads a checkpoint before the others do."""
        try:
            with contextlib.ExitStack() as stack:
                def start() -> None:  # on the main process: hold the lock for the whole run, prepare the directory
                    stack.enter_context(RunLock(self.run_dir))
                    prepare(self.run_dir, resume=self.cfg.resume, overwrite=self.cfg.overwrite)

                dist.call_on_main(start)
                if self.cfg.resume:
                    self.resume()
                self.run_iterations()
                if dist.is_main():
                    self.write_metrics()
        finally:
            self.close()
        return self.history

    def run_iterations(self) -> None:
        """The loop of :meth:`train`: :meth:`step` until :meth:`done`, with the progress bar, and a
        checkpoint and the metric files every ``cfg.checkpoint_every`` iterations and at the end (written by
        the main process of a data-parallel run, which alone shows the progress bar)."""
        cfg = self.cfg
        bar = None
        if cfg.progress and dist.is_main():
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.iterations, initial=self.iteration, desc=self.progress_desc(), dynamic_ncols=True)
        try:
            while not self.done():
                row = self.step()
                if bar is not None:
                    post = self.progress_postfix(row)
                    if "eval_success" in row:
                        post["eval"] = f"{row['eval_success']:.2f}"
                    bar.set_postfix(post)
                    bar.update(1)
                if (cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0) or self.done():
                    self.checkpoint()
        finally:
            if bar is not None:
                bar.close()

    def checkpoint(self) -> None:
        """Called on every process when a checkpoint is due: the main process writes the checkpoint
        (:meth:`save_checkpoint`) and the metric files. A trainer whose state is sharded over the processes
        (FSDP, :class:`gagpo.llm.train.LMTrainer`) gathers it here on every process first."""
        if dist.is_main():
            self.save_checkpoint()
            self.write_metrics()

    def resume(self) -> None:
        """Called on every process to continue a run: :meth:`load_checkpoint`, the main process first (it may
        repair an interrupted save), then the others."""
        dist.main_first(self.load_checkpoint)

    def close(self) -> None:
        """Close the run's environment pools (:meth:`train` does, when it returns or raises)."""
        self.pool.close()
        self.eval_pool.close()


__all__ = ["RunLoop", "RolloutLike", "anchor_histogram", "timed", "TIME_METRICS", "TRAIN_SEED_RANGE", "ANCHOR_BINS"]
