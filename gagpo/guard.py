"""The non-finite guard: no NaN or infinity ever reaches the weights or a checkpoint.

A single NaN in a gradient turns every weight it touches into NaN at the next optimizer step, and
from then on every loss, every sampled token and every checkpoint of the run is garbage (a NaN
checkpoint even crashes ``generate`` on resume: "probability tensor contains either inf, nan or
element < 0"). Both trainers therefore check, before every optimizer step, the log-probabilities the
loss is built from, the loss itself and the gradient norm (computed before clipping rescales
anything). A step with a non-finite value is **skipped**: the gradients are dropped and neither the
weights nor the optimizer state change. Skipped steps are counted (the ``nonfinite_steps`` metric);
after ``limit`` consecutive ones the run stops with a :class:`NonFiniteError` that names the
iteration, the phase and the likely causes, because a run that only skips learns nothing.

Checkpoints are written only when every trainable weight is finite, and a checkpoint with a
non-finite weight is refused on resume (:func:`check_finite_weights`).
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["NonFiniteError", "NonFiniteGuard", "all_finite", "nonfinite_names", "check_finite_weights", "PHASE_CAUSES"]

PHASE_CAUSES = {
    "old log-probs": "the rollout's log-probabilities (scoring the sampled responses) are not finite: low-precision "
                     "scoring (try --dtype float32) or weights that are already broken",
    "reference log-probs": "the reference policy's log-probabilities are not finite: low-precision scoring "
                           "(try --dtype float32)",
    "advantages": "the advantages are not finite: check the estimator settings (--step-weight, --adv-eps, --gamma, "
                  "--lam) and the rewards the environment returns",
    "log-probs": "the current policy's log-probabilities are not finite: attention kernels on padded rows or "
                 "overflow in low precision (try --dtype float32)",
    "loss": "the loss is not finite: extreme importance ratios (log π_new − log π_old far from 0: a too-large "
            "learning rate, or a stale or mismatched logp_old), or non-finite advantages",
    "gradients": "the gradients are not finite: overflow in the backward pass (bfloat16/float16 kernels; try "
                 "--dtype float32), or a too-large learning rate (lower --lr / --lora-lr)",
    "value loss": "the value loss is not finite: exploding value predictions or non-finite returns (lower "
                  "--value-lr or --value-coef)",
}
"""What a non-finite value in each phase of an update usually means, and what to try."""


class NonFiniteError(RuntimeError):
    """Raised after too many consecutive optimizer steps had to be skipped for non-finite values."""


def all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """True when every element of every tensor is finite (``None`` entries are ignored); one
    device synchronisation in all."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None and t.numel()]
    return bool(torch.stack(flags).all()) if flags else True


def nonfinite_names(named: Iterable[tuple[str, torch.Tensor]], limit: int = 5) -> list[str]:
    """Names of the first ``limit`` tensors holding a NaN or an infinity."""
    out = []
    for name, t in named:
        if t is not None and t.numel() and not bool(torch.isfinite(t).all()):
            out.append(name)
            if len(out) >= limit:
                break
    return out


def check_finite_weights(named: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Raise ``ValueError`` naming ``what`` and the offending tensors when a weight is not finite."""
    bad = nonfinite_names(named)
    if bad:
        raise ValueError(f"{what} holds non-finite weights (NaN or inf) in {', '.join(bad)}: a run cannot continue from "
                         "it. Delete it (or start the run again with --overwrite); see the run's nonfinite_steps metric "
                         "and gagpo/guard.py for the usual causes.")


class NonFiniteGuard:
    """Counts skipped optimizer steps and stops the run after ``limit`` consecutive ones.

    Call :meth:`good` after every step that was taken and :meth:`bad` for every step that was
    skipped; :attr:`total` counts the skipped ones since the guard was made.
    """

    def __init__(self, limit: int = 3):
        if limit < 1:
            raise ValueError(f"limit must be >= 1; got {limit}")
        self.limit = limit
        self.consecutive = 0
        self.total = 0

    def good(self) -> None:
        self.consecutive = 0

    def bad(self, iteration: int, phase: str, detail: str = "") -> None:
        """Record a skipped step; raise :class:`NonFiniteError` once ``limit`` steps in a row were skipped."""
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.limit:
            cause = PHASE_CAUSES.get(phase, "")
            raise NonFiniteError(
                f"iteration {iteration}: {self.consecutive} optimizer steps in a row were skipped because of non-finite "
                f"values (last in phase '{phase}'{': ' + detail if detail else ''}). Likely causes: {cause}. "
                "The weights and the last checkpoint are unchanged (still finite); raise --max-nonfinite-steps to "
                "tolerate more skipped steps.")
