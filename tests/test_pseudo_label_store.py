"""The pseudo-label store: size, mask agreement, resume, statistics and bad-input errors."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossregion.data.labels import CITYSCAPES_19
from crossregion.data.pseudo_labels import (
    EntropyCodec,
    PseudoLabelStore,
    PseudoLabelWriter,
    decode_entropy_png,
    encode_entropy_png,
)
from crossregion.trust import normalized_entropy

OFFICIAL_NPY_BYTES = 8_388_736  # float32 1×1×1024×2048 .npy of the official code


def realistic_maps(seed, num_classes=19, height=1024, width=2048, stride=8):
    """Pseudo label and entropy as the official pipeline makes them: stride-8 logits of a
    mostly confident segmentation, upsampled bilinearly (align_corners=True), then softmax."""
    generator = torch.Generator().manual_seed(seed)
    low_height, low_width = height // stride, width // stride
    num_cells = 40
    centres = torch.rand(num_cells, 2, generator=generator) * torch.tensor([low_height, low_width])
    cell_class = torch.randint(0, num_classes, (num_cells,), generator=generator)
    margin = 6 + 8 * torch.rand(num_cells, generator=generator)
    margin[torch.rand(num_cells, generator=generator) < 0.05] = 2.0  # a few unsure regions
    rows, cols = torch.meshgrid(torch.arange(low_height).float(), torch.arange(low_width).float(), indexing="ij")
    distance = (rows[None] - centres[:, 0, None, None]) ** 2 + (cols[None] - centres[:, 1, None, None]) ** 2
    cell = distance.argmin(0)
    logits = 0.6 * torch.randn(1, num_classes, low_height, low_width, generator=generator)
    logits.scatter_add_(1, cell_class[cell][None, None], margin[cell][None, None])
    probs = torch.softmax(F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True), dim=1)
    return probs.argmax(1)[0].to(torch.uint8).numpy(), normalized_entropy(probs)[0].numpy()


def manifest(names, num_classes=19, **overrides):
    settings = {
        "num_classes": num_classes,
        "class_names": list(CITYSCAPES_19.class_names[:num_classes]),
        "palette": [list(c) for c in CITYSCAPES_19.palette[:num_classes]],
        "dataset": "cityscapes",
        "split": "train",
        "root": "/data/cityscapes",
        "names": list(names),
        "checkpoint": {"path": "cda.pth", "sha256": "0" * 64},
        "input_size": [1024, 512],
        "flip": False,
        "threshold": 0.01,
        "rare_share": 0.01,
        "rare_factor": 0.5,
    }
    settings.update(overrides)
    return settings


def test_size_ratio_and_mask_agreement_on_full_resolution_maps(tmp_path):
    pseudo_label, entropy = realistic_maps(0)
    writer = PseudoLabelWriter(tmp_path / "store", manifest(["city/a"]))
    writer.write("city/a", pseudo_label, entropy)
    stored_bytes = sum(p.stat().st_size for p in (tmp_path / "store").rglob("*.png") if "city" in str(p))
    assert OFFICIAL_NPY_BYTES / stored_bytes >= 20, stored_bytes
    loaded_label, decoded = PseudoLabelStore(tmp_path / "store").load("city/a")
    assert np.array_equal(loaded_label, pseudo_label)
    assert decoded.dtype == np.float32 and decoded.shape == (1024, 2048)
    for threshold in np.linspace(0.005, 0.05, 10):
        for effective in (threshold, threshold / 0.5):  # common and rare classes
            agreement = ((entropy <= effective) == (decoded <= effective)).mean()
            assert agreement >= 0.999, (threshold, effective, agreement)


def test_codec_is_monotone_and_exact_in_coarse_order():
    codec = EntropyCodec(19)
    entropy = np.linspace(0, 1 / 19, 5000, dtype=np.float32)[None]
    decoded = decode_entropy_png(codec, encode_entropy_png(codec, entropy), "test")
    assert np.all(np.diff(decoded[0]) >= 0)
    fine = entropy[0] >= 0.004
    assert np.max(np.abs(decoded[0, fine] / entropy[0, fine] - 1)) < 0.002


def write_small_store(path, names, interrupt_after=None, seed=0, **overrides):
    writer = PseudoLabelWriter(path, manifest(names, num_classes=4, **overrides))
    generator = np.random.default_rng(seed)
    for count, name in enumerate(writer.pending_names()):
        if interrupt_after is not None and count == interrupt_after:
            return writer
        pseudo_label = generator.integers(0, 4, (8, 12)).astype(np.uint8)
        entropy = (generator.random((8, 12)) / 4).astype(np.float32)
        writer.write(name, pseudo_label, entropy)
    return writer


def test_resume_after_interruption(tmp_path):
    names = ["a", "b", "c", "d"]
    write_small_store(tmp_path, names, interrupt_after=2)
    first_label = (tmp_path / "labels" / "a.png").stat().st_mtime_ns
    writer = PseudoLabelWriter(tmp_path, manifest(names, num_classes=4))
    assert writer.pending_names() == ["c", "d"]
    with pytest.raises(ValueError, match="not stored yet"):
        writer.finish()
    resumed = write_small_store(tmp_path, names)
    assert (tmp_path / "labels" / "a.png").stat().st_mtime_ns == first_label
    stats = resumed.finish()
    assert stats["num_images"] == 4 and stats["num_pixels"] == 4 * 8 * 12
    assert not list(tmp_path.rglob(".*.tmp*"))


def test_stats_match_a_direct_computation(tmp_path):
    names = ["a", "b"]
    writer = write_small_store(tmp_path, names)
    stats = writer.finish()
    store = PseudoLabelStore(tmp_path)
    labels, entropies = zip(*(store.load(n) for n in names))
    counts = np.bincount(np.concatenate([label.ravel() for label in labels]), minlength=4)
    assert store.class_pixel_counts == counts.tolist()
    assert sum(stats["entropy_histogram"]["counts"]) == counts.sum()
    assert (tmp_path / "entropy_histogram.png").stat().st_size > 0
    assert json.loads((tmp_path / "stats.json").read_text())["rare_class_ids"] == stats["rare_class_ids"]
    assert 0.0 <= stats["trusted_fraction"] <= 1.0


def test_resume_with_other_settings_is_refused(tmp_path):
    write_small_store(tmp_path, ["a"])
    with pytest.raises(ValueError, match="other settings.*threshold"):
        PseudoLabelWriter(tmp_path, manifest(["a"], num_classes=4, threshold=0.02))


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pseudo-label store"):
        PseudoLabelStore(tmp_path / "missing")
    write_small_store(tmp_path, ["a", "b"], interrupt_after=1)
    store = PseudoLabelStore(tmp_path)
    with pytest.raises(ValueError, match="incomplete"):
        store.check_compatible(num_classes=4)
    write_small_store(tmp_path, ["a", "b"]).finish()
    store = PseudoLabelStore(tmp_path)
    store.check_compatible(num_classes=4, dataset="cityscapes", split="train", names=["a"], threshold=0.01)
    with pytest.raises(ValueError, match="4-class model.*19 classes"):
        store.check_compatible(num_classes=19)
    with pytest.raises(ValueError, match="lacks 1 of 2 images"):
        store.check_compatible(names=["a", "zurich/x"])
    with pytest.raises(ValueError, match="split 'train', not 'val'"):
        store.check_compatible(split="val")
    with pytest.raises(ValueError, match="dataset 'cityscapes'"):
        store.check_compatible(dataset="gta5")
    with pytest.raises(ValueError, match=r"outside \(0, 1/K\]"):
        store.check_compatible(threshold=0.3)
    with pytest.raises(FileNotFoundError, match="no labels"):
        store.load("nope")


def test_pseudo_label_command_end_to_end_and_resume(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures import write_cityscapes

    from crossregion.cli import main as cli_main
    from crossregion.models import build_segmenter
    from crossregion.models.checkpoint_io import export_official

    root = write_cityscapes(tmp_path / "cs", splits=("train",), per_city=2, size=(16, 24), seed=3)
    torch.manual_seed(0)
    segmenter = build_segmenter("resnet18", 19)
    export_official(segmenter, tmp_path / "cda.pth")
    command = [
        "pseudo-label",
        "--checkpoint",
        str(tmp_path / "cda.pth"),
        "--dataset",
        "cityscapes",
        "--root",
        str(root),
        "--output",
        str(tmp_path / "store"),
        "--input-size",
        "16",
        "8",
        "--device",
        "cpu",
        "--workers",
        "0",
    ]
    assert cli_main(command) == 0
    store = PseudoLabelStore(tmp_path / "store")
    assert store.num_classes == 19 and len(store.names) == 4
    pseudo_label, entropy = store.load(store.names[0])
    assert pseudo_label.shape == entropy.shape == (16, 24)  # the original image size, not the input size
    assert store.stats["num_pixels"] == 4 * 16 * 24
    # Interrupted run: drop one image's completion marker; the rerun redoes only that image.
    marker = tmp_path / "store" / "image_stats" / f"{store.names[1]}.json"
    marker.unlink()
    untouched = (tmp_path / "store" / "labels" / f"{store.names[0]}.png").stat().st_mtime_ns
    assert cli_main(command) == 0
    assert marker.exists()
    assert (tmp_path / "store" / "labels" / f"{store.names[0]}.png").stat().st_mtime_ns == untouched
    assert cli_main(command + ["--flip"]) == 2
    assert "other settings" in capsys.readouterr().err
