r"""The credit-assignment benchmark: every estimator, the same budget, many seeds, honest statistics.

This module defines the benchmark — its profiles (:data:`PROFILES`), its ablations (:data:`ABLATIONS`),
its named variant rows (:data:`VARIANTS`: chapter 2's vanilla REINFORCE, ``bench credit --variants``)
and its entry points :func:`credit` (``python -m gagpo bench credit``), :func:`ablations`
(``bench ablations``) and :func:`iteration_time` (``bench iteration``). The machinery lives in three
modules, each usable on its own (chapter 7 walks through them):

1. :mod:`gagpo.stats` — pure numpy: :func:`bootstrap_ci` (percentile bootstrap of any statistic, also
   of whole curves), :func:`steps_to_threshold`, :func:`eval_curve`, :func:`curves_on_grid`,
   :func:`run_summary` (final success, area under the curve, smoothness), :func:`summarise`;
2. :mod:`gagpo.harness` — a :class:`Profile` fixes the environment, the environment-step budget, group
   size, tasks per iteration, evaluation and seeds; :meth:`Profile.config` turns it into one
   :class:`~gagpo.config.TrainConfig` per (algorithm or variant, seed) with a fixed run directory
   ``runs/credit/<profile>/<name>-seed<k>``; :func:`run_configs` trains them in worker processes
   with a progress bar, *skips* runs whose ``metrics.jsonl`` is complete and *resumes* interrupted
   ones exactly from their checkpoint (``TrainConfig.resume=True``);
3. :mod:`gagpo.reports` — a tidy CSV (one row per run × iteration), figures and a Markdown report,
   written to ``figures/`` — quick profiles to ``<root>/<profile>/figures`` unless told otherwise, so
   a smoke run never replaces committed results.

Every public name of those modules that this module offered before it was split is re-exported here
(``from gagpo.credit import bootstrap_ci`` keeps working).

Budgets are in **environment steps**, never iterations: an algorithm whose episodes are short (it
solves tasks) takes more iterations from the same budget, which is the fair comparison for agents
whose cost is dominated by environment and model calls. Every run of a profile uses the same
seeds; a seed fixes the initial weights and the sequence of training tasks, so run ``k`` of two
algorithms starts from the same policy and sees the same tasks.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from .config import ALGOS, TrainConfig
from .harness import Profile, finished_history, finished_only, run_configs, training_time
from .registry import estimator_names
from .reports import (
    CSV_COLUMNS, CSV_FLOAT, ITERATION_PHASES, ablation_figure, ablation_reading, ablation_markdown, ablation_table, compare_with_committed,
    cost_text, credit_figures, credit_markdown, credit_table, histories_by, iteration_time_figure, iteration_time_markdown,
    plot_curves, plot_smoothness, plot_steps_to, produced_by, report_dir, target_verdict, tidy_rows, write_report,
)
from .stats import (
    SUMMARY_KEYS, bootstrap_ci, curves_on_grid, eval_curve, ratio_ci, run_summary, smoothness, steps_to_threshold, summarise,
)
from .tables import read_csv, write_csv

# ====================================================================== profiles
#: The benchmark profiles, by (environment short name, "quick" | "full"). The measured cost of each
#: is the last sentence of its report, `figures/credit_*.md`.
PROFILES: dict[tuple[str, str], Profile] = {
    ("keydoor", "full"): Profile(
        "keydoor-full", "toy_envs/KeyDoor-v0", {"size": 7}, env_step_budget=400_000, seeds=tuple(range(10)),
        label="KeyDoor 7x7 (step limit 60)",
    ),
    ("keydoor", "quick"): Profile(
        "keydoor-quick", "toy_envs/KeyDoor-v0", {"size": 5}, max_steps=30, env_step_budget=100_000, seeds=(0, 1, 2),
        eval_every=5, label="KeyDoor 5x5 (step limit 30)",
    ),
    # MiniHousehold: one iteration costs ~1 CPU-second (long observations), so its budget is smaller
    # than KeyDoor's; the quick profile is a smoke run.
    ("household", "full"): Profile(
        "household-full", "toy_envs/MiniHousehold-v0", {}, env_step_budget=150_000, seeds=tuple(range(10)),
        label="MiniHousehold (step limit 30)",
    ),
    ("household", "quick"): Profile(
        "household-quick", "toy_envs/MiniHousehold-v0", {}, env_step_budget=30_000, seeds=(0, 1),
        eval_every=5, eval_episodes=50, algos=("grpo", "gigpo", "gagpo"), label="MiniHousehold (step limit 30)",
    ),
}

ENVS = ("keydoor", "household")


def get_profile(env: str, quick: bool) -> Profile:
    """The registered profile of ``env`` (one of :data:`ENVS`), quick or full."""
    key = (env, "quick" if quick else "full")
    if key not in PROFILES:
        raise ValueError(f"unknown environment {env!r}; expected one of {list(ENVS)}")
    return PROFILES[key]


def _profile_name(prof: Profile, custom: bool, quick: bool) -> str:
    """How a report's heading names its profile: by name when the caller passed one, else quick or full."""
    return f"profile {prof.name!r}" if custom else f"{'quick' if quick else 'full'} profile"


