"""Environment pools: many environments of one kind, reset and stepped together; and the protocols they keep.

Every rollout collector (:func:`gagpo.rollout.collect`, :func:`gagpo.llm.rollout.collect_lm`) talks to
its environments through a *pool* only: ``reset_many(seeds)``, ``step_many(indices, actions)`` and
``close()``, plus ``attribute(name)`` to read a class-level attribute of the environments (``n_games``,
``EVAL_SEEDS``) wherever they live. :class:`EnvPoolProtocol` states that contract; two pools keep it:

* :class:`EnvPool` — the environments in this process (creating a gymnasium env is slower than
  resetting it, so the pool keeps them);
* :class:`ProcessEnvPool` — the environments in worker processes, stepped in parallel (an ALFWorld
  step costs ~20 ms of CPU on the small fixture games and loading a game ~0.2 s). A worker that
  crashes or stops answering is replaced; the episodes it held end with a truncated transition flagged
  ``info["worker_restarted"]``.

:class:`EnvInfo` names the keys an environment's ``info`` dict carries (the environment protocol:
text observations, commands as strings or indices into ``info["admissible_actions"]``).

``EnvPool`` is also importable from :mod:`gagpo.rollout`, ``ProcessEnvPool`` and ``RemoteEnv`` from
:mod:`gagpo.envs` and :mod:`gagpo.envs.alfworld`, where they used to live.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import time
import traceback
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Callable, Protocol, Sequence, TypedDict, runtime_checkable

import gymnasium as gym

__all__ = ["EnvInfo", "EnvPoolProtocol", "EnvPool", "ProcessEnvPool", "RemoteEnv", "REQUIRED_INFO_KEYS"]


class EnvInfo(TypedDict, total=False):
    """The keys of an environment's ``info`` (after ``reset`` and every ``step``) that the library reads.

    Required (:data:`REQUIRED_INFO_KEYS`): ``admissible_actions`` — the commands accepted now, in a fixed
    order (a step also accepts an index into it; an environment with free-text commands lists the ones a
    finite-action policy may choose, and its adapter accepts more, see :mod:`gagpo.envs.adapter`); ``won``
    — the task is solved (read when the episode ends). Optional: ``task`` (the task sentence; else the
    adapter reads it from the observation), ``task_type`` (a category for per-type metrics),
    ``invalid_action`` (the step was a rejected no-op), ``feedback``, ``state_id`` and ``task_seed``
    (toy environments), ``worker_restarted`` and ``env_error`` (set by :class:`ProcessEnvPool`).
    """

    admissible_actions: list[str]
    won: bool
    task: str
    task_type: str
    invalid_action: bool
    feedback: str
    state_id: int
    task_seed: int
    worker_restarted: bool
    env_error: str


REQUIRED_INFO_KEYS = ("admissible_actions", "won")
"""The :class:`EnvInfo` keys every environment gives after ``reset`` and every ``step``."""


@runtime_checkable
class EnvPoolProtocol(Protocol):
    """What a rollout collector needs of a pool of environments (``isinstance`` checks the methods)."""

    def reset_many(self, seeds: Sequence[int]) -> list[tuple[str, EnvInfo]]:
        """Reset environment i with ``seeds[i]``; ``(observation, info)`` per environment."""
        ...

    def step_many(self, indices: Sequence[int], actions: Sequence[int | str]) -> list[tuple[str, float, bool, bool, EnvInfo]]:
        """Step environment ``indices[j]`` with ``actions[j]``; gymnasium's 5-tuples."""
        ...

    def attribute(self, name: str) -> Any:
        """Attribute ``name`` of the environments' (unwrapped) class or instance, ``None`` when absent."""
        ...

    def close(self) -> None:
        ...


