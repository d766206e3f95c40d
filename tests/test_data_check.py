import numpy as np
from fixtures import write_cityscapes, write_gta5, write_label_png, write_synthia
from PIL import Image

from crossregion.cli import main as cli_main
from crossregion.data.check import check_dataset


def test_clean_gta5_is_usable_and_histogram_counts_every_pixel(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=3, size=(4, 5), label_ids=(7, 26, 0))  # road, car, void
    report = check_dataset("gta5", root, "all")
    assert report.usable and report.num_images == 3 and report.num_labels == 3
    assert report.pixel_counts.sum() + report.ignore_pixels == 3 * 4 * 5
    labels = [np.array(Image.open(p)) for p in sorted((root / "labels").iterdir())]
    assert report.pixel_counts[0] == sum(int((label == 7).sum()) for label in labels)
    assert report.pixel_counts[13] == sum(int((label == 26).sum()) for label in labels)
    text = report.format()
    assert "road" in text and "summary: usable" in text


def test_problems_are_reported(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=4, size=(4, 6), label_ids=(7,))
    (root / "images" / "00002.png").write_bytes(b"garbage")
    bad_label = np.full((4, 6), 7, dtype=np.uint8)
    bad_label[0, :2] = 99
    write_label_png(root / "labels" / "00003.png", bad_label, palettised=True)
    write_label_png(root / "labels" / "00004.png", np.full((2, 3), 7, dtype=np.uint8), palettised=True)
    report = check_dataset("gta5", root, "all")
    assert not report.usable
    assert len(report.unreadable) == 1 and "00002.png" in report.unreadable[0]
    assert report.unknown_id_pixels == {99: 2} and report.files_with_unknown_ids[0].endswith("00003.png")
    assert report.size_mismatches == ["00004: image 6x4, label 3x2"]
    text = report.format()
    assert "unknown label IDs (not in label set cityscapes19): 99 (2 px)" in text
    assert "NOT usable: 1 unreadable file(s); 1 label(s) with unknown IDs" in text


def test_size_mismatch_alone_keeps_dataset_usable(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=1, size=(4, 6))
    write_label_png(root / "labels" / "00001.png", np.full((2, 3), 7, dtype=np.uint8), palettised=True)
    report = check_dataset("gta5", root, "all")
    assert report.usable and report.size_mismatches


def test_cityscapes_test_split_is_checked_without_labels(tmp_path):
    root = write_cityscapes(tmp_path / "cs", splits=("test",))
    report = check_dataset("cityscapes", root, "test")
    assert report.usable and not report.labelled and report.num_images == 4


def test_synthia_16_histogram(tmp_path):
    root = write_synthia(tmp_path / "synthia", n=2, size=(4, 4), label_ids=(3, 8, 16))  # road, car, terrain
    report = check_dataset("synthia", root, "all", num_classes=16)
    assert report.usable and len(report.class_names) == 16
    assert report.pixel_counts[0] + report.pixel_counts[12] + report.ignore_pixels == 32
    assert report.pixel_counts[[i for i in range(16) if i not in (0, 12)]].sum() == 0


def test_cli_exit_status_and_layout_error(tmp_path, capsys):
    root = write_cityscapes(tmp_path / "cs", splits=("val",))
    assert cli_main(["data", "check", "--dataset", "cityscapes", "--root", str(root), "--split", "val"]) == 0
    assert "summary: usable" in capsys.readouterr().out
    assert cli_main(["data", "check", "--dataset", "gta5", "--root", str(tmp_path / "missing")]) == 1
    out = capsys.readouterr().out
    assert "layout: FAILED" in out and "Expected layout:" in out and "images/00001.png" in out
