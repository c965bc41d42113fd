"""What the benchmarks write: tidy CSVs, Markdown tables and report prose, figures.

* Tidy tables: :func:`tidy_rows` (one row per run × iteration, :data:`CSV_COLUMNS`) and
  :func:`histories_by` (the reverse: a CSV read back into histories).
* Tables and sentences: :func:`credit_table`, :func:`target_verdict`, :func:`ablation_table`,
  :func:`ablation_reading`, :func:`variant_lines` and :func:`one_step_kl_note` (a report of variant rows), the whole reports :func:`credit_markdown` and :func:`ablation_markdown`, and
  :func:`cost_text` (what producing a report cost, measured on this machine). Every number in the prose
  comes from the runs, their configurations or the machine; none is written in by hand.
* Figures through :mod:`gagpo.plotting`: :func:`plot_curves`, :func:`plot_steps_to`,
  :func:`plot_smoothness`, and the figure sets :func:`credit_figures`, :func:`ablation_figure`,
  :func:`iteration_time_figure`.
* Where reports go (:func:`report_dir`) and how a new table compares with the committed one
  (:func:`compare_with_committed`).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import plotting
from .config import TrainConfig
from .harness import Profile, training_time
from .rundir import atomic_write
from .stats import CI_LEVEL, FINAL_EVALS, THRESHOLDS, bootstrap_ci, curves_on_grid, eval_curve, ratio_ci, threshold_key

CSV_FLOAT = ".5g"  # float cells of the benchmark CSVs: 5 significant digits
#: Per-iteration columns kept in the tidy CSVs (the rest of a history — timings of each phase,
#: ratio statistics — stays in each run's own metrics.csv).
CSV_COLUMNS = (
    "iteration", "env_steps", "success", "return", "episode_length", "invalid_rate", "adv_std", "adv_zero_frac",
    "clip_fraction", "approx_kl", "entropy", "anchor_frac_1", "eval_success", "eval_return", "eval_length",
    "time_rollout", "time_advantage", "time_update",
)
#: The head-to-head's target: GAGPO reaches a threshold in at most this fraction of GRPO's env steps
#: (and in no more than GiGPO's).
TARGET_RATIO = 0.6
_CI = f"{CI_LEVEL:.0%}"  # "95%"


def _pct(threshold: float) -> int:
    return int(round(100 * threshold))


# ====================================================================== tidy tables
def tidy_rows(labels: Sequence[Mapping[str, Any]], histories: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per run × iteration: the run's ``labels`` (algo, seed, env, profile, ...) then
    :data:`CSV_COLUMNS` (empty where an iteration has no evaluation)."""
    rows = []
    for lab, hist in zip(labels, histories):
        for r in hist:
            rows.append({**lab, **{k: r.get(k, "") for k in CSV_COLUMNS}})
    return rows


def histories_by(rows: Sequence[Mapping[str, Any]], key: str = "algo") -> dict[str, list[list[dict[str, Any]]]]:
    """Regroup tidy rows into ``{key value: [history of each seed, ...]}`` (seeds in increasing order)."""
    runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        runs.setdefault((str(r[key]), float(r["seed"])), []).append(dict(r))
    out: dict[str, list[list[dict[str, Any]]]] = {}
    for (name, _), hist in sorted(runs.items(), key=lambda kv: kv[0][1]):
        out.setdefault(name, []).append(hist)
    return out


# ====================================================================== where reports go
def report_dir(figures_dir: str | None, quick: bool, run_root: str) -> str:
    """Where a benchmark writes its CSV, report and figures.

    ``figures_dir`` when given; otherwise the committed ``figures/`` (or ``$GAGPO_SAVE_DIR``, see
    :func:`gagpo.plotting.output_dir`) for a full profile, and ``<run_root>/figures`` for a quick one:
    a smoke run never overwrites committed results unless asked to with an explicit ``figures_dir``.
    """
    if figures_dir:
        return figures_dir
    return os.path.join(run_root, "figures") if quick else plotting.output_dir()


