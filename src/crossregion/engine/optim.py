"""Optimisers and the learning-rate schedules (docs/spec.md §1.6, §2.4, §4.1; docs/iast.md).

Every optimiser follows lr_t = base_lr * factor(t), with t the number of finished iterations:
poly, (1 - t / max_iters) ** power (FADA/CRA, ProDA), or cosine annealing to ``cosine_min_ratio``
over max_iters (IAST), times a linear warm-up over the first ``warmup_iters`` when set. The
schedule scales each parameter group's own base lr, so the head's x10 group keeps its ratio
without anything indexing ``param_groups[1]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from crossregion.config.schema import OptimConfig


def poly_factor(iteration: int, max_iters: int, power: float) -> float:
    """(1 - t / max_iters) ** power, clamped at 0 past the horizon."""
    return max(0.0, 1.0 - iteration / max_iters) ** power


def cosine_factor(iteration: int, max_iters: int, min_ratio: float) -> float:
    """min_ratio + (1 - min_ratio) (1 + cos(pi t / max_iters)) / 2, held at min_ratio past the horizon."""
    progress = min(1.0, iteration / max_iters)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_factor(iteration: int, warmup_iters: int) -> float:
    """min(1, (t + 1) / warmup_iters): the first step already moves, at 1 / warmup_iters of the lr."""
    return 1.0 if warmup_iters == 0 else min(1.0, (iteration + 1) / warmup_iters)


def schedule_factor(iteration: int, optim: OptimConfig) -> float:
    """The factor of every base lr at iteration t: ``optim.schedule``'s, times the warm-up."""
    if optim.schedule == "cosine":
        factor = cosine_factor(iteration, optim.max_iters, optim.cosine_min_ratio)
    else:
        factor = poly_factor(iteration, optim.max_iters, optim.poly_power)
    return factor * warmup_factor(iteration, optim.warmup_iters)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with ``schedule_factor`` over ``optim.max_iters``; step it once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda iteration: schedule_factor(iteration, optim))


def build_segmenter_optimizer(segmenter: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """``optim.name`` (SGD or Adam), backbone at ``optim.lr``, head at ``optim.lr * optim.head_lr_mult``.

    ``segmenter.parameter_groups()`` splits the parameters; frozen ones (FrozenBatchNorm,
    ``requires_grad=False``) are left out. SGD uses ``optim.momentum``; Adam torch's default betas.
    """
    backbone_params, head_params = _split_parameters(segmenter)
    groups = [
        {"params": backbone_params, "lr": optim.lr},
        {"params": head_params, "lr": optim.lr * optim.head_lr_mult},
    ]
    if optim.name == "adam":
        return torch.optim.Adam(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def build_discriminator_adam(discriminator: nn.Module, optim: OptimConfig) -> torch.optim.Adam:
    """Adam for a discriminator: ``optim.disc_lr``, betas ``optim.disc_betas``, no weight decay."""
    return torch.optim.Adam(
        [p for p in discriminator.parameters() if p.requires_grad], lr=optim.disc_lr, betas=optim.disc_betas
    )


def _split_parameters(segmenter: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    groups = segmenter.parameter_groups()
    backbone, head = groups["backbone"], groups["head"]

    def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        return [p for p in params if p.requires_grad]

    return trainable(backbone), trainable(head)
