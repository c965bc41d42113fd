"""Benchmarks and the headline experiment, on tiny budgets."""
from __future__ import annotations

import json
import os

import numpy as np

from gagpo import bench


def test_throughput_table(tmp_path, capsys):
    rows = bench.throughput(sizes=(2, 4), repeats=1, out=str(tmp_path / "t.md"))
    assert {r["estimator"] for r in rows} == {"grpo", "gigpo", "gagpo"}
    assert all(r["rows"] == r["groups"] * 8 * 50 and r["rows_per_s"] > 0 for r in rows)
    assert "| gagpo | 4 | 1,600 |" in capsys.readouterr().out
    assert "bench throughput" in (tmp_path / "t.md").read_text()


def test_synthetic_batch_shape():
    b = bench.synthetic_batch(3, group_size=2, length=5, n_obs=4)
    assert len(b) == 30 and b.n_groups == 3 and b.n_traj == 6
    assert b.n_anchors <= 3 * 4


def test_headline_table_from_known_rows():
    rows = []
    for seed, curve in enumerate([[0.1, 0.6, 0.7], [0.2, 0.3, 0.55], [0.0, 0.1, 0.2]]):
        for k, s in enumerate(curve):
            rows.append({"algo": "gagpo", "seed": seed, "env_steps": 100 * (k + 1), "eval_success": s})
    table = bench.headline_table(rows, ["gagpo"], [0, 1, 2], random_success=0.01)
    # finals 0.7, 0.55, 0.2 -> median 0.55; steps to 50%: 200, 300, never -> median 300
    assert "| gagpo | 0.55 [0.20, 0.70] | 300 | 300 |" in table
    assert "| uniform random policy | 0.01 |" in table


def test_eval_curve_keeps_only_evaluated_iterations():
    x, y = bench.eval_curve([{"env_steps": 10}, {"env_steps": 20, "eval_success": 0.5}, {"env_steps": 40, "eval_success": 0.75}])
    np.testing.assert_array_equal(x, [20, 40])
    np.testing.assert_array_equal(y, [0.5, 0.75])


def test_headline_resumes_an_interrupted_run(tmp_path, monkeypatch):
    """A headline run cut short (here: stopped after 1 iteration, its checkpoint written) is continued from its
    checkpoint, not refused and not retrained: its first iterations are kept as they were."""
    import dataclasses

    from gagpo.trainer import train

    monkeypatch.setattr(bench, "HEADLINE_QUICK_BUDGET", 6000)  # 2-3 iterations of 64 episodes
    monkeypatch.chdir(tmp_path)
    cfg = bench.headline_config("gagpo", 0, quick=True)
    first = train(dataclasses.replace(cfg, iterations=1, checkpoint_every=1))
    rows = bench.headline(seeds=(0,), quick=True, workers=1, figures_dir=str(tmp_path / "fig"), algos=("gagpo",))
    with open(os.path.join(cfg.run_dir(), "metrics.jsonl")) as fh:
        history = [json.loads(line) for line in fh]
    assert len(first) == 1 and len(history) > 1 and max(r["env_steps"] for r in rows) >= 6000
    strip = lambda h: {k: v for k, v in h.items() if not k.startswith("time_")}  # noqa: E731
    assert strip(history[0]) == strip(first[0])


def test_headline_end_to_end_on_a_tiny_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "HEADLINE_QUICK_BUDGET", 400)
    monkeypatch.chdir(tmp_path)  # run directories go under ./runs
    rows = bench.headline(seeds=(0,), quick=True, workers=1, figures_dir=str(tmp_path / "fig"), algos=("grpo", "gagpo"))
    assert {r["algo"] for r in rows} == {"grpo", "gagpo"}
    assert all(max(r["env_steps"] for r in rows if r["algo"] == a) >= 400 for a in ("grpo", "gagpo"))
    for name in ("headline_keydoor_quick.png", "headline_keydoor_quick.csv", "headline_keydoor_quick.md"):
        assert os.path.getsize(tmp_path / "fig" / name) > 0  # quick results never take the full run's file names
    assert (tmp_path / "runs" / "headline-quick" / "gagpo-seed0" / "metrics.jsonl").exists()  # nor its run directories
    assert "| gagpo |" in capsys.readouterr().out