def compare_with_committed(table: str, figures_dir: str, name: str) -> str | None:
    """How ``table`` (a Markdown table just computed) compares with the committed report
    ``figures/<name>``: None when there is nothing to compare (no committed report, or the report was
    just written there); otherwise a sentence, followed by the rows that differ and their committed
    versions (rows are matched by their first cell)."""
    committed = os.path.join(plotting.FIGURES_DIR, name)
    if not os.path.exists(committed) or os.path.abspath(os.path.join(figures_dir, name)) == os.path.abspath(committed):
        return None
    with open(committed, encoding="utf-8") as fh:
        text = fh.read()
    if table in text:
        return f"identical to the committed table in {committed}"
    old_rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    lines = [f"different from the committed table in {committed}:"]
    for line in table.splitlines():
        if line.startswith("| ") and line not in text:
            lines += [f"  this run:  {line}", f"  committed: {old_rows.get(line.split('|')[1].strip(), '(no such row)')}"]
    return "\n".join(lines)


def write_report(text: str, path: str) -> None:
    """Write the Markdown report ``text`` to ``path`` (atomically, :func:`gagpo.rundir.atomic_write`) and print it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    print(text)


# ====================================================================== what a report cost
def cost_text(configs: Sequence[TrainConfig], elapsed: float, workers: int) -> str:
    """What producing a report cost: this invocation's wall time on this machine (``os.cpu_count()``
    cores), and the CPU and wall time its runs took when they were trained (from their ``timing.jsonl``,
    :func:`gagpo.harness.training_time`)."""
    t = training_time(configs)
    cores = max(1, min(workers, os.cpu_count() or 1))  # the cores the worker processes can keep busy
    text = (f"wall time of this invocation {elapsed / 60:.1f} min on {os.cpu_count()} CPU cores with {workers} worker processes "
            "(runs finished earlier are loaded, not retrained)")
    if t["runs_timed"]:
        text += (f"; producing the {t['runs_timed']}/{t['runs']} timed runs took {t['cpu_s'] / 60:.0f} CPU-minutes "
                 f"(≈ {t['cpu_s'] / 60 / cores:.0f} min of wall time on {cores} otherwise idle cores) and "
                 f"{t['wall_s'] / 60:.0f} process-minutes of wall time; from the first start ({t['first_start']}) to the last "
                 f"finish {t['span_s'] / 60:.0f} min passed (minute resolution)")
    return text


def produced_by(command: str, configs: Sequence[TrainConfig], elapsed: float, workers: int) -> str:
    """The last sentence of a report: the command, the date and :func:`cost_text`."""
    return f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}: {cost_text(configs, elapsed, workers)}."


def _partial(finished: int, planned: int) -> list[str]:
    return [f"**Partial results: {finished} of {planned} runs finished.**", ""] if finished < planned else []


# ====================================================================== tables and sentences
def _fmt_steps(v: float) -> str:
    return f"{v / 1000:,.0f}k" if np.isfinite(v) else "not reached"


def _fmt_ci(est: float, lo: float, hi: float, steps: bool = False) -> str:
    f = _fmt_steps if steps else (lambda v: f"{v:.2f}" if np.isfinite(v) else "—")
    if steps and not np.isfinite(est):
        return "not reached" + (f" [{f(lo)}, —]" if np.isfinite(lo) else "")
    return f"{f(est)} [{f(lo)}, {f(hi) if np.isfinite(hi) else 'not reached' if steps else '—'}]"


def _summary_table(first: str, summary: Mapping[str, Mapping[str, Any]],
                   extra: Mapping[str, Callable[[Mapping[str, Any]], str]] | None = None) -> str:
    """A Markdown table of a :func:`gagpo.stats.summarise` result: one row per name, the columns every
    benchmark shares, then ``extra`` (column header -> the cell of a summary entry)."""
    extra = extra or {}
    head = [first, "seeds", "final held-out success", "mean held-out success over the run",
            *(f"env steps to {_pct(t)}% (reached)" for t in THRESHOLDS), *extra]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---|" * (len(head) - 2)]
    for name, s in summary.items():
        steps = [f"{_fmt_ci(*s[threshold_key(t)], steps=True)} ({s[f'reached_{_pct(t)}']}/{s['n_seeds']})" for t in THRESHOLDS]
        cells = [name, str(s["n_seeds"]), _fmt_ci(*s["final_success"]), _fmt_ci(*s["auc_success"]), *steps,
                 *(cell(s) for cell in extra.values())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def credit_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """The head-to-head's Markdown table: one row per algorithm, with the smoothness columns."""
    return _summary_table("algorithm", summary, {
        "std approx_kl (×1e3)": lambda s: _fmt_ci(*(1e3 * v for v in s["kl_std"])),
        "mean \\|Δ held-out success\\|": lambda s: _fmt_ci(*s["eval_abs_change"]),
    })


