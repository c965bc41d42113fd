"""`StepBatch` — the one data contract of the book: one row per agent decision.

Every stage after the environment speaks this contract: rollouts produce it, the advantage
estimators in :mod:`gagpo.advantages` consume it, and the trainer aligns per-row advantages with
per-row log-probabilities by row position. Rows may arrive in any order; nothing here assumes that
groups or trajectories are contiguous or sorted (STYLE.md: explicit ids, checked layout).

Columns (each a 1-D array of length N):

==============  ======================================================================
``group_id``    rollout group: every trajectory of a group starts from the same task and seed
``traj_id``     unique per trajectory (across the whole batch)
``step``        0-based position of the decision in its trajectory
``obs_key``     anchor key of the observation the action was taken in (any hashable;
                usually the observation text)
``next_obs_key`` anchor key of the observation that followed the action
``reward``      reward received for the action (float)
``terminated``  the environment ended the episode after this step: no bootstrap
``truncated``   the episode was cut by the step limit after this step
==============  ======================================================================

Derived, cached integer codes (the vectorised estimators work on these):

* ``group_index`` — group of each row as 0..n_groups-1;
* ``traj_index`` — trajectory of each row as 0..n_traj-1; ``traj_group`` maps trajectory → group;
* ``anchor_index`` — the anchor group (same ``group_id`` and equal ``obs_key``) of each row as
  0..n_anchors-1; ``next_anchor_index`` — the anchor group of ``(group_id, next_obs_key)``, or -1
  when that key never occurs as an ``obs_key`` in the group;
* ``next_row`` — the row of the same trajectory's next step (-1 at its last row) and ``rows_by_step`` —
  the rows grouped by step index: what a recursion along trajectories needs, in O(N) memory.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

COLUMNS: tuple[str, ...] = (
    "group_id",
    "traj_id",
    "step",
    "obs_key",
    "next_obs_key",
    "reward",
    "terminated",
    "truncated",
)


def factorize(values: Sequence[Hashable] | np.ndarray) -> tuple[np.ndarray, list]:
    """Map hashable values to dense integer codes in order of first appearance.

    Returns ``(codes, uniques)`` with ``uniques[codes[i]] == values[i]``. Works for any hashable
    (strings, ints, tuples) in O(N) dictionary operations.
    """
    table: dict[Any, int] = {}
    setdefault = table.setdefault
    codes = np.fromiter((setdefault(v, len(table)) for v in values), dtype=np.int64, count=len(values))
    return codes, list(table)


def _object_array(values: Iterable[Hashable]) -> np.ndarray:
    values = list(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@dataclass(frozen=True, eq=False)
class StepBatch:
    """One row per agent decision; see the module docstring for the columns.

    Build it from arrays (``StepBatch(group_id=..., traj_id=..., ...)``) or from a list of dicts
    (:meth:`from_rows`). Construction validates the columns and the layout and raises ``ValueError``
    naming the column and the first offending row: a column that is not 1-D, mismatched lengths, a
    ``step`` or ``reward`` that is not a number (strings from a CSV included), a non-integer step,
    NaN/inf rewards, flags that are not booleans (``True``/``False``, numpy bools or the integers
    0/1 — never the string ``"False"``, which ``bool()`` makes True), duplicate ``(traj_id, step)``,
    gaps in ``step`` (each trajectory must hold steps 0..L-1), rows after a terminal (terminated or
    truncated) row, or a trajectory that appears in two groups.
    """

    group_id: np.ndarray
    traj_id: np.ndarray
    step: np.ndarray
    obs_key: np.ndarray
    next_obs_key: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        set_ = object.__setattr__
        n = None
        for name in COLUMNS:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise ValueError(f"StepBatch column {name!r} must be a 1-D sequence, got {type(value).__name__}")
            if isinstance(value, np.ndarray) and value.ndim != 1:
                raise ValueError(f"StepBatch column {name!r} must be 1-D (one value per row); got an array of shape {value.shape}")
            if n is None:
                n = len(value)
            elif len(value) != n:
                lengths = {c: len(getattr(self, c)) for c in COLUMNS}
                raise ValueError(f"StepBatch columns have mismatched lengths: {lengths}")
        for name in ("group_id", "traj_id"):
            arr = np.asarray(getattr(self, name))
            if arr.dtype.kind not in "iu" or arr.ndim != 1:
                arr = _object_array(getattr(self, name))
            set_(self, name, arr)
        for name in ("obs_key", "next_obs_key"):
            value = getattr(self, name)
            arr = value if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 1 else _object_array(value)
            set_(self, name, arr)
        step = _number_column("step", self.step)
        if step.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(step) | (np.mod(step, 1) != 0))
            if bad.size:
                raise ValueError(f"StepBatch column 'step' must hold integers (0-based position in the trajectory); "
                                 f"row {bad[0]} holds {step[bad[0]]!r}")
        set_(self, "step", step.astype(np.int64, copy=False))
        reward = _number_column("reward", self.reward).astype(np.float64, copy=False)
        if not np.all(np.isfinite(reward)):
            bad = np.flatnonzero(~np.isfinite(reward))[:5].tolist()
            raise ValueError(f"StepBatch 'reward' must be finite; NaN/inf at rows {bad}")
        set_(self, "reward", reward)
        for name in ("terminated", "truncated"):
            set_(self, name, _flag_column(name, getattr(self, name)))
        self._validate_layout()

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> "StepBatch":
        """Build a batch from a list of dicts, each with exactly the keys in :data:`COLUMNS`."""
        expected = set(COLUMNS)
        for i, row in enumerate(rows):
            keys = set(row)
            if keys != expected:
                missing, extra = sorted(expected - keys), sorted(keys - expected)
                raise ValueError(f"row {i} of StepBatch.from_rows: missing keys {missing}, unexpected keys {extra}")
        return cls(**{c: [row[c] for row in rows] for c in COLUMNS})

    @classmethod
    def concat(cls, batches: Sequence["StepBatch"]) -> "StepBatch":
        """Concatenate batches row-wise (ids must already be unique across them)."""
        if not batches:
            raise ValueError("StepBatch.concat needs at least one batch")
        cols = {}
        for c in COLUMNS:
            parts = [getattr(b, c) for b in batches]
            if c in ("group_id", "traj_id", "obs_key", "next_obs_key"):
                cols[c] = _object_array(v for p in parts for v in p) if any(p.dtype == object for p in parts) else np.concatenate(parts)
            else:
                cols[c] = np.concatenate(parts)
        return cls(**cols)

    def to_rows(self) -> list[dict[str, Any]]:
        """The batch as a list of dicts (the inverse of :meth:`from_rows`)."""
        cols = [getattr(self, c).tolist() for c in COLUMNS]
        return [dict(zip(COLUMNS, values)) for values in zip(*cols)]

    def take(self, index: np.ndarray) -> "StepBatch":
        """A new batch with the rows ``index`` (e.g. a permutation)."""
        index = np.asarray(index)
        return StepBatch(**{c: getattr(self, c)[index] for c in COLUMNS})

    def __len__(self) -> int:
        return len(self.reward)

    def __repr__(self) -> str:
        n = len(self)
        return f"StepBatch(rows={n}, groups={self.n_groups if n else 0}, trajectories={self.n_traj if n else 0})"

    # ------------------------------------------------------------------ derived codes
    @cached_property
    def _group_codes(self) -> tuple[np.ndarray, list]:
        return _codes(self.group_id)

    @cached_property
    def _traj_codes(self) -> tuple[np.ndarray, list]:
        return _codes(self.traj_id)

    @property
    def group_index(self) -> np.ndarray:
        """Rollout group of each row as an integer 0..n_groups-1, shape (N,)."""
        return self._group_codes[0]

    @property
    def traj_index(self) -> np.ndarray:
        """Trajectory of each row as an integer 0..n_traj-1, shape (N,)."""
        return self._traj_codes[0]

    @property
    def n_groups(self) -> int:
        return len(self._group_codes[1])

    @property
    def n_traj(self) -> int:
        return len(self._traj_codes[1])

    @cached_property
    def traj_group(self) -> np.ndarray:
        """Group index of each trajectory, shape (n_traj,)."""
        out = np.empty(self.n_traj, dtype=np.int64)
        out[self.traj_index] = self.group_index
        return out

    @cached_property
    def traj_length(self) -> np.ndarray:
        """Number of rows of each trajectory, shape (n_traj,)."""
        return np.bincount(self.traj_index, minlength=self.n_traj)

    @cached_property
    def _traj_step_order(self) -> np.ndarray:
        """The rows sorted by ``(traj_index, step)`` (shared by the layout check and :attr:`next_row`)."""
        return np.lexsort((self.step, self.traj_index))

    @cached_property
    def next_row(self) -> np.ndarray:
        """Row index of the same trajectory's next step (``step + 1``), or -1 at its last row, shape (N,).

        Found by sorting the rows by ``(traj_index, step)`` — O(N log N) time, O(N) memory — so the
        recursions along trajectories (:func:`gagpo.advantages.reverse_scan`) need no padded grid.
        """
        order = self._traj_step_order
        same = self.traj_index[order[1:]] == self.traj_index[order[:-1]]
        out = np.full(len(self), -1, dtype=np.int64)
        out[order[:-1][same]] = order[1:][same]
        return out

    @cached_property
    def rows_by_step(self) -> tuple[np.ndarray, np.ndarray]:
        """``(order, bounds)``: the rows sorted by ``step`` (stable), and ``bounds`` of shape (T_max + 1,)
        such that ``order[bounds[t]:bounds[t + 1]]`` are the rows at step t of every trajectory."""
        order = np.argsort(self.step, kind="stable")
        t_max = int(self.step.max()) + 1 if len(self) else 0
        return order, np.searchsorted(self.step[order], np.arange(t_max + 1))

    @cached_property
    def _anchor_codes(self) -> tuple[np.ndarray, np.ndarray, int]:
        n = len(self)
        key_codes, _ = factorize(np.concatenate([self.obs_key, self.next_obs_key]))
        n_keys = int(key_codes.max()) + 1 if n else 1
        g = self.group_index
        pair_obs = g * n_keys + key_codes[:n]
        pair_next = g * n_keys + key_codes[n:]
        uniq, anchor = np.unique(pair_obs, return_inverse=True)
        pos = np.searchsorted(uniq, pair_next)
        pos_clipped = np.minimum(pos, max(len(uniq) - 1, 0))
        found = (pos < len(uniq)) & (uniq[pos_clipped] == pair_next) if len(uniq) else np.zeros(n, bool)
        next_anchor = np.where(found, pos_clipped, -1)
        return anchor.astype(np.int64).reshape(-1), next_anchor.astype(np.int64), len(uniq)

    @property
    def anchor_index(self) -> np.ndarray:
        """Anchor group of each row — same ``group_id`` and equal ``obs_key`` — as 0..n_anchors-1."""
        return self._anchor_codes[0]

    @property
    def next_anchor_index(self) -> np.ndarray:
        """Anchor group of ``(group_id, next_obs_key)``; -1 where the key is no ``obs_key`` of the group."""
        return self._anchor_codes[1]

    @property
    def n_anchors(self) -> int:
        return self._anchor_codes[2]

    @cached_property
    def anchor_size(self) -> np.ndarray:
        """Number of rows in each row's anchor group, shape (N,) (1 = a singleton anchor state)."""
        counts = np.bincount(self.anchor_index, minlength=self.n_anchors)
        return counts[self.anchor_index]

    # ------------------------------------------------------------------ validation
    def _validate_layout(self) -> None:
        n = len(self)
        if n == 0:
            return
        step = self.step
        if step.min() < 0:
            raise ValueError(f"StepBatch 'step' must be >= 0; found {int(step.min())}")
        traj = self.traj_index
        n_traj = self.n_traj
        # one group per trajectory
        first_group = np.full(n_traj, -1, dtype=np.int64)
        first_group[traj] = self.group_index
        if np.any(first_group[traj] != self.group_index):
            bad = np.flatnonzero(first_group[traj] != self.group_index)[0]
            raise ValueError(
                f"trajectory {self.traj_id[bad]!r} appears in two groups; each traj_id must belong to exactly one group_id"
            )
        # steps of each trajectory are exactly 0..L-1 (no duplicates, no gaps)
        order = self._traj_step_order
        t_sorted, s_sorted = traj[order], step[order]
        same = t_sorted[1:] == t_sorted[:-1]
        dup = same & (s_sorted[1:] == s_sorted[:-1])
        if np.any(dup):
            i = order[1:][dup][0]
            raise ValueError(f"duplicate (traj_id, step) = ({self.traj_id[i]!r}, {int(step[i])})")
        starts = np.concatenate([[True], ~same])
        if np.any(s_sorted[starts] != 0):
            i = order[starts][s_sorted[starts] != 0][0]
            raise ValueError(f"gap in 'step': trajectory {self.traj_id[i]!r} does not start at step 0 (first step {int(step[i])})")
        gaps = same & (s_sorted[1:] != s_sorted[:-1] + 1)
        if np.any(gaps):
            i = order[1:][gaps][0]
            raise ValueError(f"gap in 'step': trajectory {self.traj_id[i]!r} jumps to step {int(step[i])}")
        # nothing after a terminal row
        last = np.concatenate([~same, [True]])
        done = (self.terminated | self.truncated)[order]
        after = done & ~last
        if np.any(after):
            i = order[after][0]
            raise ValueError(
                f"rows after a terminal row: trajectory {self.traj_id[i]!r} ends (terminated/truncated) at step {int(step[i])} but has later steps"
            )


