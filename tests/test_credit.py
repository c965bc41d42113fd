"""The credit-assignment benchmark (gagpo.credit, gagpo.harness, gagpo.reports): report sentences on known data,
profiles and ablation variants, the harness on a tiny budget. The statistics are tested in test_stats.py."""
from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import pytest

from gagpo import credit as C
from gagpo import harness
from gagpo.__main__ import build_parser


# ====================================================================== report sentences on known data
def test_ratio_and_target_verdicts():
    per = lambda vals: [{"steps_to_80": v} for v in vals]  # noqa: E731 - a tiny fixture
    summ = lambda **kw: {a: {"per_seed": per(v), "n_seeds": len(v), "budget": 1000.0, "reached_80": int(np.isfinite(v).sum())} for a, v in kw.items()}  # noqa: E731
    met = C.target_verdict(summ(gagpo=[100.0, 100.0, 100.0], grpo=[400.0, 400.0, 400.0], gigpo=[200.0, 200.0, 200.0]))
    assert "0.25 [0.25, 0.25]" in met[0] and "**met**" in met[0] and "**met**" in met[1]
    missed = C.target_verdict(summ(gagpo=[300.0] * 3, grpo=[400.0] * 3, gigpo=[200.0] * 3))
    assert "**not met**" in missed[0] and "**not met**" in missed[1]
    censored = C.target_verdict(summ(gagpo=[500.0] * 3, grpo=[np.inf] * 3, gigpo=[np.inf] * 3))
    assert "censored" in censored[0] and "below 0.50" in censored[0] and "**met**" in censored[0] and "**met**" in censored[1]
    undetermined = C.target_verdict(summ(gagpo=[900.0] * 3, grpo=[np.inf] * 3, gigpo=[1000.0] * 3))
    assert "**undetermined**" in undetermined[0] and "0.90" in undetermined[1] and "**met**" in undetermined[1]
    never = C.target_verdict(summ(gagpo=[np.inf] * 3, grpo=[np.inf] * 3, gigpo=[100.0] * 3))
    assert len(never) == 1 and "**not met**" in never[0]


