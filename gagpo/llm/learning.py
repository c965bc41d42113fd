r"""Does a language-model agent get better under RL? The ``bench lm-learning`` benchmark.

One supervised warm start, then reinforcement learning with each estimator, on a CPU:

1. **SFT warm start** (:mod:`gagpo.llm.sft`): the book's word-level Llama learns from MiniHousehold's
   expert episodes (:mod:`gagpo.llm.experts`) for a few hundred steps — enough that it sometimes
   acts well, not enough that it always does. One warm start is shared by every method and seed
   (it lives in ``<root>/<profile>/sft``; a rerun reuses it). How long matters: from the 400-step warm start
   of the first full profile (``full-sft400``, ``figures/lm_learning_full_sft400.md``) the same RL moved
   the greedy policy by nothing measurable; from the full profile's 350 steps it gains about a third.
2. **RL from that start** (:mod:`gagpo.llm.train`) with GRPO, GiGPO, GAGPO and PPO (a value head on
   the same model), the same environment-step budget for each (the same iterations × tasks × group
   size), the same learning rate, the same k3 KL penalty to the warm start (the reference policy
   :math:`\pi_\text{ref}` is the SFT model), for every seed.
3. **Held-out success** — the greedy policy on the environment's held-out task seeds, every
   ``eval_every`` iterations. Iteration 0 of every run is the SFT start: its final evaluation, on the
   same held-out tasks with the same greedy decoding and prompts as the RL runs' evaluations (one
   model, deterministic decoding: the same number for every run).

Outputs (``figures/`` for the committed profiles ``full`` and ``full-sft400``; ``<root>/quick/figures`` for
``--quick``), named by :func:`report_stem`: ``lm_learning[_quick|_full_sft400].csv`` (one row per run × evaluation: ``algo, seed, iteration, env_steps,
eval_success, eval_invalid_rate``, then the training metrics of that iteration), ``.md`` (the table
— medians over seeds with bootstrap intervals, as ``bench credit`` reports — and the target
check: does GAGPO's median held-out success rise by ≥ :data:`TARGET_GAIN` over the SFT start?) and
``.png`` (curves per method and the KL to the reference).

Every run is resumable and skipped when finished (:func:`gagpo.harness.run_configs`), so an
interrupted benchmark continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..harness import finished_history, run_configs, timed_run
from ..reports import CSV_FLOAT, compare_with_committed, produced_by, report_dir, write_report
from ..rundir import atomic_write, read_jsonl
from ..stats import CI_LEVEL, FINAL_EVALS, N_BOOT, bootstrap_ci, eval_curve, mean_over_run
from ..tables import write_csv

__all__ = ["LearningProfile", "PROFILES", "COMMITTED_PROFILES", "report_stem", "SIGNED", "format_ci", "TARGET_GAIN", "CSV_COLUMNS", "SAMPLED_COLUMNS", "lm_learning", "warm_start",
           "learning_summary", "learning_table", "sampled_evaluation", "sampled_summary", "sampled_table"]

TARGET_GAIN = 0.30
"""The issue's target: GAGPO's median held-out success rises by at least this much over the SFT start
(full profile)."""

CSV_COLUMNS = ("iteration", "env_steps", "eval_success", "eval_invalid_rate", "eval_return", "success", "invalid_rate",
               "kl_ref", "approx_kl", "format_error_rate")
"""The metrics of each evaluation row of ``lm_learning.csv`` (after ``algo, seed``)."""

SAMPLED_COLUMNS = ("iteration", "env_steps", "sampled_success", "sampled_invalid_rate", "sampled_episodes")
"""The columns of ``lm_learning_sampled.csv`` (after ``algo, seed``): one row for the SFT start (iteration 0)
and one for the run's final policy."""


