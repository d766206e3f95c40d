"""ConfusionMatrix and metrics files: a hand-computed case, ignore pixels, absent classes, mIoU13."""

import json
import math

import pytest
import torch

from crossregion.data.labels import CITYSCAPES_16, CITYSCAPES_19, SYNTHIA_13_CLASS_NAMES
from crossregion.eval.metrics import ConfusionMatrix, metrics_dict, write_metrics


def test_hand_computed_three_classes_with_ignore_void_and_absent_class():
    # Class 2 occurs only under an ignored pixel, so it is absent from what is scored.
    labels = torch.tensor([0, 0, 0, 1, 1, 255, 255])
    predictions = torch.tensor([0, 0, 1, 1, 255, 2, 0])  # 255 on a class-1 pixel: no class predicted
    confusion = ConfusionMatrix(3)
    confusion.update(predictions, labels)
    assert confusion.matrix.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]]
    scores = confusion.compute()
    # class 0: TP 2, GT 3, predicted 2 -> 2/3; class 1: TP 1, GT 2 (one missed as "no class"),
    # predicted 2 -> 1/3; class 2: zero denominator -> NaN, left out of the mean.
    assert scores["per_class_iou"][0] == pytest.approx(200 / 3)
    assert scores["per_class_iou"][1] == pytest.approx(100 / 3)
    assert math.isnan(scores["per_class_iou"][2])
    assert scores["miou"] == pytest.approx(50.0)
    assert scores["pixel_accuracy"] == pytest.approx(60.0)
    assert scores["mean_accuracy"] == pytest.approx((200 / 3 + 50) / 2)
    assert scores["num_pixels"] == 5


def test_class_predicted_but_absent_from_ground_truth_scores_zero_and_counts():
    confusion = ConfusionMatrix(3)
    confusion.update(torch.tensor([[0, 2], [1, 1]]), torch.tensor([[0, 0], [1, 1]]))
    scores = confusion.compute()
    assert scores["per_class_iou"] == pytest.approx([50.0, 100.0, 0.0])
    assert scores["miou"] == pytest.approx(50.0)


def test_updates_accumulate_and_shapes_and_labels_are_checked():
    confusion = ConfusionMatrix(2)
    for _ in range(3):
        confusion.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert confusion.matrix.tolist() == [[3, 3, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="shape"):
        confusion.update(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"\[7\]"):
        confusion.update(torch.tensor([0]), torch.tensor([7]))


def test_all_reduce_without_process_group_is_a_no_op():
    confusion = ConfusionMatrix(2)
    confusion.update(torch.tensor([1]), torch.tensor([1]))
    confusion.all_reduce()
    assert confusion.matrix.tolist() == [[0, 0, 0], [0, 1, 0]]


def test_metrics_dict_19_classes_has_the_contract_keys_and_strict_json(tmp_path):
    confusion = ConfusionMatrix(19)
    confusion.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]))
    metrics = metrics_dict(confusion.compute(), CITYSCAPES_19.class_names, {"split": "val"})
    assert {"miou", "per_class_iou", "num_classes", "pixel_accuracy", "settings"} <= set(metrics)
    assert "miou13" not in metrics
    assert list(metrics["per_class_iou"])[:3] == ["road", "sidewalk", "building"]
    assert metrics["per_class_iou"]["bicycle"] is None  # absent: null, not NaN
    json_path, markdown_path = write_metrics(metrics, tmp_path / "out")
    loaded = json.loads(json_path.read_text())  # strict JSON: would fail on NaN
    assert loaded["miou"] == pytest.approx((100 + 50 + 0) / 3)
    table = markdown_path.read_text()
    assert "| road | sidewalk | building |" in table and "mIoU19 |" in table
    assert "| 100.0 | 50.0 | 0.0 | – |" in table


def test_16_class_metrics_report_miou13_from_the_same_per_class_ious():
    k = 16
    # A diagonal-ish matrix: class c gets c+1 correct pixels and one pixel predicted as (c+1) % K.
    labels, predictions = [], []
    for c in range(k):
        labels += [c] * (c + 2)
        predictions += [c] * (c + 1) + [(c + 1) % k]
    confusion = ConfusionMatrix(k)
    confusion.update(torch.tensor(predictions), torch.tensor(labels))
    metrics = metrics_dict(confusion.compute(), CITYSCAPES_16.class_names, {})
    ious = metrics["per_class_iou"]
    assert metrics["miou"] == pytest.approx(sum(ious.values()) / 16)
    assert metrics["miou13"] == pytest.approx(sum(ious[name] for name in SYNTHIA_13_CLASS_NAMES) / 13)
    assert metrics["miou13"] != pytest.approx(metrics["miou"])


def _reduce_in_process(rank: int, world_size: int, init_file: str, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        confusion = ConfusionMatrix(2)
        # rank 0 sees one correct class-0 pixel, rank 1 one class-1 pixel predicted as class 0
        confusion.update(torch.tensor([0]), torch.tensor([rank]))
        confusion.all_reduce()
        results[rank] = confusion.matrix.tolist()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch: several seconds
def test_all_reduce_sums_over_processes(tmp_path):
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_reduce_in_process, args=(2, str(tmp_path / "init"), results), nprocs=2)
    assert results[0] == results[1] == [[1, 0, 0], [1, 0, 0]]
