"""`python -m gagpo train --model tiny --env alfworld`: two iterations end to end on the fixture games, then resume."""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("transformers")
pytest.importorskip("alfworld")

from gagpo.__main__ import main  # noqa: E402
from gagpo.envs import FIXTURES_DIR  # noqa: E402


def test_tiny_model_on_alfworld_fixtures_runs_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    common = ["--model", "tiny", "--env", "alfworld", "--env-kwargs", json.dumps({"data_dir": str(FIXTURES_DIR)}),
              "--tasks-per-iter", "2", "--group-size", "2", "--max-steps", "3", "--max-new-tokens", "16",
              "--eval-every", "0", "--no-progress", "--out-dir", str(out), "--checkpoint-every", "1"]
    assert main(["train", "--iterations", "2", *common]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-2])
    assert first["iteration"] == 2 and first["env_steps"] > 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert len(rows) == 2 and all("invalid_rate" in r and "approx_kl" in r for r in rows)
    assert os.path.exists(out / "checkpoint.pt") or any(p.name.startswith("checkpoint") for p in out.iterdir())
    assert main(["train", "--iterations", "3", "--resume", *common]) == 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["iteration"] for r in rows] == [1, 2, 3]


def test_bad_lm_option_is_a_clear_error(capsys):
    assert main(["train", "--model", "tiny", "--gamma", "3"]) == 2
    assert "gamma" in capsys.readouterr().err
