"""Official checkpoints through ``crossregion predict`` and ``crossregion evaluate``, from image files.

Each test writes a checkpoint in an official layout (ProDA's ``.pkl``, the FADA/CRA container,
IAST's raw state dict), runs the command on image files and compares what it wrote with the
prediction of that code base's own pipeline, reimplemented here from its documented steps:

- ProDA (``data/cityscapes_dataset.py``, ``test.py``): RGB as float, minus ``mean_rgb["cityscapes"]``
  = (0, 0, 0), divided by 255 (no std); model; logits upsampled bilinearly with
  ``align_corners=True`` to the image size; argmax.
- FADA/CRA (docs/spec.md §1.2) and IAST (docs/iast.md): RGB / 255, minus the ImageNet mean,
  divided by its std; model; the same upsampling; argmax.

The network itself is built here from the file's weights under the documented key renaming
(its parity with the official model definitions is tested in test_proda.py, test_iast.py and
test_checkpoint_io.py); what these tests pin is everything around it: reading the file, the
input scaling the checkpoint implies, resizing and writing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from fixtures import random_image, write_cityscapes, write_rgb
from proda_fixtures import deterministic_state, load_reference

from crossregion.cli import main as cli_main
from crossregion.data.labels import CITYSCAPES_19
from crossregion.models import FrozenBatchNorm2d, build_segmenter

IMAGE_SIZE = (40, 72)  # (height, width): 5x9 logits at stride 8
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
PRODA_CITYSCAPES_MEAN = np.array([0.0, 0.0, 0.0])


def proda_scaling(rgb: np.ndarray) -> np.ndarray:
    """ProDA's ``transform``: ``img -= mean; img = img / 255.0`` on float RGB."""
    return (rgb.astype(np.float64) - PRODA_CITYSCAPES_MEAN) / 255.0


