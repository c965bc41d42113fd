r"""The credit-assignment benchmark: every estimator, the same budget, many seeds, honest statistics.

Three layers, each usable on its own (chapter 7 walks through them):

1. **Statistics** (pure numpy, no I/O): :func:`bootstrap_ci` (percentile bootstrap of any statistic,
   also of whole curves), :func:`steps_to_threshold`, :func:`eval_curve`, :func:`curves_on_grid`,
   :func:`run_summary` (final success, area under the curve, smoothness).
2. **Harness**: a :class:`Profile` fixes the environment, the environment-step budget, group size,
   tasks per iteration, evaluation and seeds; :meth:`Profile.config` turns it into one
   :class:`~gagpo.config.TrainConfig` per (algorithm or variant, seed) with a fixed run directory
   ``runs/credit/<profile>/<name>-seed<k>``; :func:`run_configs` trains them in worker processes
   with a progress bar, *skips* runs whose ``metrics.jsonl`` is complete and *resumes* interrupted
   ones exactly from their checkpoint (``TrainConfig.resume=True``).
3. **Reports**: :func:`credit` (``python -m gagpo bench credit``), :func:`ablations`
   (``bench ablations``) and :func:`iteration_time` (``bench iteration``) write a tidy CSV (one row
   per run × iteration), figures and a Markdown table to ``figures/`` — quick profiles to
   ``<root>/<profile>/figures`` unless told otherwise, so a smoke run never replaces committed results.

Budgets are in **environment steps**, never iterations: an algorithm whose episodes are short (it
solves tasks) takes more iterations from the same budget, which is the fair comparison for agents
whose cost is dominated by environment and model calls. Every run of a profile uses the same
seeds; a seed fixes the initial weights and the sequence of training tasks, so run ``k`` of two
algorithms starts from the same policy and sees the same tasks.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .config import ALGOS, TrainConfig, config_mismatch
from .rundir import RunLock
from .tables import read_csv, write_csv

CSV_FLOAT = ".5g"  # float cells of the benchmark CSVs: 5 significant digits

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy >= 2 renamed trapz

# ====================================================================== statistics
def bootstrap_ci(
    samples: Sequence[float] | np.ndarray,
    statistic: Callable[..., np.ndarray] = np.median,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Point estimate and percentile-bootstrap interval of ``statistic`` over the first axis.

    ``samples`` has shape ``(n, ...)`` — e.g. ``(n_seeds,)`` for one number per seed, or
    ``(n_seeds, n_points)`` for a curve per seed (then everything below holds pointwise).
    ``statistic(x, axis=...)`` must reduce an axis (``np.median``, ``np.mean``).

    Algorithm (so that a test can replay it): ``rng = np.random.default_rng(seed)``;
    ``idx = rng.integers(0, n, size=(n_boot, n))``; the bootstrap statistics are
    ``statistic(samples[idx], axis=1)``; the interval is their lower
    :math:`(1-\text{level})/2` quantile and upper :math:`(1+\text{level})/2` quantile taken
    *without interpolation* (``method="lower"`` and ``"higher"``), so that ``+inf`` entries (e.g.
    "threshold never reached") order correctly instead of turning into NaN.

    Returns ``(estimate, low, high)`` with the shape of one statistic; a constant sample gives a
    zero-width interval. With fewer than 2 samples the interval is the estimate itself.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError("bootstrap_ci needs at least one sample along the first axis")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    estimate = np.asarray(statistic(x, axis=0), dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return estimate, estimate.copy(), estimate.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats = np.asarray(statistic(x[idx], axis=1), dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    low = np.quantile(stats, alpha, axis=0, method="lower")
    high = np.quantile(stats, 1.0 - alpha, axis=0, method="higher")
    return estimate, np.asarray(low), np.asarray(high)


def steps_to_threshold(env_steps: Sequence[float], success: Sequence[float], threshold: float = 0.8) -> float:
    """Environment steps at the first evaluation whose success is ``>= threshold``; ``inf`` if none.

    ``env_steps`` and ``success`` are aligned, in training order (NaN success entries are skipped).
    The first crossing is what a practitioner watching the curve would report; a run that touches
    the threshold once counts as having reached it.
    """
    x = np.asarray(env_steps, dtype=np.float64)
    y = np.asarray(success, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"env_steps and success must have the same shape; got {x.shape} and {y.shape}")
    hit = np.flatnonzero(np.nan_to_num(y, nan=-np.inf) >= threshold)
    return float(x[hit[0]]) if len(hit) else float("inf")


def eval_curve(history: Iterable[Mapping[str, Any]], key: str = "eval_success") -> tuple[np.ndarray, np.ndarray]:
    """``(env_steps, value)`` at the evaluation iterations of one run's history (rows with ``key``)."""
    pts = [(float(r["env_steps"]), float(r[key])) for r in history if key in r and r[key] is not None and r[key] == r[key] and r[key] != ""]
    if not pts:
        return np.zeros(0), np.zeros(0)
    x, y = zip(*pts)
    return np.asarray(x), np.asarray(y)


