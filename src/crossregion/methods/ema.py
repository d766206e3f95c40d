"""The momentum (EMA) teacher's step: ProDA's stage-1 teacher follows the student this way."""

from __future__ import annotations

import torch
from torch import nn

# EMA (momentum) model: decay 0.999, hard-coded in CustomModel.step; buffers are copied.
EMA_DECAY = 0.999


@torch.no_grad()
def update_ema_model(ema_model: nn.Module, model: nn.Module, *, decay: float = EMA_DECAY) -> None:
    """ProDA's momentum model step: parameters ``e <- decay * e + (1 - decay) * s``; buffers
    (BatchNorm statistics and counters) copied from the student, not averaged."""
    for ema_param, param in zip(ema_model.parameters(), model.parameters(), strict=True):
        ema_param.mul_(decay).add_(param.detach(), alpha=1.0 - decay)
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)
