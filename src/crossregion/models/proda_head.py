"""ProDA's segmentation head: a GroupNorm ASPP, squeeze-excitation, a bottleneck and a 1x1 classifier.

ProDA (Zhang et al., CVPR 2021) replaces DeepLab-v2's summed ASPP with this head (its official
``Classifier_Module2``); the 256-channel output of its bottleneck, after dropout, is the feature
space of the class prototypes. Submodule names follow the official ones (``conv2d_list``,
``bottleneck``, ``head``), so an official key ``layer5.X`` is ``classifier.X`` here. docs/proda.md
lists the semantics and the differences from the paper.
"""

from __future__ import annotations

import torch
from torch import nn

PRODA_ASPP_DILATIONS: tuple[int, ...] = (6, 12, 18, 24)
# Width of every ASPP branch, of the bottleneck and so of the prototype features.
PRODA_FEATURE_CHANNELS = 256
PRODA_GROUP_NORM_GROUPS = 32
# Reduction of the squeeze-excitation's hidden layer: 1280 -> 80 -> 1280 with four dilations.
PRODA_SE_REDUCTION = 16
PRODA_DROPOUT = 0.1
# The official ResNet constructor re-initialises every Conv2d of the model, the head's included,
# from N(0, 0.01) after the head's own (kaiming / N(0, 0.001)) init ran; that is the init in effect.
PRODA_CONV_INIT_STD = 0.01


class SqueezeExcitation(nn.Module):
    """Channel gating: global average pool, Linear-ReLU-Linear-Sigmoid, scale the input.

    Args:
        channels: C.
        reduction: the hidden layer has ``C // reduction`` units.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W)
    """

    def __init__(self, channels: int, reduction: int = PRODA_SE_REDUCTION) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        # ``se.0`` / ``se.2`` are the official key names of the two Linear layers.
        self.se = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.global_pool(features).flatten(1)
        gate = self.se(pooled)[:, :, None, None]
        return features * gate


def _conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> nn.Sequential:
    padding = dilation if kernel_size == 3 else 0
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation),
        nn.GroupNorm(PRODA_GROUP_NORM_GROUPS, out_channels),
        nn.ReLU(inplace=True),
    )


class ProDAClassifier(nn.Module):
    """ProDA's head: ASPP branches concatenated, SE, 3x3 bottleneck + GroupNorm, dropout, 1x1 classifier.

    - ``conv2d_list[0]``: 1x1 conv to 256 channels, GroupNorm(32), ReLU;
    - ``conv2d_list[1..]``: one 3x3 conv (dilation = padding = d) to 256 channels, GroupNorm(32),
      ReLU per dilation d;
    - ``bottleneck``: SE over the 256 * (1 + len(dilations)) concatenated channels, 3x3 conv to 256
      channels, GroupNorm(32), no activation;
    - ``head``: Dropout2d(0.1), then a 1x1 conv to K channels without bias.

    The prototype features are the bottleneck's output after the dropout (official ``feat``), so
    in training mode they are the dropped-out features the classifier sees. All convs but the
    classifier have a bias.

    Args:
        in_channels: backbone feature channels C_f (2048 for ResNet-101).
        num_classes: K.
        dilations: the 3x3 branches' dilations.
        channels: width of the branches and of the features.
        dropout: Dropout2d probability before the classifier.

    Shape:
        - Input: (N, C_f, H, W)
        - features: (N, ``channels``, H, W)
        - logits: (N, K, H, W)
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dilations: tuple[int, ...] = PRODA_ASPP_DILATIONS,
        channels: int = PRODA_FEATURE_CHANNELS,
        dropout: float = PRODA_DROPOUT,
    ) -> None:
        super().__init__()
        self.feature_channels = channels
        self.conv2d_list = nn.ModuleList(
            [_conv_norm_relu(in_channels, channels, 1, 1)]
            + [_conv_norm_relu(in_channels, channels, 3, dilation) for dilation in dilations]
        )
        concatenated = channels * (1 + len(dilations))
        self.bottleneck = nn.Sequential(
            SqueezeExcitation(concatenated),
            nn.Conv2d(concatenated, channels, 3, padding=1),
            nn.GroupNorm(PRODA_GROUP_NORM_GROUPS, channels),
        )
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1, bias=False))
        self._init_as_official()

    def _init_as_official(self) -> None:
        """The init the official model ends up with (see ``PRODA_CONV_INIT_STD``).

        Conv weights N(0, 0.01); the bottleneck conv's bias 0 (its own init zeroes it and the later
        pass leaves biases alone); the ASPP convs' biases and the SE Linears keep PyTorch's default
        init (the official head init iterates over Sequentials and never reaches them);
        GroupNorm weight 1, bias 0.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=PRODA_CONV_INIT_STD)
        nn.init.zeros_(self.bottleneck[1].bias)

    def forward_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prototype features, logits) of backbone ``features``; shapes in the class docstring."""
        branches = torch.cat([branch(features) for branch in self.conv2d_list], dim=1)
        prototype_features = self.head[0](self.bottleneck(branches))
        return prototype_features, self.head[1](prototype_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.forward_features(features)[1]
