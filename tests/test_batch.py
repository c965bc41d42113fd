"""StepBatch: construction, derived codes and validation errors that say what to fix."""
from __future__ import annotations

import numpy as np
import pytest

from gagpo.batch import COLUMNS, StepBatch, factorize


def rows_two_trajs():
    return [
        dict(group_id="g", traj_id="t0", step=0, obs_key="a", next_obs_key="b", reward=0.0, terminated=False, truncated=False),
        dict(group_id="g", traj_id="t0", step=1, obs_key="b", next_obs_key="c", reward=1.0, terminated=True, truncated=False),
        dict(group_id="g", traj_id="t1", step=0, obs_key="a", next_obs_key="z", reward=0.0, terminated=False, truncated=True),
    ]


def test_from_rows_and_arrays_agree():
    rows = rows_two_trajs()
    b1 = StepBatch.from_rows(rows)
    b2 = StepBatch(**{c: np.array([r[c] for r in rows], dtype=object if c in ("obs_key", "next_obs_key") else None) for c in COLUMNS})
    assert len(b1) == len(b2) == 3
    assert b1.to_rows() == rows
    for c in COLUMNS:
        assert list(getattr(b1, c)) == list(getattr(b2, c))
    assert b1.n_groups == 1 and b1.n_traj == 2
    np.testing.assert_array_equal(b1.traj_length, [2, 1])


def test_anchor_codes():
    b = StepBatch.from_rows(rows_two_trajs())
    assert b.anchor_index[0] == b.anchor_index[2] != b.anchor_index[1]
    np.testing.assert_array_equal(b.anchor_size, [2, 1, 2])
    # next of row 0 is "b" (an obs_key of the group); "c" and "z" never are
    assert b.next_anchor_index[0] == b.anchor_index[1]
    np.testing.assert_array_equal(b.next_anchor_index[1:], [-1, -1])


def test_anchor_keys_do_not_cross_groups():
    rows = rows_two_trajs()
    rows[2]["group_id"] = "other"
    b = StepBatch.from_rows(rows)
    assert b.anchor_index[0] != b.anchor_index[2]


def test_hashable_keys_of_any_kind():
    rows = rows_two_trajs()
    for r in rows:
        r["obs_key"], r["next_obs_key"] = (1, r["obs_key"]), (1, r["next_obs_key"])
        r["traj_id"] = {"t0": 10, "t1": 11}[r["traj_id"]]
    b = StepBatch.from_rows(rows)
    assert b.anchor_size.tolist() == [2, 1, 2]


def test_concat_and_take():
    b = StepBatch.from_rows(rows_two_trajs())
    rows = rows_two_trajs()
    for r in rows:
        r["traj_id"] += "x"
        r["group_id"] = "h"
    both = StepBatch.concat([b, StepBatch.from_rows(rows)])
    assert len(both) == 6 and both.n_groups == 2 and both.n_traj == 4
    perm = np.array([2, 0, 1])
    assert b.take(perm).to_rows() == [b.to_rows()[i] for i in perm]


def test_factorize_first_appearance():
    codes, uniq = factorize(["b", "a", "b", "c"])
    assert codes.tolist() == [0, 1, 0, 2] and uniq == ["b", "a", "c"]


def test_empty_batch():
    b = StepBatch(**{c: [] for c in COLUMNS})
    assert len(b) == 0


@pytest.mark.parametrize("mutate,message", [
    (lambda rows: rows[1].update(reward=float("nan")), "finite"),
    (lambda rows: rows[1].update(reward=float("inf")), "finite"),
    (lambda rows: rows[1].update(step=0), "duplicate"),
    (lambda rows: rows[1].update(step=2), "gap"),
    (lambda rows: rows[2].update(step=1), "does not start at step 0"),
    (lambda rows: rows[0].update(terminated=True), "after a terminal"),
    (lambda rows: rows[0].update(truncated=True), "after a terminal"),
    (lambda rows: rows[1].update(group_id="other"), "two groups"),
    (lambda rows: rows[1].pop("reward"), "missing keys"),
    (lambda rows: rows[1].update(extra=1), "unexpected keys"),
    (lambda rows: rows[1].update(step=-1), ">= 0"),
])
def test_validation_errors(mutate, message):
    rows = rows_two_trajs()
    mutate(rows)
    with pytest.raises(ValueError, match=message):
        StepBatch.from_rows(rows)