@dataclass(frozen=True)
class LearningProfile:
    """Everything every run of the benchmark shares: the model, the task, the warm start, the RL budget."""

    name: str                                   #: run-directory name ("quick", "full")
    seeds: tuple[int, ...]                      #: RL seeds (the warm start is one, seed ``sft_seed``)
    algos: tuple[str, ...] = ("grpo", "gigpo", "gagpo", "ppo")
    model: str = "tiny"                         #: the base model the warm start fine-tunes
    env: str = "toy_envs/MiniHousehold-v0"
    env_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"level": 1})
    max_steps: int = 12                         #: step limit of RL and evaluation episodes
    history: int = 0                            #: past (observation, action) pairs in a prompt
    max_new_tokens: int = 32
    # --- the warm start
    sft_steps: int = 350
    sft_lr: float = 1e-2
    sft_batch_size: int = 16
    sft_tasks: int = 1000                       #: expert episodes (task seeds 0..n-1)
    sft_seed: int = 0
    # --- RL
    iterations: int = 80
    tasks_per_iter: int = 4
    group_size: int = 8
    lr: float = 1e-4
    minibatch_size: int = 64                    #: rows per optimizer step (one update epoch over the iteration's rows)
    kl_coef: float = 0.01
    temperature: float = 1.0
    eval_every: int = 10
    eval_episodes: int = 64
    threads: int = 1                            #: torch threads per run (the runs go in parallel processes)
    sampled_samples: int = 4                    #: sampled episodes per held-out task in the sampled evaluation (0 skips it)
    sampled_seed: int = 4321                    #: sampling seed of the sampled evaluation (the same for every model)
    label: str = ""

    def sft_config(self, root: str):
        """The :class:`~gagpo.llm.sft.SFTConfig` of the warm start: evaluated before its first and after
        its last step, with the RL runs' evaluation settings."""
        from .sft import SFTConfig

        return SFTConfig(
            model=self.model, env=self.env, env_kwargs=dict(self.env_kwargs), max_steps=self.max_steps,
            n_train_tasks=self.sft_tasks, history=self.history, seed=self.sft_seed, iterations=self.sft_steps,
            batch_size=self.sft_batch_size, lr=self.sft_lr, eval_every=self.sft_steps, eval_episodes=self.eval_episodes,
            max_new_tokens=self.max_new_tokens, gradient_checkpointing=False, checkpoint_every=0, device="cpu",
            out_dir=os.path.join(root, self.name, "sft"), resume=True, progress=False, threads=self.threads,
        )

    def rl_config(self, algo: str, seed: int, root: str):
        """The :class:`~gagpo.llm.train.LMTrainConfig` of one RL run from the warm start."""
        from .train import LMTrainConfig

        return LMTrainConfig(
            model=self.sft_config(root).model_dir(), env=self.env, env_kwargs=dict(self.env_kwargs), max_steps=self.max_steps,
            algo=algo, seed=seed, iterations=self.iterations, tasks_per_iter=self.tasks_per_iter, group_size=self.group_size,
            history=self.history, max_new_tokens=self.max_new_tokens, temperature=self.temperature, lr=self.lr,
            minibatch_size=self.minibatch_size, kl_coef=self.kl_coef, eval_every=self.eval_every, eval_episodes=self.eval_episodes, gradient_checkpointing=False,
            checkpoint_every=self.eval_every, device="cpu", out_dir=os.path.join(root, self.name, f"{algo}-seed{seed}"),
            resume=True, progress=False, threads=self.threads,
        )

    def describe(self) -> str:
        """The setting, in one paragraph of a report (read from the fields, never written by hand)."""
        kw = ", ".join(f"{k}={v}" for k, v in self.env_kwargs.items())
        return (f"{self.env} ({kw}), step limit {self.max_steps}, model `{self.model}`, prompts with history {self.history}, "
                f"responses ≤ {self.max_new_tokens} tokens. Warm start: {self.sft_steps} SFT steps of {self.sft_batch_size} expert "
                f"(prompt, response) pairs from {self.sft_tasks} expert episodes, lr {self.sft_lr:g}, seed {self.sft_seed}. "
                f"RL: {self.iterations} iterations × {self.tasks_per_iter} tasks × group size {self.group_size} for every method "
                f"(the same env-step budget), lr {self.lr:g} in minibatches of {self.minibatch_size} rows, k3 KL to the warm start with coefficient {self.kl_coef:g}, "
                f"sampling temperature {self.temperature:g}, seeds {list(self.seeds)}. Held-out success: the greedy policy on "
                f"{self.eval_episodes} held-out tasks every {self.eval_every} iterations"
                + (f"; and the sampling policy RL trains (temperature {self.temperature:g}), {self.sampled_samples} episodes on each "
                   f"of the same held-out tasks, for the SFT start and each run's final policy." if self.sampled_samples else "."))


