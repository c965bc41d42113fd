"""Benchmarks and the headline experiment: scripts that print tables and write figures.

* :func:`throughput` — rows/s of registered estimators (GRPO, GiGPO and GAGPO) at four batch sizes;
* :func:`headline` — GAGPO vs GiGPO vs GRPO on KeyDoor with a small budget (the README's main job;
  ``--quick`` runs and writes apart from the full run, under ``runs/headline-quick``).

Speed and sample-efficiency are measured here, never in timed tests.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from .batch import StepBatch
from .config import TrainConfig
from .harness import run_configs
from .registry import compute_advantages
from .stats import eval_curve
from .tables import write_csv


# ---------------------------------------------------------------------- estimator throughput
def synthetic_batch(n_groups: int, group_size: int = 8, length: int = 50, n_obs: int = 60, seed: int = 0) -> StepBatch:
    """``n_groups × group_size`` trajectories of ``length`` steps whose observations are drawn from
    ``n_obs`` distinct strings per group (so anchor states repeat), with sparse final rewards."""
    rng = np.random.default_rng(seed)
    n = n_groups * group_size * length
    step = np.tile(np.arange(length), n_groups * group_size)
    obs = rng.integers(0, n_obs, size=n)
    nxt = np.roll(obs, -1)
    names = np.array([f"You are in room {k}. You see a door to the north and a key." for k in range(n_obs)], dtype=object)
    reward = np.where(step == length - 1, (rng.random(n) < 0.5).astype(float), 0.0)
    return StepBatch(
        group_id=np.repeat(np.arange(n_groups), group_size * length), traj_id=np.repeat(np.arange(n_groups * group_size), length),
        step=step, obs_key=names[obs], next_obs_key=names[nxt], reward=reward, terminated=step == length - 1,
        truncated=np.zeros(n, dtype=bool),
    )


def _best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


THROUGHPUT_ESTIMATORS = ("grpo", "gigpo", "gagpo")


def throughput(sizes: Sequence[int] = (64, 128, 256, 512), repeats: int = 5, out: str | None = None,
               names: Sequence[str] = THROUGHPUT_ESTIMATORS) -> list[dict[str, Any]]:
    """Time the registered estimators ``names`` (:func:`gagpo.registry.compute_advantages` with the default
    settings of :data:`gagpo.config.ESTIMATOR_SETTINGS`: γ = λ = 0.95, ``mean_std``) on synthetic batches
    of ``n_groups`` ∈ ``sizes`` (8 trajectories × 50 steps, ~60 distinct observations per group).
    ``fresh`` includes building the batch's integer codes (the first call on a new batch); ``cached``
    reuses them. Batch construction (validation, trajectory and group codes) is not timed. Prints a
    Markdown table (also written to ``out`` when given) and returns its rows."""
    estimators = {name: (lambda b, name=name: compute_advantages(name, b)) for name in names}
    rows = []
    for n_groups in sizes:
        for name, fn in estimators.items():
            fresh = _best_time(lambda: fn(synthetic_batch(n_groups)), 1)  # warm-up of code paths
            fresh = min(fresh, min(_timed_fresh(fn, n_groups) for _ in range(repeats)))
            b = synthetic_batch(n_groups)
            fn(b)
            cached = _best_time(lambda: fn(b), repeats)
            rows.append({"estimator": name, "groups": n_groups, "rows": len(b), "fresh_ms": 1e3 * fresh,
                         "cached_ms": 1e3 * cached, "rows_per_s": len(b) / fresh})
    lines = ["| estimator | groups | rows | fresh batch (ms) | cached codes (ms) | rows/s (fresh) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['estimator']} | {r['groups']} | {r['rows']:,} | {r['fresh_ms']:.1f} | {r['cached_ms']:.2f} | {r['rows_per_s']:,.0f} |")
    lines.append("")
    for name in estimators:
        ts = [r["fresh_ms"] for r in rows if r["estimator"] == name]
        rs = [r["rows"] for r in rows if r["estimator"] == name]
        lines.append(f"- {name}: {rs[-1] // rs[0]}x the rows took {ts[-1] / ts[0]:.1f}x the time")
    text = "\n".join(lines)
    print(text)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as fh:
            fh.write(text + f"\n\nProduced by `python -m gagpo bench throughput` on {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}.\n")
    return rows


def _timed_fresh(fn, n_groups: int) -> float:
    b = synthetic_batch(n_groups)
    t = time.perf_counter()
    fn(b)
    return time.perf_counter() - t


# ---------------------------------------------------------------------- headline experiment
HEADLINE_ALGOS = ("grpo", "gigpo", "gagpo")
HEADLINE_BUDGET = 400_000  # environment steps per run
HEADLINE_QUICK_BUDGET = 80_000
HEADLINE_ROOTS = {False: "runs/headline", True: "runs/headline-quick"}  # quick runs never reuse (or clobber) full ones


def headline_config(algo: str, seed: int, quick: bool = False, out_root: str | None = None) -> TrainConfig:
    """The KeyDoor configuration shared by every algorithm of the headline run: the same budget of
    environment steps (not iterations: a policy that succeeds sooner has shorter episodes). Runs live
    under ``out_root`` (default :data:`HEADLINE_ROOTS`: ``runs/headline`` or ``runs/headline-quick``)."""
    return TrainConfig(
        env="toy_envs/KeyDoor-v0", algo=algo, seed=seed, iterations=100_000,
        env_step_budget=HEADLINE_QUICK_BUDGET if quick else HEADLINE_BUDGET, tasks_per_iter=8, group_size=8, eval_every=10, eval_episodes=50, progress=False,
        out_dir=os.path.join(out_root or HEADLINE_ROOTS[quick], f"{algo}-seed{seed}"),
        resume=True, checkpoint_every=10,  # an interrupted run continues from its checkpoint (gagpo.harness.run_configs)
    )


def headline(seeds: Sequence[int] = (0, 1, 2), quick: bool = False, workers: int = 2,
             figures_dir: str | None = None, algos: Sequence[str] = HEADLINE_ALGOS, root: str | None = None) -> list[dict[str, Any]]:
    """Train every algorithm of ``algos`` on KeyDoor for each seed, then write
    ``headline_keydoor.{png,csv,md}`` (``headline_keydoor_quick.*`` with ``quick``) and print the
    results table.

    Runs live under ``root`` (default ``runs/headline``, ``runs/headline-quick`` with ``quick``); the
    outputs go to ``figures_dir``, by default ``figures/`` for the full run and ``<root>/figures`` for
    the quick one (:func:`gagpo.credit.report_dir`). When they do not go to ``figures/``, the table is
    compared with the committed ``figures/headline_keydoor.md`` (``make run`` does this).
    """
    from .reports import compare_with_committed, cost_text, report_dir

    root = root or HEADLINE_ROOTS[quick]
    figures_dir = report_dir(figures_dir, quick, root)
    os.makedirs(figures_dir, exist_ok=True)
    stem = "headline_keydoor" + ("_quick" if quick else "")
    configs = [headline_config(a, s, quick, root) for a in algos for s in seeds]
    t0 = time.time()
    results = run_configs(configs, workers, desc="headline runs")  # finished runs are reused, interrupted ones resume
    elapsed = time.time() - t0
    rows = [dict(algo=c.algo, seed=c.seed, **r) for c, hist in zip(configs, results) for r in hist]
    write_csv(rows, os.path.join(figures_dir, stem + ".csv"))
    random_success = random_policy_success(configs[0])
    path = headline_figure(rows, algos, seeds, random_success, figures_dir, stem)
    table = headline_table(rows, algos, seeds, random_success)
    with open(os.path.join(figures_dir, stem + ".md"), "w") as fh:
        fh.write(table + f"\n\nProduced by `python -m gagpo headline{' --quick' if quick else ''}` on {time.strftime('%Y-%m-%d')}: "
                 f"{cost_text(configs, elapsed, workers)}.\n")
    print(table)
    print(f"\nfigure: {path}\nwall time: {elapsed / 60:.1f} min (runs under {root}; finished runs are loaded, not retrained)")
    comparison = compare_with_committed(table, figures_dir, stem + ".md")
    if comparison:
        print("\nThis table is " + comparison)
    return rows


def headline_figure(rows: list[dict[str, Any]], algos: Sequence[str], seeds: Sequence[int], random_success: float,
                    figures_dir: str, name: str = "headline_keydoor") -> str:
    """Draw ``<name>.png`` (``headline_keydoor.png``) from the per-iteration rows (e.g. re-read from the CSV)."""
    from .plotting import learning_curves, save, use_style

    curves = {a: [eval_curve([r for r in rows if r["algo"] == a and int(r["seed"]) == s]) for s in seeds] for a in algos}
    plt = use_style()
    fig, ax = plt.subplots()
    learning_curves(curves, title="KeyDoor: held-out success (greedy) vs environment steps", ax=ax, random_baseline=random_success)
    path = save(fig, name, figures_dir)
    plt.close(fig)
    return path


def random_policy_success(cfg: TrainConfig, episodes: int | None = None) -> float:
    """Held-out success of the uniform random policy (sampling among admissible actions)."""
    import torch

    from .rollout import EnvPool, collect, make_env_fn

    class Uniform(torch.nn.Module):
        def logits(self, observations, admissible):
            a_max = max(len(a) for a in admissible)
            out = torch.full((len(observations), a_max), float("-inf"))
            for i, a in enumerate(admissible):
                out[i, : len(a)] = 0.0
            return out

    pool = EnvPool(make_env_fn(cfg.env, cfg.max_steps, **cfg.env_kwargs))
    seeds = list(getattr(pool.get(1)[0].unwrapped, "EVAL_SEEDS"))[: episodes or cfg.eval_episodes]
    r = collect(pool, Uniform(), seeds, 4, torch.Generator().manual_seed(0))
    pool.close()
    return r.success_rate


def headline_table(rows: list[dict[str, Any]], algos: Sequence[str], seeds: Sequence[int], random_success: float) -> str:
    lines = ["| algorithm | final held-out success (median [min, max] over seeds) | env steps to 50% held-out success (median) | env steps per run (max) |",
             "|---|---|---|---:|"]
    for a in algos:
        finals, hit = [], []
        steps = 0
        for s in seeds:
            ev = [r for r in rows if r["algo"] == a and r["seed"] == s and "eval_success" in r and r["eval_success"] == r["eval_success"]]
            if not ev:
                continue
            finals.append(ev[-1]["eval_success"])
            steps = max(steps, ev[-1]["env_steps"])
            reached = [r["env_steps"] for r in ev if r["eval_success"] >= 0.5]
            hit.append(reached[0] if reached else np.inf)
        med_hit = float(np.median(hit)) if hit else np.inf
        hit_txt = f"{med_hit:,.0f}" if np.isfinite(med_hit) else "not reached"
        lines.append(f"| {a} | {np.median(finals):.2f} [{min(finals):.2f}, {max(finals):.2f}] | {hit_txt} | {int(steps):,} |")
    lines.append(f"| uniform random policy | {random_success:.2f} | — | — |")
    return "\n".join(lines)
