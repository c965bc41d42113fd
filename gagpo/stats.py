r"""Statistics of training runs: pure numpy, no I/O, no plotting.

A *history* is one run's list of per-iteration metric rows (its ``metrics.jsonl``): every row has
``iteration``, ``env_steps`` and ``success``; rows of evaluation iterations also have
``eval_success``; PPO-style updates log ``approx_kl``.

* :func:`bootstrap_ci` — percentile bootstrap of any statistic, also of whole curves (pointwise);
* :func:`steps_to_threshold`, :func:`eval_curve`, :func:`curves_on_grid` — curves and when they cross;
* :func:`smoothness`, :func:`run_summary` — one run's numbers;
* :func:`summarise` — medians over seeds with bootstrap intervals; :func:`ratio_ci` — a ratio of medians.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

CI_LEVEL = 0.95     #: coverage of every bootstrap interval in the benchmark reports
N_BOOT = 2000       #: bootstrap resamples of the benchmark reports
FINAL_EVALS = 3     #: "final" success = mean of this many last evaluations
THRESHOLDS = (0.5, 0.8)  #: held-out success levels whose env steps :func:`run_summary` reports


def threshold_key(threshold: float) -> str:
    """``"steps_to_80"`` for 0.8: the :func:`run_summary` key of a threshold."""
    return f"steps_to_{int(round(100 * threshold))}"


#: The :func:`run_summary` entries that :func:`summarise` reduces over seeds.
SUMMARY_KEYS = ("final_success", "auc_success", *map(threshold_key, THRESHOLDS), "kl_std", "eval_abs_change", "eval_drop",
                "train_abs_change")

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy >= 2 renamed trapz


def bootstrap_ci(
    samples: Sequence[float] | np.ndarray,
    statistic: Callable[..., np.ndarray] = np.median,
    n_boot: int = N_BOOT,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Point estimate and percentile-bootstrap interval of ``statistic`` over the first axis.

    ``samples`` has shape ``(n, ...)`` — e.g. ``(n_seeds,)`` for one number per seed, or
    ``(n_seeds, n_points)`` for a curve per seed (then everything below holds pointwise).
    ``statistic(x, axis=...)`` must reduce an axis (``np.median``, ``np.mean``).

    Algorithm (so that a test can replay it): ``rng = np.random.default_rng(seed)``;
    ``idx = rng.integers(0, n, size=(n_boot, n))``; the bootstrap statistics are
    ``statistic(samples[idx], axis=1)``; the interval is their lower
    :math:`(1-\text{level})/2` quantile and upper :math:`(1+\text{level})/2` quantile taken
    *without interpolation* (``method="lower"`` and ``"higher"``), so that ``+inf`` entries (e.g.
    "threshold never reached") order correctly instead of turning into NaN.

    Returns ``(estimate, low, high)`` with the shape of one statistic; a constant sample gives a
    zero-width interval. With fewer than 2 samples the interval is the estimate itself.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError("bootstrap_ci needs at least one sample along the first axis")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    estimate = np.asarray(statistic(x, axis=0), dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return estimate, estimate.copy(), estimate.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats = np.asarray(statistic(x[idx], axis=1), dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    low = np.quantile(stats, alpha, axis=0, method="lower")
    high = np.quantile(stats, 1.0 - alpha, axis=0, method="higher")
    return estimate, np.asarray(low), np.asarray(high)


def steps_to_threshold(env_steps: Sequence[float], success: Sequence[float], threshold: float = 0.8) -> float:
    """Environment steps at the first evaluation whose success is ``>= threshold``; ``inf`` if none.

    ``env_steps`` and ``success`` are aligned, in training order (NaN success entries are skipped).
    The first crossing is what a practitioner watching the curve would report; a run that touches
    the threshold once counts as having reached it.
    """
    x = np.asarray(env_steps, dtype=np.float64)
    y = np.asarray(success, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"env_steps and success must have the same shape; got {x.shape} and {y.shape}")
    hit = np.flatnonzero(np.nan_to_num(y, nan=-np.inf) >= threshold)
    return float(x[hit[0]]) if len(hit) else float("inf")


def eval_curve(history: Iterable[Mapping[str, Any]], key: str = "eval_success") -> tuple[np.ndarray, np.ndarray]:
    """``(env_steps, value)`` at the evaluation iterations of one run's history (rows with ``key``)."""
    pts = [(float(r["env_steps"]), float(r[key])) for r in history if key in r and r[key] is not None and r[key] == r[key] and r[key] != ""]
    if not pts:
        return np.zeros(0), np.zeros(0)
    x, y = zip(*pts)
    return np.asarray(x), np.asarray(y)