class EnvPool:
    """A reusable list of environment instances in this process (see :class:`EnvPoolProtocol`).

    :func:`gagpo.rollout.collect` talks to environments only through :meth:`reset_many` and
    :meth:`step_many`, so :class:`ProcessEnvPool`, which runs its environments in worker processes
    (e.g. for ALFWorld), can replace this in-process one.
    """

    def __init__(self, make_env: Callable[[], gym.Env]):
        self.make_env = make_env
        self.envs: list[gym.Env] = []

    def get(self, n: int) -> list[gym.Env]:
        while len(self.envs) < n:
            self.envs.append(self.make_env())
        return self.envs[:n]

    def reset_many(self, seeds: Sequence[int]) -> list[tuple[str, dict]]:
        """Reset environment i with ``seeds[i]``; returns ``(observation, info)`` per environment."""
        envs = self.get(len(seeds))
        return [env.reset(seed=int(seed)) for env, seed in zip(envs, seeds)]

    def step_many(self, indices: Sequence[int], actions: Sequence[int | str]) -> list[tuple]:
        """Step environment ``indices[j]`` with ``actions[j]``; returns gymnasium's 5-tuples."""
        return [self.envs[i].step(a) for i, a in zip(indices, actions)]

    def attribute(self, name: str) -> Any:
        """Attribute ``name`` of the first environment (unwrapped; created if needed), ``None`` when absent."""
        return getattr(self.get(1)[0].unwrapped, name, None)

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs.clear()


