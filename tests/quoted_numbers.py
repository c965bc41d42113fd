r"""Which numbers quoted in a chapter's prose have nothing behind them? (issue 14: every number the prose quotes
is backed by a cell output or a committed file.)

**What counts as a quoted result number** — a number in a markdown cell's prose written the way results are:

* a decimal: ``0.72``, ``1.2``, ``0.6×``;
* a percentage: ``16%``, ``0.5 %`` — in a range ``2–16%`` both ends are percentages;
* an integer with thousands separators: ``280,000``;
* a count in thousands or millions: ``185k``, ``1.2M``;
* a time: ``130 ms``, ``84 CPU-minutes``, ``4.6 min``.

Not counted, by rule:

* plain integers ("10 seeds", "8 tasks × 8 rollouts", "step limit 60", list items, years, chapter numbers) —
  settings and counts, not measured results; sizes such as ``7×7``;
* anything inside LaTeX math (``$…$``, ``$$…$$``, ``\(…\)``), and a prose number equal to a constant of the
  same cell's math (it names that constant); inline code and fenced code; link targets, HTML tags, URLs;
* section numbers (a heading's leading number, ``§7.1``, "chapter 7.4"), software versions ("Python 3.11"),
  and numbers glued to a name (``Qwen2.5-0.5B``, ``v0``, ``1e-6``);
* a round threshold stated as a bound — "below 1%", "at most 0.6×", "within 10%" (one significant digit after
  below/under/at most/above/over/at least/within/up to/exceeds/<, >, ≤, ≥): no single printed number backs
  or refutes a bound; a bound with more digits ("exceeds 0.21") is checked like any number;
* the sentences of an "Exercises" section (they pose questions), and a sentence that cites a published source
  — "(Shridhar et al., 2021)" or a link — whose numbers are that source's (a dataset's size), not this book's.

**What backs it** — a number equal to it at the precision it is written with, in the notebook's code cells
(sources: the settings a run uses), its cell outputs (stream text and ``text/*`` results; not errors), or a
committed table that the notebook names (the file stem, e.g. ``credit_keydoor``, in some cell's source):
``figures/*.md``, and ``figures/*.csv`` of at most ``MAX_CSV_ROWS`` data rows (a per-iteration log of
thousands of rows would back any two-decimal number by accident). "Equal at the written precision":

* ``0.72`` is backed by 0.7234 or 0.72, not by 0.7 (a backing number is at least as precise as the quote,
  except that trailing zeros after the point are free: Python prints 0.30 as 0.3);
* ``16%`` by 0.158 or 16.2% (percentages and fractions are one number); a bare 16 never backs 16%;
* ``280,000`` only by 280,000 exactly (trailing zeros are significant), ``about 280,000`` by 275,000–285,000
  ("about", "around", "roughly", "nearly", "~", "≈" say the prose rounded);
* ``185k`` by 185,474 or 185k, not by "190k".

Known limits: presence is not meaning. A number can be backed by an unrelated output that happens to print it
(the denser a notebook's tables, the likelier), and numbers read off a figure are not text; the checker finds
prose numbers with *nothing* behind them, it does not prove the others right.

Run ``python -m tests.quoted_numbers [notebooks…]`` to list the unbacked numbers with their context.
"""
from __future__ import annotations

import bisect
import glob
import os
import re
import sys
from dataclasses import dataclass

import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_CSV_ROWS = 100

# ----------------------------------------------------------------------------------- prose -> candidates
_MATH = r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)|(?<!\\)\$.*?(?<!\\)\$"
_STRIP = [  # spans of markdown that quote no result; replaced by a space
    r"^#+\s*Exercises\b.*?(?=^#|\Z)",                # exercises pose questions, they report no results
    r"```.*?```", r"~~~.*?~~~",                      # fenced code
    _MATH,                                           # LaTeX: equations and their constants
    r"`[^`]*`",                                      # inline code
    r"\]\([^)]*\)", r"<[^>]*>", r"https?://\S+",     # link targets, HTML tags, bare URLs
    r"^\s*#+\s*[\d.]+",                              # a heading's section number
    r"§\s*\d+(?:\.\d+)*",                            # §7.1
    r"\b(?:python|version|cuda|torch|numpy)\s+\d+(?:\.\d+)+",  # software versions
    r"\b(?:chapters?|sections?|exercises?|figures?|tables?|eq\.?|equations?)\s+\d+(?:\.\d+)+",
]
_STRIP_RE = [re.compile(p, re.S | re.M | re.I) for p in _STRIP]
_MATH_RE = re.compile(_MATH, re.S)
# a sentence that cites a published source ("(Shridhar et al., 2021)", "Schulman et al. (2016)") or links
# to one quotes that source's numbers (a dataset's size, a paper's result), not this book's
_CITATION = re.compile(r"et al\.?,?\s*\(?\d{4}|\(\s*[A-Z][\w-]+(?: and [A-Z][\w-]+)?,\s*\d{4}\s*\)|\]\(https?://")