def curves_on_grid(curves: Sequence[tuple[np.ndarray, np.ndarray]], n_points: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Put several runs' ``(x, y)`` curves on one grid by linear interpolation.

    The grid spans the x-range *every* run covers — from the largest first x to the smallest last
    x — so nothing is extrapolated. Returns ``(grid, values)`` with ``values`` of shape
    ``(n_runs, n_points)``.
    """
    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not curves:
        raise ValueError("curves_on_grid needs at least one non-empty curve")
    lo = max(float(x[0]) for x, _ in curves)
    hi = min(float(x[-1]) for x, _ in curves)
    grid = np.linspace(lo, max(hi, lo), n_points)
    return grid, np.stack([np.interp(grid, x, y) for x, y in curves])


def smoothness(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """How jumpy one run's optimisation was.

    * ``kl_std`` — std of the per-iteration ``approx_kl`` (size of policy steps varies);
    * ``eval_abs_change`` — mean :math:`|\\Delta|` of held-out success between consecutive evaluations;
    * ``eval_drop`` — mean drop, :math:`\\operatorname{mean} \\max(0, -\\Delta)`: success lost
      between evaluations (0 for a curve that never goes down);
    * ``train_abs_change`` — mean :math:`|\\Delta|` of training success between consecutive iterations.
    """
    kl = np.asarray([r["approx_kl"] for r in history if "approx_kl" in r], dtype=np.float64)
    train = np.asarray([r["success"] for r in history], dtype=np.float64)
    _, ev = eval_curve(history)
    d_eval = np.diff(ev)
    return {
        "kl_std": float(kl.std()) if len(kl) else float("nan"),
        "eval_abs_change": float(np.abs(d_eval).mean()) if len(d_eval) else float("nan"),
        "eval_drop": float(np.maximum(-d_eval, 0.0).mean()) if len(d_eval) else float("nan"),
        "train_abs_change": float(np.abs(np.diff(train)).mean()) if len(train) > 1 else float("nan"),
    }


def run_summary(history: Sequence[Mapping[str, Any]], thresholds: Sequence[float] = (0.5, 0.8), final_evals: int = 3) -> dict[str, float]:
    """One run's numbers: final held-out success (mean of the last ``final_evals`` evaluations),
    the average held-out success over the run (area under the success-vs-steps curve divided by
    its length), env steps to each threshold (``inf`` = not reached), total env steps, and
    :func:`smoothness`."""
    x, y = eval_curve(history)
    out: dict[str, float] = {
        "final_success": float(y[-final_evals:].mean()) if len(y) else float("nan"),
        "auc_success": float(_trapezoid(y, x) / (x[-1] - x[0])) if len(x) > 1 and x[-1] > x[0] else (float(y[0]) if len(y) else float("nan")),
        "env_steps": float(history[-1]["env_steps"]) if history else 0.0,
        "iterations": float(history[-1]["iteration"]) if history else 0.0,
    }
    for t in thresholds:
        out[f"steps_to_{int(round(100 * t))}"] = steps_to_threshold(x, y, t)
    out.update(smoothness(history))
    return out


def _fmt_steps(v: float) -> str:
    return f"{v / 1000:,.0f}k" if np.isfinite(v) else "not reached"


def _fmt_ci(est: float, lo: float, hi: float, steps: bool = False) -> str:
    f = _fmt_steps if steps else (lambda v: f"{v:.2f}" if np.isfinite(v) else "—")
    if steps and not np.isfinite(est):
        return "not reached" + (f" [{f(lo)}, —]" if np.isfinite(lo) else "")
    return f"{f(est)} [{f(lo)}, {f(hi) if np.isfinite(hi) else 'not reached' if steps else '—'}]"


# ====================================================================== harness
@dataclass(frozen=True)
class Profile:
    """A benchmark setting shared by every run of a comparison (one environment, one budget)."""

    name: str                      #: run-directory name, e.g. "keydoor-full"
    env: str                       #: gymnasium id
    env_kwargs: dict = field(default_factory=dict)
    max_steps: int = 0             #: step limit per episode (0 = registered)
    env_step_budget: int = 400_000  #: environment steps per run (the budget every algorithm gets)
    seeds: tuple[int, ...] = tuple(range(10))
    algos: tuple[str, ...] = ("reinforce", "grpo", "rloo", "ppo", "gigpo", "gagpo")
    tasks_per_iter: int = 8
    group_size: int = 8
    eval_every: int = 10           #: iterations between held-out evaluations
    eval_episodes: int = 100       #: held-out tasks per evaluation (greedy policy)
    label: str = ""                #: human description for tables and figure titles

    def config(self, algo: str, seed: int, root: str = "runs/credit", name: str | None = None, **overrides) -> TrainConfig:
        """The :class:`TrainConfig` of one run; ``overrides`` change fields (ablation variants)."""
        kw = dict(
            env=self.env, env_kwargs=dict(self.env_kwargs), max_steps=self.max_steps, algo=algo, seed=seed,
            env_step_budget=self.env_step_budget, tasks_per_iter=self.tasks_per_iter, group_size=self.group_size,
            eval_every=self.eval_every, eval_episodes=self.eval_episodes, progress=False, resume=True, checkpoint_every=10,
        )
        kw.update(overrides)
        # the budget stops every run; episodes last >= 1 step, so this many iterations always exhaust it
        kw.setdefault("iterations", self.env_step_budget // (kw["tasks_per_iter"] * kw["group_size"]) + 1)
        kw["out_dir"] = os.path.join(root, self.name, f"{name or algo}-seed{seed}")
        return TrainConfig(**kw)


#: The benchmark profiles, by (environment short name, "quick" | "full"). See the module docstring
#: of chapter 7 / `figures/credit_*.md` for the measured wall times.
PROFILES: dict[tuple[str, str], Profile] = {
    ("keydoor", "full"): Profile(
        "keydoor-full", "toy_envs/KeyDoor-v0", {"size": 7}, env_step_budget=400_000, seeds=tuple(range(10)),
        label="KeyDoor 7x7 (step limit 60)",
    ),
    ("keydoor", "quick"): Profile(
        "keydoor-quick", "toy_envs/KeyDoor-v0", {"size": 5}, max_steps=30, env_step_budget=100_000, seeds=(0, 1, 2),
        eval_every=5, label="KeyDoor 5x5 (step limit 30)",
    ),
    # MiniHousehold: one iteration costs ~1 CPU-second (long observations) and a probe GAGPO run at the
    # defaults was still at 2-16% training success after 280k env steps, so its budget is smaller than
    # KeyDoor's (the full profile: 60 runs, about 90 CPU-minutes); the quick profile is a smoke run.
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
SUMMARY_KEYS = ("final_success", "auc_success", "steps_to_50", "steps_to_80", "kl_std", "eval_abs_change", "eval_drop", "train_abs_change")
#: Per-iteration columns kept in the tidy CSVs (the rest of a history — timings of each phase,
#: ratio statistics — stays in each run's own metrics.csv).
CSV_COLUMNS = (
    "iteration", "env_steps", "success", "return", "episode_length", "invalid_rate", "adv_std", "adv_zero_frac",
    "clip_fraction", "approx_kl", "entropy", "anchor_frac_1", "eval_success", "eval_return", "eval_length",
    "time_rollout", "time_advantage", "time_update",
)


def get_profile(env: str, quick: bool) -> Profile:
    key = (env, "quick" if quick else "full")
    if key not in PROFILES:
        raise ValueError(f"unknown environment {env!r}; expected one of {list(ENVS)}")
    return PROFILES[key]


def finished_history(cfg: TrainConfig) -> list[dict[str, Any]] | None:
    """The history of a run that already finished under ``cfg`` (read from its ``metrics.jsonl``),
    or None when the run is absent or incomplete. Raises ValueError when the directory holds a run
    of a different configuration (delete it, or choose another ``root``)."""
    run_dir = cfg.run_dir()
    cfg_path, metrics_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "metrics.jsonl")
    if not (os.path.exists(cfg_path) and os.path.exists(metrics_path)):
        return None
    with open(cfg_path) as fh:
        saved = json.load(fh)
    now = cfg.to_dict()
    diff = config_mismatch({k: v for k, v in saved.items() if k in now}, now, TrainConfig.RESUMABLE)
    if diff:
        raise ValueError(f"{run_dir} holds a run with a different configuration {diff} (saved, now); delete it or use another root")
    with open(metrics_path) as fh:
        history = [json.loads(line) for line in fh if line.strip()]
    if not history:
        return None
    last = history[-1]
    budget_spent = cfg.env_step_budget > 0 and last["env_steps"] >= cfg.env_step_budget
    if budget_spent or last["iteration"] >= cfg.iterations:
        return history
    return None


def _acquire_run_lock(run_dir: str, poll_s: float = 5.0) -> RunLock | None:
    """Take the run directory's lock (:class:`gagpo.rundir.RunLock`, which the trainer takes again,
    re-entrantly, for the run itself). If another live process holds it — two benchmark invocations
    sharing a run, e.g. the ablations' default variant and the head-to-head's GAGPO — wait until it
    is released and return None; the lock of a process that died is taken over."""
    lock = RunLock(run_dir)
    if lock.acquire():
        return lock
    lock.acquire(wait=True, poll_s=poll_s)
    lock.release()
    return None


def _train_one(cfg_dict: dict[str, Any]) -> list[dict[str, Any]]:
    """Train one run (under a run-directory lock) and append its wall and CPU seconds to
    ``<run_dir>/timing.jsonl`` (one line per invocation, so a resumed run adds a line)."""
    from .trainer import train

    cfg = TrainConfig(**cfg_dict)
    while True:
        lock = _acquire_run_lock(cfg.run_dir())
        if lock is not None:
            break
        done = finished_history(cfg)  # another process trained it meanwhile
        if done is not None:
            return done
    try:
        t0, c0 = time.time(), time.process_time()
        history = train(cfg)
        with open(os.path.join(cfg.run_dir(), "timing.jsonl"), "a") as fh:
            fh.write(json.dumps({"wall_s": time.time() - t0, "cpu_s": time.process_time() - c0, "iterations": len(history),
                                 "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
    finally:
        lock.release()
    return history


def training_time(configs: Sequence[TrainConfig]) -> dict[str, float]:
    """Summed ``wall_s`` and ``cpu_s`` over the ``timing.jsonl`` files of ``configs``' run directories
    (the cost of producing the runs, however many invocations it took), the number of runs timed,
    and the elapsed time from the earliest start to the latest finish (``span_s``)."""
    wall = cpu = 0.0
    timed = 0
    starts, ends = [], []
    for c in configs:
        path = os.path.join(c.run_dir(), "timing.jsonl")
        if not os.path.exists(path):
            continue
        timed += 1
        with open(path) as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    wall += rec["wall_s"]
                    cpu += rec["cpu_s"]
                    end = time.mktime(time.strptime(rec["date"], "%Y-%m-%d %H:%M"))
                    starts.append(end - rec["wall_s"])
                    ends.append(end)
    span = (max(ends) - min(starts)) if ends else 0.0
    first = time.strftime("%Y-%m-%d %H:%M", time.localtime(min(starts))) if starts else ""
    return {"wall_s": wall, "cpu_s": cpu, "runs_timed": timed, "runs": len(configs), "span_s": span, "first_start": first}


def cost_text(configs: Sequence[TrainConfig], elapsed: float, workers: int) -> str:
    """What producing a report cost: this invocation's wall time on this machine, and the CPU and
    wall time its runs took when they were trained (from their ``timing.jsonl``)."""
    t = training_time(configs)
    text = (f"wall time of this invocation {_wall(elapsed)} on {os.cpu_count()} CPU cores with {workers} worker processes "
            "(runs finished earlier are loaded, not retrained)")
    if t["runs_timed"]:
        text += (f"; producing the {t['runs_timed']}/{t['runs']} timed runs took {t['cpu_s'] / 60:.0f} CPU-minutes "
                 f"(≈ {t['cpu_s'] / 60 / max(workers, 1):.0f} min of wall time on {workers} otherwise idle cores) and "
                 f"{t['wall_s'] / 60:.0f} process-minutes of wall time; from the first start ({t['first_start']}) to the last "
                 f"finish {t['span_s'] / 60:.0f} min passed (minute resolution)")
    return text


def report_dir(figures_dir: str | None, quick: bool, run_root: str) -> str:
    """Where a benchmark writes its CSV, report and figures.

    ``figures_dir`` when given; otherwise the committed ``figures/`` (or ``$GAGPO_SAVE_DIR``, see
    :func:`gagpo.plotting.output_dir`) for a full profile, and ``<run_root>/figures`` for a quick one:
    a smoke run never overwrites committed results unless asked to with an explicit ``figures_dir``.
    """
    from .plotting import output_dir

    if figures_dir:
        return figures_dir
    return os.path.join(run_root, "figures") if quick else output_dir()


def compare_with_committed(table: str, figures_dir: str, name: str) -> str | None:
    """How ``table`` (a Markdown table just computed) compares with the committed report
    ``figures/<name>``: None when there is nothing to compare (no committed report, or the report was
    just written there); otherwise a sentence, followed by the rows that differ and their committed
    versions (rows are matched by their first cell)."""
    from .plotting import FIGURES_DIR

    committed = os.path.join(FIGURES_DIR, name)
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


def run_configs(configs: Sequence[TrainConfig], workers: int = 2, desc: str = "runs", progress: bool = True,
                train: bool = True) -> list[list[dict[str, Any]] | None]:
    """Train every configuration not finished yet, ``workers`` processes at a time; return all histories.

    Finished runs (see :func:`finished_history`) are loaded, not retrained; interrupted ones resume
    from their last checkpoint (``resume=True``) and replay exactly what an uninterrupted run
    would have done. ``workers <= 1`` trains in this process. ``train=False`` trains nothing and
    returns None for every run not finished yet (a report of partial results).
    """
    results: list[Any] = [finished_history(c) for c in configs]
    todo = [i for i, r in enumerate(results) if r is None]
    if not train:
        return results
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc=desc, unit="run", dynamic_ncols=True)
    try:
        if workers <= 1:
            for i in todo:
                results[i] = _train_one(dataclasses.asdict(configs[i]))
                if bar is not None:
                    bar.update(1)
        elif todo:
            # "spawn": fresh interpreters, safe to start from a notebook kernel (forking a process with threads is not)
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as ex:
                futures = {ex.submit(_train_one, dataclasses.asdict(configs[i])): i for i in todo}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    if bar is not None:
                        bar.update(1)
                        c = configs[futures[fut]]
                        bar.set_postfix_str(f"last: {os.path.basename(c.run_dir())}")
    finally:
        if bar is not None:
            bar.close()
    return results


def _finished_only(configs: Sequence[TrainConfig], histories: Sequence[Any]) -> tuple[list[TrainConfig], list[Any]]:
    keep = [i for i, h in enumerate(histories) if h is not None]
    if not keep:
        raise ValueError("no finished runs to report; run without --report-only first")
    return [configs[i] for i in keep], [histories[i] for i in keep]


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


def summarise(runs: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per algorithm (or variant): :func:`run_summary` of every seed, and the median with a bootstrap
    95% interval of each :data:`SUMMARY_KEYS` entry (``"<key>"`` → (median, low, high)), plus the
    number of seeds that reached each threshold."""
    out = {}
    for name, hists in runs.items():
        per_seed = [run_summary(h) for h in hists]
        entry: dict[str, Any] = {"n_seeds": len(per_seed), "per_seed": per_seed}
        for k in SUMMARY_KEYS:
            vals = np.asarray([s[k] for s in per_seed], dtype=float)
            vals = vals[~np.isnan(vals)]
            entry[k] = tuple(float(v) for v in bootstrap_ci(vals, np.median, n_boot, 0.95, seed)) if len(vals) else (np.nan,) * 3
        for k in ("steps_to_50", "steps_to_80"):
            entry[k.replace("steps_to", "reached")] = int(sum(np.isfinite(s[k]) for s in per_seed))
        entry["budget"] = max(s["env_steps"] for s in per_seed)
        out[name] = entry
    return out


