r"""FSDP for the language-model trainer: the trained weights, their gradients and AdamW's state sharded over
the processes (PyTorch's FSDP2, ``torch.distributed.fsdp.fully_shard``).

Launched with accelerate's FSDP configuration (``gagpo/configs/accelerate_fsdp.yaml``, which sets
``ACCELERATE_USE_FSDP=true``), or with ``ACCELERATE_USE_FSDP=true torchrun ...``, on several processes,
:class:`gagpo.llm.train.LMTrainer` calls :func:`shard_policy` before it builds its optimizer. The run is the
data-parallel run of :mod:`gagpo.distributed` — whole rollout groups per process, global token counts,
one optimizer step per minibatch, the main process writing the files — with the weights sharded:

* **sharding**: every decoder layer (the model's ``_no_split_modules`` classes) is one FSDP unit, the rest of
  the model (embeddings, final norm, output head) the root unit, on a one-dimensional mesh of every
  process. A forward pass gathers a unit's weights just before it runs and frees them after
  (``reshard_after_forward``, by default); a backward pass reduce-scatters the gradients, **summed**
  (``set_gradient_divide_factor(1)``: the loss weights are already shares of the global minibatch,
  :meth:`~gagpo.llm.train.LMTrainer.update`), so each process ends with its shard of the gradient that one
  process would compute on the union of the groups;
* **lockstep**: every forward and backward pass of the sharded model is a collective, so the processes run
  the same number of them — a process with fewer micro-batches (its episodes were shorter) runs idle passes
  of one token (:meth:`gagpo.llm.actor.Actor.idle_pass`, adding zero to the gradients), when scoring the
  rollout (``logp_old``) as in the update;
* **generation** runs on a serving copy of the whole weights in every process (:class:`gagpo.llm.engine.HFEngine`
  with ``always_copy``), refreshed by gathering the shards after every update and after a checkpoint is
  loaded, on every process at once (``collective_refresh``: a lazy refresh inside ``generate`` would wait
  for the others, so a stale copy raises instead);
* **the reference policy** (``--kl-coef > 0``) stays a whole frozen copy on every process (it is scored
  without gradient, its forward passes are not collectives);
* **checkpoints** keep the format of every other run: the shards are gathered on every process
  (:func:`full_model_state`, :func:`full_optimizer_state`), and the main process writes ``model.safetensors``
  (``save_pretrained``) and ``optimizer.pt`` (the ordinary ``optimizer.state_dict()``, indexed by parameter),
  so ``--resume`` (with FSDP, DDP or one process) and ``train --model <checkpoint>`` load it; resuming under
  FSDP loads the whole tensors on every process and keeps each one's shard (:func:`load_full_model_state`,
  :func:`load_full_optimizer_state`).

Memory: FSDP divides the float32 master weights, gradients and AdamW moments (16 bytes per parameter) by
the number of processes; each process still holds the serving copy (2 bytes per parameter in bfloat16 on a
GPU), the reference copy when ``kl_coef > 0`` (in the weights' dtype), and, during a forward pass, one
decoder layer's whole weights.

Not implemented (refused with a message, :func:`check_supported`): LoRA (``--lora-r``: the adapters are small,
DDP is the right tool), a learned critic (``--algo ppo``: its value head is outside the sharded model),
``--engine hf-shared`` (generation with the sharded training model), FSDP version 1 (``FSDP_VERSION=1``),
CPU offloading of the parameters (``FSDP_OFFLOAD_PARAMS``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .. import distributed as dist

__all__ = ["FSDPSettings", "fsdp_settings", "check_supported", "shard_policy", "is_sharded", "full_model_state",
           "load_full_model_state", "full_optimizer_state", "load_full_optimizer_state"]

_TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class FSDPSettings:
    """What gagpo reads of accelerate's FSDP settings (the ``FSDP_*`` environment variables that
    ``accelerate launch`` sets from the ``fsdp_config`` of its configuration file).

    Attributes:
        reshard_after_forward: free a unit's gathered weights after its forward pass (``FSDP_RESHARD_AFTER_FORWARD``,
            default true; false keeps them until the backward pass: less communication, more memory).
    """

    reshard_after_forward: bool = True


def fsdp_settings() -> FSDPSettings:
    """The FSDP settings of this launch; ``ValueError`` for a setting gagpo does not implement."""
    version = os.environ.get("FSDP_VERSION", "2").strip() or "2"
    if version != "2":
        raise ValueError(f"FSDP_VERSION={version}: gagpo shards with FSDP2 (torch.distributed.fsdp.fully_shard); set "
                         f"fsdp_version: 2 in the accelerate config (gagpo/configs/accelerate_fsdp.yaml)")
    if os.environ.get("FSDP_OFFLOAD_PARAMS", "").lower() in _TRUE:
        raise ValueError("FSDP_OFFLOAD_PARAMS (fsdp_offload_params: true): CPU offloading is not implemented by gagpo; "
                         "set it to false")
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower()
    if reshard not in _TRUE + ("0", "false", "no"):
        raise ValueError(f"FSDP_RESHARD_AFTER_FORWARD={reshard!r}: gagpo takes true or false (FSDP2)")
    return FSDPSettings(reshard_after_forward=reshard in _TRUE)


def check_supported(cfg: Any, needs_critic: bool) -> None:
    """``ValueError`` naming what to change when the run's configuration is one FSDP does not implement here."""
    problems = []
    if cfg.lora_r:
        problems.append(f"--lora-r {cfg.lora_r} (LoRA: the adapters are small, launch with DDP, "
                        f"gagpo/configs/accelerate_multi_gpu.yaml)")
    if needs_critic:
        problems.append(f"--algo {cfg.algo} (a learned critic: its value head is outside the sharded model; use a "
                        f"critic-free estimator, e.g. gagpo, gigpo, grpo, rloo, reinforce)")
    if cfg.engine == "hf-shared":
        problems.append("--engine hf-shared (generation with the sharded training model; use hf)")
    if problems:
        raise ValueError("FSDP (ACCELERATE_USE_FSDP) is implemented for full-parameter training with a serving copy; "
                         "not for " + "; ".join(problems))