def ablation_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """One ablation's Markdown table: one row per variant."""
    return _summary_table("variant", summary)


def target_verdict(summary: Mapping[str, Mapping[str, Any]], threshold_key: str = "steps_to_80") -> list[str]:
    """Sentences that check the benchmark's target: GAGPO reaches the threshold in ≤ :data:`TARGET_RATIO`×
    GRPO's env steps and in no more than GiGPO's (medians over seeds, with bootstrap intervals)."""
    pct = threshold_key.split("_")[-1]
    if not {"gagpo", "grpo", "gigpo"} <= set(summary):
        return [f"(target check needs gagpo, grpo and gigpo; got {sorted(summary)})"]
    per = {a: [s[threshold_key] for s in summary[a]["per_seed"]] for a in ("gagpo", "grpo", "gigpo")}
    med = {a: float(np.median(v)) for a, v in per.items()}
    budget = max(s["budget"] for s in summary.values())
    out = []
    if not np.isfinite(med["gagpo"]):
        out.append(f"- GAGPO's median run did not reach {pct}% held-out success within the budget of {budget:,.0f} env steps "
                   f"({summary['gagpo']['reached_' + pct]}/{summary['gagpo']['n_seeds']} seeds reached it): the target "
                   f"(≤ {TARGET_RATIO}× GRPO's steps, ≤ GiGPO's) is **not met** at this budget.")
        return out
    r, lo, hi = ratio_ci(per["gagpo"], per["grpo"])
    if np.isfinite(med["grpo"]):
        verdict = "met" if r <= TARGET_RATIO else "not met"
        out.append(f"- GAGPO / GRPO env steps to {pct}% (ratio of medians): {r:.2f} [{lo:.2f}, {hi:.2f}] — target ≤ {TARGET_RATIO}: **{verdict}**"
                   + (f" (but the interval reaches above {TARGET_RATIO})" if verdict == "met" and hi > TARGET_RATIO else ""))
    else:
        bound = med["gagpo"] / budget
        verdict = ("**met** (censored: GRPO's steps exceed the budget)" if bound <= TARGET_RATIO
                   else f"**undetermined** (censored: GRPO would have to need ≥ {med['gagpo'] / TARGET_RATIO:,.0f} steps)")
        out.append(f"- GRPO's median run did not reach {pct}% within {budget:,.0f} env steps while GAGPO's did at "
                   f"{med['gagpo']:,.0f}: the ratio is below {bound:.2f} — target ≤ {TARGET_RATIO}: {verdict}")
    if np.isfinite(med["gigpo"]):
        r2, lo2, hi2 = ratio_ci(per["gagpo"], per["gigpo"])
        verdict = "met" if r2 <= 1.0 else "not met"
        out.append(f"- GAGPO / GiGPO env steps to {pct}%: {r2:.2f} [{lo2:.2f}, {hi2:.2f}] — target ≤ 1: **{verdict}**"
                   + (" (the interval includes 1: no clear difference)" if lo2 <= 1.0 <= hi2 else ""))
    else:
        out.append(f"- GiGPO's median run did not reach {pct}% within the budget; GAGPO's did: target ≤ GiGPO: **met** (censored)")
    return out


