"""``bench lm-learning`` (gagpo.llm.learning): one SFT warm start, RL runs from it, the report."""
from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import pytest

from gagpo.llm.learning import (PROFILES, SAMPLED_FILE, TARGET_GAIN, LearningProfile, cached_sampled, learning_summary, learning_table,
                                lm_learning, sampled_summary, sampled_table, target_verdict)

MICRO = LearningProfile("micro", seeds=(0,), algos=("grpo", "gagpo"), sft_steps=3, sft_tasks=8, sft_batch_size=4, iterations=2,
                        tasks_per_iter=2, group_size=2, max_steps=4, max_new_tokens=12, eval_every=1, eval_episodes=3,
                        sampled_samples=2, label="micro")


def _rows(starts_finals: dict[str, list[tuple[float, float]]]) -> list[dict]:
    rows = []
    for algo, pairs in starts_finals.items():
        for seed, (start, final) in enumerate(pairs):
            rows.append({"algo": algo, "seed": seed, "iteration": 0, "env_steps": 0, "eval_success": start, "eval_invalid_rate": 0.5})
            rows.append({"algo": algo, "seed": seed, "iteration": 5, "env_steps": 100, "eval_success": final, "eval_invalid_rate": 0.25,
                         "kl_ref": 0.1})
    return rows


def test_summary_by_hand():
    rows = _rows({"gagpo": [(0.2, 0.6), (0.2, 0.3), (0.2, 0.9)], "grpo": [(0.2, 0.1), (0.2, 0.2), (0.2, 0.2)]})
    s = learning_summary(rows, final_evals=1, n_boot=200)
    assert s["gagpo"]["n_seeds"] == 3
    assert s["gagpo"]["start"][0] == pytest.approx(0.2)
    assert s["gagpo"]["final"][0] == pytest.approx(0.6)           # median of 0.6, 0.3, 0.9
    assert s["gagpo"]["gain"][0] == pytest.approx(0.4)
    assert s["grpo"]["gain"][0] == pytest.approx(0.0)
    # mean over the run: trapezoid of (0, 0.2) -> (100, final) over 100 steps = (0.2 + final) / 2
    assert s["gagpo"]["auc"][0] == pytest.approx((0.2 + 0.6) / 2)
    assert s["gagpo"]["final_invalid"][0] == pytest.approx(0.25)
    lo, hi = s["gagpo"]["gain"][1:]
    assert lo <= 0.4 <= hi and lo >= 0.1 - 1e-12 and hi <= 0.7 + 1e-12
    assert "**met**" in target_verdict(s) and "3 of 3 seeds" in target_verdict(s)
    s2 = learning_summary(_rows({"gagpo": [(0.2, 0.3), (0.2, 0.1), (0.2, 0.4)]}), final_evals=1, n_boot=200)
    assert "**not met**" in target_verdict(s2) and "2 of 3 seeds" in target_verdict(s2)
    table = learning_table(s)
    assert table.count("\n") == 3 and "| gagpo | 3 | 0.20 | 0.60 [" in table and "+0.40 [" in table


def test_final_is_mean_of_last_evaluations():
    rows = [{"algo": "gagpo", "seed": 0, "iteration": i, "env_steps": 10 * i, "eval_success": v, "eval_invalid_rate": 0.0}
            for i, v in enumerate([0.1, 0.5, 0.2, 0.8])]
    s = learning_summary(rows, final_evals=3, n_boot=10)
    assert s["gagpo"]["final"][0] == pytest.approx((0.5 + 0.2 + 0.8) / 3)
    assert s["gagpo"]["gain"][0] == pytest.approx((0.5 + 0.2 + 0.8) / 3 - 0.1)


def test_profiles_meet_the_issue():
    assert len(PROFILES["quick"].seeds) >= 3 and len(PROFILES["full"].seeds) >= 5
    for prof in PROFILES.values():
        assert set(prof.algos) == {"grpo", "gigpo", "gagpo", "ppo"}
        cfgs = [prof.rl_config(a, 0, "/tmp/r") for a in prof.algos]
        # the same budget and the same start for every method
        assert len({(c.iterations, c.tasks_per_iter, c.group_size, c.max_steps, c.model, c.lr, c.kl_coef) for c in cfgs}) == 1
        assert cfgs[0].model == prof.sft_config("/tmp/r").model_dir()
        assert TARGET_GAIN == 0.30


