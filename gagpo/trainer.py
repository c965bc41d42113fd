"""One training loop for every estimator: rollout → advantages → PPO-clip update.

The algorithms differ only in :func:`compute_advantages`; the rollout, the clipped surrogate
(:func:`gagpo.losses.ppo_clip_loss`), evaluation, logging and checkpoints are shared. With one
update epoch and one minibatch the clipped surrogate's gradient equals the plain policy gradient
(the ratio is 1 at the first step), so ``reinforce`` is REINFORCE proper under those settings.

Determinism and exact resumption: the task seeds of iteration k and the action-sampling generator
of iteration k are derived from ``(seed, k)`` alone, so a run resumed from the checkpoint of
iteration k replays iterations k+1… exactly as an uninterrupted run would (on CPU).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any

import numpy as np
import torch

from . import advantages as adv_lib
from .batch import StepBatch
from .config import TrainConfig, config_mismatch
from .guard import NonFiniteError, NonFiniteGuard, all_finite, check_finite_weights
from .losses import ppo_clip_loss, value_loss
from .policies import action_log_probs, entropy, make_policy, make_value
from .rollout import EnvPool, Rollout, collect, make_env_fn
from .rundir import RunLock, atomic_write, check_start, damaged, prepare
from .tables import write_csv

TRAIN_SEED_RANGE = 10_000  # training task seeds are drawn below this; held-out seeds lie above
ANCHOR_BINS = (1, 2, 4, 8)  # anchor-group size histogram: 1, 2, 3–4, 5–8, > 8


def compute_advantages(cfg: TrainConfig, rollout: Rollout, value_net: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """Per-row advantages of ``cfg.algo`` for one rollout; PPO also returns critic targets.

    Returns a dict with ``advantages`` (N,) and, for ``ppo``, ``values`` and ``returns`` (targets).
    With ``cfg.anchor_match == "near"``, GiGPO and GAGPO see the batch with near-duplicate
    observations merged (:func:`gagpo.anchors.near_duplicate_batch`).
    """
    b = rollout.batch
    if cfg.anchor_match == "near" and cfg.algo in ("gigpo", "gagpo"):  # merge near-duplicate observations
        from .anchors import near_duplicate_batch

        b = near_duplicate_batch(b, cfg.anchor_threshold)
    if cfg.algo == "reinforce":
        baseline = None if cfg.reinforce_baseline == "none" else cfg.reinforce_baseline
        return {"advantages": adv_lib.reinforce_advantages(b, cfg.gamma, baseline)}
    if cfg.algo == "grpo":
        return {"advantages": adv_lib.grpo_advantages(b, cfg.norm, cfg.adv_eps)}
    if cfg.algo == "rloo":
        return {"advantages": adv_lib.rloo_advantages(b)}
    if cfg.algo == "gigpo":
        norm = "mean" if cfg.norm == "none" else cfg.norm
        return {"advantages": adv_lib.gigpo_advantages(b, cfg.gamma, cfg.step_weight, norm, cfg.adv_eps)}
    if cfg.algo == "gagpo":
        return {"advantages": adv_lib.gagpo_advantages(b, cfg.gamma, cfg.lam, cfg.norm, cfg.adv_eps)}
    if cfg.algo == "ppo":
        if value_net is None:
            raise ValueError("algo 'ppo' needs a value network")
        with torch.no_grad():
            values = value_net.values(rollout.observations).double().numpy()
            next_values = value_net.values(rollout.next_observations).double().numpy()
        return ppo_targets(cfg, b, values, next_values)
    raise ValueError(f"unknown algo {cfg.algo!r}")


def ppo_targets(cfg: TrainConfig, batch: StepBatch, values: np.ndarray, next_values: np.ndarray) -> dict[str, np.ndarray]:
    r"""PPO's advantages and critic targets from a critic's :math:`V(s_t)` and :math:`V(s'_t)`:
    :math:`A_t` = :func:`gagpo.advantages.gae_advantages` (γ, λ of ``cfg``), normalised (``cfg.norm``)
    over the whole batch — classic PPO, not per rollout group; ``returns`` = :math:`A_t + V(s_t)`
    (before normalisation) are the critic's regression targets."""
    raw = adv_lib.gae_advantages(batch, values, next_values, cfg.gamma, cfg.lam)
    adv = adv_lib.normalize_by_segment(raw, np.zeros(len(batch), dtype=np.int64), 1, cfg.norm, cfg.adv_eps)
    return {"advantages": adv, "values": values, "returns": raw + values}


