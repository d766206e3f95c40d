"""Segmenters, FrozenBN, discriminators and ImageNet weight loading.

Parameter counts and shapes of the big models are checked on the meta device (no memory, no
compute); real forward passes use ResNet-18 at tiny sizes.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from crossregion.models import (
    FineGrainedDiscriminator,
    FrozenBatchNorm2d,
    OutputSpaceDiscriminator,
    build_segmenter,
)


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_buffers(module: nn.Module) -> int:
    return sum(b.numel() for b in module.buffers())


@pytest.fixture(scope="module")
def meta_r101_frozen_bn():
    with torch.device("meta"):
        return build_segmenter("resnet101", 19, freeze_bn=True)


@pytest.fixture(scope="module")
def meta_r101_batch_norm():
    with torch.device("meta"):
        return build_segmenter("resnet101", 19, freeze_bn=False)


def test_r101_counts_match_the_official_model(meta_r101_frozen_bn, meta_r101_batch_norm):
    frozen = meta_r101_frozen_bn.feature_extractor
    assert count_parameters(frozen, trainable_only=True) == 42_394_816
    assert count_buffers(frozen) == 210_688
    assert len(frozen.state_dict()) == 520
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())

    trainable = meta_r101_batch_norm.feature_extractor
    assert count_parameters(trainable, trainable_only=True) == 42_500_160
    assert count_buffers(trainable) == 105_448
    assert len(trainable.state_dict()) == 624
    assert count_parameters(meta_r101_batch_norm.classifier) == 1_400_908
    assert count_parameters(meta_r101_batch_norm) == 43_901_068


def test_other_counts_match_the_official_models():
    with torch.device("meta"):
        assert count_parameters(build_segmenter("resnet101", 16).classifier) == 1_179_712
        assert count_parameters(build_segmenter("resnet101", 19, multi_level=True)) == 44_601_560
        vgg = build_segmenter("vgg16", 19)
        assert count_parameters(vgg.feature_extractor) == 28_872_512
        assert count_parameters(vgg.classifier) == 700_492
        assert count_parameters(FineGrainedDiscriminator(2048, 19)) == 5_057_702
        assert count_parameters(FineGrainedDiscriminator(2048, 16)) == 5_050_784
        assert count_parameters(FineGrainedDiscriminator(1024, 19)) == 2_698_406
        assert count_parameters(OutputSpaceDiscriminator(19)) == 2_781_121


def test_state_dict_keys_follow_the_official_patterns(meta_r101_frozen_bn, meta_r101_batch_norm):
    frozen_keys = set(meta_r101_frozen_bn.state_dict())
    for key in (
        "feature_extractor.backbone.conv1.weight",
        "feature_extractor.backbone.bn1.running_var",
        "feature_extractor.backbone.layer3.22.bn3.running_mean",
        "feature_extractor.backbone.layer4.0.downsample.0.weight",
        "feature_extractor.backbone.layer4.0.downsample.1.bias",
        "classifier.conv2d_list.3.bias",
    ):
        assert key in frozen_keys
    assert not any(key.endswith("num_batches_tracked") for key in frozen_keys)
    assert "feature_extractor.backbone.bn1.num_batches_tracked" in meta_r101_batch_norm.state_dict()
    with torch.device("meta"):
        vgg_keys = list(build_segmenter("vgg16", 19).feature_extractor.state_dict())
        discriminator_keys = set(FineGrainedDiscriminator(2048, 19).state_dict())
    conv_indices = sorted({int(key.split(".")[1]) for key in vgg_keys})
    assert conv_indices == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31]
    assert discriminator_keys == {f"{n}.{k}" for n in ("D.0", "D.2", "cls1", "cls2") for k in ("weight", "bias")}


@pytest.mark.parametrize("backbone", ["resnet18_half", "resnet18", "resnet34", "resnet50", "resnet101", "vgg16"])
def test_output_stride_is_8(backbone):
    with torch.device("meta"):
        segmenter = build_segmenter(backbone, 19, multi_level=backbone != "vgg16")
        outputs = segmenter(torch.empty(1, 3, 512, 1024))
    channels = {"resnet18_half": 256, "resnet18": 512, "resnet34": 512, "vgg16": 1024}.get(backbone, 2048)
    assert segmenter.feature_channels == channels
    assert outputs["features"].shape == (1, channels, 64, 128)
    assert outputs["logits"].shape == (1, 19, 64, 128)
    assert ("aux_logits" in outputs) == (backbone != "vgg16")


def test_dilation_follows_torchvision_convention(meta_r101_frozen_bn):
    r101 = meta_r101_frozen_bn.feature_extractor.backbone
    assert (r101.layer3[0].conv2.stride, r101.layer3[0].conv2.dilation) == ((1, 1), (1, 1))
    assert r101.layer3[1].conv2.dilation == (2, 2) and r101.layer3[22].conv2.dilation == (2, 2)
    assert (r101.layer4[0].conv2.dilation, r101.layer4[2].conv2.dilation) == ((2, 2), (4, 4))
    assert r101.layer2[0].conv2.stride == (2, 2)
    with torch.device("meta"):
        r18 = build_segmenter("resnet18", 4).feature_extractor.backbone
    assert (r18.layer3[0].conv1.stride, r18.layer3[0].conv1.dilation) == ((1, 1), (1, 1))
    assert r18.layer3[0].downsample[0].stride == (1, 1)
    assert r18.layer3[0].conv2.dilation == r18.layer3[1].conv1.dilation == (2, 2)
    assert (
        r18.layer4[0].conv1.dilation,
        r18.layer4[0].conv2.dilation,
        r18.layer4[1].conv2.padding,
    ) == ((2, 2), (4, 4), (4, 4))


def test_small_segmenter_runs_on_cpu():
    torch.manual_seed(0)
    segmenter = build_segmenter("resnet18", 5, multi_level=True).eval()
    with torch.no_grad():
        outputs = segmenter(torch.randn(2, 3, 33, 41))
    assert outputs["logits"].shape == outputs["aux_logits"].shape == (2, 5, 5, 6)
    assert outputs["features"].shape == (2, 512, 5, 6)
    assert torch.isfinite(outputs["logits"]).all()


def test_frozen_batch_norm_applies_no_epsilon_by_default():
    norm = FrozenBatchNorm2d(3)
    norm.weight.copy_(torch.tensor([1.0, 2.0, -1.0]))
    norm.bias.copy_(torch.tensor([0.5, 0.0, 1.0]))
    norm.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
    norm.running_var.copy_(torch.tensor([1e-6, 4.0, 0.25]))
    features = torch.randn(2, 3, 4, 4)
    w, b, mean, var = (t.view(1, 3, 1, 1) for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var))
    torch.testing.assert_close(norm(features), (features - mean) * w / var.sqrt() + b)
    assert list(norm.parameters()) == []
    assert set(norm.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    norm.eps = 1e-5  # with an epsilon the tiny-variance channel changes a lot
    assert not torch.allclose(norm(features)[:, 0], ((features - mean) * w / var.sqrt() + b)[:, 0], rtol=0.1)


def test_aspp_sums_four_dilated_branches_with_small_init():
    segmenter = build_segmenter("resnet18", 3)
    classifier = segmenter.classifier
    assert [conv.dilation for conv in classifier.conv2d_list] == [
        (6, 6),
        (12, 12),
        (18, 18),
        (24, 24),
    ]
    assert abs(classifier.conv2d_list[0].weight.std().item() - 0.01) < 0.001
    features = torch.randn(1, 512, 7, 9)
    expected = sum(conv(features) for conv in classifier.conv2d_list)
    torch.testing.assert_close(classifier(features), expected)


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_parameter_groups_split_backbone_and_head(freeze_bn):
    segmenter = build_segmenter("resnet18", 4, freeze_bn=freeze_bn, multi_level=True)
    groups = segmenter.parameter_groups()
    backbone_ids = {id(p) for p in groups["backbone"]}
    head_ids = {id(p) for p in groups["head"]}
    assert not backbone_ids & head_ids
    assert backbone_ids | head_ids == {id(p) for p in segmenter.parameters()}
    assert head_ids == {id(p) for p in [*segmenter.classifier.parameters(), *segmenter.aux_classifier.parameters()]}
    has_bn_parameters = any(p is segmenter.feature_extractor.backbone.bn1.weight for p in groups["backbone"])
    assert has_bn_parameters == (not freeze_bn)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(KeyError, match="resnet101"):
        build_segmenter("resnet152", 19)
    with pytest.raises(ValueError, match="multi_level"):
        build_segmenter("vgg16", 19, multi_level=True)


def test_discriminator_outputs():
    features = torch.randn(2, 32, 5, 7)
    fine_grained = FineGrainedDiscriminator(32, 4, mid_channels=16)
    logits = fine_grained(features)
    assert logits.shape == (2, 8, 5, 7)
    hidden = fine_grained.D(features)
    torch.testing.assert_close(logits[:, 4:], fine_grained.cls2(hidden))
    with torch.device("meta"):
        assert OutputSpaceDiscriminator(19)(torch.empty(1, 19, 512, 1024)).shape == (1, 1, 16, 32)


def test_torchvision_resnet_weights_load_into_the_backbone(tmp_path):
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(weights=None)
    for module in imagenet.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(imagenet.state_dict(), path)
    segmenter = build_segmenter("resnet18", 4, pretrained=path, freeze_bn=True)
    backbone = segmenter.feature_extractor.backbone
    torch.testing.assert_close(backbone.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight, rtol=0, atol=0)
    torch.testing.assert_close(backbone.layer2[0].bn1.running_var, imagenet.layer2[0].bn1.running_var, rtol=0, atol=0)
    # The ImageNet stem with the same statistics gives the same activations (FrozenBN without eps
    # differs from eval-mode BatchNorm only by the 1e-5 epsilon).
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            backbone.bn1(backbone.conv1(images)),
            imagenet.eval().bn1(imagenet.conv1(images)),
            rtol=1e-4,
            atol=1e-4,
        )


def test_torchvision_vgg16_weights_load_with_shifted_conv5_indices(tmp_path):
    torch.manual_seed(0)
    with torch.device("meta"):
        ours = build_segmenter("vgg16", 4).feature_extractor.backbone.state_dict()
    imagenet = {}
    for key, value in ours.items():
        index, kind = key.split(".")
        if int(index) < 29:  # fc6/fc7 are not in the ImageNet file
            file_index = int(index) + 1 if int(index) >= 23 else int(index)
            imagenet[f"features.{file_index}.{kind}"] = torch.randn(value.shape)
    imagenet["classifier.0.weight"] = torch.randn(8, 8)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(imagenet, path)
    backbone = build_segmenter("vgg16", 4, pretrained=path).feature_extractor.backbone
    assert torch.equal(backbone[23].weight, imagenet["features.24.weight"])
    assert torch.equal(backbone[21].bias, imagenet["features.21.bias"])
    assert backbone[27].dilation == (2, 2)


def test_wrong_imagenet_file_lists_the_mismatches(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    bad_path = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(64, 4, 7, 7)}, bad_path)
    shape_mismatch = r"layer1\.0\.conv1\.weight expected \(64, 64, 1, 1\) found \(64, 64, 3, 3\)"
    with torch.device("meta"):  # the file is checked before any weight is copied
        with pytest.raises(ValueError, match=r"resnet18\.pth.*missing keys \(layer1\.2\.conv1\.weight"):
            build_segmenter("resnet34", 4, pretrained=path)
        with pytest.raises(ValueError, match=rf"resnet18\.pth.*shape mismatches \({shape_mismatch}.*missing"):
            build_segmenter("resnet50", 4, pretrained=path)
        with pytest.raises(ValueError, match=r"bad\.pth.*\(conv1\.weight expected \(64, 3, 7, 7\) found"):
            build_segmenter("resnet18", 4, pretrained=bad_path)
        with pytest.raises(FileNotFoundError, match="missing.pth"):
            build_segmenter("resnet18", 4, pretrained=tmp_path / "missing.pth")


def test_half_width_resnet18_has_a_quarter_of_the_weights_and_trains_from_kaiming_init():
    half = build_segmenter("resnet18_half", 19).feature_extractor
    full = build_segmenter("resnet18", 19).feature_extractor
    half_count = sum(p.numel() for p in half.parameters())
    full_count = sum(p.numel() for p in full.parameters())
    assert 0.2 < half_count / full_count < 0.3
    assert [half.backbone.layer4[0].conv2.dilation, half.backbone.layer3[0].conv1.stride] == [(4, 4), (1, 1)]
    # The rebuilt stages are initialised as torchvision initialises a ResNet (fan-out Kaiming).
    weight = half.backbone.layer2[0].conv1.weight
    expected_std = (2.0 / (weight.shape[0] * weight.shape[2] * weight.shape[3])) ** 0.5
    assert abs(weight.std().item() / expected_std - 1) < 0.1
