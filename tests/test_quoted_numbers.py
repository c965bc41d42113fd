"""Every number the chapters' prose quotes has a cell output, a code cell or a committed table behind it.

The rule (what counts as a quoted result number, what backs it) is written out in ``tests/quoted_numbers.py``;
``python -m tests.quoted_numbers chapters/07_credit_lab.ipynb`` lists the unbacked numbers of a notebook.
"""
import glob
import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from tests import quoted_numbers as qn

NOTEBOOKS = sorted(glob.glob(os.path.join(qn.ROOT, "chapters", "0*.ipynb"))
                   + glob.glob(os.path.join(qn.ROOT, "chapters", "solutions", "0*.ipynb")))


def notebook(markdown: list[str], code: list[tuple[str, str]]):
    """A notebook with the given markdown cells and (source, printed output) code cells."""
    cells = [new_markdown_cell(m) for m in markdown]
    cells += [new_code_cell(src, outputs=[new_output("stream", name="stdout", text=out)] if out else [])
              for src, out in code]
    return new_notebook(cells=cells)


def quoted(markdown: str) -> list[str]:
    return [q.text for q in qn.quoted_numbers(markdown)]


def unbacked(markdown: str, printed: str = "", source: str = "pass") -> list[str]:
    return [q.text for q in qn.unbacked(notebook([markdown], [(source, printed)]), tables=[])]


# ------------------------------------------------------------------------------ the book
@pytest.mark.skipif(not NOTEBOOKS, reason="no chapters yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: os.path.relpath(p, qn.ROOT))
def test_every_quoted_number_is_backed(path):
    lines = qn.report(path)
    assert not lines, ("numbers quoted in the prose that no output, code cell or committed table shows "
                       "(rephrase, or point to the output that backs them):\n" + "\n".join(lines))


def test_the_checker_can_fail_on_a_real_chapter():
    """Strip chapter 7's outputs and its results lose their backing: the check depends on what cells print."""
    path = os.path.join(qn.ROOT, "chapters", "07_credit_lab.ipynb")
    if not os.path.exists(path):
        pytest.skip("no chapter 7")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    assert len(qn.unbacked(nb, tables=[])) >= 10


# ------------------------------------------------------------------------------ the checker
def test_flags_the_unbacked_number_and_passes_the_backed_one():
    nb = notebook(["GAGPO ends at 0.72 held-out success, GRPO at 0.31."],
                  [("print(final)", "gagpo 0.7234\ngrpo 0.2650\n")])
    assert [q.text for q in qn.unbacked(nb, tables=[])] == ["0.31"]


def test_code_sources_and_committed_tables_back_numbers(tmp_path):
    assert unbacked("each run takes 40,000 steps", source="budget = 40_000") == []
    table = tmp_path / "figures" / "my_table.md"
    table.parent.mkdir()
    table.write_text("| algo | success |\n|---|---|\n| gagpo | 0.66 |\n")
    nb = notebook(["GAGPO reaches 0.66 (figures/my_table.md)."], [("pass", "")])
    assert qn.committed_tables(nb, root=str(tmp_path)) == [str(table)]
    assert qn.unbacked(nb, tables=[str(table)]) == []
    unnamed = notebook(["GAGPO reaches 0.66."], [("pass", "")])
    assert qn.committed_tables(unnamed, root=str(tmp_path)) == []  # a table backs only notebooks that name it


def test_a_large_csv_log_is_not_a_committed_table(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "big_log.csv").write_text("x\n" + "0.5\n" * (qn.MAX_CSV_ROWS + 1))
    (tmp_path / "figures" / "small.csv").write_text("x\n0.5\n")
    nb = notebook(["see big_log and small"], [])
    assert [os.path.basename(p) for p in qn.committed_tables(nb, root=str(tmp_path))] == ["small.csv"]


@pytest.mark.parametrize("markdown, expected", [
    ("success 0.72, 16% of rows and 280,000 steps; 185k steps; 130 ms", ["0.72", "16%", "280,000", "185k", "130 ms"]),
    ("between 2–16% and 0.47–0.49", ["2%", "16%", "0.47", "0.49"]),
    ("10 seeds, 8 tasks × 8 rollouts, a 7×7 grid, in 2026, step limit 60", []),
    ("$\\hat V = 0.25$ and $$A = 0.75$$ and `lr=0.001` and\n```\nx = 0.5\n```", []),
    ("## 7.3 The full head-to-head\nas §7.1 says, see chapter 7.4", []),
    ("Python 3.11, Qwen2.5-0.5B, KeyDoor-v0, eps 1e-6, 2.5B tokens", []),
    ("the ratio $e^{0.45} = 1.57$ is past 1.2; its ratio 1.57", ["1.2"]),  # 1.57 names the math's constant
    ("below 1%, at most 0.6×, within 10% of 1, exceeds 0.21", ["0.21"]),  # round bounds are thresholds
    ("The release (Shridhar et al., 2021) has 3,553 games. We measured 0.41.", ["0.41"]),
    ("We found 0.41.\n\n## Exercises\n\n1. Find $G$ for which the difference is below 5 %, then 0.33.", ["0.41"]),
    ("GAGPO 0.6× faster, a 1.2M-row batch", ["0.6×", "1.2M"]),
])
def test_what_counts_as_a_quoted_number(markdown, expected):
    assert quoted(markdown) == expected


@pytest.mark.parametrize("markdown, printed, backed", [
    ("ends at 0.72", "0.7234", True),
    ("ends at 0.723", "0.72", False),        # the prose may not be more precise than its source
    ("ends at 0.72", "0.7", False),
    ("ends at 0.30", "0.3", True),           # Python prints 0.30 as 0.3
    ("ends at 0.30", "0.31", False),
    ("16% of rows", "0.158", True),
    ("16% of rows", "16.2%", True),
    ("16% of rows", "16", False),            # a bare integer is not a percentage
    ("280,000 steps", "280000", True),
    ("280,000 steps", "280k", False),        # written as exact, backed only by a rounded 280k
    ("about 280,000 steps", "279,612", True),
    ("280,000 steps", "279,612", False),
    ("185k steps", "185,474", True),
    ("185k steps", "190k", False),
    ("about 2,500–2,900 steps", "2,527 ... 2,864", True),
    ("130 ms", "131", False),
    ("about 130 ms", "131.2", True),
    ("exceeds 0.21", "0.2204", False),
])
def test_what_backs_a_quoted_number(markdown, printed, backed):
    assert (unbacked(markdown, printed) == []) is backed
