"""Running many training configurations: one budget per comparison, locked and resumable runs, worker processes.

* :class:`Profile` — a setting shared by every run of a comparison (environment, env-step budget,
  group size, tasks per iteration, evaluation, seeds); :meth:`Profile.config` turns it into one
  :class:`~gagpo.config.TrainConfig` per (algorithm or variant, seed) with a fixed run directory
  ``<root>/<profile>/<name>-seed<k>``.
* :func:`run_configs` — trains configurations in worker processes with a progress bar, *skips* runs
  whose ``metrics.jsonl`` is complete (:func:`finished_history`) and *resumes* interrupted ones
  exactly from their checkpoint (``TrainConfig.resume=True``). Each run trains under its directory's
  :class:`~gagpo.rundir.RunLock`, so two invocations sharing a run wait for each other instead of
  training it twice.
* :func:`training_time` — what producing the runs cost, from the ``timing.jsonl`` each run keeps.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Sequence

from .config import ALGOS, TrainConfig, config_mismatch
from .rundir import RunLock, read_jsonl

TIMING_FILE = "timing.jsonl"  #: per run directory: one line of wall and CPU seconds per training invocation
TIMING_DATE = "%Y-%m-%d %H:%M"  #: the resolution of the dates in :data:`TIMING_FILE`


@dataclass(frozen=True)
class Profile:
    """A benchmark setting shared by every run of a comparison (one environment, one budget)."""

    name: str                      #: run-directory name, e.g. "keydoor-full"
    env: str                       #: gymnasium id
    env_kwargs: dict = field(default_factory=dict)
    max_steps: int = 0             #: step limit per episode (0 = registered)
    env_step_budget: int = 400_000  #: environment steps per run (the budget every algorithm gets)
    seeds: tuple[int, ...] = tuple(range(10))
    algos: tuple[str, ...] = ALGOS  #: the built-in estimators (gagpo.config.ALGOS)
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


def finished_history(cfg: TrainConfig) -> list[dict[str, Any]] | None:
    """The history of a run that already finished under ``cfg`` (read from its ``metrics.jsonl`` with
    :func:`gagpo.rundir.read_jsonl`, which drops a last line cut short), or None when the run is absent
    or incomplete. Raises ValueError when the directory holds a run of a different configuration
    (delete it, or choose another ``root``)."""
    run_dir = cfg.run_dir()
    cfg_path, metrics_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "metrics.jsonl")
    if not (os.path.exists(cfg_path) and os.path.exists(metrics_path)):
        return None
    with open(cfg_path) as fh:
        saved = json.load(fh)
    now = cfg.to_dict()
    diff = config_mismatch({k: v for k, v in saved.items() if k in now}, now, type(cfg).RESUMABLE)
    if diff:
        raise ValueError(f"{run_dir} holds a run with a different configuration {diff} (saved, now); delete it or use another root")
    history = read_jsonl(metrics_path)
    if not history:
        return None
    last = history[-1]
    budget = getattr(cfg, "env_step_budget", 0)  # the language-model trainer has none
    budget_spent = budget > 0 and last["env_steps"] >= budget
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


def timed_run(run_dir: str, run: Any) -> list[dict[str, Any]]:
    """Call ``run()`` (a training that returns its history) and append its wall and CPU seconds to
    ``<run_dir>/`` :data:`TIMING_FILE` (one line per invocation: a resumed run adds one)."""
    t0, c0 = time.time(), time.process_time()
    history = run()
    with open(os.path.join(run_dir, TIMING_FILE), "a") as fh:
        fh.write(json.dumps({"wall_s": time.time() - t0, "cpu_s": time.process_time() - c0, "iterations": len(history),
                             "date": time.strftime(TIMING_DATE)}) + "\n")
    return history


#: configuration class name -> (module, class, module of its train function, the function): what
#: :func:`run_configs` trains — the toy trainer and the language-model trainer. Named by strings so
#: that this module imports no torch.
TRAINERS: dict[str, tuple[str, str, str, str]] = {
    "TrainConfig": ("gagpo.config", "TrainConfig", "gagpo.trainer", "train"),
    "LMTrainConfig": ("gagpo.llm.train", "LMTrainConfig", "gagpo.llm.train", "train_lm"),
}


def _trainer(kind: str) -> tuple[Any, Any]:
    """The configuration class and the train function of :data:`TRAINERS` entry ``kind``."""
    import importlib

    if kind not in TRAINERS:
        raise ValueError(f"run_configs trains {sorted(TRAINERS)} configurations; got a {kind}")
    cfg_mod, cfg_cls, fn_mod, fn = TRAINERS[kind]
    return getattr(importlib.import_module(cfg_mod), cfg_cls), getattr(importlib.import_module(fn_mod), fn)


def _train_one(cfg_dict: dict[str, Any], kind: str = "TrainConfig") -> list[dict[str, Any]]:
    """Train one run (under a run-directory lock) and append its wall and CPU seconds to
    ``<run_dir>/timing.jsonl`` (one line per invocation, so a resumed run adds a line). ``kind``
    names the configuration class (:data:`TRAINERS`)."""
    cls, train = _trainer(kind)
    cfg = cls(**cfg_dict)
    while True:
        lock = _acquire_run_lock(cfg.run_dir())
        if lock is not None:
            break
        done = finished_history(cfg)  # another process trained it meanwhile
        if done is not None:
            return done
    try:
        history = timed_run(cfg.run_dir(), lambda: train(cfg))
    finally:
        lock.release()
    return history


def run_configs(configs: Sequence[Any], workers: int = 2, desc: str = "runs", progress: bool = True,
                train: bool = True) -> list[list[dict[str, Any]] | None]:
    """Train every configuration not finished yet, ``workers`` processes at a time; return all histories.

    The configurations are :class:`~gagpo.config.TrainConfig` (the toy trainer) or
    :class:`~gagpo.llm.train.LMTrainConfig` (the language-model trainer), see :data:`TRAINERS`.

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
                results[i] = _train_one(dataclasses.asdict(configs[i]), type(configs[i]).__name__)
                if bar is not None:
                    bar.update(1)
        elif todo:
            # "spawn": fresh interpreters, safe to start from a notebook kernel (forking a process with threads is not)
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as ex:
                futures = {ex.submit(_train_one, dataclasses.asdict(configs[i]), type(configs[i]).__name__): i for i in todo}
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