# ====================================================================== profiles, variants, CLI
def test_credit_still_offers_every_name_it_had():
    """The split into gagpo.stats, gagpo.harness and gagpo.reports kept gagpo.credit's public names,
    those the chapters import among them."""
    import re

    from gagpo import reports, stats

    before = ["bootstrap_ci", "steps_to_threshold", "eval_curve", "curves_on_grid", "smoothness", "run_summary", "Profile",
              "PROFILES", "get_profile", "finished_history", "run_configs", "tidy_rows", "write_csv", "read_csv",
              "histories_by", "summarise", "ratio_ci", "plot_curves", "plot_steps_to", "plot_smoothness", "credit_table",
              "target_verdict", "credit", "ABLATIONS", "ablation_variants", "ablation_reading", "ablations", "iteration_time",
              "cost_text", "report_dir", "compare_with_committed", "CSV_FLOAT", "CSV_COLUMNS", "SUMMARY_KEYS", "ENVS",
              "ABLATION_DEFAULTS", "ABLATION_PROFILES", "ablation_table", "training_time"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in ("chapters", os.path.join("chapters", "solutions")):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            if name.endswith(".ipynb"):
                cells = json.load(open(os.path.join(root, folder, name), encoding="utf-8"))["cells"]
                code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
                for wrapped, line in re.findall(r"from gagpo\.credit import (?:\(([^)]*)\)|([^(\n]+))", code):
                    before += [n.strip() for n in (wrapped or line).replace("\n", ",").split(",") if n.strip()]
    assert "summarise" in before and "target_verdict" in before  # chapter 7's imports were read
    missing = [n for n in before if not hasattr(C, n)]
    assert not missing, f"gagpo.credit lost {missing}"
    assert set(C.__all__) <= set(dir(C))
    assert C.bootstrap_ci is stats.bootstrap_ci and C.credit_table is reports.credit_table and C.run_configs is harness.run_configs


def test_profiles_share_one_budget_and_the_ablations_keep_the_batch():
    prof = C.get_profile("keydoor", quick=False)
    cfgs = [prof.config(a, 0) for a in prof.algos]
    assert {c.env_step_budget for c in cfgs} == {prof.env_step_budget} and len(prof.seeds) >= 10
    assert {(c.tasks_per_iter, c.group_size) for c in cfgs} == {(8, 8)}
    assert all(c.resume and c.out_dir.startswith(os.path.join("runs", "credit", "keydoor-full")) for c in cfgs)
    variants = C.ablation_variants()
    assert {a for a, _, _ in variants} == {"lam", "gamma", "group_size", "norm", "anchors"}
    for _, label, over in variants:
        if "group_size" in over:
            assert over["group_size"] * over["tasks_per_iter"] == 64, label
    defaults = [label for _, label, over in variants if not over]
    assert sorted(defaults) == sorted(["lam=0.95", "gamma=0.95", "group_size=8", "norm=mean_std", "anchor_match=exact"])
    with pytest.raises(ValueError, match="unknown ablation"):
        C.ablation_variants(["beta"])
    with pytest.raises(ValueError, match="unknown environment"):
        C.get_profile("atari", quick=True)


def test_cli_knows_the_bench_subcommands():
    parser = build_parser()
    args = parser.parse_args(["bench", "credit", "--quick", "--env", "all", "--seeds", "0", "1"])
    assert (args.bench, args.quick, args.env, args.seeds, args.workers) == ("credit", True, "all", [0, 1], 2)
    assert parser.parse_args(["bench", "ablations", "--only", "lam"]).only == ["lam"]
    assert parser.parse_args(["bench", "proxy", "--quick"]).quick
    assert parser.parse_args(["bench", "iteration", "--iterations", "3"]).iterations == 3
    args = parser.parse_args(["bench", "credit", "--report-only", "--group-size", "2"])
    assert args.report_only and args.group_size == 2 and not args.quick


# ====================================================================== the harness on a tiny budget
TINY = C.Profile("tiny", "toy_envs/OpenGrid-v0", {"size": 4}, env_step_budget=1200, seeds=(0, 1), algos=("grpo", "gagpo"),
                 tasks_per_iter=2, group_size=4, eval_every=2, eval_episodes=8, label="OpenGrid 4x4")


def test_finished_history_drops_a_last_line_cut_short(tmp_path):
    cfg = TINY.config("grpo", 0, str(tmp_path))
    os.makedirs(cfg.run_dir())
    with open(os.path.join(cfg.run_dir(), "config.json"), "w") as fh:
        json.dump(cfg.to_dict(), fh)
    rows = [{"iteration": 1, "env_steps": 600, "success": 0.0}, {"iteration": 2, "env_steps": 1200, "success": 0.5}]
    metrics = os.path.join(cfg.run_dir(), "metrics.jsonl")
    with open(metrics, "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows) + '{"iteration": 3, "env_st')  # a crash mid-line
    with pytest.warns(UserWarning, match="cut short"):
        assert C.finished_history(cfg) == rows  # the budget (1200) was spent before the cut line
    with open(metrics, "w") as fh:
        fh.write(json.dumps(rows[0]) + "\n" + '{"iteration": 2, "env_st')
    with pytest.warns(UserWarning, match="cut short"):
        assert C.finished_history(cfg) is None  # what is left has not spent the budget: not finished


def test_ablation_variants_follow_the_profile():
    assert C.ABLATION_DEFAULTS == {"lam": 0.95, "gamma": 0.95, "group_size": 8, "norm": "mean_std", "anchor_match": "exact"}
    small = dataclasses.replace(TINY, name="small", tasks_per_iter=4, group_size=4)  # 16 episodes per iteration
    variants = {label: over for _, label, over in C.ablation_variants(["group_size"], small)}
    assert variants == {"group_size=2": {"group_size": 2, "tasks_per_iter": 8}, "group_size=4": {},
                        "group_size=8": {"group_size": 8, "tasks_per_iter": 2}, "group_size=16": {"group_size": 16, "tasks_per_iter": 1}}
    with pytest.raises(ValueError, match="must divide the 8 episodes"):
        C.ablation_variants(["group_size"], TINY)  # 2 x 4 episodes cannot hold a group of 16


def test_harness_writes_tidy_results_skips_finished_runs_and_learns(tmp_path, monkeypatch):
    root, figs = str(tmp_path / "runs"), str(tmp_path / "figures")
    out = C.credit("opengrid", profile=TINY, root=root, figures_dir=figs, workers=2, progress=False)
    for name in ("credit_opengrid.csv", "credit_opengrid.md", "credit_opengrid_curves.png", "credit_opengrid_steps_to_80.png",
                 "credit_opengrid_smoothness.png"):
        assert os.path.exists(os.path.join(figs, name)), name
    with open(os.path.join(figs, "credit_opengrid.csv")) as fh:
        rows = list(csv.DictReader(fh))
    runs = {(r["algo"], r["seed"]) for r in rows}
    assert runs == {(a, str(s)) for a in TINY.algos for s in TINY.seeds}
    for a, s in runs:  # one row per iteration of each run, every run spent the same budget
        its = [int(r["iteration"]) for r in rows if (r["algo"], r["seed"]) == (a, s)]
        assert its == list(range(1, len(its) + 1))
        last = [r for r in rows if (r["algo"], r["seed"]) == (a, s)][-1]
        assert int(last["env_steps"]) >= TINY.env_step_budget and last["profile"] == "tiny" and last["env"] == "opengrid"
    text = open(os.path.join(figs, "credit_opengrid.md")).read()
    assert "python -m gagpo bench credit" in text and "| gagpo |" in text and "CPU-minutes" in text
    # learning happened: GAGPO's held-out success at the end beats its first evaluation on both seeds
    for hist in (out["rows"],):
        for s in TINY.seeds:
            ev = [float(r["eval_success"]) for r in hist if r["algo"] == "gagpo" and r["seed"] == s and r["eval_success"] != ""]
            assert ev[-1] > ev[0], (s, ev)
    # a rerun trains nothing: every run is finished
    monkeypatch.setattr(harness, "_train_one", lambda cfg: pytest.fail(f"retrained {cfg['out_dir']}"))
    again = C.run_configs([TINY.config(a, s, root) for s in TINY.seeds for a in TINY.algos], workers=1, progress=False)
    assert [len(h) for h in again] == [len([r for r in rows if (r["algo"], r["seed"]) == (a, str(s))]) for s in TINY.seeds for a in TINY.algos]
    # a report of partial results: a third seed was never trained
    partial = C.credit("opengrid", profile=dataclasses.replace(TINY, seeds=(0, 1, 2)), root=root, figures_dir=figs, workers=1,
                       progress=False, report_only=True)
    assert "Partial results: 4 of 6 runs finished" in partial["table"]


def test_an_interrupted_run_resumes_exactly(tmp_path):
    root = str(tmp_path / "runs")
    straight = C.run_configs([TINY.config("gagpo", 0, str(tmp_path / "straight"))], workers=1, progress=False)[0]
    short = dataclasses.replace(TINY, env_step_budget=400)
    partial = C.run_configs([short.config("gagpo", 0, root)], workers=1, progress=False)[0]
    assert partial[-1]["env_steps"] < TINY.env_step_budget
    cfg = TINY.config("gagpo", 0, root)
    assert C.finished_history(cfg) is None  # a partial run is not finished under the longer budget
    resumed = C.run_configs([cfg], workers=1, progress=False)[0]
    strip = lambda h: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in h]  # noqa: E731
    assert strip(resumed) == strip(straight)
    timing = [json.loads(line) for line in open(os.path.join(cfg.run_dir(), "timing.jsonl"))]
    assert len(timing) == 2 and all(t["cpu_s"] > 0 for t in timing)
    with pytest.raises(ValueError, match="different configuration"):
        C.finished_history(TINY.config("gagpo", 0, root, lr=0.5))


def test_ablations_on_a_tiny_budget(tmp_path):
    figs = str(tmp_path / "figures")
    tiny = dataclasses.replace(TINY, seeds=(0,), env_step_budget=500)
    out = C.ablations(profile=tiny, names=["norm"], root=str(tmp_path / "runs"), figures_dir=figs, workers=1, progress=False)
    assert os.path.exists(os.path.join(figs, "ablation_norm.png"))
    text = open(os.path.join(figs, "ablation_keydoor.md")).read()
    assert "## norm" in text and "norm=none" in text and "**norm**" in text
    # the setting is read from the runs' configuration, not written in: this profile has G = 4 and 2 x 4 episodes
    assert "(λ 0.95, γ 0.95, G 4, mean_std, exact anchors); budget 500 env steps per run, seeds [0]" in text
    assert "keep 8 episodes per iteration (tasks per iteration = 8 / G)" in text and "Jaccard ≥ 0.8" in text
    assert {r["variant"] for r in out["rows"]} == {"norm=none", "norm=mean", "default"}  # the default run once
    # the default variant trains in the same directory as the head-to-head's GAGPO run
    assert os.path.isdir(os.path.join(str(tmp_path / "runs"), "tiny", "gagpo-seed0"))


def test_group_size_override_keeps_the_episodes_per_iteration(tmp_path):
    tiny = dataclasses.replace(TINY, seeds=(0,), algos=("gagpo",), env_step_budget=300)
    out = C.credit("opengrid", profile=tiny, root=str(tmp_path / "runs"), figures_dir=str(tmp_path / "figs"), workers=1,
                   progress=False, group_size=2)
    assert os.path.exists(tmp_path / "figs" / "credit_opengrid_G2.md")
    cfg = json.load(open(tmp_path / "runs" / "tiny" / "gagpo-group_size2-seed0" / "config.json"))
    assert (cfg["group_size"], cfg["tasks_per_iter"]) == (2, 4)  # 2 tasks x 4 rollouts -> 4 tasks x 2 rollouts
    assert "G=2" in out["table"]
    with pytest.raises(ValueError, match="must divide"):
        C.credit("opengrid", profile=tiny, root=str(tmp_path / "runs"), figures_dir=str(tmp_path / "figs"), workers=1,
                 progress=False, group_size=3)


# ====================================================================== where reports go (issue 10)
def test_quick_reports_default_to_the_run_root_and_full_ones_to_figures(tmp_path, monkeypatch):
    from gagpo.plotting import FIGURES_DIR

    monkeypatch.delenv("GAGPO_SAVE_DIR", raising=False)
    assert C.report_dir(None, True, "runs/credit/keydoor-quick") == os.path.join("runs/credit/keydoor-quick", "figures")
    assert C.report_dir(None, False, "runs/credit/keydoor-full") == FIGURES_DIR
    assert C.report_dir("out", True, "runs/x") == "out"  # asked explicitly
    monkeypatch.setenv("GAGPO_SAVE_DIR", str(tmp_path))
    assert C.report_dir(None, False, "runs/credit/keydoor-full") == str(tmp_path)


def test_a_quick_credit_run_writes_under_its_run_root(tmp_path):
    tiny = dataclasses.replace(TINY, seeds=(0,), algos=("grpo",), env_step_budget=100, eval_every=1, eval_episodes=4)
    root = str(tmp_path / "runs")
    C.credit("opengrid", quick=True, profile=tiny, root=root, workers=1, progress=False)
    out = os.path.join(root, "tiny", "figures")
    assert sorted(os.listdir(out)) == ["credit_opengrid_quick.csv", "credit_opengrid_quick.md", "credit_opengrid_quick_curves.png",
                                       "credit_opengrid_quick_smoothness.png", "credit_opengrid_quick_steps_to_80.png"]
    text = open(os.path.join(out, "credit_opengrid_quick.md")).read()
    assert "shared with other jobs" not in text and f"on {os.cpu_count()} CPU cores" in text


def test_a_table_is_compared_with_the_committed_report(tmp_path):
    from gagpo.plotting import FIGURES_DIR
    from gagpo.tables import read_csv

    rows = read_csv(os.path.join(FIGURES_DIR, "credit_keydoor.csv"))
    table = C.credit_table(C.summarise(C.histories_by(rows)))
    assert C.compare_with_committed(table, str(tmp_path), "credit_keydoor.md").startswith("identical to the committed table")
    changed = table.replace("| gagpo | 10 |", "| gagpo | 9 |")
    text = C.compare_with_committed(changed, str(tmp_path), "credit_keydoor.md")
    assert text.startswith("different from") and "this run:  | gagpo | 9 |" in text and "committed: | gagpo | 10 |" in text
    assert text.count("this run:") == 1
    assert C.compare_with_committed(table, FIGURES_DIR, "credit_keydoor.md") is None  # written there: nothing to compare
    assert C.compare_with_committed(table, str(tmp_path), "no_such_report.md") is None


def _without_cost(text: str) -> list[str]:
    """A report's lines but its last sentence, which measures what producing it cost on the machine that did."""
    return [line for line in text.rstrip("\n").split("\n") if not line.startswith("Produced by")]


def test_the_committed_reports_are_rebuilt_from_their_csv_and_profile():
    """Every sentence of the committed reports but the cost is rebuilt from the CSV and the profile's
    configuration: nothing about the setting is written in by hand."""
    from gagpo.plotting import FIGURES_DIR
    from gagpo.reports import ablation_markdown, credit_markdown
    from gagpo.tables import read_csv

    rows = read_csv(os.path.join(FIGURES_DIR, "credit_keydoor.csv"))
    runs = C.histories_by(rows)
    n_runs = sum(len(h) for h in runs.values())
    text = credit_markdown(C.get_profile("keydoor", quick=False), "full profile", sorted({int(r["seed"]) for r in rows}),
                         C.summarise(runs), n_runs, n_runs, "Produced by ...")
    assert _without_cost(text) == _without_cost(open(os.path.join(FIGURES_DIR, "credit_keydoor.md"), encoding="utf-8").read())

    rows = read_csv(os.path.join(FIGURES_DIR, "ablation_keydoor_quick.csv"))
    prof = C.ABLATION_PROFILES[True]
    sections = []
    for abl, (fld, _) in C.ABLATIONS.items():
        by_variant = C.histories_by([r for r in rows if r["variant"] == "default" or r["variant"].startswith(fld + "=")], key="variant")
        runs = {label: by_variant["default" if not over else label] for _, label, over in C.ablation_variants([abl], prof)}
        summary = C.summarise(runs)
        sections += [f"## {abl}", "", C.ablation_table(summary), "", C.ablation_reading(abl, summary), ""]
    text = ablation_markdown(prof, "quick profile", list(prof.seeds), prof.config("gagpo", 0), sections, 1, 1, "Produced by ...")
    assert _without_cost(text) == _without_cost(open(os.path.join(FIGURES_DIR, "ablation_keydoor_quick.md"), encoding="utf-8").read())


# ====================================================================== named variant rows: chapter 2's vanilla REINFORCE (issue 14)
#: What Profile.config sets from the benchmark's profile (the task, budget, evaluation and run bookkeeping):
#: the only fields in which a benchmark row may differ from chapter 2's training runs.
PROFILE_FIELDS = {"env", "env_kwargs", "max_steps", "seed", "env_step_budget", "tasks_per_iter", "group_size", "eval_every",
                  "eval_episodes", "progress", "resume", "checkpoint_every", "iterations", "out_dir"}


def _chapter2_reinforce_config():
    """Chapter 2's ``reinforce_config(baseline, seed)`` and the baselines it trains, read from the notebook's code cells
    (the function definition executed with the chapter's own ``GAMMA``), not copied from it."""
    import ast
    import tempfile

    import nbformat

    from gagpo.config import TrainConfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    nb = nbformat.read(os.path.join(root, "chapters", "02_reinforce.ipynb"), as_version=4)
    constants, func = {}, None
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.parse("\n".join(line for line in cell.source.splitlines() if not line.startswith(("%", "!")))).body:
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], (ast.Name, ast.Tuple)):
                names = [t.id for t in getattr(node.targets[0], "elts", [node.targets[0]]) if isinstance(t, ast.Name)]
                try:
                    values = ast.literal_eval(node.value)
                except ValueError:
                    continue
                constants.update(zip(names, values) if len(names) > 1 else [(names[0], values)])
            elif isinstance(node, ast.FunctionDef) and node.name == "reinforce_config":
                func = node
    assert func is not None, "chapter 2 no longer defines reinforce_config"
    namespace = {"TrainConfig": TrainConfig, "tempfile": tempfile, "GAMMA": constants["GAMMA"]}
    exec(compile(ast.Module(body=[func], type_ignores=[]), "chapter 2", "exec"), namespace)
    return namespace["reinforce_config"], constants["TRAIN_BASELINES"]