# ====================================================================== named variant rows
#: Chapter 2's vanilla REINFORCE as :class:`~gagpo.config.TrainConfig` settings (chapter 2 §5,
#: ``reinforce_config``): one plain gradient step per batch (``update_epochs=1``, ``minibatches=1``: the
#: step is taken where every ratio is 1, so the PPO clip never acts and the gradient is the policy
#: gradient), no entropy bonus, no gradient-norm clipping, and chapter 2's learning rate. Everything
#: else (policy, γ, the optimiser) is the trainer's default, as in chapter 2; the benchmark's ``reinforce``
#: row differs from it in exactly these fields.
VANILLA_REINFORCE: dict[str, Any] = {"update_epochs": 1, "minibatches": 1, "entropy_coef": 0.0, "max_grad_norm": 0.0, "lr": 3e-3}

#: Named rows of the head-to-head that are one of its estimators with some TrainConfig fields changed:
#: ``name -> (estimator, overrides)``. ``bench credit --variants NAME ...`` runs them on the same profile,
#: seeds and budget as the algorithms (runs ``<root>/<profile>/<name>-seed<k>``) and writes
#: ``credit_<env>[_quick]_variants.*``, to be read next to ``credit_<env>[_quick].*``.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # chapter 2's update with the baseline of the `reinforce` row (step_mean): only the update differs
    "reinforce-vanilla": ("reinforce", dict(VANILLA_REINFORCE)),
    # chapter 2's update without a baseline: the unbiased estimator (chapter 2 §3 measured step_mean's shrinkage)
    "reinforce-vanilla-no-baseline": ("reinforce", {**VANILLA_REINFORCE, "reinforce_baseline": "none"}),
}


