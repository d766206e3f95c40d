"""Feature extractors of DeepLabv2 at output stride 8: dilated ResNets and the dilated VGG-16.

State-dict keys follow the official FADA/CRA code (``backbone.conv1.weight``,
``backbone.layer3.22.bn3.running_var``, ``backbone.29.weight`` for VGG's fc6, ...), so official
checkpoints load without renaming. ImageNet weights come from local torchvision-format files only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from crossregion.models.weights import describe_state_dict_mismatch, is_state_dict, read_torch_file
from crossregion.registry import BACKBONES

# Sequential indices of the VGG-16 convs (3x3, with their input/output channels) once pool4 and
# pool5 are removed (docs/spec.md §3.3); the last three (conv5) are dilated by 2.
_VGG16_CONVS: tuple[tuple[int, int, int], ...] = (
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (23, 512, 512),
    (25, 512, 512),
    (27, 512, 512),
)
_VGG16_POOLS = (4, 9, 16)
_VGG16_FC6_INDEX = 29
_VGG16_FC7_INDEX = 31
_VGG16_FIRST_DILATED_INDEX = 23


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed affine parameters and statistics, as in the official FADA/CRA code.

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers, so they are saved and
    loaded but never trained. The official layer adds no epsilon to the variance (``eps=0``), which
    matters for channels whose ImageNet variance is tiny; pass ``eps`` to change that.

    Args:
        num_features: number of channels C.
        eps: added to the variance before the square root.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W)
    """

    def __init__(self, num_features: int, eps: float = 0.0) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return features * scale.to(features.dtype).view(1, -1, 1, 1) + shift.to(features.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _stage_output_channels(stage: nn.Sequential) -> int:
    last_block = stage[-1]
    last_norm = last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2  # Bottleneck / BasicBlock
    return last_norm.num_features


class ResNetFeatureExtractor(nn.Module):
    """A dilated ResNet without avgpool/fc; ``backbone`` holds the stem and the four stages.

    Args:
        resnet: a torchvision ResNet whose layer3/layer4 are already dilated (output stride 8).

    Shape:
        - Input: (N, 3, H, W)
        - Output: (N, C_f, ceil(H/8), ceil(W/8)), C_f = ``feature_channels``
    """

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        self.backbone = nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in names))
        self.feature_channels = _stage_output_channels(resnet.layer4)
        self.intermediate_channels = _stage_output_channels(resnet.layer3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward_with_intermediate(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (layer3 output, layer4 output), both at stride 8; the multi-level head uses both.

        Shape:
            - Input: (N, 3, H, W)
            - Output: (N, C_f/2, H/8, W/8) and (N, C_f, H/8, W/8)
        """
        layer3_features = self.backbone[:-1](images)  # stem + layer1..layer3
        return layer3_features, self.backbone.layer4(layer3_features)


class VGGFeatureExtractor(nn.Module):
    """VGG-16 conv stack without pool4/pool5, conv5 dilated by 2, then fc6/fc7 as dilated convs.

    fc6 and fc7 (3x3, dilation 4, 1024 channels) are randomly initialised, as in FADA (docs/spec.md §3.3).
    There is no BatchNorm in this network.

    Shape:
        - Input: (N, 3, H, W)
        - Output: (N, 1024, ceil(H/8), ceil(W/8))
    """

    def __init__(self) -> None:
        super().__init__()
        layers: dict[int, nn.Module] = {}
        for index, in_channels, out_channels in _VGG16_CONVS:
            dilation = 2 if index >= _VGG16_FIRST_DILATED_INDEX else 1
            layers[index] = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)
            layers[index + 1] = nn.ReLU(inplace=True)
        for index in _VGG16_POOLS:
            layers[index] = nn.MaxPool2d(kernel_size=2, stride=2)
        layers[_VGG16_FC6_INDEX] = nn.Conv2d(512, 1024, 3, padding=4, dilation=4)
        layers[_VGG16_FC6_INDEX + 1] = nn.ReLU(inplace=True)
        layers[_VGG16_FC7_INDEX] = nn.Conv2d(1024, 1024, 3, padding=4, dilation=4)
        layers[_VGG16_FC7_INDEX + 1] = nn.ReLU(inplace=True)
        self.backbone = nn.Sequential(*(layers[index] for index in range(len(layers))))
        self.feature_channels = 1024

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)


def _norm_layer(freeze_bn: bool) -> Callable[[int], nn.Module]:
    return FrozenBatchNorm2d if freeze_bn else nn.BatchNorm2d


def _dilate_basic_stage(stage: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turns the stride-2 BasicBlock stage into a stride-1 stage dilated by ``dilation``.

    torchvision refuses dilation in BasicBlock, so the convs are edited in place. The conv that
    carried the stride keeps ``previous_dilation`` (torchvision's convention for Bottleneck);
    every 3x3 conv after it sees a grid twice as fine and gets ``dilation``.
    """
    first_block = stage[0]
    first_block.conv1.stride = (1, 1)
    first_block.conv1.dilation = first_block.conv1.padding = (previous_dilation, previous_dilation)
    first_block.downsample[0].stride = (1, 1)
    later_convs = [first_block.conv2] + [conv for block in stage[1:] for conv in (block.conv1, block.conv2)]
    for conv in later_convs:
        conv.dilation = conv.padding = (dilation, dilation)


def _build_basic_resnet(constructor: Callable[..., torchvision.models.ResNet], freeze_bn: bool) -> nn.Module:
    resnet = constructor(weights=None, norm_layer=_norm_layer(freeze_bn))
    _dilate_basic_stage(resnet.layer3, previous_dilation=1, dilation=2)
    _dilate_basic_stage(resnet.layer4, previous_dilation=2, dilation=4)
    return ResNetFeatureExtractor(resnet)


def _build_bottleneck_resnet(constructor: Callable[..., torchvision.models.ResNet], freeze_bn: bool) -> nn.Module:
    resnet = constructor(
        weights=None,
        replace_stride_with_dilation=[False, True, True],
        norm_layer=_norm_layer(freeze_bn),
    )
    return ResNetFeatureExtractor(resnet)


@BACKBONES.register("resnet18")
def build_resnet18(freeze_bn: bool = False) -> nn.Module:
    """Dilated ResNet-18 (512 feature channels), small enough for CPU runs."""
    return _build_basic_resnet(torchvision.models.resnet18, freeze_bn)


def _build_half_width_resnet18(freeze_bn: bool) -> nn.Module:
    """ResNet-18 with half the channels (32-64-128-256): about a quarter of its FLOPs.

    torchvision's ResNet fixes the BasicBlock widths, so the stem and the four stages are rebuilt
    with its own ``_make_layer`` at half width and initialised as torchvision initialises them.
    """
    norm_layer = _norm_layer(freeze_bn)
    resnet = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], norm_layer=norm_layer)
    width = 32
    resnet.inplanes = width
    resnet.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    resnet.bn1 = norm_layer(width)
    resnet.layer1 = resnet._make_layer(torchvision.models.resnet.BasicBlock, width, 2)
    for index, name in enumerate(("layer2", "layer3", "layer4"), start=1):
        stage = resnet._make_layer(torchvision.models.resnet.BasicBlock, width * 2**index, 2, stride=2)
        setattr(resnet, name, stage)
    for module in resnet.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    _dilate_basic_stage(resnet.layer3, previous_dilation=1, dilation=2)
    _dilate_basic_stage(resnet.layer4, previous_dilation=2, dilation=4)
    return ResNetFeatureExtractor(resnet)