_NUM = r"\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?"
_TIME_UNIT = r"(?:ms|s|sec|seconds?|min|minutes?|h|hours?|CPU-minutes|CPU-hours|process-minutes)\b"
_CANDIDATE = re.compile(
    rf"(?P<bound>(?i:below|under|less than|fewer than|at most|above|over|more than|at least|within|up to|"
    rf"exceeds?|<|>|≤|≥)\s*)?"
    rf"(?P<approx>(?i:about|around|roughly|approximately|nearly|almost|some|~|≈)\s*)?"
    rf"(?<![\w./])(?<!\w-)(?P<a>{_NUM})"                            # not glued to a name or a path
    rf"(?:\s*[–-]\s*(?P<b>{_NUM}))?"                                # a range: 0.47–0.49, 2–16%
    rf"(?P<unit>\s*%|[kM](?![\w])|\s*{_TIME_UNIT}|×)?"
    rf"(?![\w.]?\d)(?![A-Za-z_])"                                   # not the start of 1e-6, 2.5B, 3rd
)
_SCALE = {"%": 0.01, "k": 1e3, "M": 1e6}


@dataclass(frozen=True)
class Quoted:
    """One quoted number: its text, its value (percentages as fractions), the half-width of the interval
    of values that would be written as it (its precision), and the coarsest precision a backing number
    may be written with (``0.30`` is backed by a printed ``0.3``: Python prints 0.30 that way)."""

    text: str
    value: float
    half_unit: float
    cell: int
    backing_half_unit: float = 0.0

    def __post_init__(self):
        if not self.backing_half_unit:
            object.__setattr__(self, "backing_half_unit", self.half_unit)


def _precision(digits: str, approximate: bool) -> tuple[float, float]:
    """Value and half-unit of a written number: '0.72' -> (0.72, 0.005); '280,000' -> (280000, 0.5), but
    'about 280,000' -> (280000, 5000): trailing zeros are significant unless the prose says it rounded."""
    plain = digits.replace(",", "").replace("_", "")
    value = float(plain)
    if "." in plain:
        return value, 0.5 * 10.0 ** -len(plain.split(".")[1])
    zeros = len(plain) - len(plain.rstrip("0")) if value and approximate else 0
    return value, 0.5 * 10.0 ** zeros


def _significant_digits(digits: str) -> int:
    """'0.21' -> 2, '2' -> 1, '400,000' -> 1, '0.05' -> 1, '1.5' -> 2."""
    plain = digits.replace(",", "")
    core = plain.replace(".", "").lstrip("0")
    return len(core if "." in plain else core.rstrip("0")) or 1


def prose(source: str) -> str:
    """A markdown cell's text with everything that quotes no result blanked out."""
    source = "".join(" " if _CITATION.search(s) else s for s in re.split(r"((?<=[.!?])\s+|\n\s*\n)", source))
    for pattern in _STRIP_RE:
        source = pattern.sub(" ", source)
    return source


def quoted_numbers(source: str, cell: int = -1) -> list[Quoted]:
    """The quoted result numbers of one markdown cell (see the module docstring for the rule)."""
    constants = [v for m in _MATH_RE.finditer(source) for v, _ in numbers_in(m.group(0).replace("{,}", ","))]
    out = []
    for m in _CANDIDATE.finditer(prose(source)):
        unit = (m["unit"] or "").strip()
        for digits in filter(None, (m["a"], m["b"])):
            if m["bound"] and _significant_digits(digits) == 1:
                continue  # "below 1%", "at most 0.6×": a round threshold, which no printed number backs or refutes
            if not unit and "." not in digits and "," not in digits:
                continue  # a plain integer: a setting or a count, not a quoted result
            if unit == "×" and "." not in digits:
                continue  # 8 × 8, 7×7: sizes
            value, half = _precision(digits, bool(m["approx"]))
            scale = _SCALE.get(unit, 1.0)
            if any(abs(c - value * scale) <= half * scale for c in constants):
                continue  # the prose names a constant of the cell's own equation
            text = m.group(0)[m.start("a") - m.start():].strip() if m["b"] is None else f"{digits}{unit}"
            coarse = _precision(digits.rstrip("0").rstrip(".") if "." in digits else digits, False)[1]
            out.append(Quoted(text, value * scale, half * scale, cell, coarse * scale))
    return out


