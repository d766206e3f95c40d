"""Official FADA/CRA checkpoints and ours: import gives identical logits, export is lossless,
bad files give errors that name the file.

The official containers are written here by hand from the key patterns of docs/spec.md §3.5, not with
``export_official``, so import is checked against the format rather than against our exporter.
ResNet-101 is instantiated once for the whole module.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from crossregion.cli import main as cli_main
from crossregion.models import (
    FineGrainedDiscriminator,
    FrozenBatchNorm2d,
    build_segmenter,
    export_official,
    load_segmenter,
    strip_wrapper_prefixes,
)

SMALL_IMAGES_SHAPE = (1, 3, 24, 32)  # 3x4 at stride 8: ResNet-101 forward stays well under a second


def randomise_statistics(segmenter: nn.Module) -> None:
    """Non-trivial BN statistics and affine values: a mix-up between layers changes the logits."""
    generator = torch.Generator().manual_seed(1)
    for module in segmenter.modules():
        if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            size = module.running_mean.shape
            module.running_mean.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) * 0.5 + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)


def official_container(segmenter, discriminator=None, *, ddp_prefix=False, batch_norm_counters=False):
    """An official train_cda-style checkpoint dict (docs/spec.md §3.5) from the module state dicts."""
    prefix = "module." if ddp_prefix else ""
    feature_state = dict(segmenter.feature_extractor.state_dict())
    if batch_norm_counters:  # CRA / self-distillation checkpoints (FREEZE_BN False)
        for key in [key for key in feature_state if key.endswith("running_var")]:
            feature_state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(40000)
    container = {
        "iteration": 40000,
        "feature_extractor": {prefix + key: value for key, value in feature_state.items()},
        "classifier": {prefix + key: value for key, value in segmenter.classifier.state_dict().items()},
        "optimizer_fea": {"state": {}, "param_groups": [{"lr": 2.5e-4, "params": [0, 1]}]},
        "optimizer_cls": {"state": {}, "param_groups": [{"lr": 2.5e-3, "params": [0, 1]}]},
    }
    if discriminator is not None:
        container["model_D"] = {prefix + key: value for key, value in discriminator.state_dict().items()}
        container["optimizer_D"] = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    return container


@pytest.fixture(scope="module")
def r101_reference():
    """(FrozenBN DeepLabv2-R101 with known weights, its logits on a small input, the input)."""
    torch.manual_seed(0)
    segmenter = build_segmenter("resnet101", 19, freeze_bn=True).eval()
    randomise_statistics(segmenter)
    images = torch.randn(SMALL_IMAGES_SHAPE)
    with torch.no_grad():
        logits = segmenter(images)["logits"]
    return segmenter, logits, images


def logits_of(segmenter, images):
    with torch.no_grad():
        return segmenter(images)["logits"]


def test_official_r101_checkpoint_gives_identical_logits(tmp_path, r101_reference):
    reference, reference_logits, images = r101_reference
    discriminator = FineGrainedDiscriminator(2048, 19)
    path = tmp_path / "cda.pth"
    torch.save(official_container(reference, discriminator, ddp_prefix=True), path)
    segmenter, info = load_segmenter(path)
    assert (info["format"], info["backbone"], info["num_classes"]) == ("official", "resnet101", 19)
    assert info["freeze_bn"] and not info["multi_level"] and info["iteration"] == 40000
    assert isinstance(segmenter.feature_extractor.backbone.layer4[2].bn3, FrozenBatchNorm2d)
    assert torch.equal(logits_of(segmenter, images), reference_logits)
    assert not segmenter.training
    for key, value in discriminator.state_dict().items():
        assert torch.equal(info["discriminator_state"][key], value)


def test_official_r101_checkpoint_with_batch_norm_counters_loads_trainable_bn(tmp_path, r101_reference):
    reference, _, _ = r101_reference
    path = tmp_path / "cra.pth"
    torch.save(official_container(reference, batch_norm_counters=True), path)
    segmenter, info = load_segmenter(path, format="official", backbone="resnet101", num_classes=19)
    assert not info["freeze_bn"] and info["discriminator_state"] is None
    assert isinstance(segmenter.feature_extractor.backbone.layer4[2].bn3, nn.BatchNorm2d)
    assert segmenter.feature_extractor.backbone.layer1[0].bn1.num_batches_tracked.item() == 40000
    loaded_state = segmenter.state_dict()
    assert all(torch.equal(loaded_state[key], value) for key, value in reference.state_dict().items())


@pytest.mark.parametrize("ddp_prefix", [False, True])
def test_official_checkpoint_with_batch_norm_counters_gives_batch_norm_logits(tmp_path, ddp_prefix):
    torch.manual_seed(0)
    reference = build_segmenter("resnet18", 19, freeze_bn=True).eval()
    randomise_statistics(reference)
    path = tmp_path / "cra.pth"
    torch.save(official_container(reference, ddp_prefix=ddp_prefix, batch_norm_counters=True), path)
    segmenter, info = load_segmenter(path)
    assert not info["freeze_bn"]
    images = torch.randn(1, 3, 33, 41)
    # Eval-mode BatchNorm2d adds eps=1e-5 to the variance where the official FrozenBN adds none.
    for module in reference.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = 1e-5
    torch.testing.assert_close(logits_of(segmenter, images), logits_of(reference, images), rtol=1e-4, atol=1e-5)


def test_r101_export_then_import_is_lossless(tmp_path, r101_reference):
    reference, _, _ = r101_reference
    path = tmp_path / "exported.pth"
    export_official(reference, path, iteration=7, ddp_prefix=True)
    container = torch.load(path, weights_only=True)
    assert set(container) == {"iteration", "feature_extractor", "classifier"}
    assert len(container["feature_extractor"]) == 520
    assert "module.backbone.layer3.22.bn3.running_var" in container["feature_extractor"]
    assert set(container["classifier"]) == {f"module.conv2d_list.{i}.{k}" for i in range(4) for k in ("weight", "bias")}
    segmenter, info = load_segmenter(path)
    assert info["iteration"] == 7 and info["freeze_bn"]
    loaded_state = segmenter.state_dict()
    assert loaded_state.keys() == reference.state_dict().keys()
    assert all(torch.equal(loaded_state[key], value) for key, value in reference.state_dict().items())


def crossregion_checkpoint(segmenter, build_arguments, models=None):
    """A checkpoint laid out as the engine's contract says (docs/architecture.md)."""
    return {
        "format": "crossregion",
        "format_version": 1,
        "code_version": "0.1.0",
        "iteration": 123,
        "config": {},
        "model": build_arguments,
        "models": {"segmenter": segmenter.state_dict(), **(models or {})},
        "optimizers": {},
        "schedulers": {},
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        },
    }


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    arguments = {
        "backbone": "resnet18",
        "num_classes": 4,
        "pretrained": None,
        "freeze_bn": False,
        "multi_level": True,
    }
    segmenter = build_segmenter(**arguments).eval()
    randomise_statistics(segmenter)
    return segmenter, arguments