def ablation_reading(name: str, summary: Mapping[str, Mapping[str, Any]]) -> str:
    """One honest sentence per ablation from its numbers: the best and worst variant by mean held-out
    success over the run, and whether their bootstrap intervals overlap."""
    items = sorted(summary.items(), key=lambda kv: kv[1]["auc_success"][0], reverse=True)
    (best, sb), (worst, sw) = items[0], items[-1]
    overlap = sb["auc_success"][1] <= sw["auc_success"][2]
    finals = ", ".join(f"{k.split('=')[1]}: {v['final_success'][0]:.2f}" for k, v in summary.items())
    verdict = ("the intervals of the best and the worst overlap, so with these seeds the data do not separate them"
               if overlap else "their intervals do not overlap")
    return (f"**{name}** — best mean held-out success over the run: {best} ({sb['auc_success'][0]:.2f}), worst: {worst} "
            f"({sw['auc_success'][0]:.2f}); {verdict}. Final success by value: {finals}.")


# ====================================================================== whole reports
def _setting(value: Any) -> str:
    return f"`{value!r}`" if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def variant_lines(variants: Mapping[str, tuple[str, Mapping[str, tuple[Any, Any]]]]) -> list[str]:
    """One line per variant row: its estimator and every TrainConfig field it changes, with the value
    of the estimator's own row (``variants``: name -> (estimator, field -> (row value, variant value)),
    :func:`gagpo.credit.variant_changes`)."""
    return [f"- `{name}`: the `{algo}` estimator with " + ", ".join(
        f"`{k}` {_setting(new)} (the `{algo}` row: {_setting(old)})" for k, (old, new) in changes.items())
        for name, (algo, changes) in variants.items()]


def one_step_kl_note(names: Sequence[str]) -> list[str]:
    """The caveat of the KL column for rows that take one gradient step per batch (``names``; none: no
    caveat): ``approx_kl`` is measured by the loss, before each step, so it is 0 by construction there."""
    if not names:
        return []
    rows = ", ".join(f"`{n}`" for n in names)
    return [f"{rows}: one gradient step per batch (`update_epochs` × `minibatches` = 1). `approx_kl` is measured by the "
            "loss before each step, so with a single step, taken at the policy that collected the batch, it is 0 by "
            "construction: the std approx_kl column cannot compare these rows with the others (the mean |Δ held-out "
            "success| column can)."]


def credit_markdown(prof: Profile, which: str, seeds: Sequence[int], summary: Mapping[str, Mapping[str, Any]],
                  finished: int, planned: int, produced: str,
                  variants: Mapping[str, tuple[str, Mapping[str, tuple[Any, Any]]]] | None = None, reference: str = "",
                  one_step: Sequence[str] = ()) -> str:
    """The head-to-head's Markdown report: the setting (read from ``prof``, the profile every run was
    configured from), :func:`credit_table`, the target checked at every threshold (the highest first)
    and ``produced`` (:func:`produced_by`). ``which`` names the profile in the heading.

    With ``variants`` (the rows are named variants, see :func:`variant_lines`) the report is that of
    the variant rows: the target check, which concerns the algorithms, gives way to what each variant
    changes, a pointer to the algorithms' report ``figures/<reference>.md`` on the same profile and
    :func:`one_step_kl_note` for the rows ``one_step``."""
    first, *others = sorted(THRESHOLDS, reverse=True)
    lines = [
        f"# Credit assignment head-to-head{', variant rows' if variants else ''} — {prof.label}, {which}",
        "",
        f"Same budget for every {'row' if variants else 'algorithm'}: {prof.env_step_budget:,} env steps per run, "
        f"{prof.tasks_per_iter} tasks × group size "
        f"{prof.group_size} per iteration, seeds {list(seeds)}; held-out success = greedy policy on {prof.eval_episodes} held-out "
        f"tasks every {prof.eval_every} iterations. Cells: median over seeds [bootstrap {_CI} interval]; \"final\" = mean of the "
        f"last {FINAL_EVALS} evaluations; \"not reached\" = threshold never hit within the budget (counted as infinitely many steps).",
        "",
        *_partial(finished, planned),
        credit_table(summary),
        "",
    ]
    if variants:
        lines += ["Each row is an estimator of the head-to-head with some settings changed (read from the runs' configuration):",
                  *variant_lines(variants), "",
                  f"Every other setting, the profile, the seeds and the budget are those of the algorithms' rows in "
                  f"`figures/{reference}.md`, so the two tables can be read side by side."]
        lines += ["", *one_step_kl_note(one_step)] if one_step else []
        return "\n".join([*lines, "", produced])
    lines += [
        f"Target (GAGPO reaches {_pct(first)}% in ≤ {TARGET_RATIO}× GRPO's env steps and no more than GiGPO's):",
        *target_verdict(summary, threshold_key(first)),
    ]
    for t in others:
        lines += ["", f"Same check at {_pct(t)}% held-out success:", *target_verdict(summary, threshold_key(t))]
    return "\n".join([*lines, "", produced])


