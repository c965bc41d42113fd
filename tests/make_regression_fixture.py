"""Record the behaviour-regression fixture: short runs of every estimator on both trainers.

    python tests/make_regression_fixture.py            # rewrites tests/fixtures/regression/{toy,lm}.json

Each case is a small configuration (overrides of :class:`gagpo.config.TrainConfig` on KeyDoor, or of
:class:`gagpo.llm.train.LMTrainConfig` with the tiny model on MiniHousehold) and the per-iteration
metrics it produced, timings and throughputs left out (:data:`VOLATILE`). ``tests/test_regression_fixture.py``
replays every case and requires the same numbers, bit for bit: a refactor that is meant to change
nothing must leave every run as it was.

The numbers belong to the machine and library versions that wrote them (recorded under ``"machine"``):
the test compares only where those match. Regenerate the fixture only when behaviour changes on
purpose (an estimator, a default, an environment), and say why in the commit.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
from typing import Any

from gagpo.config import ALGOS  # the built-in estimators

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "regression")

#: metric names left out of the fixture: wall-clock timings, throughputs and memory peaks vary run to run
VOLATILE_PREFIXES = ("time_",)
VOLATILE_SUFFIXES = ("_per_s",)
VOLATILE_NAMES = ("gpu_peak_gb",)

#: the toy trainer on small KeyDoor layouts (short solutions, so that random policies already succeed and every
#: estimator sees non-zero returns): 3 iterations of 4 groups of 4, evaluated at the end on 4 held-out seeds
TOY_BASE: dict[str, Any] = dict(env="toy_envs/KeyDoor-v0", env_kwargs={"size": 5, "min_solution_length": 3, "max_solution_length": 6},
                                max_steps=20, iterations=3, tasks_per_iter=4, group_size=4, eval_every=3, eval_episodes=4,
                                checkpoint_every=0, progress=False, threads=1)

#: case name -> overrides of TOY_BASE: every built-in estimator with its defaults, then non-default settings
TOY_CASES: dict[str, dict[str, Any]] = {
    **{algo: dict(algo=algo) for algo in ALGOS},
    "reinforce-baseline-none": dict(algo="reinforce", reinforce_baseline="none"),
    "reinforce-baseline-mean": dict(algo="reinforce", reinforce_baseline="mean"),
    "grpo-norm-none": dict(algo="grpo", norm="none"),
    "gigpo-norm-none": dict(algo="gigpo", norm="none"),  # GiGPO has no "none": it centres only ("mean")
    "gigpo-near-step_weight-0.5": dict(algo="gigpo", anchor_match="near", anchor_threshold=0.7, step_weight=0.5),
    "gagpo-near": dict(algo="gagpo", anchor_match="near"),
    "gagpo-norm-mean-lam-0.5": dict(algo="gagpo", norm="mean", lam=0.5, gamma=0.9),
    "ppo-norm-none": dict(algo="ppo", norm="none"),
}

#: the LM trainer: the offline tiny model on MiniHousehold, 2 iterations of 2 groups of 2, CPU, one thread
LM_BASE: dict[str, Any] = dict(model="tiny", iterations=2, tasks_per_iter=2, group_size=2, max_steps=3, max_new_tokens=16,
                               minibatch_size=16, micro_batch_size=8, eval_every=2, eval_episodes=2, checkpoint_every=0,
                               progress=False, device="cpu", threads=1)

LM_CASES: dict[str, dict[str, Any]] = {
    **{algo: dict(algo=algo) for algo in ALGOS},
    "gigpo-norm-none": dict(algo="gigpo", norm="none"),
}


def cpu_model() -> str:
    """The CPU's model name (Linux: from /proc/cpuinfo), else what :func:`platform.processor` says."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict[str, str]:
    """What the numbers depend on besides the code: the platform and the numeric libraries' versions."""
    import numpy
    import torch

    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(),
            "python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def stable(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row without its volatile columns, as plain JSON values (floats stay exact: ``repr`` round-trips)."""
    out = {}
    for key, value in row.items():
        if key.startswith(VOLATILE_PREFIXES) or key.endswith(VOLATILE_SUFFIXES) or key in VOLATILE_NAMES:
            continue
        out[key] = value.item() if hasattr(value, "item") else value
    return json.loads(json.dumps(out))


def run_case(trainer: str, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """The stable metrics history of one case (``trainer`` is ``"toy"`` or ``"lm"``), run in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        if trainer == "toy":
            from gagpo.config import TrainConfig
            from gagpo.trainer import train

            history = train(TrainConfig(**{**TOY_BASE, **overrides, "out_dir": os.path.join(tmp, "run")}))
        else:
            from gagpo.llm.train import LMTrainConfig, train_lm

            history = train_lm(LMTrainConfig(**{**LM_BASE, **overrides, "out_dir": os.path.join(tmp, "run")}))
    return [stable(row) for row in history]


def same(a: Any, b: Any) -> bool:
    """Exact equality of JSON values, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def differences(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> list[str]:
    """Readable differences between two histories (empty when they are :func:`same`)."""
    if len(expected) != len(got):
        return [f"{len(got)} iterations, expected {len(expected)}"]
    out = []
    for i, (e, g) in enumerate(zip(expected, got), start=1):
        for key in sorted(set(e) | set(g)):
            if not same(e.get(key, "<missing>"), g.get(key, "<missing>")):
                out.append(f"iteration {i} {key}: {g.get(key, '<missing>')!r}, expected {e.get(key, '<missing>')!r}")
    return out


def fixture_path(trainer: str) -> str:
    return os.path.join(FIXTURE_DIR, f"{trainer}.json")


def write(trainer: str) -> str:
    base, cases = (TOY_BASE, TOY_CASES) if trainer == "toy" else (LM_BASE, LM_CASES)
    data = {"machine": machine(), "base": base,
            "cases": {name: {"overrides": over, "history": run_case(trainer, over)} for name, over in cases.items()}}
    os.makedirs(FIXTURE_DIR, exist_ok=True)
    path = fixture_path(trainer)
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
    return path


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    for which in sys.argv[1:] or ["toy", "lm"]:
        print("wrote", write(which))
