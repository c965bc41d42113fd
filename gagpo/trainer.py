"""The toy trainer: rollout → advantages → PPO-clip update, for every estimator, on a small policy network.

The algorithms differ only in :func:`rollout_advantages`; the rollout, the clipped surrogate
(:func:`gagpo.losses.ppo_clip_loss`), evaluation, logging and checkpoints are shared. With one
update epoch and one minibatch the clipped surrogate's gradient equals the plain policy gradient
(the ratio is 1 at the first step), so ``reinforce`` is REINFORCE proper under those settings.
``kl_coef`` > 0 adds a k3 penalty to a frozen reference policy, a copy of the initial one
(:func:`minibatch_loss`, :class:`Trainer`).
:class:`Trainer` fills in the hooks of :class:`gagpo.runloop.RunLoop` (re-exported here), which
runs the iterations, evaluations, metric files and checkpoints.

Determinism and exact resumption: the task seeds of iteration k and the action-sampling generator
of iteration k are derived from ``(seed, k)`` alone, so a run resumed from the checkpoint of
iteration k replays iterations k+1… exactly as an uninterrupted run would (on CPU).

Data parallelism (:mod:`gagpo.distributed`): launched on N processes, one run plays its
``tasks_per_iter`` groups N ways (whole groups per process), computes the advantages exactly (a
``group_local`` estimator per process, any other on the union of the rows: :func:`estimator_advantages`),
and takes one optimizer step per minibatch from the gradients summed over the processes — each process's
share of the loss is weighted by its rows over the minibatch's rows of every process, so the step is the
one a single process would take on the union (with ``minibatches`` 1; with more, the minibatch of step k
is the union of every process's k-th minibatch of its own rows). On CPUs, e.g.::

    torchrun --nproc_per_node 2 -m gagpo train --env keydoor --tasks-per-iter 8 --threads 1
    accelerate launch --multi_gpu --num_processes 2 -m gagpo train --env keydoor --tasks-per-iter 8 --threads 1

(accelerate's ``--cpu`` starts one process unless MPI is configured; ``--multi_gpu`` launches through
torchrun and, without a visible GPU, the processes use gloo). ``--resume`` continues a run on the same or
another number of processes.
"""
from __future__ import annotations

import copy
import math
import os
from typing import Any, Sequence

import numpy as np
import torch

from . import advantages as adv_lib
from . import distributed as dist
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


def estimator_advantages(cfg: EstimatorSettings, batch: StepBatch, shard: dist.Shard | None = None,
                         **critic: np.ndarray) -> np.ndarray:
    """:func:`gagpo.registry.compute_advantages` of the estimator ``cfg.algo`` on ``batch``, with the
    settings of ``cfg`` (and a critic estimator's ``values`` and ``next_values`` in ``critic``).

    In a data-parallel run (``shard`` of several processes: :attr:`gagpo.runloop.RunLoop.shard`) an
    estimator that is not ``group_local`` (:mod:`gagpo.registry`) is computed on the union of every
    process's rows (:func:`gagpo.distributed.on_union`), and this process gets its own rows' advantages:
    exactly those of one process computing them for the whole batch."""
    if shard is None or shard.world_size == 1 or get_estimator(cfg.algo).group_local:
        return registry.compute_advantages(cfg.algo, batch, cfg, **critic)
    return dist.on_union(batch, lambda union, **arrays: registry.compute_advantages(cfg.algo, union, cfg, **arrays),
                         shard, **critic)


def rollout_advantages(cfg: EstimatorSettings, rollout: Rollout, value_net: torch.nn.Module | None = None,
                       shard: dist.Shard | None = None) -> dict[str, np.ndarray]:
    """Per-row advantages of the estimator ``cfg.algo`` for one rollout (``advantages``, (N,)):
    :func:`gagpo.registry.compute_advantages` with the settings of ``cfg`` (any object with the
    fields of :class:`~gagpo.config.EstimatorSettings`: a :class:`TrainConfig`, an
    :class:`~gagpo.llm.train.LMTrainConfig`, an ``EstimatorSettings``).

    An estimator registered with ``needs_critic=True`` (``ppo``) gets the values of ``value_net`` at
    each row's observation and next observation, and the result also holds ``values`` and the
    critic's targets ``returns`` (:func:`critic_targets`). ``shard``: this process's part of a
    data-parallel run (:func:`estimator_advantages`).
    """
    if not get_estimator(cfg.algo).needs_critic:
        return {"advantages": estimator_advantages(cfg, rollout.batch, shard)}
    if value_net is None:
        raise ValueError(f"algo {cfg.algo!r} needs a value network")
    with torch.no_grad():
        values = value_net.values(rollout.observations).double().numpy()
        next_values = value_net.values(rollout.next_observations).double().numpy()
    return critic_targets(cfg, rollout.batch, values, next_values, shard)