@BACKBONES.register("resnet18_half")
def build_resnet18_half(freeze_bn: bool = False) -> nn.Module:
    """Dilated ResNet-18 at half width (256 feature channels): the embedded benchmark's model,
    which affords 4x the input pixels of ResNet-18 at the same cost on a CPU."""
    return _build_half_width_resnet18(freeze_bn)


@BACKBONES.register("resnet34")
def build_resnet34(freeze_bn: bool = False) -> nn.Module:
    """Dilated ResNet-34 (512 feature channels)."""
    return _build_basic_resnet(torchvision.models.resnet34, freeze_bn)


@BACKBONES.register("resnet50")
def build_resnet50(freeze_bn: bool = False) -> nn.Module:
    """Dilated ResNet-50 (2048 feature channels)."""
    return _build_bottleneck_resnet(torchvision.models.resnet50, freeze_bn)


@BACKBONES.register("resnet101")
def build_resnet101(freeze_bn: bool = False) -> nn.Module:
    """Dilated ResNet-101 (2048 feature channels), the paper's backbone (docs/spec.md §3.1)."""
    return _build_bottleneck_resnet(torchvision.models.resnet101, freeze_bn)


def _build_deeplab_resnet101(freeze_bn: bool) -> nn.Module:
    """ResNet-101 in the original DeepLab-v2 (caffe) layout, as ProDA's official code builds it.

    It differs from torchvision's dilated ResNet-101 (``resnet101``) in three places, which change
    the numbers but not a single key or shape:

    - layer2's stride sits on the first block's 1x1 ``conv1``, not on its 3x3 ``conv2``;
    - every block of layer3 / layer4 is dilated by 2 / 4, the first one included (torchvision
      keeps the previous dilation on the first block's ``conv2``);
    - the stem's max pool rounds up (``ceil_mode``), so odd sizes give one more row/column.
    """
    resnet = torchvision.models.resnet101(
        weights=None,
        replace_stride_with_dilation=[False, True, True],
        norm_layer=_norm_layer(freeze_bn),
    )
    resnet.maxpool.ceil_mode = True
    first_of_layer2 = resnet.layer2[0]
    first_of_layer2.conv1.stride = (2, 2)
    first_of_layer2.conv2.stride = (1, 1)
    for stage, dilation in ((resnet.layer3, 2), (resnet.layer4, 4)):
        stage[0].conv2.dilation = stage[0].conv2.padding = (dilation, dilation)
    return ResNetFeatureExtractor(resnet)


