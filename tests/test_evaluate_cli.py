"""evaluate-predictions against cityscapesScripts and by hand; evaluate and predict end to end."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from fixtures import CITYSCAPES_IDS, write_cityscapes, write_label_png

from crossregion.cli import main as cli_main
from crossregion.data.datasets import build_dataset
from crossregion.data.labels import CITYSCAPES_19
from crossregion.eval.predictions import evaluate_predictions

SIZE = (12, 20)  # (height, width) of every test image


def _val_labels(root: Path) -> dict[str, Path]:
    return {p.name[: -len("_gtFine_labelIds.png")]: p for p in sorted((root / "gtFine" / "val").rglob("*.png"))}


def _cityscapes_scripts_scores(prediction_files, label_files):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    official.args.evalInstLevelScore = False
    official.args.quiet = True
    official.args.JSONOutput = False
    result = official.evaluateImgLists([str(p) for p in prediction_files], [str(p) for p in label_files], official.args)
    return result["classScores"], official.getScoreAverage(result["classScores"], official.args)


# Each runs `crossregion COMMAND` on Cityscapes-layout data (CPU) and returns the exit status.
# An option whose value is a command name goes in one word ("--id-type=train"): cli.py
# attaches every command whose name is a word of argv.


def _evaluate_predictions(root: Path, predictions: Path, output: Path, *extra: str) -> int:
    return cli_main(
        [
            "evaluate-predictions",
            "--dataset",
            "cityscapes",
            "--root",
            str(root),
            "--predictions",
            str(predictions),
            "--output",
            str(output),
            *extra,
        ]
    )


def _evaluate(checkpoint: Path, root: Path, output: Path, *extra: str) -> int:
    return cli_main(
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
            *extra,
        ]
    )


def _predict(checkpoint: Path, images: Path, output: Path, *extra: str) -> int:
    return cli_main(
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--images",
            str(images),
            "--output",
            str(output),
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_agrees_with_cityscapes_scripts_on_random_label_id_predictions(tmp_path):
    root = write_cityscapes(tmp_path / "cs", splits=("val",), per_city=3, size=SIZE, seed=1)
    rng = np.random.default_rng(2)
    predictions = tmp_path / "pred"
    prediction_files = []
    labels = _val_labels(root)
    for stem in labels:
        # Random label IDs, void ones included (false negatives for cityscapesScripts too);
        # half the files in per-city folders, half flat, as both layouts are accepted.
        city = stem.split("_")[0]
        folder = predictions / city if city == "aachen" else predictions
        path = folder / f"{stem}_leftImg8bit.png"
        write_label_png(path, rng.choice(np.asarray(CITYSCAPES_IDS, dtype=np.uint8), size=SIZE))
        prediction_files.append(path)
    dataset = build_dataset("cityscapes", root, "val")
    metrics, decision = evaluate_predictions(dataset, predictions, progress=False)
    assert decision.id_type == "label"
    official_scores, official_mean = _cityscapes_scripts_scores(prediction_files, list(labels.values()))
    for name in CITYSCAPES_19.class_names:
        ours, theirs = metrics["per_class_iou"][name], official_scores[name]
        if math.isnan(theirs):
            assert ours is None
        else:
            assert ours / 100 == pytest.approx(theirs, abs=1e-6)
    assert metrics["miou"] / 100 == pytest.approx(official_mean, abs=1e-6)


def test_train_id_predictions_score_like_their_label_id_versions(tmp_path):
    root = write_cityscapes(tmp_path / "cs", splits=("val",), size=SIZE, seed=3)
    rng = np.random.default_rng(4)
    train_dir, label_dir = tmp_path / "train", tmp_path / "label"
    to_label_id = CITYSCAPES_19.train_id_to_cityscapes_id()
    for stem in _val_labels(root):
        train_ids = rng.integers(0, 19, size=SIZE).astype(np.uint8)
        write_label_png(train_dir / f"{stem}.png", train_ids)
        write_label_png(label_dir / f"{stem}.png", to_label_id[train_ids])
    dataset = build_dataset("cityscapes", root, "val")
    from_train, decision = evaluate_predictions(dataset, train_dir, id_type="train", progress=False)
    from_label, _ = evaluate_predictions(dataset, label_dir, progress=False)
    assert decision.id_type == "train"
    assert from_train["per_class_iou"] == from_label["per_class_iou"]


def test_hand_computed_case_with_ignore_pixels_and_absent_classes(tmp_path):
    # One 2×4 image with three classes in play: road (7 -> 0), sidewalk (8 -> 1), building (11 -> 2);
    # label ID 0 (unlabeled) is ignored. Every other class is absent from GT and prediction.
    root = tmp_path / "cs"
    label = np.array([[7, 7, 7, 8], [8, 0, 0, 11]], dtype=np.uint8)
    write_label_png(root / "gtFine" / "val" / "x" / "x_000000_000000_gtFine_labelIds.png", label)
    (root / "leftImg8bit" / "val" / "x").mkdir(parents=True)
    Image.new("RGB", (4, 2)).save(root / "leftImg8bit" / "val" / "x" / "x_000000_000000_leftImg8bit.png")
    prediction = np.array([[0, 0, 1, 1], [255, 2, 5, 1]], dtype=np.uint8)  # train IDs; 255 = no prediction
    write_label_png(tmp_path / "pred" / "x_000000_000000_trainIds.png", prediction)
    dataset = build_dataset("cityscapes", root, "val")
    metrics, decision = evaluate_predictions(dataset, tmp_path / "pred", progress=False)
    assert decision.id_type == "train"
    ious = metrics["per_class_iou"]
    # road: TP 2, GT 3, predicted 2 -> 2/3. sidewalk: TP 1, GT 2 (one "no prediction"),
    # predicted 3 (one on road, one on building) -> 1/4. building: TP 0, GT 1 -> 0.
    # pole is predicted only on ignored pixels: absent, like the other 15 classes.
    assert ious["road"] == pytest.approx(200 / 3)
    assert ious["sidewalk"] == pytest.approx(25.0)
    assert ious["building"] == 0.0
    assert ious["pole"] is None and ious["sky"] is None
    assert metrics["miou"] == pytest.approx((200 / 3 + 25) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(50.0)


def _write_train_predictions(root: Path, out: Path, size=SIZE, suffix="_trainIds.png"):
    for stem in _val_labels(root):
        write_label_png(out / f"{stem}{suffix}", np.zeros(size, dtype=np.uint8))


def test_cli_writes_metrics_and_says_which_ids_it_assumed(tmp_path, capsys):
    root = write_cityscapes(tmp_path / "cs", splits=("val",), size=SIZE)
    _write_train_predictions(root, tmp_path / "pred")
    # pictures written by `crossregion predict` next to the IDs are skipped
    Image.new("RGB", (SIZE[1], SIZE[0])).save(tmp_path / "pred" / "aachen_000000_000000_color.png")
    status = _evaluate_predictions(root, tmp_path / "pred", tmp_path / "out", "--split", "val")
    assert status == 0
    assert "reading predictions as train IDs" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["settings"]["prediction_id_type"] == "train"
    assert (tmp_path / "out" / "metrics.md").is_file()


@pytest.mark.parametrize(
    "problem, message",
    [
        ("missing", "1 of 4 images have no prediction"),
        ("extra", "belong to no image"),
        ("size", "is 10x6, expected 20x12"),
        ("rgb", "is a RGB image"),
        ("mismatch", "holds [26], which are no train IDs (0..18, 255), but --id-type says train IDs"),
    ],
)
def test_bad_prediction_folders_name_the_files(tmp_path, capsys, problem, message):
    root = write_cityscapes(tmp_path / "cs", splits=("val",), size=SIZE)
    predictions = tmp_path / "pred"
    _write_train_predictions(root, predictions)
    first = min(predictions.iterdir())
    if problem == "missing":
        first.unlink()
    elif problem == "extra":
        write_label_png(predictions / "zurich_000000_000000.png", np.zeros(SIZE, dtype=np.uint8))
    elif problem == "size":
        write_label_png(first, np.zeros((6, 10), dtype=np.uint8))
    elif problem == "rgb":
        Image.new("RGB", (SIZE[1], SIZE[0])).save(first)
    elif problem == "mismatch":
        write_label_png(first, np.full(SIZE, 26, dtype=np.uint8))  # car as a label ID
    id_type = "train" if problem == "mismatch" else "auto"
    status = _evaluate_predictions(root, predictions, tmp_path / "out", f"--id-type={id_type}")
    error = capsys.readouterr().err
    assert status == 2
    assert message in error
    if problem in ("size", "rgb", "missing", "mismatch"):
        assert first.name.split("_trainIds")[0] in error


# ----- evaluate and predict end to end with a tiny checkpoint ---------------------------------


def _write_checkpoint(path: Path, num_classes: int, official: bool) -> Path:
    import torch

    from crossregion.models import build_segmenter
    from crossregion.models.checkpoint_io import export_official

    torch.manual_seed(0)
    segmenter = build_segmenter("resnet18", num_classes)
    if official:
        export_official(segmenter, path)
    else:
        torch.save(
            {
                "format": "crossregion",
                "format_version": 1,
                "iteration": 0,
                "model": {"backbone": "resnet18", "num_classes": num_classes},
                "models": {"segmenter": segmenter.state_dict()},
            },
            path,
        )
    return path


def test_evaluate_and_predict_agree_with_flip_and_multi_scale(tmp_path, capsys):
    root = write_cityscapes(tmp_path / "cs", splits=("val",), per_city=1, size=(16, 24), seed=5)
    checkpoint = _write_checkpoint(tmp_path / "official.pth", 19, official=True)
    inference = ["--flip", "--scales", "0.75,1.25"]
    assert _evaluate(checkpoint, root, tmp_path / "eval", "--split", "val", "--workers", "0", *inference) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_classes"] == 19 and 0 <= metrics["miou"] <= 100
    assert metrics["settings"]["flip"] is True and metrics["settings"]["scales"] == [0.75, 1.25]
    assert metrics["settings"]["checkpoint_format"] == "official"
    assert "| road | sidewalk |" in (tmp_path / "eval" / "metrics.md").read_text()

    assert _predict(checkpoint, root / "leftImg8bit" / "val", tmp_path / "pred", *inference) == 0
    stem = "aachen_000000_000000_leftImg8bit"
    for kind, mode in (("trainIds", "L"), ("labelIds", "L"), ("color", "RGB"), ("overlay", "RGB")):
        with Image.open(tmp_path / "pred" / f"{stem}_{kind}.png") as written:
            assert (written.mode, written.size) == (mode, (24, 16))
    train_ids = np.array(Image.open(tmp_path / "pred" / f"{stem}_trainIds.png"))
    label_ids = np.array(Image.open(tmp_path / "pred" / f"{stem}_labelIds.png"))
    np.testing.assert_array_equal(label_ids, CITYSCAPES_19.train_id_to_cityscapes_id()[train_ids])
    colour = np.array(Image.open(tmp_path / "pred" / f"{stem}_color.png"))
    np.testing.assert_array_equal(colour[0, 0], CITYSCAPES_19.palette[train_ids[0, 0]])

    # Scoring the written predictions reproduces evaluate's numbers: same inference, same protocol.
    assert _evaluate_predictions(root, tmp_path / "pred", tmp_path / "scored") == 0
    scored = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert scored["per_class_iou"] == metrics["per_class_iou"]


def test_evaluate_16_class_model_with_sliding_window_reports_miou13(tmp_path):
    from crossregion.eval.evaluate import evaluate_segmenter
    from crossregion.models.checkpoint_io import load_segmenter

    root = write_cityscapes(tmp_path / "cs", splits=("val",), per_city=1, size=(16, 24), seed=6)
    checkpoint = _write_checkpoint(tmp_path / "ours.pth", 16, official=False)
    segmenter, info = load_segmenter(checkpoint)
    assert info["format"] == "crossregion"
    dataset = build_dataset("cityscapes", root, "val", num_classes=16)
    metrics = evaluate_segmenter(
        segmenter, dataset, input_size=(24, 32), window=(16, 16), stride=(16, 16), progress=False
    )
    assert metrics["num_classes"] == 16 and "miou13" in metrics
    assert "terrain" not in metrics["per_class_iou"]
    assert metrics["settings"]["input_size_wh"] == [32, 24] and metrics["settings"]["window_wh"] == [16, 16]
    assert metrics["settings"]["num_images"] == 2
    assert dataset.transform is None and not segmenter.training


def test_evaluate_rejects_a_checkpoint_with_another_class_count(tmp_path, capsys):
    root = write_cityscapes(tmp_path / "cs", splits=("val",), size=(16, 24))
    checkpoint = _write_checkpoint(tmp_path / "official.pth", 19, official=True)
    status = _evaluate(checkpoint, root, tmp_path / "eval", "--num-classes", "16")
    assert status == 2
    assert "official.pth" in capsys.readouterr().err


def test_predict_reports_missing_inputs(tmp_path, capsys):
    checkpoint = _write_checkpoint(tmp_path / "official.pth", 19, official=True)
    status = _predict(checkpoint, tmp_path / "nope.png", tmp_path / "out")
    assert status == 2
    assert "nope.png does not exist" in capsys.readouterr().err
