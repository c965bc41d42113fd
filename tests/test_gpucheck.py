"""``python -m gagpo check-gpu``: the whole check runs on a CPU with tiny shapes (--quick) and passes; its verdict
fails on a non-finite training metric, a skipped optimizer step or a failed step."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
from gagpo.llm.gpucheck import _summarise_run, format_report  # noqa: E402


def test_check_gpu_quick_runs_every_step_on_a_cpu(tmp_path):
    out = tmp_path / "gpu_check.md"
    proc = subprocess.run([sys.executable, "-m", "gagpo", "check-gpu", "--device", "cpu", "--quick", "--out", str(out),
                           "--work-dir", str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    assert report.startswith("# GPU check") and "**PASS**" in report and "failed: none" in report
    with open(tmp_path / "gpu_check.csv") as fh:
        rows = list(csv.DictReader(fh))
    steps = {r["step"] for r in rows}
    assert steps == {"env", "attention", "model", "train-full", "train-lora", "train-ppo", "resume",
                     "bench-0.5b-full", "bench-0.5b-lora"}
    assert all(r["status"] == "ok" for r in rows)
    runs = {r["step"]: r for r in rows if r["step"].startswith("train-") or r["step"] == "resume"}
    assert all(r["all_finite"] == "True" and r["nonfinite_steps"] == "0" for r in runs.values())
    assert runs["resume"]["resumed"] == "True" and runs["resume"]["iterations"] == "3"
    attention = [r for r in rows if r["step"] == "attention"]
    assert {r["layout"] for r in attention} == {"left", "after-first"}
    bench = {r["step"]: r for r in rows if r["step"].startswith("bench-")}
    assert float(bench["bench-0.5b-full"]["decode_ms_per_step"]) > 0 and float(bench["bench-0.5b-full"]["weight_read_ms"]) > 0
    assert "weight-read bound" in report and "Targets" not in report  # targets are for real shapes only


def _ok(result):
    return {"status": "ok", "wall_s": 1.0, "result": result}


def test_verdict_fails_on_nan_skipped_steps_or_a_failed_step():
    good = _summarise_run([{"loss": 0.1, "grad_norm": 0.2, "nonfinite_steps": 0, "optimizer_steps": 1}])
    assert good["all_finite"] and good["nonfinite_steps"] == 0
    nan = _summarise_run([{"loss": 0.1, "nonfinite_steps": 0}, {"loss": math.nan, "grad_norm": math.inf}])
    assert not nan["all_finite"] and nan["nonfinite_metrics"] == "grad_norm,loss"
    assert json.loads("NaN") != json.loads("NaN")  # what a NaN written to metrics.jsonl reads back as
    skipped = _summarise_run([{"loss": 0.1, "nonfinite_steps": 2}])
    assert "**PASS**" in format_report({"train-full": _ok(good)}, "cmd")
    assert "**FAIL**" in format_report({"train-full": _ok(nan)}, "cmd")
    assert "**FAIL**" in format_report({"train-lora": _ok(skipped)}, "cmd")
    timed_out = {"status": "timed out (90 s)", "wall_s": 90.0, "error": "..."}
    report = format_report({"train-full": _ok(good), "bench-0.5b-full": timed_out}, "cmd")
    assert "**FAIL**" in report and "failed: bench-0.5b-full" in report