def _differing(a, b) -> set[str]:
    da, db = a.to_dict(), b.to_dict()
    return {k for k in da if da[k] != db[k]}


def test_the_vanilla_variants_are_chapter_2s_reinforce():
    """Each vanilla row is chapter 2's REINFORCE run (one of the baselines chapter 2 trains) placed in the benchmark's
    profile: it differs from chapter 2's configuration only in the profile's fields; and it differs from the
    benchmark's `reinforce` row exactly in chapter 2's update settings (and the baseline, for the no-baseline row)."""
    reinforce_config, chapter_baselines = _chapter2_reinforce_config()
    prof = C.get_profile("keydoor", quick=False)
    update = {"update_epochs", "minibatches", "entropy_coef", "max_grad_norm", "lr"}
    for name, baseline in (("reinforce-vanilla", "step_mean"), ("reinforce-vanilla-no-baseline", "none")):
        algo, over = C.VARIANTS[name]
        row = prof.config(algo, 0, name=name, **over)
        assert baseline in chapter_baselines
        chapter = reinforce_config(baseline, 0)
        assert _differing(row, chapter) <= PROFILE_FIELDS, (name, _differing(row, chapter) - PROFILE_FIELDS)
        assert row.reinforce_baseline == baseline and C.one_gradient_step(row) and row.entropy_coef == 0 and row.max_grad_norm == 0
        changed = set(C.variant_changes(prof, name))
        assert changed == (update if baseline == "step_mean" else update | {"reinforce_baseline"}), (name, changed)
        assert row.out_dir != prof.config(algo, 0).out_dir  # its own runs, never the reinforce row's
    # the benchmark's reinforce row is not chapter 2's: several steps per batch, an entropy bonus, gradient clipping
    reinforce = prof.config("reinforce", 0)
    assert not C.one_gradient_step(reinforce) and reinforce.entropy_coef > 0 and reinforce.max_grad_norm > 0
    with pytest.raises(ValueError, match="unknown variant"):
        C.variant_changes(prof, "reinforce-fancy")


