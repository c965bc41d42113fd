"""Run directories that are never lost: one process per directory, no accidental overwrite, atomic files.

A training run owns its directory (``--out-dir``) for as long as it trains:

* :class:`RunLock` — an exclusive lock on ``<run_dir>/run.lock`` (``fcntl.flock``, so the kernel
  releases it when its process dies: a lock left by a crashed run is simply taken over). A second
  process that wants the same directory refuses at once (:meth:`RunLock.__enter__`) or waits
  (:meth:`RunLock.acquire` with ``wait=True``, as the benchmark harness does). The lock is re-entrant
  within one process, so a harness may hold it around :meth:`gagpo.trainer.RunLoop.train`, which
  takes it too.
* :func:`check_start` and :func:`prepare` — before the first iteration: a write probe (a read-only
  directory fails in a second, not after minutes of work), then a new run refuses a directory that
  holds another run unless told to continue it (``resume``) or replace it (``overwrite``).
* :func:`atomic_write` — every file goes to ``<path>.tmp`` first and replaces ``path`` in one
  ``os.replace``: a crash leaves the old file or the new one, never half of one. A full disk or a
  read-only directory becomes a :class:`RunDirError` that names the file and what to do.
* :func:`read_jsonl` — reads ``metrics.jsonl``, dropping a last line cut short by a crash (with a
  warning) and naming the file and line of any other damage.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import warnings
from typing import IO, Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

__all__ = ["RunDirError", "RunLock", "RUN_FILES", "atomic_write", "write_error", "damaged", "check_start", "prepare",
           "check_writable", "existing_run", "read_jsonl", "LOCK_FILE"]

LOCK_FILE = "run.lock"

#: Every file or folder a training run writes into its directory (the toy trainer's ``checkpoint.pt``,
#: the language-model trainer's ``checkpoint/`` folder and the leftovers of an interrupted save).
RUN_FILES = ("config.json", "metrics.jsonl", "metrics.csv", "curves.png", "checkpoint.pt", "checkpoint.pt.tmp",
             "checkpoint", "checkpoint.old", "checkpoint.tmp")
#: The files whose presence means the directory holds a run that a new one would destroy.
RUN_MARKERS = ("metrics.jsonl", "metrics.csv", "checkpoint.pt", "checkpoint", "checkpoint.old")
CHECKPOINTS = ("checkpoint.pt", "checkpoint", "checkpoint.old")

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


class RunDirError(OSError):
    """A run directory cannot be used as asked (in use, holding another run, read-only, full, damaged).
    The message names the file and says what to do (``errno`` and ``filename`` are set when known)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def write_error(path: str, exc: OSError) -> RunDirError:
    """A :class:`RunDirError` for a failed write of ``path``, with the remedy for a full disk or a
    read-only directory."""
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_SPACE:
        msg = (f"could not write {path}: no space left on the device ({reason}). Free some space, then run "
               f"again: a training run continues from its last checkpoint with --resume")
    elif exc.errno in _READ_ONLY:
        msg = (f"could not write {path}: {reason} (the directory is read-only or belongs to another user). "
               f"Choose a writable --out-dir")
    else:
        msg = f"could not write {path}: {exc}"
    out = RunDirError(msg)
    out.errno, out.filename = exc.errno, path
    return out


def damaged(path: str, exc: BaseException) -> RunDirError:
    """A :class:`RunDirError` for a run file that cannot be read back."""
    out = RunDirError(f"{path} cannot be read ({type(exc).__name__}: {exc}): it is damaged, or was not written by "
                      f"this trainer. Restore it, or start the run again with --overwrite (which deletes the run's files)")
    out.filename = path
    return out


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """``with atomic_write(path) as fh: ...`` writes ``<path>.tmp``, flushes it to the disk, then
    renames it over ``path`` (``os.replace`` is atomic). On any error the temporary file is removed
    and ``path`` is left as it was; an ``OSError`` becomes a :class:`RunDirError` naming ``path``."""
    tmp = path + ".tmp"
    try:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, RunDirError):
            raise write_error(path, exc) from exc
        raise


def replace_dir(tmp: str, path: str) -> None:
    """Put the finished folder ``tmp`` in the place of ``path``: ``path`` is renamed to ``<path>.old``,
    ``tmp`` to ``path``, then ``<path>.old`` is removed. A crash between the two renames leaves only
    ``<path>.old``, the previous complete folder (which a reader may restore); never half of one."""
    old = path + ".old"
    if os.path.exists(path):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def existing_run(run_dir: str) -> list[str]:
    """The names in :data:`RUN_MARKERS` present in ``run_dir``: non-empty when it holds a run."""
    return [name for name in RUN_MARKERS if os.path.exists(os.path.join(run_dir, name))]


def check_writable(run_dir: str) -> None:
    """Create ``run_dir`` if needed and write (then delete) a small probe file in it; raise
    :class:`RunDirError` when that fails (a read-only directory, a full disk)."""
    probe = os.path.join(run_dir, f".write-probe-{os.getpid()}")
    try:
        os.makedirs(run_dir, exist_ok=True)
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
        os.remove(probe)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(probe)
        raise write_error(run_dir, exc) from exc