def finished_only(configs: Sequence[TrainConfig], histories: Sequence[Any]) -> tuple[list[TrainConfig], list[Any]]:
    """The configurations whose run finished and their histories (the entries of :func:`run_configs`
    with ``train=False`` that are not None); ValueError when none did."""
    keep = [i for i, h in enumerate(histories) if h is not None]
    if not keep:
        raise ValueError("no finished runs to report; run without --report-only first")
    return [configs[i] for i in keep], [histories[i] for i in keep]


def training_time(configs: Sequence[TrainConfig]) -> dict[str, Any]:
    """Summed ``wall_s`` and ``cpu_s`` over the ``timing.jsonl`` files of ``configs``' run directories
    (the cost of producing the runs, however many invocations it took), the number of runs timed
    (``runs_timed``) and planned (``runs``), the elapsed time from the earliest start to the latest
    finish (``span_s``) and the earliest start (``first_start``, ``""`` when nothing was timed)."""
    wall = cpu = 0.0
    timed = 0
    starts, ends = [], []
    for c in configs:
        path = os.path.join(c.run_dir(), TIMING_FILE)
        if not os.path.exists(path):
            continue
        timed += 1
        for rec in read_jsonl(path):
            wall += rec["wall_s"]
            cpu += rec["cpu_s"]
            end = time.mktime(time.strptime(rec["date"], TIMING_DATE))
            starts.append(end - rec["wall_s"])
            ends.append(end)
    span = (max(ends) - min(starts)) if ends else 0.0
    first = time.strftime(TIMING_DATE, time.localtime(min(starts))) if starts else ""
    return {"wall_s": wall, "cpu_s": cpu, "runs_timed": timed, "runs": len(configs), "span_s": span, "first_start": first}


__all__ = ["Profile", "finished_history", "run_configs", "finished_only", "training_time", "timed_run", "TIMING_FILE"]