PROFILES: dict[str, LearningProfile] = {
    "full": LearningProfile("full", seeds=tuple(range(5)), label="MiniHousehold level 1, tiny model, full profile"),
    "quick": LearningProfile("quick", seeds=(0, 1, 2), iterations=8, eval_every=4, eval_episodes=32, sampled_samples=0,
                             label="MiniHousehold level 1, tiny model, quick profile"),
    # the first full profile: a longer warm start (400 SFT steps, a sharper policy) and 50 iterations of RL
    "full-sft400": LearningProfile("full-sft400", seeds=tuple(range(5)), sft_steps=400, iterations=50,
                                   label="MiniHousehold level 1, tiny model, 400 SFT steps, 50 iterations"),
}
"""The registered profiles (``--profile NAME``; ``--quick`` is ``--profile quick``)."""

COMMITTED_PROFILES = ("full", "full-sft400")
"""The profiles whose reports are committed in ``figures/`` (the others write under ``<root>/<name>/figures``)."""


def report_stem(name: str) -> str:
    """The file stem of a registered profile's report: ``lm_learning`` for ``full``, else
    ``lm_learning_<name>`` (``-`` as ``_``): ``lm_learning_quick``, ``lm_learning_full_sft400``."""
    return "lm_learning" if name == "full" else "lm_learning_" + name.replace("-", "_")


# ====================================================================== the warm start
def warm_start(prof: LearningProfile, root: str) -> list[dict[str, Any]]:
    """Train (or reuse) the profile's SFT warm start; returns its metrics history, whose first row
    evaluates the untrained model and whose last evaluates the warm start."""
    from .sft import sft

    cfg = prof.sft_config(root)
    done = finished_history(cfg) if os.path.isdir(cfg.model_dir()) else None
    if done is not None:
        return done
    return timed_run(cfg.run_dir(), lambda: sft(cfg))


