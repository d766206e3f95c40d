"""Target BatchNorm statistics: re-estimate a model's running statistics on unlabelled images (AdaBN)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def reestimate_batchnorm(segmenter: nn.Module, dataset, device: torch.device) -> bool:
    """Replace every BatchNorm's running statistics by their average over ``dataset`` (no labels used).

    Cumulative averaging (``momentum=None``) over one pass at the inference input size, images
    normalised as the segmenter's ``input_norm`` says; returns False when the model has no
    ``nn.BatchNorm2d`` (FrozenBatchNorm has fixed statistics).
    """
    from crossregion.data.transforms import eval_transform

    norms = [module for module in segmenter.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    saved_transform, dataset.transform = dataset.transform, eval_transform(input_norm=segmenter.input_norm)
    segmenter.to(device).eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        for index in range(len(dataset)):
            segmenter(dataset[index]["image"].unsqueeze(0).to(device))
    finally:
        dataset.transform = saved_transform
    segmenter.eval()
    return True