def curves_on_grid(curves: Sequence[tuple[np.ndarray, np.ndarray]], n_points: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Put several runs' ``(x, y)`` curves on one grid by linear interpolation.

    The grid spans the x-range *every* run covers — from the largest first x to the smallest last
    x — so nothing is extrapolated. Returns ``(grid, values)`` with ``values`` of shape
    ``(n_runs, n_points)``.
    """
    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not curves:
        raise ValueError("curves_on_grid needs at least one non-empty curve")
    lo = max(float(x[0]) for x, _ in curves)
    hi = min(float(x[-1]) for x, _ in curves)
    grid = np.linspace(lo, max(hi, lo), n_points)
    return grid, np.stack([np.interp(grid, x, y) for x, y in curves])


def smoothness(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """How jumpy one run's optimisation was.

    * ``kl_std`` — std of the per-iteration ``approx_kl`` (size of policy steps varies);
    * ``eval_abs_change`` — mean :math:`|\\Delta|` of held-out success between consecutive evaluations;
    * ``eval_drop`` — mean drop, :math:`\\operatorname{mean} \\max(0, -\\Delta)`: success lost
      between evaluations (0 for a curve that never goes down);
    * ``train_abs_change`` — mean :math:`|\\Delta|` of training success between consecutive iterations.

    An entry with nothing to measure (no ``approx_kl``, fewer than two evaluations) is NaN.
    """
    kl = np.asarray([r["approx_kl"] for r in history if "approx_kl" in r], dtype=np.float64)
    train = np.asarray([r["success"] for r in history], dtype=np.float64)
    _, ev = eval_curve(history)
    d_eval = np.diff(ev)
    return {
        "kl_std": float(kl.std()) if len(kl) else float("nan"),
        "eval_abs_change": float(np.abs(d_eval).mean()) if len(d_eval) else float("nan"),
        "eval_drop": float(np.maximum(-d_eval, 0.0).mean()) if len(d_eval) else float("nan"),
        "train_abs_change": float(np.abs(np.diff(train)).mean()) if len(train) > 1 else float("nan"),
    }


def mean_over_run(x: np.ndarray, y: np.ndarray) -> float:
    """The area under the curve ``y(x)`` (trapezoids) divided by its length: the average held-out success
    over a run; ``y[0]`` for a curve of one point (or no length), NaN for an empty one."""
    if len(x) > 1 and x[-1] > x[0]:
        return float(_trapezoid(y, x) / (x[-1] - x[0]))
    return float(y[0]) if len(y) else float("nan")


def run_summary(history: Sequence[Mapping[str, Any]], thresholds: Sequence[float] = THRESHOLDS,
                final_evals: int = FINAL_EVALS) -> dict[str, float]:
    """One run's numbers: final held-out success (mean of the last ``final_evals`` evaluations),
    the average held-out success over the run (area under the success-vs-steps curve divided by
    its length), env steps to each threshold (``steps_to_<pct>``, ``inf`` = not reached), total env
    steps and iterations, and :func:`smoothness`."""
    x, y = eval_curve(history)
    out: dict[str, float] = {
        "final_success": float(y[-final_evals:].mean()) if len(y) else float("nan"),
        "auc_success": mean_over_run(x, y),
        "env_steps": float(history[-1]["env_steps"]) if history else 0.0,
        "iterations": float(history[-1]["iteration"]) if history else 0.0,
    }
    for t in thresholds:
        out[threshold_key(t)] = steps_to_threshold(x, y, t)
    out.update(smoothness(history))
    return out


def summarise(runs: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], n_boot: int = N_BOOT, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per algorithm (or variant) ``name -> [history of each seed]``: :func:`run_summary` of every
    seed (``"per_seed"``), ``"n_seeds"``, the median with a bootstrap :data:`CI_LEVEL` interval of each
    :data:`SUMMARY_KEYS` entry (``"<key>"`` → (median, low, high); NaN entries dropped, all-NaN gives
    NaNs), the number of seeds that reached each threshold (``"reached_<pct>"``) and the largest env
    steps of a run (``"budget"``)."""
    out = {}
    for name, hists in runs.items():
        per_seed = [run_summary(h) for h in hists]
        entry: dict[str, Any] = {"n_seeds": len(per_seed), "per_seed": per_seed}
        for k in SUMMARY_KEYS:
            vals = np.asarray([s[k] for s in per_seed], dtype=float)
            vals = vals[~np.isnan(vals)]
            entry[k] = tuple(float(v) for v in bootstrap_ci(vals, np.median, n_boot, CI_LEVEL, seed)) if len(vals) else (np.nan,) * 3
        for k in map(threshold_key, THRESHOLDS):
            entry[k.replace("steps_to", "reached")] = int(sum(np.isfinite(s[k]) for s in per_seed))
        entry["budget"] = max(s["env_steps"] for s in per_seed)
        out[name] = entry
    return out


def ratio_ci(num: Sequence[float], den: Sequence[float], n_boot: int = N_BOOT, seed: int = 0,
             level: float = CI_LEVEL) -> tuple[float, float, float]:
    """Ratio of medians ``median(num) / median(den)`` with a percentile bootstrap interval
    (each sample resampled independently; ``inf/inf`` counts as NaN and is dropped; no ratio left
    gives a NaN interval)."""
    a, b = np.asarray(num, float), np.asarray(den, float)
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, len(a), (n_boot, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), (n_boot, len(b)))], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = ma / mb
        est = float(np.median(a) / np.median(b))
    r = r[~np.isnan(r)]
    if not len(r):
        return est, float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    return est, float(np.quantile(r, alpha, method="lower")), float(np.quantile(r, 1.0 - alpha, method="higher"))


__all__ = ["CI_LEVEL", "N_BOOT", "FINAL_EVALS", "THRESHOLDS", "SUMMARY_KEYS", "threshold_key", "bootstrap_ci", "steps_to_threshold",
           "eval_curve", "curves_on_grid", "mean_over_run", "smoothness", "run_summary", "summarise", "ratio_ci"]