# --------------------------------------------------------------------- process pool
def _worker_main(conn, make_env: Callable[[], gym.Env]) -> None:
    """Serve ``(op, items)`` requests on ``conn``; answer ``(slot, ok, result)`` once per item.

    ``op`` is "reset" (items: (slot, seed)), "step" (items: (slot, action)) or "close". An
    environment is created on the first reset of its slot. An exception inside the environment is
    answered as ``ok=False`` with the traceback text; the worker lives on.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    envs: dict[int, gym.Env] = {}
    while True:
        try:
            op, items = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if op == "close":
            break
        for slot, arg in items:
            try:
                if op == "reset":
                    if slot not in envs:
                        envs[slot] = make_env()
                    result = envs[slot].reset(seed=arg)
                else:
                    result = envs[slot].step(arg)
                reply = (slot, True, result)
            except Exception:  # noqa: BLE001 - reported to the parent, which decides
                reply = (slot, False, traceback.format_exc())
            try:
                conn.send(reply)
            except (EOFError, OSError):  # the parent is gone
                return
            except Exception:  # noqa: BLE001 - e.g. an info value that cannot be pickled
                conn.send((slot, False, traceback.format_exc()))
    for env in envs.values():
        try:
            env.close()
        except Exception:  # noqa: BLE001
            pass
    conn.close()


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx, make_env):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, make_env), daemon=True)
        self.process.start()
        child.close()  # only the child holds it now: its death closes the pipe

    def stop(self, grace: float = 0.0) -> None:
        if grace > 0 and self.process.is_alive():
            try:
                self.conn.send(("close", None))
            except (OSError, ValueError):
                pass
            self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


class RemoteEnv:
    """A handle on one environment of a :class:`ProcessEnvPool` (what ``pool.get(n)`` returns)."""

    def __init__(self, pool: ProcessEnvPool, slot: int):
        self.pool, self.slot = pool, slot

    def reset(self, *, seed: int | None = None):
        return self.pool._reset_slots([self.slot], [seed])[0]

    def step(self, action):
        return self.pool.step_many([self.slot], [action])[0]


class ProcessEnvPool:
    """Environments in worker processes, stepped in parallel; a drop-in for ``gagpo.rollout.EnvPool``.

    Environment ``i`` (the ``i``-th of ``reset_many``'s seeds, the index ``step_many`` takes) lives
    in worker ``i mod n_workers``; each call sends every worker its share at once, and the workers
    step their environments concurrently. Workers start on first use.

    Robustness: a worker that dies (segfault, ``os._exit``, OOM kill) or takes longer than
    ``step_timeout`` seconds over one step is killed and replaced. Every episode it held ends: its
    pending step — and any later step before the next reset — returns the terminal transition
    ``(last observation, 0.0, terminated=False, truncated=True, info)`` with
    ``info["worker_restarted"] = True`` and the last ``admissible_actions`` (never empty), so
    :func:`gagpo.rollout.collect` records the episode as cut short instead of losing it or hanging.
    An exception raised inside an environment's ``step`` ends that episode the same way, with the
    traceback in ``info["env_error"]``. A reset is retried once on a fresh worker; a second failure,
    or an exception inside ``reset``, raises RuntimeError.

    Args:
        make_env: a picklable zero-argument factory (module-level function, ``functools.partial``,
            :class:`EnvFactory`); it runs in the workers.
        n_workers: worker processes (default: the CPUs available to this process).
        step_timeout: seconds a worker may take over one step before it counts as hung.
        reset_timeout: the same for one reset, which may include starting the worker, importing
            the engine and creating the environment.
        context: multiprocessing start method, "spawn" (default) or "forkserver". Scripts that
            create a pool must guard their entry point with ``if __name__ == "__main__":``.
    """

    def __init__(self, make_env: Callable[[], gym.Env], n_workers: int | None = None,
                 step_timeout: float = 30.0, reset_timeout: float = 120.0, context: str = "spawn"):
        if context not in ("spawn", "forkserver"):
            raise ValueError(f"unknown context {context!r}; expected 'spawn' or 'forkserver'")
        try:
            pickle.dumps(make_env)
        except Exception as exc:  # noqa: BLE001 - pickling raises several types
            raise TypeError(
                "ProcessEnvPool needs a picklable make_env to send to its workers (a module-level "
                "function, functools.partial or gagpo.envs.EnvFactory(env_id, max_steps, kwargs)); "
                f"a closure or lambda is not. ({exc})") from exc
        if n_workers is None:
            n_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1; got {n_workers}")
        if not (step_timeout > 0 and reset_timeout > 0):
            raise ValueError("step_timeout and reset_timeout must be > 0")
        self.make_env = make_env
        self.n_workers = int(n_workers)
        self.step_timeout = float(step_timeout)
        self.reset_timeout = float(reset_timeout)
        self._ctx = mp.get_context(context)
        self._workers: list[_Worker | None] = [None] * self.n_workers
        self._last: dict[int, tuple[str, dict]] = {}  # slot -> last (observation, info)
        self._lost: dict[int, str] = {}  # slot -> why its episode is gone (until its next reset)
        self.n_slots = 0
        self.n_restarts = 0
        """Workers replaced so far (a diagnostic)."""

    # ---------------------------------------------------------------------- workers
    def _worker(self, w: int) -> _Worker:
        if self._workers[w] is None:
            self._workers[w] = _Worker(self._ctx, self.make_env)
        return self._workers[w]

    @property
    def worker_pids(self) -> list[int | None]:
        """Process id of each worker (None: not started)."""
        return [None if wk is None else wk.process.pid for wk in self._workers]

    def _restart(self, w: int, why: str) -> None:
        """Kill worker ``w``; every slot it held loses its episode. A fresh one starts on next use."""
        self._workers[w].stop()
        self._workers[w] = None
        self.n_restarts += 1
        for slot in range(w, self.n_slots, self.n_workers):
            self._lost.setdefault(slot, why)

    def _call(self, op: str, slots: Sequence[int], args: Sequence[Any], timeout: float):
        """Run ``op`` on ``slots`` in their workers concurrently.

        Returns ``(answers, failed)``: ``answers[slot] = (ok, result)`` for every slot that was
        answered, ``failed[w]`` says why worker ``w`` crashed or hung (it has been restarted).
        """
        shares: dict[int, list] = {}
        for slot, arg in zip(slots, args):
            shares.setdefault(slot % self.n_workers, []).append((slot, arg))
        answers: dict[int, tuple[bool, Any]] = {}
        failed: dict[int, str] = {}
        pending: dict[int, deque] = {}
        deadline: dict[int, float] = {}
        for w, share in shares.items():
            try:
                self._worker(w).conn.send((op, share))
            except (OSError, ValueError):  # the pipe broke: the worker has died
                failed[w] = f"worker {w} crashed"
                continue
            pending[w] = deque(slot for slot, _ in share)
            deadline[w] = time.monotonic() + timeout
        while pending:
            conns = {self._workers[w].conn: w for w in pending}
            sentinels = {self._workers[w].process.sentinel: w for w in pending}
            budget = max(0.0, min(deadline.values()) - time.monotonic())
            ready = wait(list(conns) + list(sentinels), timeout=budget)
            died = {sentinels[r] for r in ready if r in sentinels}
            for w in {conns[r] for r in ready if r in conns} | died:
                conn = self._workers[w].conn
                try:
                    while pending[w] and conn.poll():  # drain what arrived (also from a dead worker)
                        slot, ok, result = conn.recv()
                        answers[slot] = (ok, result)
                        pending[w].remove(slot)
                        deadline[w] = time.monotonic() + timeout
                except (EOFError, OSError):
                    died.add(w)
                if not pending[w]:
                    del pending[w], deadline[w]
                elif w in died:
                    self._workers[w].process.join(1.0)  # it is exiting: collect its exit code
                    failed[w] = f"worker {w} crashed (exit code {self._workers[w].process.exitcode})"
                    del pending[w], deadline[w]
            now = time.monotonic()
            for w in [w for w, t in deadline.items() if t <= now]:
                failed[w] = f"worker {w} hung (no answer within {timeout:g} s)"
                del pending[w], deadline[w]
        for w, why in failed.items():
            self._restart(w, why)
        return answers, failed

    # --------------------------------------------------------------------- the pool API
    def get(self, n: int) -> list[RemoteEnv]:
        """Handles on the first ``n`` environments (they are created in the workers on first reset)."""
        self.n_slots = max(self.n_slots, int(n))
        return [RemoteEnv(self, i) for i in range(n)]

    def reset_many(self, seeds: Sequence[int]) -> list[tuple[str, dict]]:
        """Reset environment i with ``seeds[i]``; returns ``(observation, info)`` per environment."""
        return self._reset_slots(list(range(len(seeds))), seeds)

    def _reset_slots(self, slots: list[int], seeds: Sequence[int | None]) -> list[tuple[str, dict]]:
        self.n_slots = max(self.n_slots, max(slots, default=-1) + 1)
        seed_of = {slot: None if s is None else int(s) for slot, s in zip(slots, seeds)}
        done: set[int] = set()
        for attempt in range(2):
            todo = [s for s in slots if s not in done]
            answers, failed = self._call("reset", todo, [seed_of[s] for s in todo], self.reset_timeout)
            for slot, (ok, result) in answers.items():
                if not ok:
                    raise RuntimeError(f"environment {slot} raised in reset(seed={seed_of[slot]}):\n{result}")
                self._last[slot] = result
                done.add(slot)
            # a restarted worker lost every environment it held, including those reset just now
            done = {s for s in done if s % self.n_workers not in failed}
            if len(done) == len(set(slots)):
                break
            if attempt == 1:
                raise RuntimeError(
                    f"reset failed twice: {'; '.join(failed.values())}. A worker that dies on start often "
                    "could not unpickle make_env: a function defined in a notebook or in `python -c` is "
                    "not importable in a fresh process (use gagpo.envs.EnvFactory or a function in a module); "
                    "the worker's traceback went to this process's stderr.")
        for slot in slots:
            self._lost.pop(slot, None)
        return [self._last[slot] for slot in slots]

    def step_many(self, indices: Sequence[int], actions: Sequence[int | str]) -> list[tuple]:
        """Step environment ``indices[j]`` with ``actions[j]``; returns gymnasium's 5-tuples."""
        out: dict[int, tuple] = {}
        live = [(i, a) for i, a in zip(indices, actions) if i not in self._lost]
        answers, _ = self._call("step", [i for i, _ in live], [a for _, a in live], self.step_timeout)
        for slot, (ok, result) in answers.items():
            if ok:
                self._last[slot] = (result[0], result[4])
                out[slot] = result
            else:
                self._lost[slot] = "error"
                out[slot] = self._cut_short(slot, env_error=result)
        for slot in indices:
            if slot not in out:
                out[slot] = self._cut_short(slot)
        return [out[slot] for slot in indices]

    def _cut_short(self, slot: int, env_error: str | None = None) -> tuple:
        """The terminal transition of an episode whose environment was lost."""
        if slot not in self._last:
            raise RuntimeError(f"environment {slot} was stepped before its first reset")
        obs, info = self._last[slot]
        info = dict(info)
        info.update(won=False, invalid_action=False, worker_restarted=env_error is None)
        info["admissible_actions"] = list(info.get("admissible_actions") or ["look"])
        if env_error is not None:
            info["env_error"] = env_error
        return obs, 0.0, False, True, info

    def attribute(self, name: str) -> Any:
        """Attribute ``name`` of the environments (unwrapped), ``None`` when absent: read from a probe built by
        ``make_env`` in this process, then closed (the environments themselves live in the workers)."""
        env = self.make_env()
        try:
            return getattr(env.unwrapped, name, None)
        finally:
            env.close()

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
        for w, worker in enumerate(self._workers):
            if worker is not None:
                worker.stop(grace=5.0)
                self._workers[w] = None
        self._last.clear()
        self._lost.clear()
        self.n_slots = 0

    def __enter__(self) -> ProcessEnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
