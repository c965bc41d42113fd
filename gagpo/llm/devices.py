"""Devices and weight dtypes by name: the one place that turns ``--device`` and ``--dtype`` into torch objects.

Every setting that names a device (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …) is resolved by
:func:`resolve_device`, every weight dtype (``"auto"`` or one of :data:`DTYPE_NAMES`) by
:func:`resolve_dtypes`. The names are plain tuples and torch is imported inside the functions, so a
command-line parser can offer the choices without loading torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPE_NAMES", "DTYPE_CHOICES", "torch_dtype", "resolve_dtypes", "resolve_device", "check_device"]

DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""The weight dtypes a model can be loaded in, by their torch names."""

DTYPE_CHOICES = ("auto",) + DTYPE_NAMES
"""The values of a ``dtype`` setting: ``"auto"`` (see :func:`resolve_dtypes`) or a weight dtype."""


def torch_dtype(name: str) -> "torch.dtype":
    """The torch dtype called ``name`` (one of :data:`DTYPE_NAMES`); ``ValueError`` for any other name."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {list(DTYPE_NAMES)}")
    return getattr(torch, name)


def resolve_dtypes(dtype: str, device: "torch.device", lora: bool) -> "tuple[torch.dtype, torch.dtype | None]":
    """``(weight dtype, autocast dtype or None)`` for a ``dtype`` setting: ``"auto"`` = on CUDA, bf16
    weights with LoRA and fp32 weights with bf16 autocast for full training; on a CPU, fp32. Otherwise
    ``"float32"``, ``"bfloat16"`` or ``"float16"`` weights without autocast."""
    import torch

    if dtype == "auto":
        cuda = device.type == "cuda"
        return (torch.bfloat16 if (cuda and lora) else torch.float32), (torch.bfloat16 if cuda else None)
    if dtype in DTYPE_NAMES:
        return torch_dtype(dtype), None
    raise ValueError(f"unknown dtype {dtype!r}; expected one of {list(DTYPE_CHOICES)}")


def resolve_device(device: "str | torch.device") -> "torch.device":
    """``"auto"`` -> CUDA when available, else the CPU; any other name (or a ``torch.device``) as ``torch.device``."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_device(device: str) -> None:
    """``ValueError`` unless ``device`` names a torch device that exists here (``auto`` always does)."""
    import torch

    try:
        dev = resolve_device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda, cuda:1, ...") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{device!r} asked for, but CUDA is not available here (torch.cuda.is_available() is "
                             f"False); use --device cpu, or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{device!r} asked for, but MPS is not available here; use --device cpu, or auto")