def test_cli_runs_named_variants(capsys, monkeypatch):
    parser = build_parser()
    args = parser.parse_args(["bench", "credit", "--variants", *C.VARIANTS, "--workers", "1"])
    assert args.variants == list(C.VARIANTS) and args.algos is None and args.workers == 1
    assert parser.parse_args(["bench", "credit"]).variants is None
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "credit", "--variants", "reinforce-fancy"])
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "2000")  # no line wrapping inside names
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "credit", "--help"])
    text = capsys.readouterr().out
    for name, (algo, over) in C.VARIANTS.items():  # --help lists every variant and what it changes, read from VARIANTS
        assert f"{name} = {algo} with " in text
        for k, v in over.items():
            assert f"{k}={v:g}" in text if isinstance(v, float) else f"{k}={v}" in text
    assert "figures/credit_keydoor_variants" in text and "--variants " + " ".join(C.VARIANTS) + " --workers 1" in text


def test_vanilla_reinforce_runs_end_to_end_on_a_tiny_budget(tmp_path):
    tiny = dataclasses.replace(TINY, seeds=(0,), env_step_budget=400)
    root, figs = str(tmp_path / "runs"), str(tmp_path / "figs")
    out = C.credit("opengrid", profile=tiny, root=root, figures_dir=figs, workers=1, progress=False, variants=list(C.VARIANTS))
    assert sorted(os.listdir(figs)) == sorted(f"credit_opengrid_variants{s}" for s in (".csv", ".md", "_curves.png",
                                                                                        "_smoothness.png", "_steps_to_80.png"))
    assert {(r["algo"], r["seed"]) for r in out["rows"]} == {(v, 0) for v in C.VARIANTS}
    for name, (algo, over) in C.VARIANTS.items():
        run = os.path.join(root, "tiny", f"{name}-seed0")
        cfg = json.load(open(os.path.join(run, "config.json")))
        assert cfg["algo"] == algo and all(cfg[k] == v for k, v in over.items())
        hist = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
        assert hist[-1]["env_steps"] >= tiny.env_step_budget
        # one gradient step at the sampling policy: every ratio is 1, the clip never acts, the k3 KL is 0
        assert all(abs(r["ratio_mean"] - 1) < 1e-6 and r["clip_fraction"] == 0 and abs(r["approx_kl"]) < 1e-6 for r in hist)
    text = out["table"]
    assert "variant rows" in text and "Same budget for every row" in text and "Target" not in text
    assert "- `reinforce-vanilla`: the `reinforce` estimator with" in text and "`update_epochs` 1 (the `reinforce` row: 4)" in text
    assert "`reinforce_baseline` `'none'` (the `reinforce` row: `'step_mean'`)" in text
    assert "`figures/credit_opengrid.md`" in text and "0 by construction" in text
    assert "--variants reinforce-vanilla reinforce-vanilla-no-baseline" in text
    with pytest.raises(ValueError, match="not both"):
        C.credit("opengrid", profile=tiny, root=root, figures_dir=figs, workers=1, progress=False, algos=["grpo"],
                 variants=["reinforce-vanilla"])
    with pytest.raises(ValueError, match="unknown variant"):
        C.credit("opengrid", profile=tiny, root=root, figures_dir=figs, workers=1, progress=False, variants=["reinforce-fancy"])
