"""Mixed precision: autocast for the forward passes and one GradScaler per run."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, mode: str) -> ContextManager:
    """Autocast for ``mode`` in ``none|bf16|fp16``; a no-op context for ``none``."""
    if mode == "none":
        return contextlib.nullcontext()
    if mode == "fp16" and device.type == "cpu":
        raise ValueError("engine.amp=fp16 needs a GPU; on CPU use engine.amp=bf16 or none")
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[mode])


def build_grad_scaler(device: torch.device, mode: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 has float32's range and needs no scaling)."""
    return torch.amp.GradScaler(device.type, enabled=mode == "fp16")
