"""Discriminators: FADA's fine-grained (class x domain) one, the output-space ones of
AdaptSegNet/ADVENT (IAST's differs in its first kernel) and ProDA's warm-up.

Both return logits at their own resolution; callers upsample. Submodule names match the official
code so their checkpoints load (FADA ``model_D``: ``D.0``, ``D.2``, ``cls1``, ``cls2``; ADVENT:
``conv1``..``conv4``, ``classifier``).
"""

from __future__ import annotations

import torch
from torch import nn

LEAKY_RELU_SLOPE = 0.2


class FineGrainedDiscriminator(nn.Module):
    """FADA's fine-grained domain discriminator (docs/spec.md §2.1): 2K outputs per pixel.

    Channels ``[0, K)`` score "source" (CRA: trusted region) per class, channels ``[K, 2K)``
    "target" (CRA: untrusted region). No normalisation layers; default PyTorch initialisation.

    Args:
        in_channels: feature channels C_f (2048 for ResNet-101, 1024 for VGG-16).
        num_classes: K.
        mid_channels: width of the first conv; the second has half of it (official: 256 -> 128).

    Shape:
        - Input: (N, C_f, H, W) backbone features
        - Output: (N, 2K, H, W)
    """

    def __init__(self, in_channels: int, num_classes: int, mid_channels: int = 256) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.D = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1),
            nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True),
            nn.Conv2d(mid_channels, mid_channels // 2, 3, padding=1),
            nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True),
        )
        self.cls1 = nn.Conv2d(mid_channels // 2, num_classes, 3, padding=1)
        self.cls2 = nn.Conv2d(mid_channels // 2, num_classes, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.D(features)
        return torch.cat([self.cls1(hidden), self.cls2(hidden)], dim=1)


class OutputSpaceDiscriminator(nn.Module):
    """AdaptSegNet/ADVENT fully convolutional discriminator (docs/spec.md §4.1).

    Five 4x4 convs with stride 2 (K -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1), LeakyReLU(0.2) after the
    first four. Takes softmax probabilities (AdaptSegNet) or weighted self-information maps
    (ADVENT). IAST's ``FCDiscriminator`` is the same with a 3x3 first conv (``first_kernel=3``).

    Args:
        num_classes: K, the input channels.
        ndf: width of the first conv.
        first_kernel: kernel of the first conv (4, or IAST's 3; padding 1 either way).

    Shape:
        - Input: (N, K, H, W)
        - Output: (N, 1, ~H/32, ~W/32) domain logits (16x32 for 512x1024)
    """

    def __init__(self, num_classes: int, ndf: int = 64, first_kernel: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes, ndf, first_kernel, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, 4, stride=2, padding=1)
        self.classifier = nn.Conv2d(ndf * 8, 1, 4, stride=2, padding=1)
        self.leaky_relu = nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        hidden = maps
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            hidden = self.leaky_relu(conv(hidden))
        return self.classifier(hidden)


class ProdaDiscriminator(nn.Module):
    """ProDA's warm-up discriminator (microsoft/ProDA's ``FCDiscriminator``).

    Four 3x3 convs with stride 2 (K -> ndf -> 2ndf -> 4ndf -> 8ndf), ReLU after the first three
    and LeakyReLU(0.2) after the fourth, then a 1x1 conv to one channel.

    Shape:
        - Input: (N, K, H, W) softmax probabilities
        - Output: (N, 1, ~H/16, ~W/16) domain scores
    """

    def __init__(self, num_classes: int, ndf: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes, ndf, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, 3, stride=2, padding=1)
        self.classifier = nn.Conv2d(ndf * 8, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        self.leaky_relu = nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        hidden = maps
        for conv in (self.conv1, self.conv2, self.conv3):
            hidden = self.relu(conv(hidden))
        return self.classifier(self.leaky_relu(self.conv4(hidden)))