def test_crossregion_checkpoint_loads_with_aux_head(tmp_path, small_model):
    segmenter, arguments = small_model
    discriminator = FineGrainedDiscriminator(512, 4)
    path = tmp_path / "fada.pth"
    torch.save(
        crossregion_checkpoint(segmenter, arguments, {"discriminator": discriminator.state_dict()}),
        path,
    )
    loaded, info = load_segmenter(path)
    assert (info["format"], info["backbone"], info["multi_level"], info["iteration"]) == (
        "crossregion",
        "resnet18",
        True,
        123,
    )
    images = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        expected, found = segmenter(images), loaded(images)
    assert torch.equal(found["logits"], expected["logits"]) and torch.equal(found["aux_logits"], expected["aux_logits"])
    assert torch.equal(info["discriminator_state"]["cls2.bias"], discriminator.cls2.bias)


def test_cli_export_writes_the_official_container(tmp_path, small_model, capsys):
    segmenter, arguments = small_model
    arguments = {**arguments, "multi_level": False}
    segmenter = build_segmenter(**arguments).eval()
    discriminator = FineGrainedDiscriminator(512, 4)
    source = tmp_path / "ours.pth"
    torch.save(
        crossregion_checkpoint(segmenter, arguments, {"discriminator": discriminator.state_dict()}),
        source,
    )
    output = tmp_path / "official" / "cda.pth"
    assert cli_main(["export-checkpoint", str(source), "--output", str(output)]) == 0
    assert "resnet18, 4 classes" in capsys.readouterr().out
    container = torch.load(output, weights_only=True)
    assert set(container) == {"iteration", "feature_extractor", "classifier", "model_D"}
    assert container["iteration"] == 123
    assert set(container["model_D"]) == set(discriminator.state_dict())
    assert not list(output.parent.glob("*.tmp"))
    reloaded, info = load_segmenter(output)
    assert info["format"] == "official" and info["backbone"] == "resnet18"
    assert all(torch.equal(reloaded.state_dict()[key], value) for key, value in segmenter.state_dict().items())