def test_mismatched_lengths():
    cols = {c: [r[c] for r in rows_two_trajs()] for c in COLUMNS}
    cols["reward"] = cols["reward"][:2]
    with pytest.raises(ValueError, match="mismatched lengths"):
        StepBatch(**cols)


def test_scalar_column_rejected():
    cols = {c: [r[c] for r in rows_two_trajs()] for c in COLUMNS}
    cols["obs_key"] = "abc"
    with pytest.raises(ValueError, match="1-D sequence"):
        StepBatch(**cols)


# ---------------------------------------------------------------------- column types (issue 10)
def columns(**changes):
    cols = {c: [r[c] for r in rows_two_trajs()] for c in COLUMNS}
    cols.update(changes)
    return cols


@pytest.mark.parametrize("name,value,message", [
    ("reward", np.zeros((3, 2)), r"'reward' must be 1-D .* shape \(3, 2\)"),        # len 3, but 6 numbers
    ("reward", [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], r"'reward' must be 1-D .* row 0"),
    ("reward", [0.0, [1.0, 1.0], 0.0], r"'reward' must hold numbers; row 1"),
    ("step", np.array([[0], [1], [0]]), r"'step' must be 1-D"),
    ("terminated", np.zeros((3, 1), dtype=bool), r"'terminated' must be 1-D"),
    ("group_id", np.array([["g"], ["g"], ["g"]]), r"'group_id' must be 1-D"),
    ("obs_key", np.array([["a"], ["b"], ["a"]], dtype=object), r"'obs_key' must be 1-D"),
])
def test_columns_must_be_one_dimensional(name, value, message):
    with pytest.raises(ValueError, match=message):
        StepBatch(**columns(**{name: value}))


def test_csv_strings_in_flags_are_rejected_with_column_and_row():
    rows = rows_two_trajs()
    rows[0]["terminated"] = "False"  # bool("False") is True: the bootstrap of row 0 would silently vanish
    with pytest.raises(ValueError, match=r"'terminated' must hold booleans.*row 0 holds 'False'"):
        StepBatch.from_rows(rows)
    with pytest.raises(ValueError, match=r"'truncated' must hold booleans.*row 2 holds 'True'"):
        StepBatch(**columns(truncated=[False, False, "True"]))  # a real bool before the string stays a bool


@pytest.mark.parametrize("bad,row", [
    ([False, "False", False], 1), ([0, 2, 0], 1), ([0.0, 1.0, 0.0], 0), ([False, True, None], 2),
    (np.array(["0", "1", "0"]), 0), (np.array([0, 1, -1]), 2), (np.array([0.0, 1.0, 0.0]), 0),
])
def test_flags_accept_only_booleans_and_zero_one_integers(bad, row):
    with pytest.raises(ValueError, match=rf"'terminated' must hold booleans.*row {row} holds"):
        StepBatch(**columns(terminated=bad))


@pytest.mark.parametrize("good", [
    [False, True, False], [np.False_, np.True_, np.False_], [0, 1, 0], np.array([0, 1, 0]), np.array([0, 1, 0], dtype=np.uint8),
    np.array([False, True, False]), np.array([0, True, np.False_], dtype=object),
])
def test_flags_from_bools_numpy_bools_and_zero_one_integers(good):
    b = StepBatch(**columns(terminated=good))
    assert b.terminated.dtype == bool and b.terminated.tolist() == [False, True, False]


@pytest.mark.parametrize("name,value,message", [
    ("step", [0, 1.5, 0], r"'step' must hold integers.*row 1"),
    ("step", [0, float("nan"), 0], r"'step' must hold integers.*row 1"),
    ("step", ["0", "1", "0"], r"'step' must hold numbers; row 0 holds '0'"),
    ("reward", [0.0, "1.0", 0.0], r"'reward' must hold numbers; row 1 holds '1.0'"),
    ("reward", [0.0, None, 0.0], r"'reward' must hold numbers; row 1 holds None"),
])
def test_numeric_columns_name_the_offending_row(name, value, message):
    with pytest.raises(ValueError, match=message):
        StepBatch(**columns(**{name: value}))
    assert StepBatch(**columns(step=[0.0, 1.0, 0.0])).step.dtype == np.int64  # whole floats are fine