def ablation_markdown(prof: Profile, which: str, seeds: Sequence[int], default: TrainConfig, sections: Sequence[str],
                    finished: int, planned: int, produced: str) -> str:
    """The ablations' Markdown report: the default setting every variant changes one field of (read
    from ``default``, the configuration of the default variant's runs), ``sections`` (a table and a
    reading per ablation) and ``produced`` (:func:`produced_by`)."""
    episodes = default.tasks_per_iter * default.group_size
    return "\n".join([
        f"# GAGPO ablations — {prof.label}, {which}",
        "",
        f"Every variant changes one setting of the default (λ {default.lam}, γ {default.gamma}, G {default.group_size}, "
        f"{default.norm}, {default.anchor_match} anchors); budget {default.env_step_budget:,} env steps per run, seeds "
        f"{list(seeds)}. Group-size variants keep {episodes} episodes per iteration (tasks per iteration = {episodes} / G). "
        f"Near-duplicate anchors: word-bigram Jaccard ≥ {default.anchor_threshold} within a group (gagpo.anchors). "
        f"Cells: median over seeds [bootstrap {_CI} interval]. In the CSV, the default configuration's runs appear once, "
        "as variant `default`.",
        "",
        *_partial(finished, planned),
        *sections,
        produced,
    ])


# ====================================================================== figures
def plot_curves(ax, runs: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], colors: Mapping[str, str] | None = None,
                n_boot: int = 1000, key: str = "eval_success", threshold: float | None = max(THRESHOLDS)) -> None:
    """Median held-out success vs environment steps across seeds with a bootstrap band."""
    colors = colors or plotting.ALGO_COLORS
    for i, (name, hists) in enumerate(runs.items()):
        curves = [eval_curve(h, key) for h in hists]
        curves = [c for c in curves if len(c[0])]
        if not curves:
            continue
        grid, ys = curves_on_grid(curves)
        med, lo, hi = bootstrap_ci(ys, np.median, n_boot)
        color = colors.get(name, f"C{i}")
        ax.plot(grid, med, color=color, label=f"{name} (n={len(curves)})")
        ax.fill_between(grid, lo, hi, color=color, alpha=0.18, linewidth=0)
    if threshold is not None:
        ax.axhline(threshold, color="k", linestyle="--", linewidth=0.8, alpha=0.6)
    ax.set_xlabel("environment steps")
    ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1000:.0f}k")
    ax.set_ylabel("held-out success (greedy)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="upper left")


def plot_steps_to(ax, summary: Mapping[str, Mapping[str, Any]], key: str = "steps_to_80", colors: Mapping[str, str] | None = None) -> None:
    """Bar per algorithm: median env steps to the threshold with its bootstrap interval.

    A median of "not reached" is drawn as a hatched bar up to the budget; the label above each bar
    says how many seeds reached the threshold at all. An interval whose upper end is "not reached"
    gets an arrow to the top."""
    colors = colors or plotting.ALGO_COLORS
    names = list(summary)
    budget = max(s["budget"] for s in summary.values())
    reached_key = key.replace("steps_to", "reached")
    for i, name in enumerate(names):
        est, lo, hi = summary[name][key]
        color = colors.get(name, f"C{i}")
        if np.isfinite(est):
            ax.bar(i, est, color=color, alpha=0.85)
        else:
            ax.bar(i, budget, color="none", edgecolor=color, hatch="//", linewidth=1.2)
            ax.text(i, budget / 2, "median:\nnot\nreached", ha="center", va="center", fontsize=7, backgroundcolor="white")
        if np.isfinite(lo):
            top = hi if np.isfinite(hi) else budget
            ax.plot([i, i], [lo, top], color="k", linewidth=1.2)
            ax.plot([i - 0.12, i + 0.12], [lo, lo], color="k", linewidth=1.2)
            if np.isfinite(hi):
                ax.plot([i - 0.12, i + 0.12], [hi, hi], color="k", linewidth=1.2)
            else:
                ax.annotate("", xy=(i, budget * 1.04), xytext=(i, budget * 0.9), arrowprops=dict(arrowstyle="->", lw=1.2))
        n = summary[name]["n_seeds"]
        ax.text(i, budget * 1.07, f"{summary[name][reached_key]}/{n}", ha="center", va="bottom", fontsize=8)
    ax.axhline(budget, color="k", linestyle=":", linewidth=0.8)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(0, budget * 1.18)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v / 1000:.0f}k")
    ax.set_ylabel("environment steps")