def accept(cfg: Any, needs_critic: bool) -> FSDPSettings:
    """The language-model trainer takes this FSDP launch (:func:`gagpo.distributed.accept_fsdp`) after
    :func:`check_supported` and :func:`fsdp_settings` found nothing it does not implement; returns the settings."""
    from .. import distributed as dist

    check_supported(cfg, needs_critic)
    settings = fsdp_settings()
    dist.accept_fsdp()
    return settings


def is_sharded(policy: Any) -> bool:
    """Whether ``policy``'s model was sharded by :func:`shard_policy`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(policy.model, FSDPModule)


def shard_policy(policy: Any, settings: FSDPSettings | None = None) -> None:
    """Shard ``policy``'s model over every process (FSDP2) in place, after building the serving copy of the
    whole weights; every process must call it, with the same (already broadcast) weights. Build the optimizer
    afterwards: the model's parameters are replaced by sharded ones."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    settings = settings or fsdp_settings()
    dist.init()
    model = policy.model
    engine = policy.engine
    if not hasattr(engine, "always_copy"):
        raise ValueError(f"FSDP needs the hf rollout engine (a serving copy of the weights); got {type(engine).__name__}")
    engine.always_copy = True
    engine.model  # noqa: B018 - builds the serving copy from the whole weights, before they are sharded
    if engine.shares_weights:
        raise ValueError("FSDP needs a serving copy of the weights (--engine hf); this engine generates with the "
                         "training model")
    device = policy.device
    mesh = init_device_mesh(device.type, (dist.world_size(),))
    unit_classes = set(getattr(model, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if type(m).__name__ in unit_classes]
    if not units:
        raise ValueError(f"{type(model).__name__} names no decoder-layer class (_no_split_modules): cannot choose the "
                         f"FSDP units")
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    for unit in units + [model]:  # (each FSDP module reduces its own gradients: set on every one)
        unit.set_gradient_divide_factor(1.0)         # summed, not averaged: the losses are global shares
        unit.set_force_sum_reduction_for_comms(True)  # plain sums (gloo has no pre-multiplied sum)
    policy.actor.lockstep = True
    engine.rebind()
    engine.collective_refresh = True


# ---------------------------------------------------------------------- whole state, gathered or scattered
def full_model_state(model: Any) -> dict[str, torch.Tensor]:
    """The whole ``state_dict`` of a sharded model, on the CPU, on every process (a collective)."""
    return {k: dist.full_tensor(v).detach().cpu() for k, v in model.state_dict().items()}


@torch.no_grad()
def load_full_model_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors (the same on every process, e.g. read from one checkpoint) into a sharded model:
    each process keeps its shard. ``ValueError`` for a missing or misshapen tensor."""
    from torch.distributed.tensor import distribute_tensor

    targets = dict(model.named_parameters())
    targets.update({n: b for n, b in model.named_buffers() if n in state})
    missing = [n for n in targets if n not in state]
    if missing:
        raise ValueError(f"the saved weights lack {missing[:5]}")
    for name, t in targets.items():
        src = state[name].to(device=t.device, dtype=t.dtype)
        if tuple(src.shape) != tuple(t.shape):
            raise ValueError(f"saved weight {name} has shape {tuple(src.shape)}, the model's {tuple(t.shape)}")
        if hasattr(t, "device_mesh"):
            # every process holds the whole tensor: keep its own shard (no scatter from one process)
            t.copy_(distribute_tensor(src, t.device_mesh, t.placements, src_data_rank=None))
        else:
            t.copy_(src)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded tensor gathered whole, on the CPU (a collective): the
    format of an optimizer that never was sharded."""
    state = optimizer.state_dict()
    return {"state": {i: {k: dist.full_tensor(v).detach().cpu() if torch.is_tensor(v) else v for k, v in s.items()}
                      for i, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an ordinary (whole) optimizer state into an optimizer of sharded parameters: each tensor of a
    parameter's shape becomes that parameter's shard."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded: dict[int, dict[str, Any]] = {}
    for i, s in state["state"].items():
        index = int(i)
        if index >= len(params):
            raise ValueError(f"the saved optimizer state has parameter {index}; this optimizer has {len(params)}")
        p = params[index]
        out = {}
        for k, v in s.items():
            if torch.is_tensor(v) and hasattr(p, "device_mesh") and tuple(v.shape) == tuple(p.shape):
                v = distribute_tensor(v.to(device=p.device, dtype=p.dtype), p.device_mesh, p.placements,
                                      src_data_rank=None)
            out[k] = v
        sharded[i] = out
    optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})