def variant_changes(prof: Profile, name: str) -> dict[str, tuple[Any, Any]]:
    """What variant ``name`` (:data:`VARIANTS`) changes in ``prof``'s configuration of its estimator:
    ``field -> (the estimator's row, the variant)``, read from the two :class:`TrainConfig` (the run
    directory aside)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {list(VARIANTS)}")
    algo, over = VARIANTS[name]
    base, var = prof.config(algo, prof.seeds[0]).to_dict(), prof.config(algo, prof.seeds[0], name=name, **over).to_dict()
    return {k: (base[k], var[k]) for k in var if k != "out_dir" and var[k] != base[k]}


def one_gradient_step(cfg: TrainConfig) -> bool:
    """Whether ``cfg``'s update is one gradient step per batch (``update_epochs × minibatches = 1``):
    the step is taken at the policy that collected the batch, every ratio is 1 and the clip never acts."""
    return cfg.update_epochs * cfg.minibatches == 1


# ====================================================================== the head-to-head
def credit(env: str = "keydoor", quick: bool = False, workers: int = 2, seeds: Sequence[int] | None = None,
           algos: Sequence[str] | None = None, root: str = "runs/credit", figures_dir: str | None = None,
           progress: bool = True, command: str | None = None, profile: Profile | None = None,
           report_only: bool = False, group_size: int | None = None, variants: Sequence[str] | None = None) -> dict[str, Any]:
    """The head-to-head benchmark on one environment: train (or load) every run of the profile,
    write ``credit_<env>[_quick].{csv,md}`` and the figures ``credit_<env>[_quick]_curves``,
    ``_steps_to_80`` and ``_smoothness``, print the table and return the summary.

    The outputs go to ``figures_dir``; by default to ``figures/`` for the full profile and to
    ``<root>/<profile>/figures`` for the quick one (:func:`report_dir`: a smoke run never replaces the
    committed results). When they do not go to ``figures/``, the table is compared with the committed one.

    ``profile`` replaces the registered profile of ``(env, quick)`` (tests and the chapter use a
    tiny one); its ``name`` is then the run-directory name. ``report_only=True`` trains nothing and
    reports the runs finished so far (the table says how many). ``group_size=G`` replaces the
    profile's group size at the same number of episodes per iteration (``tasks_per_iter`` scaled to
    match; runs named ``<algo>-group_size<G>``, outputs ``credit_<env>[_quick]_G<G>.*``).
    ``variants`` (names of :data:`VARIANTS`, instead of ``algos``) runs those rows instead of the
    algorithms — same profile, seeds and budget, runs named ``<variant>-seed<k>`` — and writes
    ``credit_<env>[_quick]_variants.*``, whose report says what each variant changes."""
    prof = profile or get_profile(env, quick)
    figures_dir = report_dir(figures_dir, quick, os.path.join(root, prof.name))
    if not prof.label:
        prof = dataclasses.replace(prof, label=prof.name)
    seeds = tuple(prof.seeds if seeds is None else seeds)
    if variants:
        if algos is not None:
            raise ValueError("pass algos or variants, not both")
        for v in variants:
            if v not in VARIANTS:
                raise ValueError(f"unknown variant {v!r}; expected one of {list(VARIANTS)}")
        changes = {v: variant_changes(prof, v) for v in variants}  # against the profile before a group-size override
        specs = [(v, *VARIANTS[v]) for v in variants]  # (row name, estimator, overrides)
    else:
        algos = tuple(prof.algos if algos is None else algos)
        for a in algos:
            if a not in estimator_names():
                raise ValueError(f"unknown algo {a!r}; expected one of {list(estimator_names())}")
        specs = [(a, a, {}) for a in algos]
    over: dict[str, Any] = {}
    if group_size and group_size != prof.group_size:
        episodes = prof.tasks_per_iter * prof.group_size
        if episodes % group_size:
            raise ValueError(f"group_size {group_size} must divide the {episodes} episodes per iteration of the profile")
        over = {"group_size": group_size, "tasks_per_iter": episodes // group_size}
        prof = dataclasses.replace(prof, label=f"{prof.label}, G={group_size}", tasks_per_iter=episodes // group_size,
                                   group_size=group_size)
    name = (lambda a: f"{a}-group_size{group_size}") if over else (lambda a: a)
    # seed-major: partial results stay balanced
    plan = [(row, prof.config(algo, s, root, name=name(row), **{**row_over, **over})) for s in seeds for row, algo, row_over in specs]
    configs = [c for _, c in plan]
    t0 = time.time()
    histories = run_configs(configs, workers, desc=f"credit {prof.name}", progress=progress, train=not report_only)
    elapsed = time.time() - t0
    n_planned = len(configs)
    finished_only(configs, histories)  # raises when no run has finished
    done = [(row, c, h) for (row, c), h in zip(plan, histories) if h is not None]
    configs = [c for _, c, _ in done]
    names = tuple(row for row, _, _ in specs if any(r == row for r, _, _ in done))
    seeds = tuple(s for s in seeds if any(c.seed == s for c in configs))
    rows = tidy_rows([dict(env=env, profile=prof.name, algo=row, seed=c.seed) for row, c, _ in done], [h for _, _, h in done])
    stem = f"credit_{env}" + ("_quick" if quick else "") + (f"_G{group_size}" if over else "") + ("_variants" if variants else "")
    write_csv(rows, os.path.join(figures_dir, stem + ".csv"), float_format=CSV_FLOAT)
    runs = {n: [h for row, _, h in done if row == n] for n in names}
    summary = summarise(runs)
    paths = credit_figures(runs, summary, prof.label, stem, figures_dir)
    command = command or (f"python -m gagpo bench credit --env {env}{' --quick' if quick else ''}"
                          f"{f' --group-size {group_size}' if over else ''}{' --variants ' + ' '.join(variants) if variants else ''}")
    text = credit_markdown(prof, _profile_name(prof, profile is not None, quick), seeds, summary, len(configs), n_planned,
                         produced_by(command, configs, elapsed, workers),
                         variants={v: (VARIANTS[v][0], changes[v]) for v in names} if variants else None,
                         reference=f"credit_{env}" + ("_quick" if quick else "") + (f"_G{group_size}" if over else ""),
                         one_step=[n for n in names if one_gradient_step(next(c for row, c, _ in done if row == n))] if variants else ())
    write_report(text, os.path.join(figures_dir, stem + ".md"))
    print("\nfigures: " + ", ".join(paths))
    # a custom profile (the chapter's live run, a test) is not the committed one: nothing to compare with
    comparison = None if profile is not None else compare_with_committed(credit_table(summary), figures_dir, stem + ".md")
    if comparison:
        print("\nThis table is " + comparison)
    return {"summary": summary, "rows": rows, "paths": paths, "elapsed": elapsed, "profile": prof, "table": text}


# ====================================================================== ablations
#: Ablation name -> (the TrainConfig field it varies, the values).
ABLATIONS: dict[str, tuple[str, tuple]] = {
    "lam": ("lam", (0.0, 0.5, 0.9, 0.95, 1.0)),
    "gamma": ("gamma", (0.9, 0.95, 1.0)),
    "group_size": ("group_size", (2, 4, 8, 16)),
    "norm": ("norm", ("none", "mean", "mean_std")),
    "anchors": ("anchor_match", ("exact", "near")),
}

ABLATION_PROFILES = {
    False: dataclasses.replace(PROFILES[("keydoor", "full")], seeds=tuple(range(5))),
    True: dataclasses.replace(PROFILES[("keydoor", "quick")], seeds=(0, 1)),
}


def ablation_defaults(profile: Profile) -> dict[str, Any]:
    """The value of every ablated field in ``profile``'s runs (``field -> value``): the profile's own
    field where it has one (the group size), else :class:`~gagpo.config.TrainConfig`'s default."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {fld: getattr(profile, fld, defaults[fld]) for fld, _ in ABLATIONS.values()}