def imagenet_scaling(rgb: np.ndarray) -> np.ndarray:
    """``ToTensor`` + ``Normalize(ImageNet mean, std)`` (FADA/CRA, IAST)."""
    return (rgb.astype(np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def reference_train_ids(model: nn.Module, rgb: np.ndarray, scaling) -> np.ndarray:
    """Train IDs of one H×W×3 uint8 image: scaling, model, bilinear (align_corners) to H×W, argmax."""
    images = torch.from_numpy(scaling(rgb).transpose(2, 0, 1).copy()).float()[None]
    with torch.no_grad():
        logits = model(images)["logits"]
        logits = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=True)
    return logits.argmax(dim=1)[0].numpy()


def predict_cli(checkpoint: Path, image: Path, output: Path) -> np.ndarray:
    """``crossregion predict`` on one image; returns the train IDs it wrote."""
    status = cli_main(
        ["predict", "--checkpoint", str(checkpoint), "--images", str(image), "--output", str(output), "--device", "cpu"]
    )
    assert status == 0
    return np.array(Image.open(output / f"{image.stem}_trainIds.png"))


def evaluate_cli(checkpoint: Path, root: Path, output: Path) -> dict:
    """``crossregion evaluate`` on the Cityscapes-layout ``root`` (val); returns metrics.json."""
    status = cli_main(
        [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "cityscapes",
            "--root",
            str(root),
            "--output",
            str(output),
            "--device",
            "cpu",
            "--workers",
            "0",
        ]
    )
    assert status == 0
    return json.loads((output / "metrics.json").read_text())


def reference_per_class_iou(model: nn.Module, root: Path, scaling) -> dict[str, float | None]:
    """Per-class IoU (%) of the reference pipeline over the val images of ``root``."""
    lookup = CITYSCAPES_19.lookup_table()
    confusion = np.zeros((19, 19), dtype=np.int64)
    for image_path in sorted((root / "leftImg8bit" / "val").rglob("*_leftImg8bit.png")):
        city = image_path.parent.name
        stem = image_path.name[: -len("_leftImg8bit.png")]
        label = lookup[np.array(Image.open(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"))]
        prediction = reference_train_ids(model, np.array(Image.open(image_path).convert("RGB")), scaling)
        valid = label != 255
        np.add.at(confusion, (label[valid], prediction[valid]), 1)
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return {
        name: (float(100 * tp / u) if u else None)
        for name, tp, u in zip(CITYSCAPES_19.class_names, true_positive, union)
    }


def assert_same_ious(found: dict[str, float | None], expected: dict[str, float | None]) -> None:
    assert found.keys() == expected.keys()
    for name, value in expected.items():
        assert (found[name] is None) == (value is None), name
        if value is not None:
            assert found[name] == pytest.approx(value, abs=1e-9), name


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "frankfurt_000000_000294_leftImg8bit.png"
    write_rgb(path, random_image(IMAGE_SIZE, np.random.default_rng(7)))
    return path


@pytest.fixture(scope="module")
def cityscapes_val(tmp_path_factory) -> Path:
    return write_cityscapes(tmp_path_factory.mktemp("cityscapes"), splits=("val",), per_city=1, size=IMAGE_SIZE, seed=3)


def check_predict_and_evaluate(checkpoint, model, scaling, other_scaling, image_file, cityscapes_val, tmp_path):
    rgb = np.array(Image.open(image_file).convert("RGB"))
    expected = reference_train_ids(model, rgb, scaling)
    # The test can tell the two input scalings apart on these weights and this image.
    assert (expected != reference_train_ids(model, rgb, other_scaling)).any()
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(predict_cli(checkpoint, image_file, tmp_path / "predict"), expected)

    metrics = evaluate_cli(checkpoint, cityscapes_val, tmp_path / "evaluate")
    assert_same_ious(metrics["per_class_iou"], reference_per_class_iou(model, cityscapes_val, scaling))


# --- ProDA ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proda_checkpoint(tmp_path_factory) -> tuple[Path, nn.Module]:
    """An official ProDA ``.pkl`` (ResNet101 + Classifier_Module2, deterministic weights) and the
    network with those weights, renamed as docs/proda.md says (``layer5.*`` is the head)."""
    reference = load_reference()
    state = deterministic_state([(key, shape) for key, shape in reference["keys_and_shapes"]])
    path = tmp_path_factory.mktemp("proda") / "from_gta5_to_cityscapes_on_deeplabv2_best_model.pkl"
    torch.save({"ResNet101": {"model_state": state, "objective_vectors": None}, "iter": 1, "best_iou": 0.4}, path)
    model = build_segmenter("resnet101_deeplab", 19, head="proda")
    renamed = {
        (
            "classifier." + key[len("layer5.") :] if key.startswith("layer5.") else "feature_extractor.backbone." + key
        ): value
        for key, value in state.items()
    }
    model.load_state_dict(renamed)
    return path, model.eval()


def test_official_proda_checkpoint_gives_prodas_own_predictions(proda_checkpoint, image_file, cityscapes_val, tmp_path):
    path, model = proda_checkpoint
    check_predict_and_evaluate(path, model, proda_scaling, imagenet_scaling, image_file, cityscapes_val, tmp_path)


# --- FADA/CRA and IAST ----------------------------------------------------------------------------


def small_aspp_model() -> nn.Module:
    """A ResNet-18 DeepLab-v2 with varied BatchNorm statistics and biases (random init alone
    gives nearly one class everywhere)."""
    torch.manual_seed(0)
    model = build_segmenter("resnet18", 19, freeze_bn=True)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            size = module.running_mean.shape
            module.running_mean.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
    for conv in model.classifier.conv2d_list:
        nn.init.normal_(conv.weight, std=0.05, generator=generator)
        nn.init.normal_(conv.bias, std=1.0, generator=generator)
    return model.eval()


def test_official_fada_cra_checkpoint_gives_the_official_predictions(image_file, cityscapes_val, tmp_path):
    model = small_aspp_model()
    path = tmp_path / "model_iter040000.pth"
    torch.save(
        {
            "iteration": 40000,
            "feature_extractor": {"module." + k: v for k, v in model.feature_extractor.state_dict().items()},
            "classifier": {"module." + k: v for k, v in model.classifier.state_dict().items()},
        },
        path,
    )
    check_predict_and_evaluate(path, model, imagenet_scaling, proda_scaling, image_file, cityscapes_val, tmp_path)


def test_official_iast_checkpoint_gives_the_official_predictions(image_file, cityscapes_val, tmp_path):
    model = build_segmenter("resnet18", 19)  # IAST trains nn.BatchNorm2d: its files hold the step counters
    frozen = small_aspp_model()
    model.load_state_dict(frozen.state_dict(), strict=False)
    model.eval()
    state = {"module.backbone." + k: v for k, v in model.feature_extractor.backbone.state_dict().items()}
    state |= {"module.decoder.aspp." + k: v for k, v in model.classifier.state_dict().items()}
    state |= {"module.backbone.fc.weight": torch.zeros(1000, 512), "module.backbone.fc.bias": torch.zeros(1000)}
    path = tmp_path / "best_iter.pth"
    torch.save(state, path)
    check_predict_and_evaluate(path, model, imagenet_scaling, proda_scaling, image_file, cityscapes_val, tmp_path)


def test_official_proda_checkpoint_pseudo_labels_are_prodas_predictions(proda_checkpoint, cityscapes_val, tmp_path):
    from crossregion.data.pseudo_labels import PseudoLabelStore

    path, model = proda_checkpoint
    argv = ["pseudo-label", "--checkpoint", str(path), "--dataset", "cityscapes", "--root", str(cityscapes_val)]
    argv += ["--split", "val", "--output", str(tmp_path / "store"), "--device", "cpu", "--workers", "0"]
    assert cli_main(argv) == 0
    store = PseudoLabelStore(tmp_path / "store")
    for image_path in sorted((cityscapes_val / "leftImg8bit" / "val").rglob("*_leftImg8bit.png")):
        name = f"{image_path.parent.name}/{image_path.name[: -len('_leftImg8bit.png')]}"
        pseudo, _ = store.load(name)
        expected = reference_train_ids(model, np.array(Image.open(image_path).convert("RGB")), proda_scaling)
        np.testing.assert_array_equal(pseudo, expected)
