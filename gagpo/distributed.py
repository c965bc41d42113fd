r"""Data-parallel training: the one seam between the trainers and ``torch.distributed``.

A run launched on N processes — by ``accelerate launch`` or ``torchrun``, which set the environment
variables ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` — is one
training run, not N copies:

* **whole rollout groups per process.** ``tasks_per_iter`` stays the number of groups of an iteration
  (the task seeds of :meth:`gagpo.runloop.RunLoop.task_seeds` are those of a one-process run); it must
  be a multiple of N (:func:`check_divisible`), and process r plays the r-th contiguous block of
  ``tasks_per_iter / N`` of them (:func:`shard`), so a group never straddles two processes;
* **per-process random streams**: every random draw of a process is seeded from ``(seed, iteration, …,
  rank)`` (:func:`seed_key`), so the processes sample different actions;
* **exact statistics**: an estimator registered with ``group_local=True`` (GRPO, RLOO, GiGPO, GAGPO:
  every statistic lies within one rollout group) is computed on each process's own groups; any other
  (PPO's normalisation over the batch, REINFORCE's ``mean`` and ``step_mean`` baselines, an estimator
  registered without the flag) is computed on the union of every process's rows (:func:`on_union`),
  so each process gets exactly the advantages that one process would compute for the whole batch;
* **one update**: each process adds up the gradients of its rows' share of the loss, normalised by
  the *global* number of tokens (or actions, or rows) of the minibatch, and :func:`sum_gradients` adds
  them up over the processes before clipping and the optimizer step — so every process takes the same
  step, the step that one process would take on the union of the groups (up to the order of
  floating-point additions). The optimizer state is therefore the same everywhere, and a checkpoint
  written by the main process holds the whole state of the run;
* **one set of files**: metrics, curves and checkpoints are written by the main process (rank 0) only;
  the metrics of an iteration are pooled over the processes (:func:`all_sum`, :func:`weighted_mean`,
  :func:`gather_rows`) and carry a ``world_size`` column; evaluation runs on the main process while the
  others wait.

In a single process (``WORLD_SIZE`` unset or 1) every function here returns its input unchanged and
nothing is initialised: a one-process run computes exactly what it computed before this module
existed, and needs neither accelerate nor a process group. ``torch`` is imported only by the functions
that communicate.

Process group: initialised on first use (:func:`init`) with the ``gloo`` backend on CPUs — or
``cpu:gloo,cuda:nccl`` when this process trains on a GPU, so that small CPU tensors (statistics,
objects) go through gloo and gradients on the GPU through NCCL. Under ``accelerate launch --cpu`` or
without a visible GPU, gloo only. The timeout of a collective is ``$GAGPO_DIST_TIMEOUT_S`` seconds
(default 7200: a long evaluation on the main process must not time the others out).

Launching (from the repository root or any directory; ``-m gagpo`` runs the package)::

    # several GPUs of one machine, DDP (the committed config: gagpo/configs/accelerate_multi_gpu.yaml)
    accelerate launch --config_file gagpo/configs/accelerate_multi_gpu.yaml --num_processes 4 \
        -m gagpo train --model Qwen/Qwen2.5-1.5B-Instruct --env alfworld --tasks-per-iter 16 ...
    # the same without a config file
    accelerate launch --multi_gpu --num_processes 4 -m gagpo train --model ... --tasks-per-iter 16
    # CPUs (the tests do this, with gloo): accelerate's --cpu starts ONE process unless MPI is set up,
    # so launch through torchrun — or accelerate's --multi_gpu, which uses torchrun and, on a machine
    # without a visible GPU, gives N CPU processes
    torchrun --nproc_per_node 2 -m gagpo train --env keydoor --tasks-per-iter 8 ...
    accelerate launch --multi_gpu --num_processes 2 -m gagpo train --model tiny --device cpu ...

FSDP (the language-model trainer only, full-parameter training): a launch with accelerate's FSDP
configuration (``gagpo/configs/accelerate_fsdp.yaml``, which sets ``ACCELERATE_USE_FSDP=true``), or
``torchrun`` with ``ACCELERATE_USE_FSDP=true`` in the environment, shards the trained weights, their
gradients and the optimizer state over the processes with PyTorch's FSDP2 (``fully_shard``;
:mod:`gagpo.llm.fsdp`). The toy trainer and ``sft`` refuse it (:func:`check_launch`,
:func:`gagpo.llm.sft.refuse_fsdp`), as every trainer refuses DeepSpeed.

Behaviour cloning (``python -m gagpo sft``, :mod:`gagpo.llm.sft`) is data-parallel the same way: every
process takes a disjoint share of each global batch of pairs, the loss is normalised by the batch's global
number of response tokens, :func:`sum_gradients` adds the processes' gradients before clipping and the step.

Not supported: DeepSpeed (refused with a message, :func:`check_launch`); FSDP outside the language-model
trainer (``sft`` refuses it); ``accelerate launch --mixed_precision`` (the trainers' own ``--dtype`` decides; a
warning says so).
"""
from __future__ import annotations