#: :func:`ablation_defaults` of the full ablation profile.
ABLATION_DEFAULTS = ablation_defaults(ABLATION_PROFILES[False])


def ablation_variants(names: Sequence[str] | None = None, profile: Profile | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """``(ablation, variant label, TrainConfig overrides)`` for every value of every ablation in ``names``
    (all by default), on ``profile`` (the full ablation profile by default).

    The group-size ablation keeps the profile's episodes per iteration (``tasks_per_iter =
    tasks_per_iter × group_size // G``; a G that does not divide them raises ValueError), so every
    variant makes the same number of updates per env step and only the split of the batch into rollout
    groups changes. A value equal to the profile's (:func:`ablation_defaults`) has no overrides and so
    shares its runs with the other ablations (and with the GAGPO runs of the head-to-head when the
    profile is the same)."""
    prof = profile or ABLATION_PROFILES[False]
    defaults = ablation_defaults(prof)
    episodes = prof.tasks_per_iter * prof.group_size
    out = []
    for abl in names or ABLATIONS:
        if abl not in ABLATIONS:
            raise ValueError(f"unknown ablation {abl!r}; expected one of {list(ABLATIONS)}")
        fld, values = ABLATIONS[abl]
        for v in values:
            over: dict[str, Any] = {} if v == defaults[fld] else {fld: v}
            if over and fld == "group_size":
                if episodes % int(v):
                    raise ValueError(f"group size {v} must divide the {episodes} episodes per iteration of profile {prof.name!r}")
                over["tasks_per_iter"] = episodes // int(v)
            out.append((abl, f"{fld}={v}", over))
    return out


def _variant_dir(over: Mapping[str, Any]) -> str:
    if not over:
        return "gagpo"
    fld = next(k for k in over if k != "tasks_per_iter")
    return f"gagpo-{fld}{over[fld]}"


def ablations(quick: bool = False, workers: int = 2, names: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
              root: str = "runs/credit", figures_dir: str | None = None, progress: bool = True, command: str | None = None,
              profile: Profile | None = None, report_only: bool = False) -> dict[str, Any]:
    """GAGPO ablations on the KeyDoor profile (λ, γ, group size, normalisation, anchor matching):
    ``figures/ablation_<name>[_quick].png`` per ablation, ``ablation_keydoor[_quick].{csv,md}``.
    ``profile`` replaces the registered ablation profile (tests use a tiny one); ``report_only``
    reports the finished runs without training. Outputs go where :func:`report_dir` says: by default
    ``figures/`` for the full profile, ``<root>/<profile>/figures`` with ``quick``."""
    prof = profile or ABLATION_PROFILES[quick]
    figures_dir = report_dir(figures_dir, quick, os.path.join(root, prof.name))
    if not prof.label:
        prof = dataclasses.replace(prof, label=prof.name)
    seeds = tuple(prof.seeds if seeds is None else seeds)
    variants = ablation_variants(names, prof)
    unique: dict[str, dict[str, Any]] = {}
    for _, _, over in variants:
        unique.setdefault(_variant_dir(over), over)
    configs = {name: [prof.config("gagpo", s, root, name=name, **over) for s in seeds] for name, over in unique.items()}
    # seed-major, the shared default variant last (it may be trained by the head-to-head meanwhile)
    names_order = [n for n in configs if n != "gagpo"] + (["gagpo"] if "gagpo" in configs else [])
    flat = [configs[n][s_idx] for s_idx in range(len(seeds)) for n in names_order]
    t0 = time.time()
    hist_flat = run_configs(flat, workers, desc=f"ablations {prof.name}", progress=progress, train=not report_only)
    elapsed = time.time() - t0
    by_dir = {id(c): h for c, h in zip(flat, hist_flat)}
    n_finished = sum(h is not None for h in hist_flat)
    rows, sections, paths = [], [], []
    tabled: set[str] = set()  # each run enters the CSV once; the shared default run as variant "default"
    suffix = "_quick" if quick else ""
    for abl in dict.fromkeys(a for a, _, _ in variants):
        runs = {}
        for a, label, over in variants:
            if a != abl:
                continue
            cs = [c for c in configs[_variant_dir(over)] if by_dir[id(c)] is not None]
            if not cs:
                continue
            runs[label] = [by_dir[id(c)] for c in cs]
            if _variant_dir(over) not in tabled:
                tabled.add(_variant_dir(over))
                tag = dict(ablation=abl, variant=label) if over else dict(ablation="default", variant="default")
                rows += tidy_rows([dict(env="keydoor", profile=prof.name, **tag, algo="gagpo", seed=c.seed) for c in cs], runs[label])
        if not runs:
            continue
        summary = summarise(runs)
        fld = ABLATIONS[abl][0]
        title = f"GAGPO ablation: {fld} — {prof.label}, {prof.env_step_budget:,} env steps, ≤ {len(seeds)} seeds"
        paths.append(ablation_figure(fld, runs, summary, title, f"ablation_{abl}{suffix}", figures_dir))
        sections += [f"## {abl}", "", ablation_table(summary), "", ablation_reading(abl, summary), ""]
    write_csv(rows, os.path.join(figures_dir, f"ablation_keydoor{suffix}.csv"), float_format=CSV_FLOAT)
    command = command or f"python -m gagpo bench ablations{' --quick' if quick else ''}"
    text = ablation_markdown(prof, _profile_name(prof, profile is not None, quick), seeds, configs["gagpo"][0], sections,
                           n_finished, len(flat), produced_by(command, flat, elapsed, workers))
    write_report(text, os.path.join(figures_dir, f"ablation_keydoor{suffix}.md"))
    return {"rows": rows, "paths": paths, "elapsed": elapsed, "table": text}


# ====================================================================== iteration time
def iteration_time(iterations: int = 30, env: str = "keydoor", algos: Sequence[str] = ALGOS, seed: int = 0,
                   figures_dir: str | None = None, command: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Wall time of one training iteration split into rollout, advantage and update, per algorithm.

    Each algorithm trains ``iterations`` iterations of the full profile of ``env`` from the same
    seed in this process (no evaluation); the median over iterations of each phase is reported,
    also per 1,000 env steps (algorithms whose policies solve tasks sooner have shorter episodes and
    so cheaper rollouts). Writes ``figures/iteration_time.{png,md,csv}``."""
    import tempfile

    from .plotting import FIGURES_DIR
    from .trainer import Trainer

    figures_dir = figures_dir or FIGURES_DIR
    prof = get_profile(env, False)
    rows = []
    for algo in algos:
        cfg = prof.config(algo, seed, tempfile.mkdtemp(prefix="gagpo-iter-"), iterations=iterations, eval_every=0,
                          checkpoint_every=0, resume=False, progress=progress)
        t0 = time.time()
        hist = Trainer(cfg).train()
        total = time.time() - t0
        steps = np.diff([0] + [r["env_steps"] for r in hist])
        rec = {"algo": algo, "iterations": len(hist), "env_steps_per_iteration": float(np.median(steps)), "run_s": total}
        for ph in ITERATION_PHASES:
            t = np.asarray([r[f"time_{ph}"] for r in hist])
            rec[f"{ph}_ms"] = 1e3 * float(np.median(t))
            rec[f"{ph}_ms_per_1k_steps"] = 1e3 * float(np.median(t / steps * 1000))
        tot = sum(rec[f"{ph}_ms"] for ph in ITERATION_PHASES)
        rec["total_ms"] = tot
        rec["advantage_share"] = rec["advantage_ms"] / tot
        rows.append(rec)
    title = (f"Where an iteration's time goes — {prof.label}, {prof.tasks_per_iter}×{prof.group_size} episodes, "
             f"first {iterations} iterations")
    path = iteration_time_figure(rows, title, figures_dir)
    write_csv(rows, os.path.join(figures_dir, "iteration_time.csv"), float_format=CSV_FLOAT)
    command = command or f"python -m gagpo bench iteration --iterations {iterations}"
    write_report(iteration_time_markdown(rows, prof.label, iterations, seed, cfg.threads, command),
                 os.path.join(figures_dir, "iteration_time.md"))
    print(f"\nfigure: {path}")
    return rows


__all__ = [
    # stats
    "bootstrap_ci", "steps_to_threshold", "eval_curve", "curves_on_grid", "smoothness", "run_summary", "summarise", "ratio_ci",
    "SUMMARY_KEYS",
    # harness
    "Profile", "finished_history", "run_configs", "training_time",
    # reports and tables
    "tidy_rows", "write_csv", "read_csv", "histories_by", "plot_curves", "plot_steps_to", "plot_smoothness", "credit_table",
    "target_verdict", "ablation_table", "ablation_reading", "cost_text", "report_dir", "compare_with_committed", "CSV_FLOAT",
    "CSV_COLUMNS",
    # the benchmark
    "PROFILES", "ENVS", "get_profile", "credit", "ABLATIONS", "ABLATION_DEFAULTS", "ABLATION_PROFILES", "ablation_defaults",
    "ablation_variants", "ablations", "iteration_time",
    # named variant rows: chapter 2's vanilla REINFORCE
    "VANILLA_REINFORCE", "VARIANTS", "variant_changes", "one_gradient_step",
]
