"""``model.input_norm``: built into the segmenter, kept in checkpoints, followed by training,
AdaBN and pseudo-labelling, checked where one model starts or teaches another."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from fixtures import write_cityscapes, write_gta5

from crossregion.app.train import build_model, build_train_dataset
from crossregion.config.schema import DatasetSpec, ModelConfig
from crossregion.data.datasets import build_dataset
from crossregion.eval.batchnorm import reestimate_batchnorm
from crossregion.models import build_segmenter, export_official, load_segmenter
from crossregion.models.backbones import build_feature_extractor, load_pretrained_backbone


def save_crossregion(segmenter: nn.Module, path: Path, **model_arguments) -> Path:
    torch.save(
        {
            "format": "crossregion",
            "iteration": 0,
            "model": model_arguments,
            "models": {"segmenter": segmenter.state_dict()},
        },
        path,
    )
    return path


def test_model_config_validates_input_norm():
    assert ModelConfig().input_norm == "imagenet"
    with pytest.raises(ValueError, match=r"model.input_norm must be one of \('imagenet', 'unit'\), got 'caffe'"):
        ModelConfig(input_norm="caffe")


def test_checkpoints_keep_the_input_norm_and_old_ones_are_imagenet(tmp_path):
    segmenter, model_args = build_model(ModelConfig(backbone="resnet18", num_classes=5, input_norm="unit"))
    assert segmenter.input_norm == "unit" and model_args["input_norm"] == "unit"
    _, info = load_segmenter(save_crossregion(segmenter, tmp_path / "unit.pth", **model_args))
    assert info["input_norm"] == "unit"
    old_arguments = {key: value for key, value in model_args.items() if key != "input_norm"}
    loaded, info = load_segmenter(save_crossregion(segmenter, tmp_path / "old.pth", **old_arguments))
    assert info["input_norm"] == loaded.input_norm == "imagenet"


def test_a_whole_model_starts_only_a_model_with_its_input_norm(tmp_path):
    segmenter, model_args = build_model(ModelConfig(backbone="resnet18", num_classes=5, input_norm="unit"))
    path = save_crossregion(segmenter, tmp_path / "proda_like.pth", **model_args)
    with pytest.raises(ValueError, match=r"proda_like.pth expects unit-normalised input .* set model.input_norm=unit"):
        build_model(ModelConfig(backbone="resnet18", num_classes=5, init_checkpoint=str(path)))
    started, _ = build_model(
        ModelConfig(backbone="resnet18", num_classes=5, init_checkpoint=str(path), input_norm="unit")
    )
    assert started.input_norm == "unit"
    # A backbone alone gets a new head and is trained on: official ProDA does this with ImageNet weights.
    backbone_only, _ = build_model(
        ModelConfig(backbone="resnet18", num_classes=5, init_checkpoint=str(path), init_backbone_only=True)
    )
    assert backbone_only.input_norm == "imagenet"


def test_prodas_simclr_file_loads_as_unit_weights(tmp_path):
    torch.manual_seed(0)
    source = build_feature_extractor("resnet18").backbone
    state = {**source.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save({"state_dict": state}, tmp_path / "r101_1x_sk0.pth")
    torch.save(state, tmp_path / "resnet18.pth")
    target = build_feature_extractor("resnet18")
    assert load_pretrained_backbone(target, tmp_path / "r101_1x_sk0.pth") == "unit"
    assert torch.equal(target.backbone.conv1.weight, source.conv1.weight)
    assert load_pretrained_backbone(build_feature_extractor("resnet18"), tmp_path / "resnet18.pth") == "imagenet"


def test_training_batches_follow_the_input_norm(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=1, size=(8, 12))
    raw = build_dataset("gta5", root, "train", num_classes=19)[0]["image"]
    spec = DatasetSpec(name="gta5", root=str(root))
    unit = build_train_dataset(spec, 19, "unit")[0]["image"]
    imagenet = build_train_dataset(spec, 19, "imagenet")[0]["image"]
    torch.testing.assert_close(unit, raw.float() / 255)
    assert not torch.allclose(imagenet, unit)


def test_adabn_feeds_the_models_input_norm(tmp_path):
    """The re-estimated BN statistics of the first layer are those of the model's own input."""
    root = write_cityscapes(tmp_path / "cs", splits=("val",), per_city=1, size=(16, 24))
    images = build_dataset("cityscapes", root, "val", num_classes=19, labelled=False)
    means = {}
    for input_norm in ("imagenet", "unit"):
        torch.manual_seed(0)
        segmenter = build_segmenter("resnet18", 19, input_norm=input_norm)
        conv1 = segmenter.feature_extractor.backbone.conv1
        nn.init.zeros_(conv1.weight)
        with torch.no_grad():
            conv1.weight[0, 0, 3, 3] = 1.0  # channel 0 of bn1 sees the red channel at stride 2
        assert reestimate_batchnorm(segmenter, images, torch.device("cpu"))
        means[input_norm] = segmenter.feature_extractor.backbone.bn1.running_mean[0].item()
    red = np.mean([np.asarray(images.load_image(i))[::2, ::2, 0].mean() for i in range(len(images))]) / 255
    assert means["unit"] == pytest.approx(red, rel=1e-5)
    assert means["imagenet"] == pytest.approx((red - 0.485) / 0.229, rel=1e-5)


def test_official_export_refuses_a_unit_model(tmp_path):
    with pytest.raises(ValueError, match="expects unit-normalised ones"):
        export_official(build_segmenter("resnet18", 19, input_norm="unit"), tmp_path / "out.pth")
