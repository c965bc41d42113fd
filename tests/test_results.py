"""The committed results are what their CSVs say, and the README quotes them verbatim.

Each benchmark writes a tidy per-iteration CSV and a Markdown report next to it. These tests rebuild
every table of the committed reports from the committed CSVs with the library's own statistics
(medians, bootstrap intervals, thresholds) and require the report to contain exactly that table;
then they require every results-table row of the README to appear in one of the reports. Editing a
number by hand in a report or in the README therefore fails here.
"""
from __future__ import annotations

import os
import re

import pytest

from gagpo import credit
from gagpo.bench import headline_table
from gagpo.tables import read_csv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIG = os.path.join(ROOT, "figures")
CREDIT_REPORTS = ("credit_keydoor", "credit_keydoor_G2", "credit_household", "credit_keydoor_quick")


def _read(name: str) -> str:
    with open(os.path.join(FIG, name), encoding="utf-8") as fh:
        return fh.read()


@pytest.mark.parametrize("stem", CREDIT_REPORTS)
def test_credit_report_is_rebuilt_from_its_csv(stem):
    rows = read_csv(os.path.join(FIG, stem + ".csv"))
    summary = credit.summarise(credit.histories_by(rows))
    report = _read(stem + ".md")
    assert credit.credit_table(summary) in report, f"figures/{stem}.md does not match figures/{stem}.csv"
    for line in credit.target_verdict(summary, "steps_to_80") + credit.target_verdict(summary, "steps_to_50"):
        assert line in report


@pytest.mark.parametrize("suffix", ["", "_quick"])
def test_ablation_report_is_rebuilt_from_its_csv(suffix):
    rows = read_csv(os.path.join(FIG, f"ablation_keydoor{suffix}.csv"))
    report = _read(f"ablation_keydoor{suffix}.md")
    default_runs = credit.histories_by([r for r in rows if r["variant"] == "default"], key="variant").get("default")
    for abl, (fld, values) in credit.ABLATIONS.items():
        runs = {}
        for v in values:
            label = f"{fld}={v}"
            if v == credit.ABLATION_DEFAULTS[fld]:
                if default_runs:
                    runs[label] = default_runs
                continue
            mine = credit.histories_by([r for r in rows if r["variant"] == label], key="variant")
            if label in mine:
                runs[label] = mine[label]
        assert runs, f"no runs of ablation {abl} in the CSV"
        summary = credit.summarise(runs)
        assert credit.ablation_table(summary) in report, f"ablation {abl}: report and CSV disagree"
        assert credit.ablation_reading(abl, summary) in report


def test_headline_report_is_rebuilt_from_its_csv():
    rows = read_csv(os.path.join(FIG, "headline_keydoor.csv"))
    report = _read("headline_keydoor.md")
    random_success = float(re.search(r"\| uniform random policy \| ([0-9.]+) \|", report).group(1))
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    seeds = sorted({int(r["seed"]) for r in rows})
    assert headline_table(rows, algos, seeds, random_success) in report


def _readme_result_rows() -> list[str]:
    """Table rows with numbers in the README's results sections (headline, credit benchmark, speed)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    rows, section = [], ""
    for line in text.splitlines():
        if line.startswith("#"):
            section = line
        elif line.startswith("| ") and re.search(r"\d", line) and re.search(r"Headline|Credit|speed", section):
            rows.append(line)
    return rows


def test_readme_results_tables_quote_the_reports():
    rows = _readme_result_rows()
    assert len(rows) >= 20, "the README lost its results tables"
    reports = "\n".join(_read(f) for f in sorted(os.listdir(FIG)) if f.endswith(".md"))
    missing = [r for r in rows if r not in reports]
    assert not missing, "README rows not found in figures/*.md (regenerate them, do not edit by hand):\n" + "\n".join(missing)


def test_readme_links_the_credit_figures():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    for name in ("credit_keydoor_curves.png", "credit_keydoor_steps_to_80.png", "credit_keydoor_smoothness.png",
                 "credit_keydoor.md", "credit_keydoor_G2.md", "credit_household.md", "ablation_keydoor.md",
                 "proxy_study.md", "iteration_time.md"):
        assert f"figures/{name}" in text, f"README does not link figures/{name}"
        assert os.path.exists(os.path.join(FIG, name))