def check_start(run_dir: str, resume: bool = False, overwrite: bool = False) -> None:
    """Raise :class:`RunDirError` when a run cannot start in ``run_dir``; changes nothing there.

    1. another process holds the directory's :class:`RunLock`;
    2. the write probe fails (:func:`check_writable`: read-only directory, full disk);
    3. the directory holds a run (:func:`existing_run`) and neither ``resume`` (continue it; refused
       when it has metrics but no checkpoint) nor ``overwrite`` (replace it) is given.
    Cheap: the trainers call it before loading a model, then :func:`prepare` under the lock.
    """
    with RunLock(run_dir):
        pass
    check_writable(run_dir)
    found = existing_run(run_dir)
    if not found or overwrite:
        return
    if resume:
        if not any(name in CHECKPOINTS for name in found):
            raise RunDirError(f"{run_dir} holds {', '.join(found)} but no checkpoint to resume from; "
                              f"use --overwrite to start the run again there, or another --out-dir")
        return
    raise RunDirError(f"{run_dir} already holds a run ({', '.join(found)}): pass --resume to continue it, "
                      f"--overwrite to replace it, or choose another --out-dir")


def prepare(run_dir: str, resume: bool = False, overwrite: bool = False) -> None:
    """Make ``run_dir`` ready for a run; call it holding the :class:`RunLock`. :func:`check_start`,
    then with ``overwrite`` the files of the run already there (:data:`RUN_FILES`, nothing else) are
    deleted."""
    check_start(run_dir, resume=resume, overwrite=overwrite)
    if overwrite:
        for name in RUN_FILES:
            path = os.path.join(run_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)


class RunLock:
    """An exclusive, re-entrant (within one process) lock on a run directory: ``fcntl.flock`` on
    ``<run_dir>/run.lock``, which holds the owner's process id.

    ``with RunLock(run_dir): ...`` refuses at once (:class:`RunDirError`) when another process holds
    the lock; :meth:`acquire` with ``wait=True`` polls until it is free. The kernel drops the lock
    of a process that dies, so a stale ``run.lock`` file is taken over. The file is deleted on release.
    """

    _held: dict[str, tuple[int, int, int]] = {}  # lock path -> (pid, fd, depth), this process's locks

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.abspath(os.path.join(run_dir, LOCK_FILE))

    def holder(self) -> int | None:
        """The process id written in the lock file (``None`` when unreadable)."""
        try:
            with open(self.path) as fh:
                return int(fh.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def _try_lock(self) -> bool:
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:  # a file system without locks (some network mounts): go on unlocked
            warnings.warn(f"cannot lock {self.path} ({exc}): two runs in {self.run_dir} are not prevented", stacklevel=3)
        try:  # the file we locked may have been deleted by its releasing owner meanwhile: then retry
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                os.close(fd)
                return self._try_lock()
        except FileNotFoundError:
            os.close(fd)
            return self._try_lock()
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        type(self)._held[self.path] = (os.getpid(), fd, 1)
        return True

    def acquire(self, wait: bool = False, poll_s: float = 5.0) -> bool:
        """Take the lock; True when held. Without ``wait`` return False at once when another process
        holds it; with ``wait`` poll every ``poll_s`` seconds until it is free."""
        held = type(self)._held.get(self.path)
        if held is not None and held[0] == os.getpid():  # re-entrant
            type(self)._held[self.path] = (held[0], held[1], held[2] + 1)
            return True
        if fcntl is None:
            warnings.warn("no file locking on this platform: two runs in one directory are not prevented", stacklevel=2)
            type(self)._held[self.path] = (os.getpid(), -1, 1)
            return True
        while not self._try_lock():
            if not wait:
                return False
            time.sleep(poll_s)
        return True

    def release(self) -> None:
        """Release the lock (the outermost release deletes ``run.lock``)."""
        held = type(self)._held.get(self.path)
        if held is None or held[0] != os.getpid():
            return
        pid, fd, depth = held
        if depth > 1:
            type(self)._held[self.path] = (pid, fd, depth - 1)
            return
        del type(self)._held[self.path]
        if fd < 0:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)  # while still locked: a waiter that opened it re-checks the inode
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for the copies of fd in forked children (worker processes)
        os.close(fd)

    def __enter__(self) -> "RunLock":
        if not self.acquire():
            holder = self.holder()
            who = f"process {holder}" if holder else "another process"
            raise RunDirError(f"{self.run_dir} is in use by {who}, which is training there ({self.path} is locked); "
                              f"wait for it to finish, or choose another --out-dir")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file such as ``metrics.jsonl``. A last line cut short (a crash while
    it was written by a non-atomic writer) is dropped with a warning; a damaged line elsewhere
    raises :class:`RunDirError` naming the file and the line."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    rows = []
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if all(not rest.strip() for rest in lines[k:]):
                warnings.warn(f"{path}: dropped line {k}, cut short ({exc}); the file keeps {len(rows)} rows", stacklevel=2)
                break
            raise RunDirError(f"{path}, line {k}, is damaged ({exc}); restore the file, or start the run again "
                              f"with --overwrite") from exc
    return rows