def _column_array(name: str, value) -> np.ndarray:
    """``value`` as a 1-D array that keeps its elements: numbers and bools get a numeric dtype, anything
    else (strings, None, nested sequences) an object array, so errors can show the row as it was given."""
    try:
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    except ValueError:  # ragged nested sequences
        arr = _object_array(value)
    if arr.ndim != 1:
        row = next((i for i, v in enumerate(value) if np.ndim(v) != 0), 0)
        raise ValueError(f"StepBatch column {name!r} must be 1-D (one value per row); got shape {arr.shape}: "
                         f"row {row} holds {value[row]!r}")
    if arr.dtype.kind not in "biuf" and not isinstance(value, np.ndarray):
        arr = _object_array(value)  # e.g. [True, "False"]: numpy would turn the True into the string "True"
    return arr


def _number_column(name: str, value) -> np.ndarray:
    """A numeric column (``step``, ``reward``) as a 1-D numeric array; strings, None and sequences are
    rejected with the first offending row (a CSV's "1.0" must be converted by the caller)."""
    arr = _column_array(name, value)
    if arr.dtype.kind in "biuf":
        return arr
    for i, v in enumerate(arr):
        if not isinstance(v, (numbers.Real, np.bool_)):
            raise ValueError(f"StepBatch column {name!r} must hold numbers; row {i} holds {v!r} ({type(v).__name__})")
    return arr.astype(np.float64)


def _flag_column(name: str, value) -> np.ndarray:
    """A flag column (``terminated``, ``truncated``) as booleans.

    Accepts real bools, numpy bools and the integers 0/1; anything else — above all strings such as
    ``"False"`` read from a CSV, which ``bool()`` would turn into True — raises with the first offending row.
    """
    arr = _column_array(name, value)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "iu":
        ok = (arr == 0) | (arr == 1)
    else:
        ok = np.fromiter((isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)) for v in arr),
                         dtype=bool, count=len(arr))
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        v = arr[i]
        raise ValueError(f"StepBatch column {name!r} must hold booleans (True/False, numpy bools or the integers 0/1); "
                         f"row {i} holds {v!r} ({type(v).__name__})")
    return arr.astype(bool)


def _codes(values: np.ndarray) -> tuple[np.ndarray, list]:
    if values.dtype.kind in "iu":
        uniq, inv = np.unique(values, return_inverse=True)
        return inv.astype(np.int64).reshape(-1), uniq.tolist()
    return factorize(values)