import datetime
import gc
import os
import pickle
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from .batch import COLUMNS, StepBatch

__all__ = ["world_size", "rank", "local_rank", "is_main", "is_distributed", "uses_cpu", "check_launch", "init",
           "barrier", "process_device", "check_divisible", "shard", "seed_key", "Shard", "all_sum", "all_max",
           "all_min", "weighted_mean", "agree", "all_gather_object", "gather_rows", "on_union", "sum_gradients",
           "broadcast_parameters", "call_on_main", "main_first", "TIMEOUT_ENV", "ACCELERATE_CONFIG",
           "ACCELERATE_FSDP_CONFIG", "fsdp_launched", "accept_fsdp", "full_tensor", "local_tensor"]

T = TypeVar("T")

#: environment variable: seconds before a collective gives up (default 7200)
TIMEOUT_ENV = "GAGPO_DIST_TIMEOUT_S"
#: accelerate's configuration for several GPUs of one machine, shipped with the package (documented inside)
ACCELERATE_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "accelerate_multi_gpu.yaml")
#: accelerate's FSDP configuration for the language-model trainer (documented inside; :mod:`gagpo.llm.fsdp`)
ACCELERATE_FSDP_CONFIG = os.path.join(os.path.dirname(ACCELERATE_CONFIG), "accelerate_fsdp.yaml")
_TRUE = ("1", "true", "yes")


# ---------------------------------------------------------------------- who am I
def world_size() -> int:
    """Number of processes of the run (``$WORLD_SIZE``; 1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's index, 0 … :func:`world_size` − 1 (``$RANK``; 0 when unset)."""
    return int(os.environ.get("RANK", "0") or 0) if world_size() > 1 else 0


def local_rank() -> int:
    """This process's index on its machine (``$LOCAL_RANK``): which GPU it takes."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) if world_size() > 1 else 0


def is_main() -> bool:
    """Whether this is the main process (rank 0), the one that writes the run's files."""
    return rank() == 0


def is_distributed() -> bool:
    """Whether the run spans several processes."""
    return world_size() > 1