def critic_targets(cfg: EstimatorSettings, batch: StepBatch, values: np.ndarray, next_values: np.ndarray,
                   shard: dist.Shard | None = None) -> dict[str, np.ndarray]:
    r"""A critic estimator's advantages and its critic's targets, from the critic's :math:`V(s_t)` and
    :math:`V(s'_t)`: ``advantages`` of the estimator ``cfg.algo`` (for ``ppo``, GAE normalised over the
    whole batch — classic PPO, not per rollout group), ``values``, and ``returns`` = the λ-returns
    :func:`gagpo.advantages.lambda_returns` (γ, λ of ``cfg``; :math:`A^{\text{GAE}}_t + V(s_t)` before
    normalisation), the critic's regression targets. Shared by the toy and language-model trainers.
    ``shard``: this process's part of a data-parallel run (:func:`estimator_advantages`; the λ-returns
    are per trajectory, computed on this process's rows)."""
    adv = estimator_advantages(cfg, batch, shard, values=values, next_values=next_values)
    return {"advantages": adv, "values": values,
            "returns": adv_lib.lambda_returns(batch, values, next_values, cfg.gamma, cfg.lam)}


def minibatch_loss(policy: torch.nn.Module, observations: Sequence[str], admissible: Sequence[Sequence[str]],
                   actions: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, cfg: Any,
                   logp_ref: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    r"""The toy trainer's loss on one minibatch of :math:`N` rows (one decision each, so one "token" per
    action): :func:`gagpo.losses.ppo_clip_loss` of the policy's log-probabilities of the taken actions,

    .. math::
        L = \frac1N \sum_i -\min\big(r_i A_i,\ \mathrm{clip}(r_i, 1-\varepsilon, 1+\varepsilon) A_i\big)
            + \beta\, \frac1N \sum_i \min\big(k_3(\log\pi_\theta(a_i \mid s_i), \log\pi_{\text{ref}}(a_i \mid s_i)),\ \kappa\big)
            - c_H\, \frac1N \sum_i H\big(\pi_\theta(\cdot \mid s_i)\big),

    with :math:`r_i = \pi_\theta(a_i \mid s_i) / \pi_{\text{old}}(a_i \mid s_i)`, :math:`k_3 = e^{d} - 1 - d`,
    :math:`d = \log\pi_{\text{ref}}(a_i \mid s_i) - \log\pi_\theta(a_i \mid s_i)` (:func:`gagpo.losses.kl_k3`),
    :math:`\varepsilon` = ``cfg.clip_eps``, :math:`c_H` = ``cfg.entropy_coef``, :math:`\beta` = ``cfg.kl_coef``
    and :math:`\kappa = 10` (``ppo_clip_loss``'s ``kl_clip``). Without ``logp_ref`` the :math:`\beta` term is
    absent (and ``cfg.kl_coef`` must be 0); with it and :math:`\beta = 0` the loss is the same number and the
    diagnostics add ``kl_ref``, the :math:`\frac1N\sum_i \min(k_3, \kappa)` term.

    Args:
        policy: the policy (:mod:`gagpo.policies`); carries the gradient.
        observations, admissible: the minibatch's rows.
        actions: (N,) the taken actions (indices into ``admissible``).
        logp_old, advantages: (N,) :math:`\log\pi_{\text{old}}(a_i \mid s_i)` and :math:`A_i`; constants.
        cfg: ``clip_eps``, ``entropy_coef``, ``kl_coef`` and ``ratio_level`` (a :class:`TrainConfig`).
        logp_ref: (N,) :math:`\log\pi_{\text{ref}}(a_i \mid s_i)` under the frozen reference policy, or ``None``.

    Returns:
        ``(loss, diagnostics, logp_new)``: the scalar loss, ``ppo_clip_loss``'s diagnostics, and the (N,)
        :math:`\log\pi_\theta(a_i \mid s_i)` (with their gradient).
    """
    logits = policy.logits(observations, admissible)
    logp_new = action_log_probs(logits, actions)
    loss, diag = ppo_clip_loss(
        logp_new, logp_old, advantages, torch.arange(len(observations)), ratio_level=cfg.ratio_level,
        clip_eps=cfg.clip_eps, entropy=entropy(logits), entropy_coef=cfg.entropy_coef, logp_ref=logp_ref,
        kl_coef=cfg.kl_coef,
    )
    return loss, diag, logp_new


class Trainer(RunLoop):
    r"""Holds the policy, optimiser(s), environments and logs of one run; the hooks of
    :class:`~gagpo.runloop.RunLoop` with a small policy network (:mod:`gagpo.policies`).

    ``reference``: the frozen reference policy :math:`\pi_{\text{ref}}` of the KL penalty
    (``cfg.kl_coef``, :func:`minibatch_loss`) and of the ``kl_ref`` metric — a policy of the run's kind (a
    frozen copy of it is kept), or ``"initial"`` for a frozen copy of this run's initial policy. ``None`` (the
    default): ``"initial"`` when ``cfg.kl_coef > 0``, no reference otherwise (and then nothing of the run
    changes: no reference scoring, no ``kl_ref``). With ``kl_coef`` 0 and a reference, the run trains
    exactly as without one and logs ``kl_ref``: how far it drifts when nothing holds it back."""

    def __init__(self, cfg: TrainConfig, reference: torch.nn.Module | str | None = None):
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
        dist.broadcast_parameters([p for _, p in self.named_trainable()])  # data-parallel: the main process's weights
        if reference is None and cfg.kl_coef > 0:
            reference = "initial"
        if isinstance(reference, str) and reference != "initial":
            raise ValueError(f"reference must be a policy, 'initial' or None; got {reference!r}")
        self.reference = None if reference is None else copy.deepcopy(self.policy if reference == "initial" else reference)
        if self.reference is not None:
            self.reference.requires_grad_(False)

    @property
    def SCORES_REFERENCE(self) -> bool:  # noqa: N802 - RunLoop's class flag, derived here from the run
        """A reference is scored on every rollout (RunLoop.step: ``time_reference``, ``targets["ref_logp"]``)
        only when the run has one."""
        return self.reference is not None

    # ------------------------------------------------------------------ seeds
    def action_generator(self, iteration: int) -> torch.Generator:
        """The action-sampling generator of ``iteration``: seeded from ``(seed, iteration)`` (and the rank,
        in a data-parallel run: :func:`gagpo.distributed.seed_key`)."""
        return torch.Generator().manual_seed(int(np.random.default_rng(dist.seed_key(self.cfg.seed, iteration, 2)).integers(2**62)))

    # ------------------------------------------------------------------ rollout and advantages
    def rollout(self) -> Rollout:
        """``cfg.group_size`` episodes of each of this iteration's task seeds (this process's share of them,
        :meth:`~gagpo.runloop.RunLoop.rank_task_seeds`), actions sampled from the policy."""
        return collect(self.pool, self.policy, self.rank_task_seeds(self.iteration), self.cfg.group_size,
                       self.action_generator(self.iteration))

    def reference_logp(self, rollout: Rollout) -> np.ndarray:
        r""":math:`\log\pi_{\text{ref}}(a_t \mid s_t)` of every row's action under the frozen reference policy, (N,)
        (called by :meth:`~gagpo.runloop.RunLoop.step` when the run has a reference)."""
        with torch.no_grad():
            logits = self.reference.logits(rollout.observations, rollout.admissible)
            return action_log_probs(logits, torch.as_tensor(rollout.actions)).double().numpy()

    def advantages(self, rollout: Rollout) -> dict[str, np.ndarray]:
        """:func:`rollout_advantages` of ``cfg.algo``, with the value network for a critic estimator."""
        return rollout_advantages(self.cfg, rollout, self.value_net, self.shard)

    # ------------------------------------------------------------------ update
    def update(self, rollout: Rollout, targets: dict[str, np.ndarray]) -> dict[str, float]:
        """``cfg.update_epochs`` passes of PPO-clip minibatch steps on ``targets["advantages"]``
        (:func:`minibatch_loss`; with a reference policy, its log-probs ``targets["ref_logp"]`` give the
        ``cfg.kl_coef`` · k3 penalty and the ``kl_ref`` diagnostic; the non-finite guard skips a bad step), then, with a critic, ``cfg.value_epochs`` regressions of the
        value network onto ``targets["returns"]``; returns the averaged diagnostics.

        Data-parallel (:mod:`gagpo.distributed`): each process splits its rows into the same number of
        minibatches; step k's loss is the mean over the k-th minibatches of every process, so a process
        weights its own mean by its share of those rows, the gradients are summed over the processes
        (:func:`gagpo.distributed.sum_gradients`) before clipping, and a step that is bad on one process
        is skipped on all (:func:`gagpo.distributed.agree`). The diagnostics are pooled over the processes."""
        cfg = self.cfg
        n = len(rollout.batch)
        acts = torch.as_tensor(rollout.actions)
        logp_old = torch.as_tensor(rollout.logp, dtype=torch.float32)
        adv = torch.as_tensor(targets["advantages"], dtype=torch.float32)
        ref = targets.get("ref_logp")  # a run with a reference policy (cfg.kl_coef > 0, or one given)
        logp_ref = None if ref is None else torch.as_tensor(ref, dtype=torch.float32)
        keys = _DIAGNOSTICS + (() if logp_ref is None else ("kl_ref",))
        gen = torch.Generator().manual_seed(int(np.random.default_rng(dist.seed_key(cfg.seed, self.iteration, 3)).integers(2**62)))
        diags: list[dict[str, float]] = []
        skipped = 0
        params = list(self.policy.parameters())
        n_minibatches = min(cfg.minibatches, dist.all_sum(n))  # over the whole batch: every process takes part in each
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(n, generator=gen)
            for idx in torch.tensor_split(perm, n_minibatches):
                rows = dist.all_sum(len(idx))  # the minibatch's rows, over every process
                if rows == 0:
                    continue
                ii = idx.tolist()
                bad, diag = None, None
                self.optimizer.zero_grad()
                if ii:
                    loss, diag, logp_new = minibatch_loss(
                        self.policy, [rollout.observations[i] for i in ii], [rollout.admissible[i] for i in ii], acts[idx],
                        logp_old[idx], adv[idx], cfg, None if logp_ref is None else logp_ref[idx])
                    if rows != len(ii):  # data-parallel: this process's share of the minibatch's mean
                        loss = loss * (len(ii) / rows)
                    # the guard (gagpo.guard): skip a step whose inputs, log-probs, loss or gradients are not finite
                    checked = (("old log-probs", logp_old[idx]), ("advantages", adv[idx]), ("log-probs", logp_new.detach()),
                               ("loss", loss.detach())) + (() if logp_ref is None else (("reference log-probs", logp_ref[idx]),))
                    bad = next((phase for phase, t in checked if not all_finite([t])), None)
                    if not bad:
                        loss.backward()
                bad = dist.agree(bad)  # one bad process skips the step everywhere
                if not bad:
                    dist.sum_gradients(params)
                    if cfg.max_grad_norm > 0:
                        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                        finite = math.isfinite(grad_norm)
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
                diag = _pool_diagnostics(diag, len(ii), keys)
                if cfg.max_grad_norm > 0:
                    diag["grad_norm"] = grad_norm
                diags.append(diag)
        out = {k: float(np.mean([d[k] for d in diags])) for k in keys} if diags else {}
        out["nonfinite_steps"] = skipped
        if self.value_net is not None:
            out.update(self.update_critic(rollout, targets["returns"], out["nonfinite_steps"]))
        return out

    def update_critic(self, rollout: Rollout, returns: np.ndarray, nonfinite_steps: int) -> dict[str, float]:
        """``cfg.value_epochs`` full-batch regressions of the value network onto ``returns`` (the guard skips a
        bad one); returns ``value_loss`` (the last one's) and ``nonfinite_steps`` (``nonfinite_steps`` plus the
        skipped ones). Data-parallel: the mean over every process's rows, gradients summed over the processes."""
        cfg = self.cfg
        n = len(rollout.batch)
        n_all = dist.all_sum(n)
        params = list(self.value_net.parameters())
        returns = torch.as_tensor(returns, dtype=torch.float32)
        out: dict[str, float] = {"nonfinite_steps": nonfinite_steps}
        losses = []
        for _ in range(cfg.value_epochs):
            v = self.value_net.values(rollout.observations)
            vl = value_loss(v, returns)
            self.value_optimizer.zero_grad()
            bad = dist.agree(None if all_finite([vl.detach()]) else "value loss")
            if bad:
                out["nonfinite_steps"] += 1
                self.guard.bad(self.iteration, bad)
                continue
            (vl if n_all == n else vl * (n / n_all)).backward()  # data-parallel: this process's share
            dist.sum_gradients(params)
            if not all_finite(p.grad for p in params):
                self.value_optimizer.zero_grad()
                out["nonfinite_steps"] += 1
                self.guard.bad(self.iteration, "gradients", "of the value network")
                continue
            self.guard.good()
            self.value_optimizer.step()
            losses.append(dist.weighted_mean(vl.item(), n))
        if losses:
            out["value_loss"] = losses[-1]
        return out

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """One episode on each held-out task seed: ``eval_success``, ``eval_return``, ``eval_length`` of the
        greedy policy (``cfg.eval_greedy``, the book's convention; else sampled); with ``cfg.eval_sampled`` also
        ``eval_success_sampled``, the same tasks played with sampled actions (a generator seeded with
        ``cfg.seed``, apart from training's)."""
        if not self.eval_seeds:
            return {}
        out: dict[str, float] = {}
        if self.cfg.eval_sampled:
            sampled = collect(self.eval_pool, self.policy, self.eval_seeds, 1, torch.Generator().manual_seed(self.cfg.seed), greedy=False)
            out["eval_success_sampled"] = sampled.success_rate
        gen = torch.Generator().manual_seed(self.cfg.seed + 12345)
        r = collect(self.eval_pool, self.policy, self.eval_seeds, 1, gen, greedy=self.cfg.eval_greedy)
        return {"eval_success": r.success_rate, "eval_return": float(r.traj_return.mean()), "eval_length": float(r.traj_length.mean()),
                **out}

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
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
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
        if self.reference is not None and "reference" in state:
            self.reference.load_state_dict(state["reference"])
        check_finite_weights(self.named_trainable(), f"the checkpoint {path}")
        self.iteration, self.env_steps, self.history = state["iteration"], state["env_steps"], state["history"]
        return True


#: the update's diagnostics, averaged over its optimizer steps
_DIAGNOSTICS = ("clip_fraction", "approx_kl", "policy_loss", "entropy", "ratio_mean", "ratio_max")


def _pool_diagnostics(diag: dict[str, float] | None, rows: int, keys: tuple[str, ...] = _DIAGNOSTICS) -> dict[str, float]:
    """One step's diagnostics ``keys`` (:data:`_DIAGNOSTICS`, and ``kl_ref`` with a reference policy) over every
    process (means weighted by the processes' rows, ``ratio_max`` the maximum); ``diag`` itself in one process
    (``None``: this process had no row)."""
    if not dist.is_distributed():
        return diag
    means = [k for k in keys if k != "ratio_max"]
    local = {k: rows * float(diag[k]) for k in means} if diag else {}
    totals = dist.all_sum({**local, "rows": rows}, keys=means + ["rows"])
    pooled = {k: totals[k] / totals["rows"] for k in means}
    pooled["ratio_max"] = dist.all_max({"ratio_max": float(diag["ratio_max"])} if diag else {}, keys=["ratio_max"])["ratio_max"]
    return pooled


def train(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Train one run and return its per-iteration metrics (also written to ``cfg.run_dir()``).
    Checks the run directory first (:func:`gagpo.rundir.check_start`; on the main process of a
    data-parallel run, whose error every process raises)."""
    dist.call_on_main(check_start, cfg.run_dir(), resume=cfg.resume, overwrite=cfg.overwrite)
    return Trainer(cfg).train()


compute_advantages = rollout_advantages
"""Deprecated name of :func:`rollout_advantages` (chapters 8 and 9 call it so); not to be confused with
:func:`gagpo.registry.compute_advantages`, the numpy estimator of one ``StepBatch``."""

__all__ = ["RunLoop", "Trainer", "train", "minibatch_loss", "rollout_advantages", "estimator_advantages", "critic_targets", "write_csv",
           "anchor_histogram", "TRAIN_SEED_RANGE"]
