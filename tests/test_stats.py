"""The statistics of the benchmarks (gagpo.stats) on cases small enough to compute by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gagpo import stats as S


def test_constant_sample_gives_a_zero_width_interval():
    est, lo, hi = S.bootstrap_ci([0.7] * 10)
    assert est == lo == hi == pytest.approx(0.7)
    est, lo, hi = S.bootstrap_ci(np.full((10, 5), 0.3))  # whole curves: pointwise
    assert np.allclose(est, 0.3) and np.allclose(lo, 0.3) and np.allclose(hi, 0.3)


def test_bootstrap_interval_of_a_two_point_sample_by_hand():
    # Resampling {0, 1} twice gives the medians 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    # A 95% interval must reach both ends; a 40% interval cuts 30% from each tail, and since only
    # 25% of the mass lies at each end, it is the single point 0.5.
    assert tuple(map(float, S.bootstrap_ci([0.0, 1.0], level=0.95, n_boot=4000))) == (0.5, 0.0, 1.0)
    assert tuple(map(float, S.bootstrap_ci([0.0, 1.0], level=0.40, n_boot=4000))) == (0.5, 0.5, 0.5)
    assert float(S.bootstrap_ci([1.0, 2.0, 3.0, 10.0], np.mean)[0]) == pytest.approx(4.0)


def test_bootstrap_interval_replays_with_a_fixed_rng():
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    n_boot, level, seed = 500, 0.9, 7
    rng = np.random.default_rng(seed)
    medians = []
    for _ in range(n_boot):  # the documented algorithm, one resample at a time
        pick = rng.integers(0, len(x), size=len(x))
        medians.append(np.median(x[pick]))
    medians.sort()
    lo_hand = medians[math.floor(0.05 * (n_boot - 1))]
    hi_hand = medians[math.ceil(0.95 * (n_boot - 1))]
    est, lo, hi = S.bootstrap_ci(x, np.median, n_boot, level, seed)
    assert float(est) == 3.5 and float(lo) == lo_hand and float(hi) == hi_hand
    assert lo < est < hi


def test_curve_band_is_the_pointwise_interval():
    rng = np.random.default_rng(0)
    curves = rng.random((6, 4))
    est, lo, hi = S.bootstrap_ci(curves, n_boot=300, seed=3)
    for j in range(4):
        e, l, h = S.bootstrap_ci(curves[:, j], n_boot=300, seed=3)
        assert (est[j], lo[j], hi[j]) == (e, l, h)


def test_not_reached_counts_as_infinite_without_nans():
    est, lo, hi = S.bootstrap_ci([100.0, 200.0, np.inf, np.inf, np.inf])
    assert est == np.inf and hi == np.inf and np.isfinite(lo) and not np.isnan(lo)
    est, lo, hi = S.bootstrap_ci([100.0, 200.0, 300.0, np.inf])
    assert est == 250.0 and hi == np.inf and lo == 100.0


def test_steps_to_threshold_on_a_hand_made_curve():
    steps = [1000, 2000, 3000, 4000, 5000]
    success = [0.1, 0.85, 0.7, np.nan, 0.9]
    assert S.steps_to_threshold(steps, success, 0.8) == 2000
    assert S.steps_to_threshold(steps, success, 0.85) == 2000  # ">=": touching counts
    assert S.steps_to_threshold(steps, success, 0.86) == 5000
    assert S.steps_to_threshold(steps, success, 0.95) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        S.steps_to_threshold([1, 2], [0.5])


def hand_history():
    """Six iterations, evaluations at 2, 4, 6."""
    rows = []
    for it, (steps, succ, kl, ev) in enumerate(zip([100, 200, 300, 400, 500, 600], [0.0, 0.5, 0.5, 1.0, 0.5, 1.0],
                                                    [0.01, 0.03, 0.01, 0.03, 0.01, 0.03], [None, 0.2, None, 0.6, None, 0.4]), 1):
        r = {"iteration": it, "env_steps": steps, "success": succ, "approx_kl": kl}
        if ev is not None:
            r["eval_success"] = ev
        rows.append(r)
    return rows


def test_run_summary_by_hand():
    s = S.run_summary(hand_history(), thresholds=(0.5, 0.8))
    assert s["final_success"] == pytest.approx((0.2 + 0.6 + 0.4) / 3)
    # trapezoids over (200, 0.2), (400, 0.6), (600, 0.4): (0.4*200 + 0.5*200) / 400
    assert s["auc_success"] == pytest.approx(0.45)
    assert s["steps_to_50"] == 400 and s["steps_to_80"] == math.inf
    assert s["kl_std"] == pytest.approx(0.01)
    assert s["eval_abs_change"] == pytest.approx(0.3)  # |+0.4|, |-0.2|
    assert s["eval_drop"] == pytest.approx(0.1)  # 0, 0.2
    assert s["train_abs_change"] == pytest.approx(0.4)  # |Δ| = 0.5, 0, 0.5, 0.5, 0.5
    assert s["env_steps"] == 600 and s["iterations"] == 6


def test_curves_on_grid_only_covers_the_common_range():
    a = (np.array([10.0, 20.0, 30.0]), np.array([0.0, 1.0, 2.0]))
    b = (np.array([15.0, 25.0]), np.array([5.0, 5.0]))
    grid, ys = S.curves_on_grid([a, b], n_points=3)
    assert np.allclose(grid, [15.0, 20.0, 25.0])
    assert np.allclose(ys, [[0.5, 1.0, 1.5], [5.0, 5.0, 5.0]])


def test_eval_curve_keeps_only_real_evaluations():
    hist = [{"env_steps": 10, "eval_success": 0.5}, {"env_steps": 20}, {"env_steps": 30, "eval_success": None},
            {"env_steps": 40, "eval_success": float("nan")}, {"env_steps": 50, "eval_success": ""}, {"env_steps": 60, "eval_success": 1.0}]
    x, y = S.eval_curve(hist)
    assert x.tolist() == [10.0, 60.0] and y.tolist() == [0.5, 1.0]
    assert [len(a) for a in S.eval_curve([{"env_steps": 1}])] == [0, 0]


def test_a_run_with_one_evaluation_and_no_kl():
    s = S.run_summary([{"iteration": 1, "env_steps": 50, "success": 0.5, "eval_success": 0.3}])
    assert s["final_success"] == s["auc_success"] == pytest.approx(0.3)  # no area: the one value
    assert s["steps_to_50"] == math.inf and s["env_steps"] == 50 and s["iterations"] == 1
    assert all(math.isnan(s[k]) for k in ("kl_std", "eval_abs_change", "eval_drop", "train_abs_change"))


def test_summary_keys_follow_the_thresholds():
    assert S.threshold_key(0.8) == "steps_to_80" and S.threshold_key(0.5) == "steps_to_50"
    assert {S.threshold_key(t) for t in S.THRESHOLDS} <= set(S.SUMMARY_KEYS) <= set(S.run_summary(hand_history()))


def test_summarise_two_seeds_by_hand():
    other = [dict(r, eval_success=1.0) if "eval_success" in r else r for r in hand_history()]  # 1.0 at every evaluation
    out = S.summarise({"a": [hand_history(), other]})["a"]
    assert out["n_seeds"] == 2 and out["budget"] == 600 and len(out["per_seed"]) == 2
    # two samples {x, y}: the median is their mean and a 95% interval reaches both (see the two-point case above)
    assert out["final_success"] == pytest.approx((0.7, 0.4, 1.0))
    assert out["steps_to_50"] == (300.0, 200.0, 400.0)  # the seeds reach 50% at 400 and 200 env steps
    assert out["steps_to_80"] == (math.inf, 200.0, math.inf)  # one never does: the median is "not reached"
    assert (out["reached_50"], out["reached_80"]) == (2, 1)
    assert out["kl_std"] == pytest.approx((0.01, 0.01, 0.01))


def test_summarise_drops_nan_entries():
    bare = [{"iteration": 1, "env_steps": 10, "success": 0.0, "eval_success": 0.0}]
    out = S.summarise({"a": [bare, bare]})["a"]
    assert all(math.isnan(v) for v in out["kl_std"])  # no seed logged approx_kl
    assert out["final_success"] == (0.0, 0.0, 0.0)


def test_ratio_of_medians_by_hand():
    assert S.ratio_ci([100.0] * 3, [400.0] * 3) == (0.25, 0.25, 0.25)  # constant samples: no width
    est, lo, hi = S.ratio_ci([1.0, 3.0], [2.0, 2.0], n_boot=4000)
    assert (est, lo, hi) == (1.0, 0.5, 1.5)  # medians of {1, 3} resampled: 1, 2, 3
    est, lo, hi = S.ratio_ci([np.inf] * 2, [np.inf] * 2)
    assert math.isnan(est) and math.isnan(lo) and math.isnan(hi)  # inf/inf: no ratio at all