def uses_cpu() -> bool:
    """Whether the processes compute on CPUs: launched with ``accelerate launch --cpu``, or no GPU is visible."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in _TRUE:
        return True
    import torch

    return not torch.cuda.is_available()


_FSDP_ACCEPTED = False  # set by the one trainer that implements FSDP (the language-model trainer)


def fsdp_launched() -> bool:
    """Whether this run was launched for FSDP (``ACCELERATE_USE_FSDP`` true: accelerate's FSDP config, or
    set by hand before ``torchrun``) on several processes (in one process there is nothing to shard)."""
    return is_distributed() and os.environ.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE


def accept_fsdp() -> None:
    """Declare that this process's trainer implements FSDP (:mod:`gagpo.llm.fsdp`): :func:`check_launch`
    no longer refuses an FSDP launch. Only the language-model trainer calls it."""
    global _FSDP_ACCEPTED
    _FSDP_ACCEPTED = True


def check_launch() -> None:
    """Refuse launch modes the trainers do not implement (``RuntimeError``): DeepSpeed always, FSDP unless
    the trainer accepted it (:func:`accept_fsdp`: the language-model trainer); warn that accelerate's mixed
    precision is not applied (the trainers' ``--dtype`` decides)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in _TRUE:
        raise RuntimeError("this run was launched with DeepSpeed (ACCELERATE_USE_DEEPSPEED), which gagpo's trainers do "
                           "not implement. Launch with gagpo/configs/accelerate_multi_gpu.yaml (DDP), or — for the "
                           "language-model trainer, full-parameter training — gagpo/configs/accelerate_fsdp.yaml (FSDP)")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE and not _FSDP_ACCEPTED:
        raise RuntimeError("this run was launched with FSDP (ACCELERATE_USE_FSDP), which only the language-model "
                           "trainer implements (python -m gagpo train --model ..., full-parameter training); this "
                           "trainer keeps a full copy of the model per process and sums gradients itself (DDP). "
                           "Launch it with gagpo/configs/accelerate_multi_gpu.yaml or `accelerate launch --multi_gpu`")
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if is_distributed() and precision not in ("no", ""):
        warnings.warn(f"accelerate's mixed precision ({precision}) is not applied by gagpo: the trainer's --dtype "
                      f"decides the weights' dtype and autocast (auto: bf16 autocast on GPUs)", stacklevel=2)


def full_tensor(t: Any) -> Any:
    """The whole value of ``t``: ``t.full_tensor()`` for a sharded ``DTensor`` (FSDP; a collective: every
    process must call it, in the same order), ``t`` itself otherwise."""
    return t.full_tensor() if hasattr(t, "full_tensor") and hasattr(t, "device_mesh") else t


def local_tensor(t: Any) -> Any:
    """This process's shard of a sharded ``DTensor`` (FSDP), ``t`` itself otherwise (no communication)."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "device_mesh") else t


# ---------------------------------------------------------------------- the process group
def _dist():
    import torch.distributed as tdist

    return tdist


def init() -> None:
    """Join the process group (once; every collective calls this). A no-op in one process."""
    if not is_distributed():
        return
    tdist = _dist()
    if tdist.is_initialized():
        return
    check_launch()
    import torch

    backend = "gloo"
    if not uses_cpu():
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "7200")))
    # torch.distributed.nn.functional binds ``group=group.WORLD`` as default arguments when first imported: imported
    # after the group exists (transformers imports it when it loads a model), ten module-level functions would hold
    # the group past destroy_process_group, to be torn down during interpreter finalisation, where gloo's threads
    # can abort the exit ("terminate called without an active exception"). Imported first, the defaults are None.
    import torch.distributed.nn.functional  # noqa: F401

    tdist.init_process_group(backend=backend, timeout=timeout)
    import atexit

    atexit.register(_shutdown)


def _shutdown() -> None:
    """At exit: wait for the other processes, then leave the group (a process that leaves while another
    still talks to it can abort the other's exit). A group that outlives ``destroy_process_group`` is torn
    down during interpreter finalisation, where gloo's threads can abort a finished run's exit ("terminate
    called without an active exception"); so the caches that would keep it alive are emptied first
    (:func:`_release_dtensor_caches`), and ``torch.distributed.nn.functional`` is imported before the group
    exists (:func:`init`)."""
    tdist = _dist()
    if tdist.is_initialized():
        _release_dtensor_caches()
        try:
            tdist.barrier()
        finally:
            tdist.destroy_process_group()


def _release_dtensor_caches() -> None:
    """Empty DTensor's process-lifetime caches, which keep the ``DeviceMesh`` of past operations — hence the
    process group — alive after the FSDP model is gone: the sharding-propagation caches (Python and C++; PyTorch's
    own DTensor tests clear them at teardown), the redistribute planners and transform plans, and the mesh
    topology cache. These are private PyTorch functions: the ones a version lacks are skipped
    (``tests/test_distributed.py`` checks that the group is released). A no-op unless DTensor (FSDP) was used."""
    if "torch.distributed.tensor" not in sys.modules:
        return
    import importlib

    for module, path in (("torch.distributed.tensor.debug", "_clear_sharding_prop_cache"),
                         ("torch.distributed.tensor._redistribute", "clear_redistribute_planner_cache"),
                         ("torch.distributed.tensor._redistribute", "_gen_transform_infos.cache_clear"),
                         ("torch.distributed.tensor._collective_utils", "MeshTopoInfo.build_from_mesh.cache_clear")):
        try:
            fn: Any = importlib.import_module(module)
            for name in path.split("."):
                fn = getattr(fn, name)
        except (ImportError, AttributeError):
            continue
        fn()
    gc.collect()


def barrier() -> None:
    """Wait until every process gets here (a no-op in one process)."""
    if is_distributed():
        init()
        _dist().barrier()


def process_device(device: str) -> str:
    """The device of this process for a ``--device`` setting: unchanged in one process; with several,
    ``auto`` and ``cuda`` become ``cuda:<LOCAL_RANK>`` (``cpu`` under ``accelerate launch --cpu`` or
    without a GPU). A GPU index with several processes is a ``ValueError``: each process takes its own."""
    if not is_distributed():
        return device
    name = str(device)
    if name == "auto":
        name = "cpu" if uses_cpu() else "cuda"
    if name == "cuda":
        return f"cuda:{local_rank()}"
    if name.startswith("cuda:"):
        raise ValueError(f"device {device!r} in a run of {world_size()} processes: every process takes its own GPU "
                         f"(cuda:<LOCAL_RANK>); pass --device cuda or auto, and choose the GPUs with "
                         f"CUDA_VISIBLE_DEVICES or accelerate's --gpu_ids")
    return name


# ---------------------------------------------------------------------- sharding and seeds
def check_divisible(n_groups: int, what: str = "tasks_per_iter") -> None:
    """``ValueError`` unless ``n_groups`` rollout groups split into whole groups over the processes."""
    n = world_size()
    if n > 1 and n_groups % n:
        raise ValueError(f"{what} {n_groups} is not divisible by the {n} processes of this data-parallel run: every "
                         f"process plays whole rollout groups ({what} / {n} each); use a multiple of {n}")


def shard(items: Sequence[T]) -> list[T]:
    """This process's contiguous block of ``items`` (all of them in one process); ``len(items)`` must be
    divisible by :func:`world_size` (:func:`check_divisible`)."""
    n = world_size()
    if n == 1:
        return list(items)
    check_divisible(len(items), "the number of items")
    k = len(items) // n
    return list(items[rank() * k:(rank() + 1) * k])


def seed_key(*entropy: int) -> list[int]:
    """The entropy of a seeded random stream (for ``numpy.random.default_rng``): ``entropy`` in one
    process; with several, this process's rank is appended, so that each process draws its own samples."""
    return [*entropy, rank()] if is_distributed() else list(entropy)


@dataclass(frozen=True)
class Shard:
    """This process's part of an iteration's rollout: its groups are ``first_group …`` of the iteration's
    groups, its trajectories ``first_traj …`` (with ``group_size`` trajectories per group, in group order,
    as :func:`gagpo.rollout.collect` and :func:`gagpo.llm.rollout.collect_lm` number them). Adding these
    offsets to a rollout's local ``group_id`` and ``traj_id`` gives the ids of a one-process run."""

    rank: int = 0
    world_size: int = 1
    first_group: int = 0
    first_traj: int = 0

    @classmethod
    def of(cls, tasks_per_iter: int, group_size: int) -> "Shard":
        """The shard of this process for ``tasks_per_iter`` groups of ``group_size``."""
        check_divisible(tasks_per_iter)
        k = tasks_per_iter // world_size()
        return cls(rank(), world_size(), rank() * k, rank() * k * group_size)


# ---------------------------------------------------------------------- collectives on small values
def _cpu_tensor(values: np.ndarray):
    import torch

    return torch.as_tensor(np.ascontiguousarray(values, dtype=np.float64))


def _reduce(x: Any, op: str, keys: Sequence[str] | None = None) -> Any:
    if not is_distributed():
        return x
    init()
    tdist = _dist()
    if isinstance(x, dict):
        names = list(keys) if keys is not None else sorted(x)
        fill = {"sum": 0.0, "max": -np.inf, "min": np.inf}[op]
        out = _reduce(np.asarray([float(x.get(k, fill)) for k in names], dtype=np.float64), op)
        return {k: float(v) for k, v in zip(names, out)}
    arr = np.asarray(x)
    t = _cpu_tensor(arr)
    tdist.all_reduce(t, op={"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX, "min": tdist.ReduceOp.MIN}[op])
    out = t.numpy()
    if arr.dtype.kind in "iub":
        out = np.rint(out).astype(np.int64)
    if arr.ndim == 0:
        return type(x)(out.item()) if isinstance(x, (int, float)) else out.reshape(()).astype(arr.dtype)[()]
    return out


def all_sum(x: T, keys: Sequence[str] | None = None) -> T:
    """The sum over the processes of ``x`` (an int, a float, a numpy array, or a dict of floats — then
    over ``keys``, a missing key counting 0); ``x`` itself in one process. Integers stay integers."""
    return _reduce(x, "sum", keys)


def all_max(x: T, keys: Sequence[str] | None = None) -> T:
    """The maximum over the processes (as :func:`all_sum`; a missing dict key counts −∞)."""
    return _reduce(x, "max", keys)


def all_min(x: T, keys: Sequence[str] | None = None) -> T:
    """The minimum over the processes (as :func:`all_sum`; a missing dict key counts +∞)."""
    return _reduce(x, "min", keys)


def weighted_mean(value: float, weight: float) -> float:
    """The mean over the processes of ``value`` weighted by ``weight`` (e.g. a success rate by the number
    of episodes it counts); ``value`` itself in one process; 0.0 when every weight is 0."""
    if not is_distributed():
        return value
    total, w = all_sum(np.asarray([value * weight if weight else 0.0, float(weight)], dtype=np.float64))
    return float(total / w) if w else 0.0


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` in one process. Goes through CPU
    tensors (gloo), whatever the device of the training."""
    if not is_distributed():
        return [obj]
    init()
    import torch

    tdist = _dist()
    data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
    size = torch.tensor([len(data)], dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    tdist.all_gather(sizes, size)
    width = int(max(int(s) for s in sizes))
    buf = torch.zeros(width, dtype=torch.uint8)
    buf[:len(data)] = torch.from_numpy(data.copy())
    parts = [torch.empty(width, dtype=torch.uint8) for _ in range(world_size())]
    tdist.all_gather(parts, buf)
    return [pickle.loads(p[:int(s)].numpy().tobytes()) for p, s in zip(parts, sizes)]


def agree(problem: str | None) -> str | None:
    """A decision every process must share, e.g. skipping an optimizer step: ``problem`` (a reason, or
    ``None`` for none) in one process; with several, this process's problem, else the first other
    process's (``"... on process r"``), else ``None``."""
    if not is_distributed():
        return problem
    if problem:
        all_gather_object(problem)
        return problem
    others = all_gather_object(problem)
    return next((f"{p} on process {r}" for r, p in enumerate(others) if p), None)


def gather_rows(values: np.ndarray) -> np.ndarray:
    """The concatenation, in rank order, of every process's 1-D array ``values`` (``values`` itself in one
    process): e.g. the advantages of every row of the iteration, for statistics over the whole batch."""
    if not is_distributed():
        return values
    return np.concatenate([np.asarray(p) for p in all_gather_object(np.asarray(values))])


def on_union(batch: StepBatch, fn: Callable[..., np.ndarray], shard_: Shard, **row_arrays: np.ndarray) -> np.ndarray:
    """``fn(union, **arrays)`` evaluated on the union of every process's rows, returning this process's rows.

    Each process offsets its ``group_id`` and ``traj_id`` by its :class:`Shard` (so that the union has
    the ids of a one-process run), the batches and the per-row ``row_arrays`` (e.g. a critic's ``values``)
    are gathered and concatenated in rank order, ``fn`` returns one value per row of the union, and this
    process keeps its own slice. In one process: ``fn(batch, **row_arrays)``.
    """
    if not is_distributed():
        return fn(batch, **row_arrays)
    for name in ("group_id", "traj_id"):
        if getattr(batch, name).dtype.kind not in "iu":
            raise ValueError(f"on_union needs integer {name}s (a rollout's); got dtype {getattr(batch, name).dtype}")
    cols = {c: getattr(batch, c) for c in COLUMNS}
    cols["group_id"] = cols["group_id"] + shard_.first_group
    cols["traj_id"] = cols["traj_id"] + shard_.first_traj
    parts = all_gather_object((cols, {k: np.asarray(v) for k, v in row_arrays.items()}))
    batches = [StepBatch(**c) for c, _ in parts if len(c["reward"])]
    union = StepBatch.concat(batches) if batches else batch
    arrays = {k: np.concatenate([a[k] for _, a in parts]) for k in row_arrays}
    out = np.asarray(fn(union, **arrays))
    start = sum(len(c["reward"]) for c, _ in parts[:rank()])
    return out[start:start + len(batch)]


# ---------------------------------------------------------------------- collectives on weights
def _buckets(tensors: list, limit: int = 1 << 25) -> list[list]:
    """Consecutive tensors of one device and dtype, at most ``limit`` elements per bucket (one flat copy each)."""
    out: list[list] = []
    size = 0
    for t in tensors:
        if out and out[-1][0].device == t.device and out[-1][0].dtype == t.dtype and size + t.numel() <= limit:
            out[-1].append(t)
            size += t.numel()
        else:
            out.append([t])
            size = t.numel()
    return out


def _flat_collective(tensors: list, op: Callable[[Any], None]) -> None:
    import torch

    for bucket in _buckets(tensors):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        op(flat)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def sum_gradients(params: Sequence[Any]) -> None:
    """Replace every parameter's gradient by its sum over the processes (a no-op in one process).

    A parameter that has a gradient on some process but not on this one (this process had no row in
    the minibatch) takes part with zeros; one that has none anywhere keeps ``grad = None``, as it would
    in one process (the optimizer skips it). Gradients travel in flat buckets, one collective each."""
    if not is_distributed():
        return
    init()
    import torch

    tdist = _dist()
    params = list(params)
    present = all_max(np.asarray([p.grad is not None for p in params], dtype=np.int64))
    grads = []
    for p, anywhere in zip(params, present):
        if not anywhere:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    with torch.no_grad():
        _flat_collective(grads, lambda flat: tdist.all_reduce(flat, op=tdist.ReduceOp.SUM))


def broadcast_parameters(params: Sequence[Any]) -> None:
    """Copy the main process's values of ``params`` to every process (a no-op in one process): every
    process starts from the same weights whatever its own initialisation drew."""
    if not is_distributed():
        return
    init()
    import torch

    tdist = _dist()
    with torch.no_grad():  # in place on the parameters themselves: their version counters move (a serving copy sees it)
        _flat_collective(list(params), lambda flat: tdist.broadcast(flat, src=0))


# ---------------------------------------------------------------------- the main process's jobs
class _Failed:
    def __init__(self, exc: BaseException):
        try:
            pickle.dumps(exc)
            self.exc = exc
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
            self.exc = RuntimeError(f"{type(exc).__name__}: {exc}")


def call_on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)`` on the main process only (e.g. checking the run directory); every process
    raises the exception it raised (so that all stop, not only the main one) and otherwise goes on
    (the others get ``None``). In one process: ``fn(*args, **kwargs)``."""
    if not is_distributed():
        return fn(*args, **kwargs)
    result: Any = None
    outcome: Any = None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised here and on every process
            outcome = _Failed(exc)
    failed = all_gather_object(outcome)[0]
    if isinstance(failed, _Failed):
        raise failed.exc
    return result


def main_first(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on every process, the main one first and the others after it has returned
    (e.g. loading a checkpoint that the main process may first repair); an exception of the main process
    is raised on every process. In one process: ``fn(*args, **kwargs)``."""
    if not is_distributed():
        return fn(*args, **kwargs)
    result = call_on_main(fn, *args, **kwargs)
    return result if is_main() else fn(*args, **kwargs)