def test_strip_wrapper_prefixes():
    state = {
        "module._orig_mod.conv.weight": torch.zeros(1),
        "_orig_mod.module.bias": torch.ones(1),
        "plain": torch.ones(2),
    }
    assert list(strip_wrapper_prefixes(state)) == ["conv.weight", "bias", "plain"]


@pytest.fixture
def small_official_file(tmp_path):
    torch.manual_seed(0)
    segmenter = build_segmenter("resnet18", 19, freeze_bn=True)
    path = tmp_path / "r18_official.pth"
    torch.save(official_container(segmenter), path)
    return path


def test_another_class_count_names_file_and_shapes(small_official_file):
    with pytest.raises(
        ValueError,
        match=r"r18_official\.pth holds a resnet18 with 19 classes, expected a resnet18 with 16",
    ) as error:
        load_segmenter(small_official_file, num_classes=16)
    assert "classifier.conv2d_list.0.weight expected (16, 512, 3, 3) found (19, 512, 3, 3)" in str(error.value)


def test_another_architecture_names_file_and_shapes(small_official_file, tmp_path):
    with pytest.raises(
        ValueError,
        match=r"r18_official\.pth holds a resnet18 .* expected a resnet34 .*missing keys",
    ):
        load_segmenter(small_official_file, backbone="resnet34")
    # Our checkpoint whose recorded architecture does not match its weights.
    segmenter = build_segmenter("resnet18", 4)
    path = tmp_path / "lying.pth"
    torch.save(crossregion_checkpoint(segmenter, {"backbone": "resnet50", "num_classes": 4}), path)
    with pytest.raises(ValueError, match=r"lying\.pth declares a resnet50 .*do not fit .*shape mismatches"):
        load_segmenter(path)


def test_truncated_checkpoint_is_named(small_official_file, tmp_path):
    data = small_official_file.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.pth: the file is truncated or not a PyTorch file"):
        load_segmenter(truncated)


def test_non_checkpoint_files_are_named(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.txt: the file is truncated or not a PyTorch file"):
        load_segmenter(text)
    weights_only = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, weights_only)
    with pytest.raises(ValueError, match=r"weights\.pth is not a segmenter checkpoint.*conv1\.weight"):
        load_segmenter(weights_only)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match=r"tensor\.pth is not a checkpoint: it holds a Tensor"):
        load_segmenter(tensor)
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        load_segmenter(tmp_path / "absent.pth")


def test_format_option_is_checked(small_official_file):
    with pytest.raises(ValueError, match=r"r18_official\.pth is in the official format, not crossregion"):
        load_segmenter(small_official_file, format="crossregion")
    with pytest.raises(ValueError, match="unknown checkpoint format 'fada'"):
        load_segmenter(small_official_file, format="fada")


def test_unknown_backbone_layout_is_named(tmp_path):
    segmenter = build_segmenter("resnet18", 4)
    container = official_container(segmenter)
    container["feature_extractor"] = {
        key: value for key, value in container["feature_extractor"].items() if not key.startswith("backbone.layer3.1.")
    }
    path = tmp_path / "odd.pth"
    torch.save(container, path)
    with pytest.raises(
        ValueError,
        match=r"odd\.pth: 'feature_extractor' is a ResNet with 1 layer3 BasicBlock blocks",
    ):
        load_segmenter(path)


def test_a_multi_level_checkpoint_starts_a_single_level_model(tmp_path):
    """CRA after AdaptSegNet/ADVENT: the backbone and main head carry over, the auxiliary head is left out."""
    from crossregion.app.train import build_model
    from crossregion.config.schema import ModelConfig

    arguments = {"backbone": "resnet18", "num_classes": 4, "multi_level": True}
    multi = build_segmenter(**arguments)
    path = tmp_path / "advent.pth"
    torch.save(crossregion_checkpoint(multi, arguments), path)
    single, _ = build_model(ModelConfig(backbone="resnet18", num_classes=4, init_checkpoint=str(path)))
    assert single.aux_classifier is None
    for key, value in single.state_dict().items():
        assert torch.equal(value, multi.state_dict()[key]), key