def anchor_histogram(rollout: Rollout) -> dict[str, float]:
    """Fraction of rows whose anchor group has size 1, 2, 3–4, 5–8, > 8."""
    sizes = rollout.batch.anchor_size
    edges = (0,) + ANCHOR_BINS + (np.inf,)
    labels = ["1", "2", "3-4", "5-8", ">8"]
    n = max(len(sizes), 1)
    return {f"anchor_frac_{lab}": float(((sizes > lo) & (sizes <= hi)).sum() / n) for lab, lo, hi in zip(labels, edges[:-1], edges[1:])}


class RunLoop:
    """What every training run shares, toy policy or language model: the task seeds and held-out
    seeds, the stopping rule, the metric files and the loop with its progress bar and checkpoints.

    A subclass sets ``cfg``, ``run_dir``, ``pool``, ``eval_pool``, ``iteration``, ``env_steps`` and
    ``history``, and implements ``step()`` (one iteration, returning its metrics row),
    ``save_checkpoint()`` and ``load_checkpoint()``.
    """

    def task_seeds(self, iteration: int) -> list[int]:
        """The training task seeds of ``iteration``: a function of ``(seed, iteration)`` alone.

        Drawn from ``0 .. n-1`` with ``n`` = ``cfg.n_train_tasks``, else the environment's number of
        tasks when it has a finite one (``self.n_env_tasks``, e.g. ALFWorld's games: each equally likely),
        else ``TRAIN_SEED_RANGE`` (procedurally generated toy tasks)."""
        rng = np.random.default_rng([self.cfg.seed, iteration, 1])
        high = self.cfg.n_train_tasks or getattr(self, "n_env_tasks", None) or TRAIN_SEED_RANGE
        return rng.choice(high, size=self.cfg.tasks_per_iter, replace=self.cfg.tasks_per_iter > high).tolist()

    def held_out_seeds(self) -> list[int]:
        """The first ``cfg.eval_episodes`` of the evaluation environment's ``EVAL_SEEDS`` (10000, 10001, …
        when the environment has none, or the pool is not an in-process :class:`EnvPool`)."""
        seeds = range(TRAIN_SEED_RANGE, TRAIN_SEED_RANGE + 1000)
        if isinstance(self.eval_pool, EnvPool):
            seeds = getattr(self.eval_pool.get(1)[0].unwrapped, "EVAL_SEEDS", seeds)
        out = [int(s) for s in list(seeds)[: self.cfg.eval_episodes]]
        if len(out) < self.cfg.eval_episodes:
            warnings.warn(f"eval_episodes {self.cfg.eval_episodes}: the environment has only {len(out)} held-out task "
                          f"seeds (EVAL_SEEDS); evaluating on {len(out)}", stacklevel=2)
        return out

    def done(self) -> bool:
        """The run is over: all iterations done, or the environment-step budget (if any) spent."""
        budget = getattr(self.cfg, "env_step_budget", 0)  # language-model runs have no step budget
        return self.iteration >= self.cfg.iterations or (budget > 0 and self.env_steps >= budget)

    def iteration_metrics(self, rollout: Rollout, advantages: np.ndarray) -> dict[str, Any]:
        """The metrics every run logs for an iteration's rollout and advantages."""
        a = advantages
        return {
            "iteration": self.iteration, "env_steps": self.env_steps, "success": rollout.success_rate,
            "return": float(rollout.traj_return.mean()), "episode_length": float(rollout.traj_length.mean()),
            "invalid_rate": rollout.invalid_rate,
            "adv_mean": float(a.mean()), "adv_std": float(a.std()), "adv_zero_frac": float(np.mean(np.abs(a) < 1e-8)),
        }

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        """Evaluate when due (every ``cfg.eval_every`` iterations and at the end), append ``row`` to the history."""
        if self.cfg.eval_every and (self.iteration % self.cfg.eval_every == 0 or self.done()):
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

    def train(self) -> list[dict[str, Any]]:
        """Run (or, with ``cfg.resume``, continue) until :meth:`done`; returns the metrics history.

        The run holds its directory's lock throughout (:class:`gagpo.rundir.RunLock`: a second process
        into the same directory refuses at once) and starts with :func:`gagpo.rundir.prepare`: a write
        probe, and a directory that holds another run is refused unless ``cfg.resume`` continues it or
        ``cfg.overwrite`` replaces it (:class:`gagpo.rundir.RunDirError`). The environment pools are
        closed however it ends."""
        try:
            with RunLock(self.run_dir):
                prepare(self.run_dir, resume=self.cfg.resume, overwrite=self.cfg.overwrite)
                if self.cfg.resume:
                    self.load_checkpoint()
                self.run_iterations()
                self.write_metrics()
        finally:
            self.close()
        return self.history

    def run_iterations(self) -> None:
        """The loop of :meth:`train`: :meth:`step` until :meth:`done`, with the progress bar, and a
        checkpoint and the metric files every ``cfg.checkpoint_every`` iterations and at the end."""
        cfg = self.cfg
        bar = None
        if cfg.progress:
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
                    self.save_checkpoint()
                    self.write_metrics()
        finally:
            if bar is not None:
                bar.close()

    def close(self) -> None:
        """Close the run's environment pools (:meth:`train` does, when it returns or raises)."""
        self.pool.close()
        self.eval_pool.close()


