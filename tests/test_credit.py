"""The credit-assignment benchmark (gagpo.credit): statistics on known data, the harness on a tiny budget."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import numpy as np
import pytest

from gagpo import credit as C
from gagpo.__main__ import build_parser


# ====================================================================== statistics on known data
def test_constant_sample_gives_a_zero_width_interval():
    est, lo, hi = C.bootstrap_ci([0.7] * 10)
    assert est == lo == hi == pytest.approx(0.7)
    est, lo, hi = C.bootstrap_ci(np.full((10, 5), 0.3))  # whole curves: pointwise
    assert np.allclose(est, 0.3) and np.allclose(lo, 0.3) and np.allclose(hi, 0.3)


def test_bootstrap_interval_of_a_two_point_sample_by_hand():
    # Resampling {0, 1} twice gives the medians 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    # A 95% interval must reach both ends; a 40% interval cuts 30% from each tail, and since only
    # 25% of the mass lies at each end, it is the single point 0.5.
    assert tuple(map(float, C.bootstrap_ci([0.0, 1.0], level=0.95, n_boot=4000))) == (0.5, 0.0, 1.0)
    assert tuple(map(float, C.bootstrap_ci([0.0, 1.0], level=0.40, n_boot=4000))) == (0.5, 0.5, 0.5)
    assert float(C.bootstrap_ci([1.0, 2.0, 3.0, 10.0], np.mean)[0]) == pytest.approx(4.0)


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
    est, lo, hi = C.bootstrap_ci(x, np.median, n_boot, level, seed)
    assert float(est) == 3.5 and float(lo) == lo_hand and float(hi) == hi_hand
    assert lo < est < hi


def test_curve_band_is_the_pointwise_interval():
    rng = np.random.default_rng(0)
    curves = rng.random((6, 4))
    est, lo, hi = C.bootstrap_ci(curves, n_boot=300, seed=3)
    for j in range(4):
        e, l, h = C.bootstrap_ci(curves[:, j], n_boot=300, seed=3)
        assert (est[j], lo[j], hi[j]) == (e, l, h)


def test_not_reached_counts_as_infinite_without_nans():
    est, lo, hi = C.bootstrap_ci([100.0, 200.0, np.inf, np.inf, np.inf])
    assert est == np.inf and hi == np.inf and np.isfinite(lo) and not np.isnan(lo)
    est, lo, hi = C.bootstrap_ci([100.0, 200.0, 300.0, np.inf])
    assert est == 250.0 and hi == np.inf and lo == 100.0


def test_steps_to_threshold_on_a_hand_made_curve():
    steps = [1000, 2000, 3000, 4000, 5000]
    success = [0.1, 0.85, 0.7, np.nan, 0.9]
    assert C.steps_to_threshold(steps, success, 0.8) == 2000
    assert C.steps_to_threshold(steps, success, 0.85) == 2000  # ">=": touching counts
    assert C.steps_to_threshold(steps, success, 0.86) == 5000
    assert C.steps_to_threshold(steps, success, 0.95) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        C.steps_to_threshold([1, 2], [0.5])


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
    s = C.run_summary(hand_history(), thresholds=(0.5, 0.8))
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
    grid, ys = C.curves_on_grid([a, b], n_points=3)
    assert np.allclose(grid, [15.0, 20.0, 25.0])
    assert np.allclose(ys, [[0.5, 1.0, 1.5], [5.0, 5.0, 5.0]])


def test_ratio_and_target_verdicts():
    per = lambda vals: [{"steps_to_80": v} for v in vals]  # noqa: E731 - a tiny fixture
    summ = lambda **kw: {a: {"per_seed": per(v), "n_seeds": len(v), "budget": 1000.0, "reached_80": int(np.isfinite(v).sum())} for a, v in kw.items()}  # noqa: E731
    met = C.target_verdict(summ(gagpo=[100.0, 100.0, 100.0], grpo=[400.0, 400.0, 400.0], gigpo=[200.0, 200.0, 200.0]))
    assert "0.25 [0.25, 0.25]" in met[0] and "**met**" in met[0] and "**met**" in met[1]
    missed = C.target_verdict(summ(gagpo=[300.0] * 3, grpo=[400.0] * 3, gigpo=[200.0] * 3))
    assert "**not met**" in missed[0] and "**not met**" in missed[1]
    censored = C.target_verdict(summ(gagpo=[500.0] * 3, grpo=[np.inf] * 3, gigpo=[np.inf] * 3))
    assert "censored" in censored[0] and "below 0.50" in censored[0] and "**met**" in censored[0] and "**met**" in censored[1]
    undetermined = C.target_verdict(summ(gagpo=[900.0] * 3, grpo=[np.inf] * 3, gigpo=[1000.0] * 3))
    assert "**undetermined**" in undetermined[0] and "0.90" in undetermined[1] and "**met**" in undetermined[1]
    never = C.target_verdict(summ(gagpo=[np.inf] * 3, grpo=[np.inf] * 3, gigpo=[100.0] * 3))
    assert len(never) == 1 and "**not met**" in never[0]


# ====================================================================== profiles, variants, CLI
def test_profiles_share_one_budget_and_the_ablations_keep_the_batch():
    prof = C.get_profile("keydoor", quick=False)
    cfgs = [prof.config(a, 0) for a in prof.algos]
    assert {c.env_step_budget for c in cfgs} == {prof.env_step_budget} and len(prof.seeds) >= 10
    assert {(c.tasks_per_iter, c.group_size) for c in cfgs} == {(8, 8)}
    assert all(c.resume and c.out_dir.startswith(os.path.join("runs", "credit", "keydoor-full")) for c in cfgs)
    variants = C.ablation_variants()
    assert {a for a, _, _ in variants} == {"lam", "gamma", "group_size", "norm", "anchors"}
    for _, label, over in variants:
        if "group_size" in over:
            assert over["group_size"] * over["tasks_per_iter"] == 64, label
    defaults = [label for _, label, over in variants if not over]
    assert sorted(defaults) == sorted(["lam=0.95", "gamma=0.95", "group_size=8", "norm=mean_std", "anchor_match=exact"])
    with pytest.raises(ValueError, match="unknown ablation"):
        C.ablation_variants(["beta"])
    with pytest.raises(ValueError, match="unknown environment"):
        C.get_profile("atari", quick=True)


def test_cli_knows_the_bench_subcommands():
    parser = build_parser()
    args = parser.parse_args(["bench", "credit", "--quick", "--env", "all", "--seeds", "0", "1"])
    assert (args.bench, args.quick, args.env, args.seeds, args.workers) == ("credit", True, "all", [0, 1], 2)
    assert parser.parse_args(["bench", "ablations", "--only", "lam"]).only == ["lam"]
    assert parser.parse_args(["bench", "proxy", "--quick"]).quick
    assert parser.parse_args(["bench", "iteration", "--iterations", "3"]).iterations == 3
    args = parser.parse_args(["bench", "credit", "--report-only", "--group-size", "2"])
    assert args.report_only and args.group_size == 2 and not args.quick


# ====================================================================== the harness on a tiny budget
TINY = C.Profile("tiny", "toy_envs/OpenGrid-v0", {"size": 4}, env_step_budget=1200, seeds=(0, 1), algos=("grpo", "gagpo"),
                 tasks_per_iter=2, group_size=4, eval_every=2, eval_episodes=8, label="OpenGrid 4x4")


def test_harness_writes_tidy_results_skips_finished_runs_and_learns(tmp_path, monkeypatch):
    root, figs = str(tmp_path / "runs"), str(tmp_path / "figures")
    out = C.credit("opengrid", profile=TINY, root=root, figures_dir=figs, workers=2, progress=False)
    for name in ("credit_opengrid.csv", "credit_opengrid.md", "credit_opengrid_curves.png", "credit_opengrid_steps_to_80.png",
                 "credit_opengrid_smoothness.png"):
        assert os.path.exists(os.path.join(figs, name)), name
    with open(os.path.join(figs, "credit_opengrid.csv")) as fh:
        rows = list(csv.DictReader(fh))
    runs = {(r["algo"], r["seed"]) for r in rows}
    assert runs == {(a, str(s)) for a in TINY.algos for s in TINY.seeds}
    for a, s in runs:  # one row per iteration of each run, every run spent the same budget
        its = [int(r["iteration"]) for r in rows if (r["algo"], r["seed"]) == (a, s)]
        assert its == list(range(1, len(its) + 1))
        last = [r for r in rows if (r["algo"], r["seed"]) == (a, s)][-1]
        assert int(last["env_steps"]) >= TINY.env_step_budget and last["profile"] == "tiny" and last["env"] == "opengrid"
    text = open(os.path.join(figs, "credit_opengrid.md")).read()
    assert "python -m gagpo bench credit" in text and "| gagpo |" in text and "CPU-minutes" in text
    # learning happened: GAGPO's held-out success at the end beats its first evaluation on both seeds
    for hist in (out["rows"],):
        for s in TINY.seeds:
            ev = [float(r["eval_success"]) for r in hist if r["algo"] == "gagpo" and r["seed"] == s and r["eval_success"] != ""]
            assert ev[-1] > ev[0], (s, ev)
    # a rerun trains nothing: every run is finished
    monkeypatch.setattr(C, "_train_one", lambda cfg: pytest.fail(f"retrained {cfg['out_dir']}"))
    again = C.run_configs([TINY.config(a, s, root) for s in TINY.seeds for a in TINY.algos], workers=1, progress=False)
    assert [len(h) for h in again] == [len([r for r in rows if (r["algo"], r["seed"]) == (a, str(s))]) for s in TINY.seeds for a in TINY.algos]
    # a report of partial results: a third seed was never trained
    partial = C.credit("opengrid", profile=dataclasses.replace(TINY, seeds=(0, 1, 2)), root=root, figures_dir=figs, workers=1,
                       progress=False, report_only=True)
    assert "Partial results: 4 of 6 runs finished" in partial["table"]


def test_an_interrupted_run_resumes_exactly(tmp_path):
    root = str(tmp_path / "runs")
    straight = C.run_configs([TINY.config("gagpo", 0, str(tmp_path / "straight"))], workers=1, progress=False)[0]
    short = dataclasses.replace(TINY, env_step_budget=400)
    partial = C.run_configs([short.config("gagpo", 0, root)], workers=1, progress=False)[0]
    assert partial[-1]["env_steps"] < TINY.env_step_budget
    cfg = TINY.config("gagpo", 0, root)
    assert C.finished_history(cfg) is None  # a partial run is not finished under the longer budget
    resumed = C.run_configs([cfg], workers=1, progress=False)[0]
    strip = lambda h: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in h]  # noqa: E731
    assert strip(resumed) == strip(straight)
    timing = [json.loads(line) for line in open(os.path.join(cfg.run_dir(), "timing.jsonl"))]
    assert len(timing) == 2 and all(t["cpu_s"] > 0 for t in timing)
    with pytest.raises(ValueError, match="different configuration"):
        C.finished_history(TINY.config("gagpo", 0, root, lr=0.5))


def test_ablations_on_a_tiny_budget(tmp_path):
    figs = str(tmp_path / "figures")
    tiny = dataclasses.replace(TINY, seeds=(0,), env_step_budget=500)
    out = C.ablations(profile=tiny, names=["norm"], root=str(tmp_path / "runs"), figures_dir=figs, workers=1, progress=False)
    assert os.path.exists(os.path.join(figs, "ablation_norm.png"))
    text = open(os.path.join(figs, "ablation_keydoor.md")).read()
    assert "## norm" in text and "norm=none" in text and "**norm**" in text
    assert {r["variant"] for r in out["rows"]} == {"norm=none", "norm=mean", "default"}  # the default run once
    # the default variant trains in the same directory as the head-to-head's GAGPO run
    assert os.path.isdir(os.path.join(str(tmp_path / "runs"), "tiny", "gagpo-seed0"))


def test_group_size_override_keeps_the_episodes_per_iteration(tmp_path):
    tiny = dataclasses.replace(TINY, seeds=(0,), algos=("gagpo",), env_step_budget=300)
    out = C.credit("opengrid", profile=tiny, root=str(tmp_path / "runs"), figures_dir=str(tmp_path / "figs"), workers=1,
                   progress=False, group_size=2)
    assert os.path.exists(tmp_path / "figs" / "credit_opengrid_G2.md")
    cfg = json.load(open(tmp_path / "runs" / "tiny" / "gagpo-group_size2-seed0" / "config.json"))
    assert (cfg["group_size"], cfg["tasks_per_iter"]) == (2, 4)  # 2 tasks x 4 rollouts -> 4 tasks x 2 rollouts
    assert "G=2" in out["table"]
    with pytest.raises(ValueError, match="must divide"):
        C.credit("opengrid", profile=tiny, root=str(tmp_path / "runs"), figures_dir=str(tmp_path / "figs"), workers=1,
                 progress=False, group_size=3)


# ====================================================================== where reports go (issue 10)
def test_quick_reports_default_to_the_run_root_and_full_ones_to_figures(tmp_path, monkeypatch):
    from gagpo.plotting import FIGURES_DIR

    monkeypatch.delenv("GAGPO_SAVE_DIR", raising=False)
    assert C.report_dir(None, True, "runs/credit/keydoor-quick") == os.path.join("runs/credit/keydoor-quick", "figures")
    assert C.report_dir(None, False, "runs/credit/keydoor-full") == FIGURES_DIR
    assert C.report_dir("out", True, "runs/x") == "out"  # asked explicitly
    monkeypatch.setenv("GAGPO_SAVE_DIR", str(tmp_path))
    assert C.report_dir(None, False, "runs/credit/keydoor-full") == str(tmp_path)


def test_a_quick_credit_run_writes_under_its_run_root(tmp_path):
    tiny = dataclasses.replace(TINY, seeds=(0,), algos=("grpo",), env_step_budget=100, eval_every=1, eval_episodes=4)
    root = str(tmp_path / "runs")
    C.credit("opengrid", quick=True, profile=tiny, root=root, workers=1, progress=False)
    out = os.path.join(root, "tiny", "figures")
    assert sorted(os.listdir(out)) == ["credit_opengrid_quick.csv", "credit_opengrid_quick.md", "credit_opengrid_quick_curves.png",
                                       "credit_opengrid_quick_smoothness.png", "credit_opengrid_quick_steps_to_80.png"]
    text = open(os.path.join(out, "credit_opengrid_quick.md")).read()
    assert "shared with other jobs" not in text and f"on {os.cpu_count()} CPU cores" in text


def test_a_table_is_compared_with_the_committed_report(tmp_path):
    from gagpo.plotting import FIGURES_DIR
    from gagpo.tables import read_csv

    rows = read_csv(os.path.join(FIGURES_DIR, "credit_keydoor.csv"))
    table = C.credit_table(C.summarise(C.histories_by(rows)))
    assert C.compare_with_committed(table, str(tmp_path), "credit_keydoor.md").startswith("identical to the committed table")
    changed = table.replace("| gagpo | 10 |", "| gagpo | 9 |")
    text = C.compare_with_committed(changed, str(tmp_path), "credit_keydoor.md")
    assert text.startswith("different from") and "this run:  | gagpo | 9 |" in text and "committed: | gagpo | 10 |" in text
    assert text.count("this run:") == 1
    assert C.compare_with_committed(table, FIGURES_DIR, "credit_keydoor.md") is None  # written there: nothing to compare
    assert C.compare_with_committed(table, str(tmp_path), "no_such_report.md") is None