def plot_smoothness(axes, summary: Mapping[str, Mapping[str, Any]], colors: Mapping[str, str] | None = None) -> None:
    """Three panels: std of approx_kl, mean |Δ held-out success|, mean drop of held-out success
    (median over seeds with bootstrap intervals)."""
    colors = colors or plotting.ALGO_COLORS
    names = list(summary)
    titles = {"kl_std": "std of approx_kl over iterations", "eval_abs_change": "mean |Δ held-out success|",
              "eval_drop": "mean drop of held-out success"}
    for ax, (k, title) in zip(axes, titles.items()):
        for i, name in enumerate(names):
            est, lo, hi = summary[name][k]
            ax.errorbar(i, est, yerr=[[est - lo], [hi - est]], fmt="o", color=colors.get(name, f"C{i}"), capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(bottom=0)


def _save(fig, name: str, figures_dir: str) -> str:
    """:func:`gagpo.plotting.save`, then close the figure."""
    import matplotlib.pyplot as plt

    path = plotting.save(fig, name, figures_dir)
    plt.close(fig)
    return path


def credit_figures(runs: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], summary: Mapping[str, Mapping[str, Any]],
                   label: str, stem: str, figures_dir: str) -> list[str]:
    """The head-to-head's figures ``<stem>_curves``, ``<stem>_steps_to_<pct>`` (the highest threshold's
    name; one panel per threshold) and ``<stem>_smoothness``; returns their paths."""
    plt = plotting.use_style()
    fig, ax = plt.subplots()
    plot_curves(ax, runs)
    ax.set_title(f"{label}: held-out success, median and bootstrap {_CI} band over seeds", fontsize=9)
    paths = [_save(fig, stem + "_curves", figures_dir)]
    thresholds = sorted(THRESHOLDS, reverse=True)
    fig, axes = plt.subplots(1, len(thresholds), figsize=(9.6, 3.8), sharey=True)
    for ax, t in zip(np.atleast_1d(axes), thresholds):
        plot_steps_to(ax, summary, threshold_key(t))
        ax.set_title(f"to {_pct(t)}% held-out success", fontsize=9)
    fig.suptitle(f"{label}: env steps to a held-out success threshold (median, bootstrap {_CI} CI; "
                 "k/n = seeds that reached it; hatched = median run never did)", fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, f"{stem}_{threshold_key(thresholds[0])}", figures_dir))
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    plot_smoothness(axes, summary)
    fig.suptitle(f"{label}: optimisation smoothness (median over seeds, {_CI} CI)", fontsize=9)
    fig.tight_layout()
    paths.append(_save(fig, stem + "_smoothness", figures_dir))
    return paths


