"""The toy trainer: rollout → advantages → PPO-clip update, for every estimator, on a small policy network.

The algorithms differ only in :func:`rollout_advantages`; the rollout, the clipped surrogate
(:func:`gagpo.losses.ppo_clip_loss`), evaluation, logging and checkpoints are shared. With one
update epoch and one minibatch the clipped surrogate's gradient equals the plain policy gradient
(the ratio is 1 at the first step), so ``reinforce`` is REINFORCE proper under those settings.
:class:`Trainer` fills in the hooks of :class:`gagpo.runloop.RunLoop` (re-exported here), which
runs the iterations, evaluations, metric files and checkpoints.

Determinism and exact resumption: the task seeds of iteration k and the action-sampling generator
of iteration k are derived from ``(seed, k)`` alone, so a run resumed from the checkpoint of
iteration k replays iterations k+1… exactly as an uninterrupted run would (on CPU).
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from . import advantages as adv_lib
from . import registry
from .batch import StepBatch
from .config import EstimatorSettings, TrainConfig
from .guard import NonFiniteError, NonFiniteGuard, all_finite, check_finite_weights
from .losses import ppo_clip_loss, value_loss
from .policies import action_log_probs, entropy, make_policy, make_value
from .registry import get_estimator
from .rollout import EnvPool, Rollout, collect, make_env_fn
from .rundir import atomic_write, check_start, damaged
from .runloop import TRAIN_SEED_RANGE, RunLoop, anchor_histogram  # RunLoop and the others re-exported (gagpo.trainer.RunLoop)
from .tables import write_csv  # re-exported


def rollout_advantages(cfg: EstimatorSettings, rollout: Rollout, value_net: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """Per-row advantages of the estimator ``cfg.algo`` for one rollout (``advantages``, (N,)):
    :func:`gagpo.registry.compute_advantages` with the settings of ``cfg`` (any object with the
    fields of :class:`~gagpo.config.EstimatorSettings`: a :class:`TrainConfig`, an
    :class:`~gagpo.llm.train.LMTrainConfig`, an ``EstimatorSettings``).

    An estimator registered with ``needs_critic=True`` (``ppo``) gets the values of ``value_net`` at
    each row's observation and next observation, and the result also holds ``values`` and the
    critic's targets ``returns`` (:func:`critic_targets`).
    """
    if not get_estimator(cfg.algo).needs_critic:
        return {"advantages": registry.compute_advantages(cfg.algo, rollout.batch, cfg)}
    if value_net is None:
        raise ValueError(f"algo {cfg.algo!r} needs a value network")
    with torch.no_grad():
        values = value_net.values(rollout.observations).double().numpy()
        next_values = value_net.values(rollout.next_observations).double().numpy()
    return critic_targets(cfg, rollout.batch, values, next_values)


def critic_targets(cfg: EstimatorSettings, batch: StepBatch, values: np.ndarray, next_values: np.ndarray) -> dict[str, np.ndarray]:
    r"""A critic estimator's advantages and its critic's targets, from the critic's :math:`V(s_t)` and
    :math:`V(s'_t)`: ``advantages`` of the estimator ``cfg.algo`` (for ``ppo``, GAE normalised over the
    whole batch — classic PPO, not per rollout group), ``values``, and ``returns`` = the λ-returns
    :func:`gagpo.advantages.lambda_returns` (γ, λ of ``cfg``; :math:`A^{\text{GAE}}_t + V(s_t)` before
    normalisation), the critic's regression targets. Shared by the toy and language-model trainers."""
    adv = registry.compute_advantages(cfg.algo, batch, cfg, values=values, next_values=next_values)
    return {"advantages": adv, "values": values,
            "returns": adv_lib.lambda_returns(batch, values, next_values, cfg.gamma, cfg.lam)}


class Trainer(RunLoop):
    """Holds the policy, optimiser(s), environments and logs of one run; the hooks of
    :class:`~gagpo.runloop.RunLoop` with a small policy network (:mod:`gagpo.policies`)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)  # cfg, run_dir, torch threads, iteration, env_steps, history
        self.pool = EnvPool(make_env_fn(cfg.env, cfg.max_steps, **cfg.env_kwargs))
        self.eval_pool = EnvPool(make_env_fn(cfg.env, cfg.max_steps, **cfg.env_kwargs))
        self.eval_seeds = self.held_out_seeds()
        kwargs = {"hidden": cfg.hidden} if cfg.policy == "text" else {}
        self.policy = make_policy(cfg.policy, seed=cfg.seed, **kwargs)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.value_net = self.value_optimizer = None
        if get_estimator(cfg.algo).needs_critic:  # ppo, or a registered estimator with needs_critic=True
            self.value_net = make_value(cfg.policy, seed=cfg.seed + 1, **kwargs)
            self.value_optimizer = torch.optim.Adam(self.value_net.parameters(), lr=cfg.value_lr)
        self.guard = NonFiniteGuard(cfg.max_nonfinite_steps)

    # ------------------------------------------------------------------ seeds
    def action_generator(self, iteration: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(np.random.default_rng([self.cfg.seed, iteration, 2]).integers(2**62)))

    # ------------------------------------------------------------------ rollout and advantages
    def rollout(self) -> Rollout:
        """``cfg.group_size`` episodes of each of this iteration's task seeds, actions sampled from the policy."""
        return collect(self.pool, self.policy, self.task_seeds(self.iteration), self.cfg.group_size,
                       self.action_generator(self.iteration))

    def advantages(self, rollout: Rollout) -> dict[str, np.ndarray]:
        """:func:`rollout_advantages` of ``cfg.algo``, with the value network for a critic estimator."""
        return rollout_advantages(self.cfg, rollout, self.value_net)

    # ------------------------------------------------------------------ update
    def update(self, rollout: Rollout, targets: dict[str, np.ndarray]) -> dict[str, float]:
        """``cfg.update_epochs`` passes of PPO-clip minibatch steps on ``targets["advantages"]`` (the
        non-finite guard skips a bad step), then, with a critic, ``cfg.value_epochs`` regressions of the
        value network onto ``targets["returns"]``; returns the averaged diagnostics."""
        cfg = self.cfg
        n = len(rollout.batch)
        acts = torch.as_tensor(rollout.actions)
        logp_old = torch.as_tensor(rollout.logp, dtype=torch.float32)
        adv = torch.as_tensor(targets["advantages"], dtype=torch.float32)
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


compute_advantages = rollout_advantages
"""Deprecated name of :func:`rollout_advantages` (chapters 8 and 9 call it so); not to be confused with
:func:`gagpo.registry.compute_advantages`, the numpy estimator of one ``StepBatch``."""

__all__ = ["RunLoop", "Trainer", "train", "rollout_advantages", "critic_targets", "write_csv", "anchor_histogram",
           "TRAIN_SEED_RANGE"]
