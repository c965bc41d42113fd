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
                 "credit_keydoor.md", "credit_keydoor_G2.md", "credit_keydoor_variants.md", "credit_household.md", "ablation_keydoor.md",
                 "proxy_study.md", "iteration_time.md"):
        assert f"figures/{name}" in text, f"README does not link figures/{name}"
        assert os.path.exists(os.path.join(FIG, name))


# ------------------------------------------------------------------ chapter 2's vanilla REINFORCE as variant rows (issue 14)
VARIANTS_STEM = "credit_keydoor_variants"


def _without_cost(text: str) -> list[str]:
    """A report's lines but its last sentence, which measures what producing it cost on the machine that did."""
    return [line for line in text.rstrip("\n").split("\n") if not line.startswith("Produced by")]


def _variant_summary():
    rows = read_csv(os.path.join(FIG, VARIANTS_STEM + ".csv"))
    return rows, credit.summarise(credit.histories_by(rows))


def test_variant_report_is_rebuilt_from_its_csv_and_profile():
    """Every sentence of figures/credit_keydoor_variants.md but the cost comes from its CSV, the full KeyDoor profile and
    gagpo.credit.VARIANTS: the table, what each variant changes against its estimator's row, the KL caveat."""
    from gagpo.reports import credit_markdown

    rows, summary = _variant_summary()
    prof = credit.get_profile("keydoor", quick=False)
    names = list(summary)
    assert names == list(credit.VARIANTS) and {r["profile"] for r in rows} == {prof.name}
    n_runs = sum(s["n_seeds"] for s in summary.values())
    text = credit_markdown(prof, "full profile", sorted({int(r["seed"]) for r in rows}), summary, n_runs, n_runs, "Produced by ...",
                           variants={v: (credit.VARIANTS[v][0], credit.variant_changes(prof, v)) for v in names},
                           reference="credit_keydoor",
                           one_step=[v for v in names if credit.one_gradient_step(prof.config(credit.VARIANTS[v][0], 0, **credit.VARIANTS[v][1]))])
    report = _read(VARIANTS_STEM + ".md")
    assert _without_cost(text) == _without_cost(report)
    assert "python -m gagpo bench credit --variants " + " ".join(names) in report  # the command that wrote it
    assert n_runs == len(credit.VARIANTS) * len(prof.seeds)  # every seed of the profile, like the committed head-to-head


def _readme_vanilla_paragraphs() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    start = text.index("**Chapter 2's vanilla REINFORCE**")
    return text[start:text.index("**Reading.**", start)]


def test_readme_vanilla_reinforce_quotes_its_settings_and_numbers():
    """The README's vanilla REINFORCE paragraphs name every setting in which the variants differ from the `reinforce` row
    (with the variant's value) and no other, and each number they quote is recomputed here from the committed CSVs."""
    import numpy as np

    from gagpo.config import TrainConfig

    text = _readme_vanilla_paragraphs()
    prof = credit.get_profile("keydoor", quick=False)
    fields = set(TrainConfig().to_dict())
    named = {k: v.strip('"') for k, v in re.findall(r"`(\w+)=([^`]+)`", text) if k in fields}
    changed = {k: new for v in credit.VARIANTS for k, (_, new) in credit.variant_changes(prof, v).items()}
    assert set(named) == set(changed), (named, changed)
    for k, v in changed.items():
        assert (float(named[k]) == v) if isinstance(v, (int, float)) else named[k] == v, (k, named[k], v)
    _, vanilla = _variant_summary()
    head = credit.summarise(credit.histories_by(read_csv(os.path.join(FIG, "credit_keydoor.csv"))))
    with_b, without = vanilla["reinforce-vanilla"], vanilla["reinforce-vanilla-no-baseline"]
    flat = " ".join(text.split())  # the prose without its line breaks
    assert (f"a median final held-out success of {with_b['final_success'][0]:.2f} with the `step_mean` baseline and "
            f"{without['final_success'][0]:.2f} without one") in flat
    assert f"against {head['reinforce']['final_success'][0]:.2f} for the same advantage estimator in the PPO-clip update" in flat
    assert "no seed reaching 50%" in flat and with_b["reached_50"] == without["reached_50"] == 0
    assert "not separated (their intervals overlap)" in flat
    for key in ("final_success", "auc_success"):
        (_, lo1, hi1), (_, lo2, hi2) = with_b[key], without[key]
        assert lo1 <= hi2 and lo2 <= hi1, key
    # "8 CPU-minutes for the 20 runs": the report's cost sentence
    m = re.search(r"(\d+) CPU-minutes for\s+the (\d+) runs", text)
    report = _read(VARIANTS_STEM + ".md")
    assert m and f"producing the {m.group(2)}/{m.group(2)} timed runs took {m.group(1)} CPU-minutes" in report
    assert int(m.group(2)) == sum(s["n_seeds"] for s in vanilla.values())
    # the KL column is 0 by construction for one gradient step per batch
    assert all(np.allclose(s["kl_std"], 0.0) for s in vanilla.values())