def _last_eval(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rows = [r for r in history if "eval_success" in r]
    if not rows:
        raise ValueError("the warm start has no evaluation (eval_every must be > 0)")
    return rows[-1]


# ====================================================================== the sampled evaluation
SAMPLED_FILE = "eval_sampled.json"
"""The sampled evaluation of a model, cached in its run directory (the SFT run's for the warm start)."""


def _sampled_settings(prof: LearningProfile, model_dir: str) -> dict[str, Any]:
    weights = [f for f in sorted(os.listdir(model_dir)) if f.endswith((".safetensors", ".bin"))]
    stamp = [(f, os.path.getsize(os.path.join(model_dir, f)), int(os.path.getmtime(os.path.join(model_dir, f)))) for f in weights]
    return {"model": os.path.abspath(model_dir), "weights": [list(w) for w in stamp], "samples": prof.sampled_samples,
            "seed": prof.sampled_seed, "eval_episodes": prof.eval_episodes, "temperature": prof.temperature, "env": prof.env,
            "env_kwargs": dict(prof.env_kwargs), "max_steps": prof.max_steps, "history": prof.history,
            "max_new_tokens": prof.max_new_tokens}


def cached_sampled(prof: LearningProfile, model_dir: str, cache_path: str) -> dict[str, float] | None:
    """The cached sampled evaluation of ``model_dir`` if ``cache_path`` holds one made with the same settings
    and the same weight files (size and modification time), else None."""
    if not (os.path.exists(cache_path) and os.path.isdir(model_dir)):
        return None
    with open(cache_path) as fh:
        saved = json.load(fh)
    return saved["result"] if saved.get("settings") == _sampled_settings(prof, model_dir) else None


def sampled_evaluation(prof: LearningProfile, model_dir: str, cache_path: str, root: str) -> dict[str, float]:
    r"""Held-out success of the *sampling* policy of the model in ``model_dir``: ``prof.sampled_samples``
    episodes at the training temperature on each of the ``prof.eval_episodes`` held-out tasks of the
    greedy evaluation (the same tasks, prompts, step limit, parser and invalid-action penalty), with the
    sampling seed ``prof.sampled_seed`` — the same for every model, so two models meet the same task
    draws. This is the quantity RL optimises (the expected success of the policy it samples from),
    measured on tasks it never trained on; the greedy evaluation is what a deployed agent would do.

    Returns ``{"sampled_success", "sampled_invalid_rate", "sampled_episodes"}``: the fraction of
    episodes won, the fraction of decisions that were invalid, the number of episodes counted. The
    result is written to ``cache_path`` with its settings and reused while they (and the weight files)
    are unchanged (:func:`cached_sampled`).
    """
    from .rollout import collect_lm
    from .train import LMTrainer, evaluation_metrics

    if prof.sampled_samples < 1:
        raise ValueError(f"sampled_samples must be >= 1 for a sampled evaluation; got {prof.sampled_samples}")
    done = cached_sampled(prof, model_dir, cache_path)
    if done is not None:
        return done
    # the RL runs' configuration with this model: the same environment, prompts and held-out tasks
    cfg = dataclasses.replace(prof.rl_config(prof.algos[0], prof.sampled_seed, root), model=model_dir, algo="gagpo", kl_coef=0.0,
                              out_dir=os.path.dirname(os.path.abspath(cache_path)), resume=False)
    t0, c0 = time.time(), time.process_time()
    trainer = LMTrainer(cfg)
    try:
        s = trainer.eval_sets[0]
        r = collect_lm(s.pool, trainer.policy, s.seeds, prof.sampled_samples, cfg.history, cfg.sampling(False), cfg.invalid_penalty,
                       seed=prof.sampled_seed, compute_logp=False, strict=cfg.strict_format, max_prompt_tokens=cfg.max_prompt_tokens,
                       adapter=trainer.adapter)
    finally:
        trainer.close()
    m = evaluation_metrics([r], "sampled_", by_task_type=False)
    result = {"sampled_success": m["sampled_success"], "sampled_invalid_rate": m["sampled_invalid_rate"],
              "sampled_episodes": int(m["sampled_episodes"])}
    with atomic_write(cache_path) as fh:
        json.dump({"settings": _sampled_settings(prof, model_dir), "result": result,
                   "wall_s": time.time() - t0, "cpu_s": time.process_time() - c0}, fh, indent=1)
    return result


def sampled_cost(jobs: Sequence[tuple[str, str]]) -> tuple[int, float, float]:
    """``(evaluations timed, wall seconds, CPU seconds)`` summed over the caches of ``jobs``' sampled evaluations."""
    n, wall, cpu = 0, 0.0, 0.0
    for _, cache in jobs:
        if os.path.exists(cache):
            with open(cache) as fh:
                saved = json.load(fh)
            if "wall_s" in saved:
                n, wall, cpu = n + 1, wall + float(saved["wall_s"]), cpu + float(saved.get("cpu_s", 0.0))
    return n, wall, cpu


def sampled_evaluations(prof: LearningProfile, jobs: Sequence[tuple[str, str]], root: str, workers: int = 2,
                        compute: bool = True) -> list[dict[str, float] | None]:
    """:func:`sampled_evaluation` of every ``(model_dir, cache_path)`` in ``jobs``, ``workers`` processes
    at a time; cached ones are read, not recomputed; with ``compute=False`` nothing is computed (None for
    the missing ones)."""
    out: list[dict[str, float] | None] = [cached_sampled(prof, m, c) for m, c in jobs]
    todo = [i for i, r in enumerate(out) if r is None and os.path.isdir(jobs[i][0])]
    if not compute or not todo:
        return out
    if workers <= 1:
        for i in todo:
            out[i] = sampled_evaluation(prof, *jobs[i], root)
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        for i, res in zip(todo, ex.map(sampled_evaluation, [prof] * len(todo), [jobs[i][0] for i in todo],
                                       [jobs[i][1] for i in todo], [root] * len(todo))):
            out[i] = res
    return out


def sampled_tidy(start: Mapping[str, Any], labels: Sequence[tuple[str, int]], finals: Sequence[Mapping[str, Any] | None],
                 histories: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of ``lm_learning_sampled.csv``: per run with a final sampled evaluation, the SFT start
    (iteration 0) and the final policy (the run's last iteration and env steps)."""
    rows = []
    for (algo, seed), final, hist in zip(labels, finals, histories):
        if final is None:
            continue
        last = hist[-1]
        for it, steps, res in ((0, 0, start), (last["iteration"], last["env_steps"], final)):
            rows.append({"algo": algo, "seed": seed, "iteration": it, "env_steps": steps, **{k: res[k] for k in SAMPLED_COLUMNS[2:]}})
    return rows


def sampled_summary(rows: Sequence[Mapping[str, Any]], n_boot: int = N_BOOT, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per algorithm, over seeds: the sampled held-out success at the SFT start, of the final policy, and
    the gain (final − start), each the median with a bootstrap :data:`~gagpo.stats.CI_LEVEL` interval;
    ``n_seeds``, ``ups`` (seeds whose final policy beat the start) and ``per_seed``."""
    out: dict[str, dict[str, Any]] = {}
    for algo, by_seed in _runs(rows).items():
        per_seed = []
        for s, hist in sorted(by_seed.items()):
            hist = sorted(hist, key=lambda r: float(r["iteration"]))
            start, final = float(hist[0]["sampled_success"]), float(hist[-1]["sampled_success"])
            per_seed.append({"seed": s, "start": start, "final": final, "gain": final - start,
                             "start_episodes": int(float(hist[0].get("sampled_episodes") or 0))})
        out[algo] = {"n_seeds": len(per_seed), "per_seed": per_seed, "ups": sum(p["gain"] > 0 for p in per_seed),
                     "start_episodes": per_seed[0]["start_episodes"], **_medians(per_seed, ("start", "final", "gain"), n_boot, seed)}
    return out


def sampled_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """The Markdown table of :func:`sampled_summary`: one row per algorithm."""
    head = ["algorithm", "seeds", "sampled held-out success at the SFT start", "final policy's sampled held-out success",
            "gain over the start", "seeds above the start"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---|" * (len(head) - 2)]
    for algo, s in summary.items():
        cells = [algo, str(s["n_seeds"]), f"{s['start'][0]:.2f}", format_ci(s["final"]), format_ci(s["gain"], SIGNED),
                 f"{s['ups']} of {s['n_seeds']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ====================================================================== tables
def tidy(prof: LearningProfile, start: Mapping[str, Any], labels: Sequence[tuple[str, int]],
         histories: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per run × evaluation: ``algo, seed`` and :data:`CSV_COLUMNS`; iteration 0 is the warm start."""
    rows = []
    zero = {"iteration": 0, "env_steps": 0, **{k: start.get(k, "") for k in ("eval_success", "eval_invalid_rate", "eval_return")}}
    for (algo, seed), hist in zip(labels, histories):
        for r in [zero, *(r for r in hist if "eval_success" in r)]:
            rows.append({"algo": algo, "seed": seed, **{k: r.get(k, "") for k in CSV_COLUMNS}})
    return rows


def _runs(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[Any, list[Mapping[str, Any]]]]:
    """The tidy rows grouped by algorithm, then by seed (in the rows' order)."""
    runs: dict[str, dict[Any, list[Mapping[str, Any]]]] = {}
    for r in rows:
        runs.setdefault(str(r["algo"]), {}).setdefault(r["seed"], []).append(r)
    return runs


def _medians(per_seed: Sequence[Mapping[str, float]], keys: Sequence[str], n_boot: int, seed: int) -> dict[str, tuple[float, ...]]:
    """Per key: the median over seeds with its bootstrap :data:`~gagpo.stats.CI_LEVEL` interval (NaNs left out;
    all NaN: three NaNs)."""
    out = {}
    for key in keys:
        vals = np.asarray([p[key] for p in per_seed], float)
        vals = vals[~np.isnan(vals)]
        out[key] = tuple(float(v) for v in bootstrap_ci(vals, np.median, n_boot, CI_LEVEL, seed)) if len(vals) else (np.nan,) * 3
    return out


def learning_summary(rows: Sequence[Mapping[str, Any]], final_evals: int = FINAL_EVALS, n_boot: int = N_BOOT,
                     seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per algorithm, over seeds: the start (iteration 0), the final held-out success (mean of the last
    ``final_evals`` evaluations), the gain (final − start), the mean success over the run (area under
    the curve / its length), the final invalid-action rate and the last KL to the reference — each the
    median with a bootstrap :data:`~gagpo.stats.CI_LEVEL` interval (``(median, low, high)``), plus
    ``n_seeds`` and ``per_seed``."""
    out: dict[str, dict[str, Any]] = {}
    for algo, by_seed in _runs(rows).items():
        per_seed = []
        for s, hist in sorted(by_seed.items()):
            x, y = eval_curve(hist)
            _, inv = eval_curve(hist, "eval_invalid_rate")
            kl = [float(r["kl_ref"]) for r in hist if r.get("kl_ref", "") != ""]
            final = float(y[-final_evals:].mean())
            auc = mean_over_run(x, y)
            per_seed.append({"seed": s, "start": float(y[0]), "final": final, "gain": final - float(y[0]), "auc": auc,
                             "final_invalid": float(inv[-final_evals:].mean()) if len(inv) else float("nan"),
                             "kl_ref": kl[-1] if kl else float("nan"), "env_steps": float(x[-1])})
        out[algo] = {"n_seeds": len(per_seed), "per_seed": per_seed,
                     **_medians(per_seed, ("start", "final", "gain", "auc", "final_invalid", "kl_ref"), n_boot, seed)}
    return out


SIGNED = "{:+.2f}"
"""A signed two-decimal cell (a value that rounds to zero prints as +0.00, never -0.00)."""


def _fmt(fmt: str, x: float) -> str:
    text = fmt.format(x)
    return "+" + text[1:] if fmt == SIGNED and text.startswith("-") and float(text) == 0 else text


def format_ci(t: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``estimate [low, high]`` of an ``(estimate, low, high)`` triple in the reports' format (``fmt``: e.g.
    :data:`SIGNED` for gains); "—" when the estimate is not finite."""
    est, lo, hi = t
    return "—" if not np.isfinite(est) else f"{_fmt(fmt, est)} [{_fmt(fmt, lo)}, {_fmt(fmt, hi)}]"


def learning_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """The Markdown table: one row per algorithm."""
    head = ["algorithm", "seeds", "held-out success at the SFT start", "final held-out success", "gain over the start",
            "mean held-out success over the run", "final invalid-action rate", "KL to the SFT model at the end"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---|" * (len(head) - 2)]
    for algo, s in summary.items():
        cells = [algo, str(s["n_seeds"]), f"{s['start'][0]:.2f}", format_ci(s["final"]), format_ci(s["gain"], SIGNED), format_ci(s["auc"]),
                 format_ci(s["final_invalid"]), format_ci(s["kl_ref"], "{:.3f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_verdict(summary: Mapping[str, Mapping[str, Any]], target: float = TARGET_GAIN) -> str:
    """One sentence: does GAGPO's median held-out success rise by ≥ ``target`` over the SFT start?"""
    if "gagpo" not in summary:
        return f"(the target check needs gagpo; got {sorted(summary)})"
    g = summary["gagpo"]["gain"]
    ups = sum(p["gain"] > 0 for p in summary["gagpo"]["per_seed"])
    verdict = "**met**" if g[0] >= target else "**not met**"
    return (f"Target (GAGPO's median held-out success rises by ≥ {target:.2f} over the SFT start): median gain {_fmt(SIGNED, g[0])} "
            f"[{_fmt(SIGNED, g[1])}, {_fmt(SIGNED, g[2])}] — {verdict}; GAGPO ended above its start in {ups} of {summary['gagpo']['n_seeds']} seeds.")


def learning_markdown(prof: LearningProfile, summary: Mapping[str, Mapping[str, Any]], sft_history: Sequence[Mapping[str, Any]],
                      finished: int, planned: int, produced: str, sampled: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The Markdown report: the setting, the warm start, the table, the target check, the sampled
    evaluation (:func:`sampled_summary`; or a line saying it was not run), the cost."""
    first, last = sft_history[0], _last_eval(sft_history)
    lines = [
        f"# An LM agent under RL from an SFT warm start — {prof.label or prof.name}",
        "",
        prof.describe(),
        "",
        f"Warm start: held-out success {first.get('eval_success', float('nan')):.2f} before SFT (invalid-action rate "
        f"{first.get('eval_invalid_rate', float('nan')):.2f}), {last['eval_success']:.2f} after (invalid-action rate "
        f"{last['eval_invalid_rate']:.2f}); that is iteration 0 of every RL run.",
        "",
        f"Cells: median over seeds [bootstrap {CI_LEVEL:.0%} interval]; \"final\" = mean of the last {FINAL_EVALS} evaluations; "
        "\"mean over the run\" = area under the held-out success curve (iteration 0 included) divided by its length.",
        "",
    ]
    if finished < planned:
        lines += [f"**Partial results: {finished} of {planned} runs finished.**", ""]
    lines += [learning_table(summary), "", target_verdict(summary), ""]
    if sampled:
        any_algo = next(iter(sampled.values()))
        lines += [
            f"## The sampling policy (temperature {prof.temperature:g})",
            "",
            f"The policy RL trains samples its actions; the greedy policy above takes each one's most likely action. "
            f"Sampled held-out success: {prof.sampled_samples} episodes on each of the same {prof.eval_episodes} held-out tasks "
            f"(seed {prof.sampled_seed} for every model), for the SFT start ({any_algo['start'][0]:.2f}) and each run's final "
            f"policy (one evaluation after the last iteration, not a mean of several); median over seeds [bootstrap "
            f"{CI_LEVEL:.0%} interval]."
            + (f" The start is one evaluation of {any_algo['start_episodes']} episodes (binomial standard error "
               f"{np.sqrt(any_algo['start'][0] * (1 - any_algo['start'][0]) / any_algo['start_episodes']):.2f}), shared by every run: "
               "the intervals over seeds do not include its own sampling error." if any_algo["start_episodes"] else ""),
            "",
            sampled_table(sampled),
            "",
        ]
    elif prof.sampled_samples == 0:
        lines += ["The sampling policy's held-out success is not measured in this profile (`sampled_samples=0`).", ""]
    lines += [produced]
    return "\n".join(lines)


def learning_figure(rows: Sequence[Mapping[str, Any]], start: float, title: str, stem: str, figures_dir: str,
                    sampled_rows: Sequence[Mapping[str, Any]] = ()) -> str:
    """Held-out success (median over seeds, band = bootstrap interval) and the KL to the SFT model
    against environment steps, one colour per method; the dashed line is the SFT start. With
    ``sampled_rows`` (:func:`sampled_tidy`), a third panel: the sampling policy's held-out success at the
    SFT start and at the end of each run (one dot per seed, the bar the median)."""
    from .. import plotting
    from ..reports import _save, histories_by, plot_curves

    plt = plotting.use_style()
    runs = histories_by(rows)
    fig, axes = plt.subplots(1, 3 if sampled_rows else 2, figsize=(16 if sampled_rows else 11, 4))
    plot_curves(axes[0], runs, threshold=None)
    axes[0].axhline(start, color="k", linestyle=":", linewidth=1, label="SFT start")
    axes[0].set_title("held-out success (greedy), from the SFT warm start")
    axes[0].legend(fontsize=8, loc="lower right")
    for i, (algo, hists) in enumerate(runs.items()):
        for j, h in enumerate(hists):
            x, y = eval_curve(h, "kl_ref")
            axes[1].plot(x, y, color=plotting.ALGO_COLORS.get(algo) or f"C{i}", alpha=0.6, label=algo if j == 0 else None)
    axes[1].set_xlabel("environment steps")
    axes[1].xaxis.set_major_formatter(lambda v, _: f"{v / 1000:.0f}k")
    axes[1].set_ylabel("k3 KL to the SFT model (per token)")
    axes[1].set_title("distance from the warm start (each seed)")
    axes[1].legend(fontsize=8)
    if sampled_rows:
        summ = sampled_summary(sampled_rows, n_boot=1)
        ax = axes[2]
        ax.axhline(next(iter(summ.values()))["start"][0], color="k", linestyle=":", linewidth=1, label="SFT start")
        for i, (algo, s) in enumerate(summ.items()):
            color = plotting.ALGO_COLORS.get(algo) or f"C{i}"
            finals = [p["final"] for p in s["per_seed"]]
            ax.scatter(np.full(len(finals), i) + np.linspace(-0.12, 0.12, len(finals)), finals, color=color, alpha=0.7, s=18)
            ax.hlines(s["final"][0], i - 0.25, i + 0.25, color=color, linewidth=2.5)
        ax.set_xticks(range(len(summ)), list(summ))
        ax.set_ylabel("held-out success (sampled)")
        ax.set_title("the sampling policy: SFT start and final (each seed)")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, stem, figures_dir)


# ====================================================================== the benchmark
def lm_learning(quick: bool = False, workers: int = 2, seeds: Sequence[int] | None = None, algos: Sequence[str] | None = None,
                root: str = "runs/lm_learning", figures_dir: str | None = None, progress: bool = True,
                command: str | None = None, profile: LearningProfile | str | None = None, report_only: bool = False) -> dict[str, Any]:
    """Run (or resume, or just report) the benchmark; write ``<stem>.{csv,md,png}`` (:func:`report_stem`;
    ``lm_learning`` for a profile that is not registered); return
    ``{"summary", "rows", "sft_history", "paths", "elapsed", "table"}``.

    ``profile``: the name of a registered profile (:data:`PROFILES`; default ``quick`` with ``quick``, else
    ``full``) or a profile of one's own (tests use a smaller one; its report goes under ``<root>/<name>/figures``
    unless ``figures_dir`` says otherwise); ``report_only`` trains nothing and reports the runs finished so
    far (the warm start must exist)."""
    from ..registry import estimator_names

    registered = not isinstance(profile, LearningProfile)
    name = (profile or ("quick" if quick else "full")) if registered else profile.name
    if registered and name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {list(PROFILES)}")
    prof = PROFILES[name] if registered else profile
    seeds = tuple(prof.seeds if seeds is None else seeds)
    algos = tuple(prof.algos if algos is None else algos)
    for a in algos:
        if a not in estimator_names():
            raise ValueError(f"unknown algo {a!r}; expected one of {list(estimator_names())}")
    figures_dir = report_dir(figures_dir, not (registered and name in COMMITTED_PROFILES), os.path.join(root, prof.name))
    t0 = time.time()
    if report_only:
        path = os.path.join(prof.sft_config(root).run_dir(), "metrics.jsonl")
        sft_history = read_jsonl(path) if os.path.exists(path) else []
        if not sft_history:
            raise ValueError(f"no warm start in {prof.sft_config(root).run_dir()}; run without --report-only first")
    else:
        sft_history = warm_start(prof, root)
    start = _last_eval(sft_history)
    configs = [prof.rl_config(a, s, root) for s in seeds for a in algos]  # seed-major: partial results stay balanced
    histories = run_configs(configs, workers, desc=f"lm-learning {prof.name}", progress=progress, train=not report_only)
    done = [(c, h) for c, h in zip(configs, histories) if h is not None]
    if not done:
        raise ValueError("no finished runs to report; run without --report-only first")
    labels = [(c.algo, c.seed) for c, _ in done]
    rows = tidy(prof, start, labels, [h for _, h in done])
    stem = report_stem(name) if registered else "lm_learning"
    csv_path = os.path.join(figures_dir, stem + ".csv")
    write_csv(rows, csv_path, float_format=CSV_FLOAT)
    summary = learning_summary(rows)
    paths = [csv_path]
    sampled_rows: list[dict[str, Any]] = []
    if prof.sampled_samples:  # the sampling policy: the SFT start and every finished run's final policy
        sft_cfg = prof.sft_config(root)
        jobs = [(sft_cfg.model_dir(), os.path.join(sft_cfg.run_dir(), SAMPLED_FILE)),
                *((os.path.join(c.run_dir(), "checkpoint"), os.path.join(c.run_dir(), SAMPLED_FILE)) for c, _ in done)]
        results = sampled_evaluations(prof, jobs, root, workers, compute=not report_only)
        if results[0] is not None:
            sampled_rows = sampled_tidy(results[0], labels, results[1:], [h for _, h in done])
        if sampled_rows:
            paths.append(os.path.join(figures_dir, stem + "_sampled.csv"))
            write_csv(sampled_rows, paths[-1], float_format=CSV_FLOAT)
    elapsed = time.time() - t0
    title = f"{prof.label or prof.name}: {len(seeds)} seeds"
    png = learning_figure(rows, float(start["eval_success"]), title, stem, figures_dir, sampled_rows)
    command = command or "python -m gagpo bench lm-learning" + ("" if name == "full" else f" --profile {name}")
    all_configs = [prof.sft_config(root), *(c for c, _ in done)]
    produced = produced_by(command, all_configs, elapsed, workers)
    if sampled_rows:
        n, wall, cpu = sampled_cost(jobs)
        produced += (f" The sampled evaluations of {n} models took {cpu / 60:.1f} CPU-minutes ({wall / 60:.1f} process-minutes of "
                     "wall time), cached beside each model.")
    text = learning_markdown(prof, summary, sft_history, len(done), len(configs), produced,
                             sampled_summary(sampled_rows) if sampled_rows else None)
    write_report(text, os.path.join(figures_dir, stem + ".md"))
    comparison = compare_with_committed(learning_table(summary), figures_dir, stem + ".md") if registered else None
    if comparison:
        print("\nThis table is " + comparison)
    return {"summary": summary, "rows": rows, "sft_history": sft_history, "paths": [*paths, png],
            "elapsed": elapsed, "table": text, "sampled_rows": sampled_rows}