def test_lm_learning_micro(tmp_path):
    root, figs = str(tmp_path / "runs"), str(tmp_path / "figs")
    out = lm_learning(profile=MICRO, workers=1, root=root, figures_dir=figs, progress=False)
    with open(os.path.join(figs, "lm_learning.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert {"algo", "seed", "iteration", "env_steps", "eval_success"} <= set(rows[0])
    assert {r["algo"] for r in rows} == {"grpo", "gagpo"}
    # iteration 0 = the warm start's last evaluation, the same for every run
    zero = [r for r in rows if r["iteration"] == "0"]
    assert len(zero) == 2 and len({r["eval_success"] for r in zero}) == 1
    sft_last = [r for r in out["sft_history"] if "eval_success" in r][-1]
    assert float(zero[0]["eval_success"]) == pytest.approx(sft_last["eval_success"], abs=1e-4)
    assert [r["iteration"] for r in rows if r["algo"] == "gagpo"] == ["0", "1", "2"]
    assert all(float(r["env_steps"]) > 0 for r in rows if r["iteration"] != "0")
    # the RL runs start from the exported warm start, with the KL penalty to it
    with open(os.path.join(root, "micro", "gagpo-seed0", "config.json")) as fh:
        cfg = json.load(fh)
    assert cfg["model"] == os.path.join(root, "micro", "sft", "model") and cfg["kl_coef"] == MICRO.kl_coef
    with open(os.path.join(figs, "lm_learning.md")) as fh:
        md = fh.read()
    assert "Target (GAGPO" in md and "| gagpo | 1 |" in md and "3 SFT steps" in md
    assert os.path.exists(os.path.join(figs, "lm_learning.png"))
    # a rerun trains nothing and reports the same table; --report-only works once the runs exist
    mtime = os.path.getmtime(os.path.join(root, "micro", "gagpo-seed0", "metrics.jsonl"))
    again = lm_learning(profile=MICRO, workers=1, root=root, figures_dir=figs, progress=False, report_only=True)
    assert again["rows"] == out["rows"]
    assert os.path.getmtime(os.path.join(root, "micro", "gagpo-seed0", "metrics.jsonl")) == mtime
    # the sampled evaluation: the SFT start and each run's final policy, cached beside each run, reused by the rerun
    with open(os.path.join(figs, "lm_learning_sampled.csv")) as fh:
        srows = list(csv.DictReader(fh))
    assert [(r["algo"], r["iteration"]) for r in srows] == [("grpo", "0"), ("grpo", "2"), ("gagpo", "0"), ("gagpo", "2")]
    assert all(r["sampled_episodes"] == str(2 * MICRO.eval_episodes) for r in srows)
    assert srows[0]["sampled_success"] == srows[2]["sampled_success"]          # one SFT start for every run
    assert again["sampled_rows"] == out["sampled_rows"]
    assert "## The sampling policy" in md and "| gagpo | 1 |" in md.split("## The sampling policy")[1]
    assert f"one evaluation of {2 * MICRO.eval_episodes} episodes (binomial standard error" in md
    assert "The sampled evaluations of 3 models took" in md
    sft_cache = os.path.join(root, "micro", "sft", SAMPLED_FILE)
    run_cache = os.path.join(root, "micro", "gagpo-seed0", SAMPLED_FILE)
    model = os.path.join(root, "micro", "gagpo-seed0", "checkpoint")
    assert os.path.exists(sft_cache) and cached_sampled(MICRO, model, run_cache) is not None
    # a cache is reused only for the same settings and the same weights
    assert cached_sampled(dataclasses.replace(MICRO, sampled_seed=5), model, run_cache) is None
    weights = os.path.join(model, "model.safetensors")
    os.utime(weights, (os.path.getatime(weights), os.path.getmtime(weights) + 10))
    assert cached_sampled(MICRO, model, run_cache) is None


def test_sampled_summary_by_hand():
    rows = []
    for algo, finals in {"gagpo": [0.7, 0.5, 0.9], "grpo": [0.4, 0.5, 0.5]}.items():
        for seed, final in enumerate(finals):
            rows += [{"algo": algo, "seed": seed, "iteration": 0, "env_steps": 0, "sampled_success": 0.5},
                     {"algo": algo, "seed": seed, "iteration": 50, "env_steps": 900, "sampled_success": final}]
    s = sampled_summary(rows, n_boot=200)
    assert s["gagpo"]["start"][0] == pytest.approx(0.5) and s["gagpo"]["final"][0] == pytest.approx(0.7)
    assert s["gagpo"]["gain"][0] == pytest.approx(0.2) and s["gagpo"]["ups"] == 2
    assert s["grpo"]["gain"][0] == pytest.approx(0.0) and s["grpo"]["ups"] == 0
    table = sampled_table(s)
    assert "| gagpo | 3 | 0.50 | 0.70 [" in table and "+0.20 [" in table and "2 of 3" in table
    assert "| grpo | 3 | 0.50 | 0.50 [" in table and "+0.00 [" in table and "-0.00" not in table


def test_signed_cells_never_print_minus_zero():
    rows = _rows({"gagpo": [(0.5, 0.499), (0.5, 0.4995), (0.5, 0.4999)], "grpo": [(0.5, 0.49), (0.5, 0.48), (0.5, 0.47)]})
    s = learning_summary(rows, final_evals=1, n_boot=50)
    table, verdict = learning_table(s), target_verdict(s)
    assert "-0.00" not in table and "+0.00 [" in table and "-0.00" not in verdict
    assert "-0.02 [" in table                                          # a real negative gain keeps its sign


def test_quick_profile_skips_the_sampled_evaluation():
    assert PROFILES["quick"].sampled_samples == 0 and PROFILES["full"].sampled_samples >= 1
    assert "sampling policy" not in PROFILES["quick"].describe() and "sampling policy" in PROFILES["full"].describe()


def test_report_only_without_runs(tmp_path):
    with pytest.raises(ValueError, match="run without --report-only"):
        lm_learning(profile=MICRO, workers=1, root=str(tmp_path), figures_dir=str(tmp_path), progress=False, report_only=True)


def test_unknown_algo(tmp_path):
    with pytest.raises(ValueError, match="unknown algo 'nope'"):
        lm_learning(profile=MICRO, algos=["nope"], root=str(tmp_path), figures_dir=str(tmp_path), progress=False)


def test_profile_describe_reads_fields():
    p = dataclasses.replace(MICRO, sft_steps=77, lr=0.123)
    text = p.describe()
    assert "77 SFT steps" in text and "lr 0.123" in text
    assert np.isfinite(len(text))


def _committed(name: str) -> list[dict]:
    from gagpo.tables import read_csv

    return read_csv(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "figures", name))


def test_readme_quotes_the_committed_lm_learning_results():
    """Every number of the README's lm-learning table is recomputed from the committed CSVs."""
    from gagpo.llm.learning import SIGNED, format_ci, _fmt

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    greedy, sampled = learning_summary(_committed("lm_learning.csv")), sampled_summary(_committed("lm_learning_sampled.csv"))
    names = {"grpo": f"GRPO, {PROFILES['full'].iterations} iterations", "gigpo": "GiGPO", "gagpo": "GAGPO", "ppo": "PPO (value head)"}
    for algo, name in names.items():
        g, s = greedy[algo], sampled[algo]
        row = (f"| {name} | {g['final'][0]:.2f} | {format_ci(g['gain'], SIGNED)} | {s['final'][0]:.2f} | {format_ci(s['gain'], SIGNED)} "
               f"| {s['ups']} of {s['n_seeds']} |")
        assert row in readme, row
    start = f"| after SFT (iteration 0 of every RL run) | {greedy['gagpo']['start'][0]:.2f} | | {sampled['gagpo']['start'][0]:.2f} | | |"
    assert start in readme, start
    assert f"from {sampled['gagpo']['start'][0]:.2f} to {sampled['gagpo']['final'][0]:.2f}" in readme
    assert _fmt(SIGNED, -0.0) == "+0.00"
    assert f"greedy policy's held-out success to {greedy['gagpo']['final'][0]:.2f}" in readme
    assert f"sampling policy's from {sampled['gagpo']['start'][0]:.2f} to {sampled['gagpo']['final'][0]:.2f}" in readme
    # the first full profile, quoted beside it
    first = PROFILES["full-sft400"]
    g1, s1 = learning_summary(_committed("lm_learning_full_sft400.csv")), sampled_summary(_committed("lm_learning_full_sft400_sampled.csv"))
    assert (f"imitated for {first.sft_steps} steps instead of {PROFILES['full'].sft_steps} and trained {first.iterations} iterations: "
            f"from its start at {g1['gagpo']['start'][0]:.2f} greedy ({s1['gagpo']['start'][0]:.2f} sampled),") in " ".join(readme.split())
    assert (f"GAGPO's greedy gain was {format_ci(g1['gagpo']['gain'], SIGNED)} and its sampled gain {format_ci(s1['gagpo']['gain'], SIGNED)}"
            in " ".join(readme.split()))
    # GAGPO's median greedy success at the last iteration the first profile trained
    at = np.median([r["eval_success"] for r in _committed("lm_learning.csv") if r["algo"] == "gagpo" and r["iteration"] == first.iterations])
    assert f"at iteration {first.iterations} of the new runs GAGPO's median greedy success is already {at:.2f}" in " ".join(readme.split())


def test_registered_profiles_name_their_reports(tmp_path):
    from gagpo.llm.learning import COMMITTED_PROFILES, report_stem

    assert [report_stem(n) for n in ("full", "quick", "full-sft400")] == ["lm_learning", "lm_learning_quick", "lm_learning_full_sft400"]
    assert set(COMMITTED_PROFILES) <= set(PROFILES) and "quick" not in COMMITTED_PROFILES
    # the first full profile is kept as it ran: its committed CSV is its RL budget from its warm start
    first = PROFILES["full-sft400"]
    assert (first.sft_steps, first.iterations) == (400, 50)
    assert {k: v for k, v in dataclasses.asdict(first).items() if k not in ("name", "label", "sft_steps", "iterations")} == \
        {k: v for k, v in dataclasses.asdict(PROFILES["full"]).items() if k not in ("name", "label", "sft_steps", "iterations")}
    rows = _committed("lm_learning_full_sft400.csv")
    assert max(r["iteration"] for r in rows) == first.iterations
    assert {(r["algo"], int(r["seed"])) for r in rows} == {(a, s) for a in first.algos for s in first.seeds}
    with pytest.raises(ValueError, match="unknown profile 'nope'.*full-sft400"):
        lm_learning(profile="nope", root=str(tmp_path), progress=False)


def test_cli_quick_contradicting_profile():
    from gagpo.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "lm-learning", "--quick", "--profile", "full"])
    assert exc.value.code == 2
