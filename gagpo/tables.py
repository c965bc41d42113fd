"""Tidy tables on disk: the CSV writer and reader shared by the trainers and the benchmarks."""
from __future__ import annotations

import csv
import os
from typing import Any, Mapping, Sequence

from .rundir import atomic_write


def write_csv(rows: Sequence[Mapping[str, Any]], path: str, float_format: str | None = None) -> None:
    """Write dict rows as CSV; the columns are the union of the rows' keys in first-seen order.

    ``float_format`` (e.g. ``".5g"``) formats float cells; ``None`` writes Python's full repr. The file
    is replaced atomically (:func:`gagpo.rundir.atomic_write`): a crash leaves the old table or the new one.
    """
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for row in rows:
            if float_format is not None:
                row = {k: format(v, float_format) if isinstance(v, float) else v for k, v in row.items()}
            w.writerow(row)


def read_csv(path: str) -> list[dict[str, Any]]:
    """Read a tidy CSV written by :func:`write_csv`; numbers become floats, empty cells are dropped."""
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rec: dict[str, Any] = {}
            for k, v in row.items():
                if v == "":
                    continue
                try:
                    rec[k] = float(v)
                except ValueError:
                    rec[k] = v
            out.append(rec)
    return out