# ----------------------------------------------------------------------------------- backing numbers
_BACKING = re.compile(r"(?<![\w.])(\d+(?:[,_]\d{3})*(?:\.\d+)?)(?:[eE]([-+]?\d+))?(\s*%|k(?![\w]))?")


def numbers_in(text: str) -> list[tuple[float, float]]:
    """Every number written in ``text`` (outputs, code, tables) as ``(value, half_unit)``: 1,234 and 1_234
    are (1234, 0.5), 0.25 is (0.25, 0.005), 185k is (185000, 500), 16% is (0.16, 0.005), 1.5e3 is (1500, 50)."""
    out = []
    for m in _BACKING.finditer(text):
        value, half = _precision(m[1], approximate=False)
        scale = 10.0 ** int(m[2]) if m[2] else 1.0
        scale *= _SCALE.get((m[3] or "").strip(), 1.0)
        out.append((value * scale, half * scale))
    return out


def _output_text(output) -> str:
    """The text of one cell output (stream, or the text/* parts of a result); '' for errors and images."""
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") in ("execute_result", "display_data"):
        data = output.get("data", {})
        return "\n".join(v if isinstance(v, str) else "".join(v) for k, v in data.items() if k.startswith("text/"))
    return ""  # errors back nothing


def committed_tables(nb, root: str = ROOT) -> list[str]:
    """The committed tables that ``nb`` names (the file's stem in any cell's source, e.g. ``credit_keydoor``
    for figures/credit_keydoor.md): figures/*.md and the figures/*.csv of at most MAX_CSV_ROWS data rows."""
    sources = "\n".join(cell.source for cell in nb.cells)
    paths = []
    for path in sorted(glob.glob(os.path.join(root, "figures", "*.md")) + glob.glob(os.path.join(root, "figures", "*.csv"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        if not re.search(rf"(?<!\w){re.escape(stem)}(?!\w)", sources):
            continue
        if path.endswith(".csv"):
            with open(path, encoding="utf-8") as f:
                if sum(1 for _ in f) - 1 > MAX_CSV_ROWS:
                    continue
        paths.append(path)
    return paths


class Backing:
    """The numbers that can back a quote, sorted by value; ``backs(q)`` is a binary search."""

    def __init__(self, texts):
        self.numbers = sorted({n for t in texts for n in numbers_in(t)})
        self.values = [v for v, _ in self.numbers]

    def backs(self, q: Quoted) -> bool:
        """Some number equals ``q`` at ``q``'s precision and is written at least as precisely."""
        tol = q.half_unit * (1 + 1e-9) + 1e-12
        lo = bisect.bisect_left(self.values, q.value - tol)
        hi = bisect.bisect_right(self.values, q.value + tol)
        return any(half <= q.backing_half_unit * (1 + 1e-9) + 1e-12 for _, half in self.numbers[lo:hi])


def notebook_texts(nb) -> list[str]:
    """The code cells' sources and the cells' text outputs of a notebook."""
    texts = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            texts.append(cell.source)
            texts += [_output_text(o) for o in cell.get("outputs", [])]
    return texts


def unbacked(nb, tables: list[str] | None = None) -> list[Quoted]:
    """The quoted numbers of ``nb``'s markdown cells that no code, output or committed table backs."""
    table_texts = []
    for path in committed_tables(nb) if tables is None else tables:
        with open(path, encoding="utf-8") as f:
            table_texts.append(f.read())
    backing = Backing(notebook_texts(nb) + table_texts)
    return [q for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
            for q in quoted_numbers(cell.source, i) if not backing.backs(q)]


def report(path: str) -> list[str]:
    """One line per unbacked number of the notebook at ``path``: where it is and its context."""
    nb = nbformat.read(path, as_version=4)
    lines = []
    for q in unbacked(nb):
        src = nb.cells[q.cell].source
        at = src.find(q.text.split("–")[0])
        context = src[max(0, at - 60): at + 60].replace("\n", " ")
        lines.append(f"{os.path.relpath(path, ROOT)} cell {q.cell}: {q.text!r}  …{context}…")
    return lines


if __name__ == "__main__":
    for p in sys.argv[1:] or sorted(glob.glob(os.path.join(ROOT, "chapters", "0*.ipynb"))):
        print("\n".join(report(p)) or f"{p}: every quoted number is backed")
