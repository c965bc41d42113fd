"""`python -m gagpo train --model tiny --env alfworld`: two iterations end to end on the fixture games, with a greedy
evaluation per held-out split and task type, then resume."""
from __future__ import annotations

import csv
import json
import os

import pytest

pytest.importorskip("transformers")
pytest.importorskip("alfworld")

from gagpo.__main__ import main  # noqa: E402
from gagpo.envs import FIXTURES_DIR, TASK_TYPES  # noqa: E402


def test_tiny_model_on_alfworld_fixtures_runs_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    common = ["--model", "tiny", "--env", "alfworld", "--env-kwargs", json.dumps({"data_dir": str(FIXTURES_DIR)}),
              "--tasks-per-iter", "2", "--group-size", "2", "--max-steps", "3", "--max-new-tokens", "16",
              "--eval-every", "2", "--eval-episodes", "2", "--no-progress", "--out-dir", str(out), "--checkpoint-every", "1"]
    assert main(["train", "--iterations", "2", *common]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-2])
    assert first["iteration"] == 2 and first["env_steps"] > 0
    assert {"eval_success", "eval_valid_seen_success", "eval_valid_unseen_success"} <= set(first)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("invalid_rate" in r and "approx_kl" in r for r in rows)
    assert os.path.exists(out / "checkpoint.pt") or any(p.name.startswith("checkpoint") for p in out.iterdir())
    with open(out / "metrics.csv") as fh:
        table = list(csv.DictReader(fh))
    for split in ("valid_seen", "valid_unseen"):  # the first two games of each split (eval_episodes 2)
        for metric in ("success", "invalid_rate", "episodes"):
            assert table[0][f"eval_{split}_{metric}"] == "" and table[1][f"eval_{split}_{metric}"] != ""
        assert float(table[1][f"eval_{split}_episodes"]) == 2
        per_type = [k for k in table[1] if k.startswith(f"eval_{split}_") and k.endswith("_success")
                    and k[len(f"eval_{split}_"):-len("_success")] in TASK_TYPES]
        assert len(per_type) == 2, per_type  # valid_* hold one game of each of three task types, in sorted order
    assert float(table[1]["eval_episodes"]) == 4 and table[1]["eval_success"] != ""
    assert (out / "curves.png").stat().st_size > 0
    assert main(["train", "--iterations", "3", "--resume", *common]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert "eval_valid_unseen_success" in rows[2]  # evaluated at the end


def test_bad_lm_option_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's parse error: exit status 2
        main(["train", "--model", "tiny", "--gamma", "3"])
    assert exc.value.code == 2 and "argument --gamma: gamma must lie in [0, 1]" in capsys.readouterr().err


def test_eval_splits_on_an_environment_without_splits_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "tiny", "--eval-splits", "valid_seen"])
    assert exc.value.code == 2 and "argument --eval-splits: eval_splits" in capsys.readouterr().err