def ablation_figure(setting: str, runs: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], summary: Mapping[str, Mapping[str, Any]],
                    title: str, name: str, figures_dir: str) -> str:
    """One ablation's figure ``<name>``: the curves of its variants (``"<setting>=<value>"``) and, per
    value, the mean held-out success over the run and the final one with their intervals."""
    plt = plotting.use_style()
    colors = {lab: plt.cm.viridis(0.85 * i / max(len(runs) - 1, 1)) for i, lab in enumerate(runs)}
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    plot_curves(axes[0], runs, colors)
    for i, (lab, s) in enumerate(summary.items()):
        for k, marker, dx in (("auc_success", "o", -0.1), ("final_success", "s", 0.1)):
            est, lo, hi = s[k]
            axes[1].errorbar(i + dx, est, yerr=[[est - lo], [hi - est]], fmt=marker, color=colors[lab], capsize=3,
                             label=("mean over run" if k == "auc_success" else "final") if i == 0 else None)
    axes[1].set_xticks(range(len(summary)), [lab.split("=")[1] for lab in summary])
    axes[1].set_xlabel(setting)
    axes[1].set_ylabel("held-out success")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{title} (median, bootstrap {_CI})", fontsize=9)
    fig.tight_layout()
    return _save(fig, name, figures_dir)


# ====================================================================== iteration time
ITERATION_PHASES = ("rollout", "advantage", "update")


def iteration_time_figure(rows: Sequence[Mapping[str, Any]], title: str, figures_dir: str) -> str:
    """``iteration_time.png``: per algorithm, the stacked median time of each phase per iteration and
    per 1,000 env steps (rows of :func:`gagpo.credit.iteration_time`)."""
    plt = plotting.use_style()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for ax, suffix, sub in ((axes[0], "_ms", "ms per iteration (median)"), (axes[1], "_ms_per_1k_steps", "ms per 1,000 env steps (median)")):
        bottom = np.zeros(len(rows))
        for ph, hatch in zip(ITERATION_PHASES, ("", "xx", "..")):
            vals = np.asarray([r[ph + suffix] for r in rows])
            ax.bar(range(len(rows)), vals, bottom=bottom, label=ph, hatch=hatch, edgecolor="k", linewidth=0.5,
                   color=[plotting.ALGO_COLORS.get(r["algo"], "C0") for r in rows],
                   alpha={"rollout": 0.35, "advantage": 1.0, "update": 0.7}[ph])
            bottom += vals
        ax.set_xticks(range(len(rows)), [r["algo"] for r in rows])
        ax.set_title(sub, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, "iteration_time", figures_dir)


def iteration_time_markdown(rows: Sequence[Mapping[str, Any]], label: str, iterations: int, seed: int, threads: int, command: str) -> str:
    """The Markdown report of :func:`gagpo.credit.iteration_time`: the setting (``threads`` = the runs'
    ``TrainConfig.threads``), one table row per algorithm, the machine (cores, load average, measured now)."""
    lines = ["| algorithm | env steps / iteration | rollout (ms) | advantage (ms) | update (ms) | total (ms) | advantage share |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['algo']} | {r['env_steps_per_iteration']:,.0f} | {r['rollout_ms']:.0f} | {r['advantage_ms']:.1f} | "
                     f"{r['update_ms']:.0f} | {r['total_ms']:.0f} | {100 * r['advantage_share']:.1f}% |")
    thread_text = "one torch thread" if threads == 1 else f"{threads} torch threads"
    return "\n".join([
        f"# Wall time of one training iteration — {label}",
        "",
        f"Median over the first {iterations} iterations from seed {seed} ({thread_text}; evaluation off). The advantage step "
        "includes everything between the rollout and the update: for GiGPO/GAGPO the anchor grouping of the batch, "
        "for PPO two forward passes of the critic.",
        "",
        *lines,
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end (absolute times grow with the machine's load; the shares much less).",
    ])


__all__ = [
    "CSV_FLOAT", "CSV_COLUMNS", "TARGET_RATIO", "tidy_rows", "histories_by", "report_dir", "compare_with_committed", "write_report",
    "cost_text", "produced_by", "credit_table", "ablation_table", "target_verdict", "ablation_reading", "credit_markdown",
    "variant_lines", "one_step_kl_note", "ablation_markdown", "plot_curves", "plot_steps_to", "plot_smoothness", "credit_figures", "ablation_figure",
    "iteration_time_figure", "iteration_time_markdown",
]