class Trainer(RunLoop):
    """Holds the policy, optimiser(s), environments and logs of one run."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        self.run_dir = cfg.run_dir()
        self.pool = EnvPool(make_env_fn(cfg.env, cfg.max_steps, **cfg.env_kwargs))
        self.eval_pool = EnvPool(make_env_fn(cfg.env, cfg.max_steps, **cfg.env_kwargs))
        self.eval_seeds = self.held_out_seeds()
        kwargs = {"hidden": cfg.hidden} if cfg.policy == "text" else {}
        self.policy = make_policy(cfg.policy, seed=cfg.seed, **kwargs)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.value_net = self.value_optimizer = None
        if cfg.algo == "ppo":
            self.value_net = make_value(cfg.policy, seed=cfg.seed + 1, **kwargs)
            self.value_optimizer = torch.optim.Adam(self.value_net.parameters(), lr=cfg.value_lr)
        self.guard = NonFiniteGuard(cfg.max_nonfinite_steps)
        self.iteration = 0
        self.env_steps = 0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ seeds
    def action_generator(self, iteration: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(np.random.default_rng([self.cfg.seed, iteration, 2]).integers(2**62)))

    # ------------------------------------------------------------------ update
    def update(self, rollout: Rollout, advantages: np.ndarray, targets: dict[str, np.ndarray]) -> dict[str, float]:
        cfg = self.cfg
        n = len(rollout.batch)
        acts = torch.as_tensor(rollout.actions)
        logp_old = torch.as_tensor(rollout.logp, dtype=torch.float32)
        adv = torch.as_tensor(advantages, dtype=torch.float32)
        gen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, self.iteration, 3]).integers(2**62)))
        diags: list[dict[str, float]] = []
        skipped = 0
        params = list(self.policy.parameters())
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(n, generator=gen)
            for idx in torch.tensor_split(perm, min(cfg.minibatches, n)):
                if len(idx) == 0:
                    continue
                ii = idx.tolist()
                logits = self.policy.logits([rollout.observations[i] for i in ii], [rollout.admissible[i] for i in ii])
                logp_new = action_log_probs(logits, acts[idx])
                loss, diag = ppo_clip_loss(
                    logp_new, logp_old[idx], adv[idx], torch.arange(len(ii)), ratio_level=cfg.ratio_level,
                    clip_eps=cfg.clip_eps, entropy=entropy(logits), entropy_coef=cfg.entropy_coef,
                )
                self.optimizer.zero_grad()
                # the guard (gagpo.guard): skip a step whose inputs, log-probs, loss or gradients are not finite
                bad = next((phase for phase, t in (("old log-probs", logp_old[idx]), ("advantages", adv[idx]),
                                                   ("log-probs", logp_new.detach()), ("loss", loss.detach()))
                            if not all_finite([t])), None)
                if not bad:
                    loss.backward()
                    if cfg.max_grad_norm > 0:
                        diag["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                        finite = math.isfinite(diag["grad_norm"])
                    else:
                        finite = all_finite(p.grad for p in params)
                    bad = None if finite else "gradients"
                if bad:
                    self.optimizer.zero_grad()
                    skipped += 1
                    self.guard.bad(self.iteration, bad)
                    continue
                self.guard.good()
                self.optimizer.step()
                diags.append(diag)
        out = {k: float(np.mean([d[k] for d in diags])) for k in ("clip_fraction", "approx_kl", "policy_loss", "entropy", "ratio_mean", "ratio_max")} if diags else {}
        out["nonfinite_steps"] = skipped
        if self.value_net is not None:
            returns = torch.as_tensor(targets["returns"], dtype=torch.float32)
            losses = []
            for _ in range(cfg.value_epochs):
                v = self.value_net.values(rollout.observations)
                vl = value_loss(v, returns)
                self.value_optimizer.zero_grad()
                if not all_finite([vl.detach()]):
                    out["nonfinite_steps"] += 1
                    self.guard.bad(self.iteration, "value loss")
                    continue
                vl.backward()
                if not all_finite(p.grad for p in self.value_net.parameters()):
                    self.value_optimizer.zero_grad()
                    out["nonfinite_steps"] += 1
                    self.guard.bad(self.iteration, "gradients", "of the value network")
                    continue
                self.guard.good()
                self.value_optimizer.step()
                losses.append(vl.item())
            if losses:
                out["value_loss"] = losses[-1]
        return out

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        if not self.eval_seeds:
            return {}
        gen = torch.Generator().manual_seed(self.cfg.seed + 12345)
        r = collect(self.eval_pool, self.policy, self.eval_seeds, 1, gen, greedy=self.cfg.eval_greedy)
        return {"eval_success": r.success_rate, "eval_return": float(r.traj_return.mean()), "eval_length": float(r.traj_length.mean())}

    # ------------------------------------------------------------------ one iteration
    def step(self) -> dict[str, Any]:
        cfg = self.cfg
        self.iteration += 1
        t0 = time.perf_counter()
        rollout = collect(self.pool, self.policy, self.task_seeds(self.iteration), cfg.group_size, self.action_generator(self.iteration))
        t1 = time.perf_counter()
        targets = compute_advantages(cfg, rollout, self.value_net)
        t2 = time.perf_counter()
        upd = self.update(rollout, targets["advantages"], targets)
        t3 = time.perf_counter()
        self.env_steps += rollout.n_steps
        return self.record({
            **self.iteration_metrics(rollout, targets["advantages"]), **upd, **anchor_histogram(rollout),
            "time_rollout": t1 - t0, "time_advantage": t2 - t1, "time_update": t3 - t2,
        })

    # ------------------------------------------------------------------ persistence
    def checkpoint_path(self) -> str:
        return os.path.join(self.run_dir, "checkpoint.pt")

    def named_trainable(self) -> list[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of every trainable weight: the policy's and the critic's."""
        named = [(f"policy.{n}", p) for n, p in self.policy.named_parameters()]
        if self.value_net is not None:
            named += [(f"value_net.{n}", p) for n, p in self.value_net.named_parameters()]
        return named

    def save_checkpoint(self) -> None:
        bad = [n for n, p in self.named_trainable() if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteError(f"refusing to write the checkpoint: the weights hold non-finite values (NaN or inf) in "
                                 f"{', '.join(bad[:5])} at iteration {self.iteration}; the last checkpoint in "
                                 f"{self.run_dir} is kept as it was.")
        os.makedirs(self.run_dir, exist_ok=True)
        state = {
            "config": self.cfg.to_dict(), "iteration": self.iteration, "env_steps": self.env_steps,
            "history": self.history, "policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
        }
        if self.value_net is not None:
            state["value_net"] = self.value_net.state_dict()
            state["value_optimizer"] = self.value_optimizer.state_dict()
        with atomic_write(self.checkpoint_path(), "wb") as fh:  # a failed write leaves the last checkpoint, no .tmp
            torch.save(state, fh)

    def load_checkpoint(self) -> bool:
        path = self.checkpoint_path()
        if not os.path.exists(path):
            return False
        try:
            state = torch.load(path, weights_only=False)
            if not (isinstance(state, dict) and "config" in state and "policy" in state):
                raise ValueError("not a checkpoint of gagpo.trainer.Trainer")
        except Exception as exc:  # truncated, damaged or foreign: say which file and what to do
            raise damaged(path, exc) from exc
        self.check_resumable(state["config"], path)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.value_net is not None:
            self.value_net.load_state_dict(state["value_net"])
            self.value_optimizer.load_state_dict(state["value_optimizer"])
        check_finite_weights(self.named_trainable(), f"the checkpoint {path}")
        self.iteration, self.env_steps, self.history = state["iteration"], state["env_steps"], state["history"]
        return True


def train(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Train one run and return its per-iteration metrics (also written to ``cfg.run_dir()``).
    Checks the run directory first (:func:`gagpo.rundir.check_start`)."""
    check_start(cfg.run_dir(), resume=cfg.resume, overwrite=cfg.overwrite)
    return Trainer(cfg).train()


__all__ = ["RunLoop", "Trainer", "train", "compute_advantages", "write_csv", "anchor_histogram", "TRAIN_SEED_RANGE"]
