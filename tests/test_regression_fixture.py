"""Behaviour regression: short runs of every estimator on both trainers reproduce their recorded metrics exactly.

The fixture (``tests/fixtures/regression/{toy,lm}.json``, written by ``python tests/make_regression_fixture.py``)
holds, per case, a configuration and its per-iteration metrics (timings and throughputs left out). Both
trainers are deterministic on a CPU with one thread — the same run gives the same floats, bit for bit
(checked when the fixture was written: two runs, identical files) — so every number must be equal, not close.

The numbers belong to the machine that wrote them: on another CPU, platform or version of numpy,
torch or transformers the comparison is skipped (their kernels may round differently). When behaviour
changes on purpose (an estimator, a default, an environment), regenerate the fixture and say why in the commit.
"""
from __future__ import annotations

import json
import math

import pytest

from .make_regression_fixture import LM_CASES, TOY_CASES, differences, fixture_path, machine, run_case

COMPARED = ("cpu", "machine", "python", "numpy", "torch", "transformers")


def load(trainer: str) -> dict:
    with open(fixture_path(trainer)) as fh:
        return json.load(fh)


def check_machine(recorded: dict) -> None:
    now = machine()
    changed = {k: (recorded.get(k), now.get(k)) for k in COMPARED if recorded.get(k) != now.get(k)}
    if changed:
        pytest.skip(f"the fixture was recorded elsewhere {changed} (recorded, here): regenerate it with "
                    f"python tests/make_regression_fixture.py to compare on this machine")


@pytest.mark.parametrize("trainer,name", [("toy", n) for n in TOY_CASES] + [("lm", n) for n in LM_CASES])
def test_run_reproduces_its_recorded_metrics(trainer, name):
    if trainer == "lm":
        pytest.importorskip("transformers")
    data = load(trainer)
    check_machine(data["machine"])
    case = data["cases"][name]
    got = run_case(trainer, case["overrides"])
    diff = differences(case["history"], got)
    assert not diff, f"{trainer} run {name!r} changed:\n" + "\n".join(diff[:20])


def test_fixture_covers_every_builtin_estimator_and_matches_the_generator():
    """Every built-in estimator has a case on each trainer, and the committed fixture holds exactly the
    generator's cases and base settings (regenerate after editing them)."""
    from gagpo.config import ALGOS
    from gagpo.llm.train import LM_ALGOS

    from .make_regression_fixture import LM_BASE, TOY_BASE

    for trainer, cases, base, algos in (("toy", TOY_CASES, TOY_BASE, ALGOS), ("lm", LM_CASES, LM_BASE, LM_ALGOS)):
        data = load(trainer)
        assert {c["algo"] for c in cases.values()} >= set(algos), trainer
        assert {n: c["overrides"] for n, c in data["cases"].items()} == cases, trainer
        assert data["base"] == base, trainer
        assert all(len(c["history"]) == base["iterations"] for c in data["cases"].values())


def test_the_comparison_sees_one_ulp():
    """A change in the last bit of one metric is a difference; the recorded history equals itself."""
    history = load("toy")["cases"]["gagpo"]["history"]
    changed = json.loads(json.dumps(history))
    changed[0]["adv_std"] = math.nextafter(changed[0]["adv_std"], math.inf)
    assert differences(history, changed) == [f"iteration 1 adv_std: {changed[0]['adv_std']!r}, expected {history[0]['adv_std']!r}"]
    assert not differences(history, json.loads(json.dumps(history)))
