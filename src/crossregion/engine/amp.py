"""Mixed precision: the precision a run uses, autocast for the forward passes, one GradScaler per run."""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager

import torch

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), as oneDNN reports it.

    Without it (AVX2-only CPUs) bf16 autocast is emulated and a training step runs about 20x
    slower than in fp32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(device: torch.device, amp: str, channels_last: bool | str) -> tuple[str, bool]:
    """Turns ``engine.amp`` / ``engine.channels_last`` values of ``auto`` into concrete choices.

    ``amp=auto``: bf16 on a GPU that supports it (else fp16), bf16 on a CPU with native bf16,
    fp32 (``none``) otherwise. ``channels_last=auto``: on for GPUs and for CPUs with native
    bf16 (where oneDNN's bf16 kernels prefer it), off otherwise (no gain in fp32). Explicit
    values are returned unchanged.
    """
    if device.type == "cuda":
        fast_half = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        native = True
    else:
        native = cpu_has_native_bf16()
        fast_half = "bf16" if native else "none"
    resolved_amp = fast_half if amp == "auto" else amp
    resolved_channels_last = native if channels_last == "auto" else bool(channels_last)
    return resolved_amp, resolved_channels_last


def autocast(device: torch.device, mode: str) -> AbstractContextManager:
    """Autocast for ``mode`` in ``none|bf16|fp16``; a no-op context for ``none``."""
    if mode == "none":
        return contextlib.nullcontext()
    if mode == "auto":
        raise ValueError("engine.amp=auto must be resolved (resolve_precision) before autocast")
    if mode == "fp16" and device.type == "cpu":
        raise ValueError("engine.amp=fp16 needs a GPU; on CPU use engine.amp=bf16, none or auto")
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[mode])


def build_grad_scaler(device: torch.device, mode: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 has float32's range and needs no scaling)."""
    return torch.amp.GradScaler(device.type, enabled=mode == "fp16")