@BACKBONES.register("resnet101_deeplab")
def build_resnet101_deeplab(freeze_bn: bool = False) -> nn.Module:
    """Dilated ResNet-101 in the DeepLab-v2 caffe layout (2048 feature channels): ProDA's backbone.

    Same keys as ``resnet101`` (torchvision ImageNet files load into it, as ProDA's code does), but
    stride and dilation placed as DeepLab-v2 places them; see ``_build_deeplab_resnet101``.
    """
    return _build_deeplab_resnet101(freeze_bn)


@BACKBONES.register("vgg16")
def build_vgg16(freeze_bn: bool = False) -> nn.Module:
    """Dilated VGG-16 with fc6/fc7 convs (1024 feature channels). It has no BatchNorm, so
    ``freeze_bn`` changes nothing."""
    return VGGFeatureExtractor()


def build_feature_extractor(name: str, *, freeze_bn: bool = False) -> nn.Module:
    """The feature extractor called ``name`` (see ``BACKBONES``), randomly initialised.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    return BACKBONES.get(name)(freeze_bn=freeze_bn)


def _pretrained_to_backbone_keys(
    feature_extractor: nn.Module, state_dict: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Renames a torchvision ImageNet state dict to the keys of ``feature_extractor.backbone``.

    The classification head (ResNet ``fc.*``, VGG ``classifier.*``) is dropped; VGG's conv5 moves
    one index down because pool4 is gone.
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if isinstance(feature_extractor, VGGFeatureExtractor):
            if key.startswith("classifier."):
                continue
            prefix, _, rest = key.partition(".")
            index, _, name = rest.partition(".")
            if prefix == "features" and index.isdigit():
                index_in_file = int(index)
                new_index = index_in_file - 1 if index_in_file > _VGG16_FIRST_DILATED_INDEX else index_in_file
                key = f"{new_index}.{name}"
        elif key.startswith("fc."):
            continue
        renamed[key] = value
    return renamed


# ProDA's SimCLR ResNet-101 (``pretrained/simclr/r101_1x_sk0.pth``): ``{"state_dict": ...}`` with
# torchvision key names, trained on RGB / 255 without mean or std (its stages 2 and 3 feed it that).
_SIMCLR_CONTAINER_KEY = "state_dict"


def load_pretrained_backbone(feature_extractor: nn.Module, path: str | Path) -> str:
    """Loads a torchvision-format ImageNet state dict file into ``feature_extractor.backbone``.

    Works with torchvision's ``resnet*-*.pth`` and ``vgg16-397923af.pth`` files (and state dicts
    with the same keys, e.g. the caffe-converted ``vgg16-00b39a1b.pth`` of the FADA configs, which
    expects BGR 0-255 input minus the caffe mean instead of torchvision's normalisation), and
    ProDA's SimCLR file (the same keys inside ``{"state_dict": ...}``). The classification head
    is dropped; ``num_batches_tracked`` entries are ignored; VGG's fc6/fc7 stay randomly
    initialised. Nothing downloads.

    Returns:
        The input normalisation the weights were trained with (``config.schema.INPUT_NORMS``):
        ``"unit"`` for ProDA's SimCLR file, ``"imagenet"`` for a plain state dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a state dict of this backbone; the message names the file and
            lists missing/unexpected keys and shape mismatches.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"ImageNet weights {path} not found; put the torchvision state dict file there "
            "(e.g. resnet101-5d3b4d8f.pth or vgg16-397923af.pth) or set pretrained to null"
        )
    state_dict = read_torch_file(path, what="ImageNet weights")
    weights_norm = "imagenet"
    if isinstance(state_dict, dict) and set(state_dict) == {_SIMCLR_CONTAINER_KEY}:
        state_dict, weights_norm = state_dict[_SIMCLR_CONTAINER_KEY], "unit"
    if not is_state_dict(state_dict):
        raise ValueError(
            f"ImageNet weights {path} are not a state dict (a mapping of names to tensors) nor ProDA's "
            "SimCLR file ({'state_dict': state dict})"
        )

    def without_counters(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value for key, value in tensors.items() if not key.endswith("num_batches_tracked")}

    found = without_counters(_pretrained_to_backbone_keys(feature_extractor, state_dict))
    expected = without_counters(feature_extractor.backbone.state_dict())
    if isinstance(feature_extractor, VGGFeatureExtractor):
        expected = {
            key: value
            for key, value in expected.items()
            if int(key.split(".")[0]) not in (_VGG16_FC6_INDEX, _VGG16_FC7_INDEX)
        }
    mismatch = describe_state_dict_mismatch(expected, found)
    if mismatch:
        raise ValueError(f"ImageNet weights {path} do not fit this backbone: {mismatch}")
    feature_extractor.backbone.load_state_dict(found, strict=False)
    return weights_norm