def ratio_ci(num: Sequence[float], den: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Ratio of medians ``median(num) / median(den)`` with a percentile bootstrap interval
    (each sample resampled independently; ``inf/inf`` counts as NaN and is dropped)."""
    a, b = np.asarray(num, float), np.asarray(den, float)
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, len(a), (n_boot, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), (n_boot, len(b)))], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = ma / mb
        est = float(np.median(a) / np.median(b))
    r = r[~np.isnan(r)]
    if not len(r):
        return est, float("nan"), float("nan")
    return est, float(np.quantile(r, 0.025, method="lower")), float(np.quantile(r, 0.975, method="higher"))


# ====================================================================== figures
def plot_curves(ax, runs: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], colors: Mapping[str, str] | None = None,
                n_boot: int = 1000, key: str = "eval_success", threshold: float | None = 0.8) -> None:
    """Median held-out success vs environment steps across seeds with a bootstrap 95% band."""
    from .plotting import ALGO_COLORS

    colors = colors or ALGO_COLORS
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
    """Bar per algorithm: median env steps to the threshold with its bootstrap 95% interval.

    A median of "not reached" is drawn as a hatched bar up to the budget; the label above each bar
    says how many seeds reached the threshold at all. An interval whose upper end is "not reached"
    gets an arrow to the top."""
    from .plotting import ALGO_COLORS

    colors = colors or ALGO_COLORS
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
    (median over seeds with bootstrap 95% intervals)."""
    from .plotting import ALGO_COLORS

    colors = colors or ALGO_COLORS
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


# ====================================================================== the head-to-head
def credit_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [
        "| algorithm | seeds | final held-out success | mean held-out success over the run | env steps to 50% (reached) | env steps to 80% (reached) | std approx_kl (×1e3) | mean \\|Δ held-out success\\| |",
        "|---|---:|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        kl = tuple(1e3 * v for v in s["kl_std"])
        lines.append(
            f"| {name} | {s['n_seeds']} | {_fmt_ci(*s['final_success'])} | {_fmt_ci(*s['auc_success'])} | "
            f"{_fmt_ci(*s['steps_to_50'], steps=True)} ({s['reached_50']}/{s['n_seeds']}) | "
            f"{_fmt_ci(*s['steps_to_80'], steps=True)} ({s['reached_80']}/{s['n_seeds']}) | "
            f"{_fmt_ci(*kl)} | {_fmt_ci(*s['eval_abs_change'])} |"
        )
    return "\n".join(lines)


def target_verdict(summary: Mapping[str, Mapping[str, Any]], threshold_key: str = "steps_to_80") -> list[str]:
    """Sentences that check the benchmark's target: GAGPO reaches the threshold in ≤ 0.6× GRPO's
    env steps and in no more than GiGPO's (medians over seeds, with bootstrap intervals)."""
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
                   f"(≤ 0.6× GRPO's steps, ≤ GiGPO's) is **not met** at this budget.")
        return out
    r, lo, hi = ratio_ci(per["gagpo"], per["grpo"])
    if np.isfinite(med["grpo"]):
        verdict = "met" if r <= 0.6 else "not met"
        out.append(f"- GAGPO / GRPO env steps to {pct}% (ratio of medians): {r:.2f} [{lo:.2f}, {hi:.2f}] — target ≤ 0.6: **{verdict}**"
                   + (" (but the interval reaches above 0.6)" if verdict == "met" and hi > 0.6 else ""))
    else:
        bound = med["gagpo"] / budget
        verdict = "**met** (censored: GRPO's steps exceed the budget)" if bound <= 0.6 else "**undetermined** (censored: GRPO would have to need ≥ {:,.0f} steps)".format(med["gagpo"] / 0.6)
        out.append(f"- GRPO's median run did not reach {pct}% within {budget:,.0f} env steps while GAGPO's did at "
                   f"{med['gagpo']:,.0f}: the ratio is below {bound:.2f} — target ≤ 0.6: {verdict}")
    if np.isfinite(med["gigpo"]):
        r2, lo2, hi2 = ratio_ci(per["gagpo"], per["gigpo"])
        verdict = "met" if r2 <= 1.0 else "not met"
        out.append(f"- GAGPO / GiGPO env steps to {pct}%: {r2:.2f} [{lo2:.2f}, {hi2:.2f}] — target ≤ 1: **{verdict}**"
                   + (" (the interval includes 1: no clear difference)" if lo2 <= 1.0 <= hi2 else ""))
    else:
        out.append(f"- GiGPO's median run did not reach {pct}% within the budget; GAGPO's did: target ≤ GiGPO: **met** (censored)")
    return out


def _wall(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def credit(env: str = "keydoor", quick: bool = False, workers: int = 2, seeds: Sequence[int] | None = None,
           algos: Sequence[str] | None = None, root: str = "runs/credit", figures_dir: str | None = None,
           progress: bool = True, command: str | None = None, profile: Profile | None = None,
           report_only: bool = False, group_size: int | None = None) -> dict[str, Any]:
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
    match; runs named ``<algo>-group_size<G>``, outputs ``credit_<env>[_quick]_G<G>.*``)."""
    from .plotting import save, use_style

    prof = profile or get_profile(env, quick)
    figures_dir = report_dir(figures_dir, quick, os.path.join(root, prof.name))
    if not prof.label:
        prof = dataclasses.replace(prof, label=prof.name)
    seeds = tuple(prof.seeds if seeds is None else seeds)
    algos = tuple(prof.algos if algos is None else algos)
    for a in algos:
        if a not in ALGOS:
            raise ValueError(f"unknown algo {a!r}; expected one of {list(ALGOS)}")
    over: dict[str, Any] = {}
    if group_size and group_size != prof.group_size:
        episodes = prof.tasks_per_iter * prof.group_size
        if episodes % group_size:
            raise ValueError(f"group_size {group_size} must divide the {episodes} episodes per iteration of the profile")
        over = {"group_size": group_size, "tasks_per_iter": episodes // group_size}
        prof = dataclasses.replace(prof, label=f"{prof.label}, G={group_size}", tasks_per_iter=episodes // group_size,
                                   group_size=group_size)
    name = (lambda a: f"{a}-group_size{group_size}") if over else (lambda a: a)
    configs = [prof.config(a, s, root, name=name(a), **over) for s in seeds for a in algos]  # seed-major: partial results stay balanced
    t0 = time.time()
    histories = run_configs(configs, workers, desc=f"credit {prof.name}", progress=progress, train=not report_only)
    elapsed = time.time() - t0
    n_planned = len(configs)
    configs, histories = _finished_only(configs, histories)
    algos = tuple(a for a in algos if any(c.algo == a for c in configs))
    seeds = tuple(s for s in seeds if any(c.seed == s for c in configs))
    labels = [dict(env=env, profile=prof.name, algo=c.algo, seed=c.seed) for c in configs]
    rows = tidy_rows(labels, histories)
    stem = f"credit_{env}" + ("_quick" if quick else "") + (f"_G{group_size}" if over else "")
    write_csv(rows, os.path.join(figures_dir, stem + ".csv"), float_format=CSV_FLOAT)
    runs = {a: [h for c, h in zip(configs, histories) if c.algo == a] for a in algos}
    summary = summarise(runs)
    plt = use_style()
    budget_txt = f"{prof.env_step_budget:,} env steps per run"
    fig, ax = plt.subplots()
    plot_curves(ax, runs)
    ax.set_title(f"{prof.label}: held-out success, median and bootstrap 95% band over seeds", fontsize=9)
    paths = [save(fig, stem + "_curves", figures_dir)]
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8), sharey=True)
    for ax, key, pct in ((axes[0], "steps_to_80", 80), (axes[1], "steps_to_50", 50)):
        plot_steps_to(ax, summary, key)
        ax.set_title(f"to {pct}% held-out success", fontsize=9)
    fig.suptitle(f"{prof.label}: env steps to a held-out success threshold (median, bootstrap 95% CI; "
                 "k/n = seeds that reached it; hatched = median run never did)", fontsize=8)
    fig.tight_layout()
    paths.append(save(fig, stem + "_steps_to_80", figures_dir))
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    plot_smoothness(axes, summary)
    fig.suptitle(f"{prof.label}: optimisation smoothness (median over seeds, 95% CI)", fontsize=9)
    fig.tight_layout()
    paths.append(save(fig, stem + "_smoothness", figures_dir))
    plt.close(fig)
    command = command or f"python -m gagpo bench credit --env {env}{' --quick' if quick else ''}{f' --group-size {group_size}' if over else ''}"
    text = "\n".join([
        f"# Credit assignment head-to-head — {prof.label}, " + (f"profile {prof.name!r}" if profile else f"{'quick' if quick else 'full'} profile"),
        "",
        f"Same budget for every algorithm: {budget_txt}, {prof.tasks_per_iter} tasks × group size {prof.group_size} per iteration, "
        f"seeds {list(seeds)}; held-out success = greedy policy on {prof.eval_episodes} held-out tasks every {prof.eval_every} iterations. "
        "Cells: median over seeds [bootstrap 95% interval]; \"final\" = mean of the last 3 evaluations; "
        "\"not reached\" = threshold never hit within the budget (counted as infinitely many steps).",
        "",
        *([f"**Partial results: {len(configs)} of {n_planned} runs finished.**", ""] if len(configs) < n_planned else []),
        credit_table(summary),
        "",
        "Target (GAGPO reaches 80% in ≤ 0.6× GRPO's env steps and no more than GiGPO's):",
        *target_verdict(summary, "steps_to_80"),
        "",
        "Same check at 50% held-out success:",
        *target_verdict(summary, "steps_to_50"),
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}: {cost_text(configs, elapsed, workers)}.",
    ])
    with open(os.path.join(figures_dir, stem + ".md"), "w") as fh:
        fh.write(text + "\n")
    print(text)
    print("\nfigures: " + ", ".join(paths))
    comparison = compare_with_committed(credit_table(summary), figures_dir, stem + ".md")
    if comparison:
        print("\nThis table is " + comparison)
    return {"summary": summary, "rows": rows, "paths": paths, "elapsed": elapsed, "profile": prof, "table": text}


# ====================================================================== ablations
#: Ablation name -> (TrainConfig field(s) it varies, the values, how to label a value).
ABLATIONS: dict[str, tuple[str, tuple]] = {
    "lam": ("lam", (0.0, 0.5, 0.9, 0.95, 1.0)),
    "gamma": ("gamma", (0.9, 0.95, 1.0)),
    "group_size": ("group_size", (2, 4, 8, 16)),
    "norm": ("norm", ("none", "mean", "mean_std")),
    "anchors": ("anchor_match", ("exact", "near")),
}
ABLATION_DEFAULTS = {"lam": 0.95, "gamma": 0.95, "group_size": 8, "norm": "mean_std", "anchor_match": "exact"}


def ablation_variants(names: Sequence[str] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """``(ablation, variant label, TrainConfig overrides)`` for every value of every ablation.

    The group-size ablation keeps the batch at 64 episodes per iteration (``tasks_per_iter =
    64 // G``), so every variant makes the same number of updates per env step and only the split
    of the batch into rollout groups changes. A value equal to the default gets the default's label
    ``"default"`` and so shares its runs with the other ablations (and with the GAGPO runs of the
    head-to-head when the profile is the same)."""
    out = []
    for abl in names or ABLATIONS:
        if abl not in ABLATIONS:
            raise ValueError(f"unknown ablation {abl!r}; expected one of {list(ABLATIONS)}")
        fld, values = ABLATIONS[abl]
        for v in values:
            if v == ABLATION_DEFAULTS[fld]:
                out.append((abl, f"{fld}={v}", {}))
                continue
            over: dict[str, Any] = {fld: v}
            if fld == "group_size":
                over["tasks_per_iter"] = 64 // int(v)
            out.append((abl, f"{fld}={v}", over))
    return out


def _variant_dir(over: Mapping[str, Any]) -> str:
    if not over:
        return "gagpo"
    fld = next(k for k in over if k != "tasks_per_iter")
    return f"gagpo-{fld}{over[fld]}"


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


def ablation_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| variant | seeds | final held-out success | mean held-out success over the run | env steps to 50% (reached) | env steps to 80% (reached) |",
             "|---|---:|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['n_seeds']} | {_fmt_ci(*s['final_success'])} | {_fmt_ci(*s['auc_success'])} | "
                     f"{_fmt_ci(*s['steps_to_50'], steps=True)} ({s['reached_50']}/{s['n_seeds']}) | "
                     f"{_fmt_ci(*s['steps_to_80'], steps=True)} ({s['reached_80']}/{s['n_seeds']}) |")
    return "\n".join(lines)


ABLATION_PROFILES = {
    False: dataclasses.replace(PROFILES[("keydoor", "full")], seeds=tuple(range(5))),
    True: dataclasses.replace(PROFILES[("keydoor", "quick")], seeds=(0, 1)),
}


def ablations(quick: bool = False, workers: int = 2, names: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
              root: str = "runs/credit", figures_dir: str | None = None, progress: bool = True, command: str | None = None,
              profile: Profile | None = None, report_only: bool = False) -> dict[str, Any]:
    """GAGPO ablations on the KeyDoor profile (λ, γ, group size, normalisation, anchor matching):
    ``figures/ablation_<name>[_quick].png`` per ablation, ``ablation_keydoor[_quick].{csv,md}``.
    ``profile`` replaces the registered ablation profile (tests use a tiny one); ``report_only``
    reports the finished runs without training. Outputs go where :func:`report_dir` says: by default
    ``figures/`` for the full profile, ``<root>/<profile>/figures`` with ``quick``."""
    from .plotting import save, use_style

    prof = profile or ABLATION_PROFILES[quick]
    figures_dir = report_dir(figures_dir, quick, os.path.join(root, prof.name))
    if not prof.label:
        prof = dataclasses.replace(prof, label=prof.name)
    seeds = tuple(prof.seeds if seeds is None else seeds)
    variants = ablation_variants(names)
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
    plt = use_style()
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
        colors = {lab: plt.cm.viridis(0.85 * i / max(len(runs) - 1, 1)) for i, lab in enumerate(runs)}
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6), gridspec_kw={"width_ratios": [3, 2]})
        plot_curves(axes[0], runs, colors)
        for i, (lab, s) in enumerate(summary.items()):
            for k, marker, dx in (("auc_success", "o", -0.1), ("final_success", "s", 0.1)):
                est, lo, hi = s[k]
                axes[1].errorbar(i + dx, est, yerr=[[est - lo], [hi - est]], fmt=marker, color=colors[lab], capsize=3,
                                 label=("mean over run" if k == "auc_success" else "final") if i == 0 else None)
        axes[1].set_xticks(range(len(summary)), [lab.split("=")[1] for lab in summary])
        axes[1].set_xlabel(ABLATIONS[abl][0])
        axes[1].set_ylabel("held-out success")
        axes[1].legend(fontsize=8)
        fig.suptitle(f"GAGPO ablation: {ABLATIONS[abl][0]} — {prof.label}, {prof.env_step_budget:,} env steps, ≤ {len(seeds)} seeds "
                     "(median, bootstrap 95%)", fontsize=9)
        fig.tight_layout()
        paths.append(save(fig, f"ablation_{abl}{suffix}", figures_dir))
        plt.close(fig)
        sections += [f"## {abl}", "", ablation_table(summary), "", ablation_reading(abl, summary), ""]
    write_csv(rows, os.path.join(figures_dir, f"ablation_keydoor{suffix}.csv"), float_format=CSV_FLOAT)
    command = command or f"python -m gagpo bench ablations{' --quick' if quick else ''}"
    text = "\n".join([
        f"# GAGPO ablations — {prof.label}, " + (f"profile {prof.name!r}" if profile else f"{'quick' if quick else 'full'} profile"),
        "",
        f"Every variant changes one setting of the default (λ 0.95, γ 0.95, G 8, mean_std, exact anchors); budget "
        f"{prof.env_step_budget:,} env steps per run, seeds {list(seeds)}. Group-size variants keep 64 episodes per iteration "
        "(tasks per iteration = 64 / G). Near-duplicate anchors: word-bigram Jaccard ≥ 0.8 within a group (gagpo.anchors). "
        "Cells: median over seeds [bootstrap 95% interval]. In the CSV, the default configuration's runs appear once, "
        "as variant `default`.",
        "",
        *([f"**Partial results: {n_finished} of {len(flat)} runs finished.**", ""] if n_finished < len(flat) else []),
        *sections,
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}: {cost_text(flat, elapsed, workers)}.",
    ])
    with open(os.path.join(figures_dir, f"ablation_keydoor{suffix}.md"), "w") as fh:
        fh.write(text + "\n")
    print(text)
    return {"rows": rows, "paths": paths, "elapsed": elapsed, "table": text}


# ====================================================================== iteration time
def iteration_time(iterations: int = 30, env: str = "keydoor", algos: Sequence[str] = ALGOS, seed: int = 0,
                   figures_dir: str | None = None, command: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Wall time of one training iteration split into rollout, advantage and update, per algorithm.

    Each algorithm trains ``iterations`` iterations of the full KeyDoor profile from the same
    seed in this process (one thread; no evaluation); the median over iterations of each phase is
    reported, also per 1,000 env steps (algorithms whose policies solve tasks sooner have shorter
    episodes and so cheaper rollouts). Writes ``figures/iteration_time.{png,md,csv}``."""
    import tempfile

    from .plotting import ALGO_COLORS, FIGURES_DIR, save, use_style
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
        for ph in ("rollout", "advantage", "update"):
            t = np.asarray([r[f"time_{ph}"] for r in hist])
            rec[f"{ph}_ms"] = 1e3 * float(np.median(t))
            rec[f"{ph}_ms_per_1k_steps"] = 1e3 * float(np.median(t / steps * 1000))
        tot = rec["rollout_ms"] + rec["advantage_ms"] + rec["update_ms"]
        rec["total_ms"] = tot
        rec["advantage_share"] = rec["advantage_ms"] / tot
        rows.append(rec)
    plt = use_style()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for ax, suffix, title in ((axes[0], "_ms", "ms per iteration (median)"), (axes[1], "_ms_per_1k_steps", "ms per 1,000 env steps (median)")):
        bottom = np.zeros(len(rows))
        for ph, hatch in (("rollout", ""), ("advantage", "xx"), ("update", "..")):
            vals = np.asarray([r[ph + suffix] for r in rows])
            ax.bar(range(len(rows)), vals, bottom=bottom, label=ph, hatch=hatch, edgecolor="k", linewidth=0.5,
                   color=[ALGO_COLORS.get(r["algo"], "C0") for r in rows], alpha={"rollout": 0.35, "advantage": 1.0, "update": 0.7}[ph])
            bottom += vals
        ax.set_xticks(range(len(rows)), [r["algo"] for r in rows])
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Where an iteration's time goes — {prof.label}, {prof.tasks_per_iter}×{prof.group_size} episodes, first {iterations} iterations", fontsize=9)
    fig.tight_layout()
    path = save(fig, "iteration_time", figures_dir)
    plt.close(fig)
    write_csv(rows, os.path.join(figures_dir, "iteration_time.csv"), float_format=CSV_FLOAT)
    lines = ["| algorithm | env steps / iteration | rollout (ms) | advantage (ms) | update (ms) | total (ms) | advantage share |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['algo']} | {r['env_steps_per_iteration']:,.0f} | {r['rollout_ms']:.0f} | {r['advantage_ms']:.1f} | "
                     f"{r['update_ms']:.0f} | {r['total_ms']:.0f} | {100 * r['advantage_share']:.1f}% |")
    command = command or f"python -m gagpo bench iteration --iterations {iterations}"
    text = "\n".join([
        f"# Wall time of one training iteration — {prof.label}",
        "",
        f"Median over the first {iterations} iterations from seed {seed} (one torch thread; evaluation off). The advantage step "
        "includes everything between the rollout and the update: for GiGPO/GAGPO the anchor grouping of the batch, "
        "for PPO two forward passes of the critic.",
        "",
        *lines,
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end (absolute times grow with the machine's load; the shares much less).",
    ])
    with open(os.path.join(figures_dir, "iteration_time.md"), "w") as fh:
        fh.write(text + "\n")
    print(text)
    print(f"\nfigure: {path}")
    return rows


__all__ = [
    "bootstrap_ci", "steps_to_threshold", "eval_curve", "curves_on_grid", "smoothness", "run_summary", "Profile", "PROFILES",
    "get_profile", "finished_history", "run_configs", "tidy_rows", "write_csv", "read_csv", "histories_by", "summarise",
    "ratio_ci", "plot_curves", "plot_steps_to", "plot_smoothness", "credit_table", "target_verdict", "credit",
    "ABLATIONS", "ablation_variants", "ablation_reading", "ablations", "iteration_time", "cost_text", "report_dir",
    "compare_with_committed",
]
