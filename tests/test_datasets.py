import logging

import numpy as np
import pytest
import torch
from fixtures import (
    write_cityscapes,
    write_folder,
    write_gta5,
    write_label_png,
    write_synscapes,
    write_synthia,
    write_synthia_label,
)
from PIL import Image

from crossregion.config.schema import DatasetSpec
from crossregion.data.datasets import DATASETS, build_dataset
from crossregion.data.labels import CITYSCAPES_19, SYNTHIA_16, SYNTHIA_19
from crossregion.data.transforms import train_transform


def test_registry_lists_every_dataset():
    assert DATASETS.names() == ["cityscapes", "folder", "gta5", "synscapes", "synthia"]
    with pytest.raises(KeyError, match="available: cityscapes, folder, gta5"):
        build_dataset("gtav", "x")


def test_gta5_sample_follows_contract(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=3, size=(8, 12))
    dataset = build_dataset("gta5", root, "all")
    assert len(dataset) == 3 and dataset.names == ["00001", "00002", "00003"]
    assert dataset.num_classes == 19 and dataset.class_names[0] == "road"
    sample = dataset[1]
    assert set(sample) == {"image", "mask", "name", "index"}
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 8, 12)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (8, 12)
    assert sample["name"] == "00002" and sample["index"] == 1
    raw = dataset.load_raw_label(1)
    expected = CITYSCAPES_19.lookup_table()[raw]
    assert np.array_equal(sample["mask"].numpy(), expected)
    assert np.array_equal(dataset.load_label(1), expected)
    assert np.array_equal(np.array(dataset.load_image(1)), np.array(Image.open(root / "images" / "00002.png")))


def test_transform_is_applied(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=1, size=(16, 24))
    dataset = build_dataset(
        "gta5",
        root,
        "train",
        transform=train_transform(
            DatasetSpec(name="gta5", root=str(root), crop=(8, 8), flip=True), input_norm="imagenet"
        ),
    )
    sample = dataset[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 8, 8)
    assert sample["mask"].shape == (8, 8)


def test_unlabelled_sample_has_no_mask_key(tmp_path):
    root = write_cityscapes(tmp_path / "cs", splits=("train",))
    dataset = build_dataset("cityscapes", root, "train", labelled=False)
    assert "mask" not in dataset[0]
    root = write_gta5(tmp_path / "gta5", n=1)
    assert "mask" not in build_dataset("gta5", root, "all", labelled=False)[0]


def test_cityscapes_splits_and_names(tmp_path):
    root = write_cityscapes(tmp_path / "cs", splits=("train", "val", "test"), cities=("aachen", "bremen"), per_city=2)
    val = build_dataset("cityscapes", root, "val")
    assert val.names == [
        "aachen/aachen_000000_000000",
        "aachen/aachen_000000_000001",
        "bremen/bremen_000000_000000",
        "bremen/bremen_000000_000001",
    ]
    assert val.label_paths[0].name == "aachen_000000_000000_gtFine_labelIds.png"
    test = build_dataset("cityscapes", root, "test", labelled=False)
    assert len(test) == 4 and "mask" not in test[0]
    with pytest.raises(ValueError, match="test split .* has no public labels"):
        build_dataset("cityscapes", root, "test")
    with pytest.raises(ValueError, match="split must be one of"):
        build_dataset("cityscapes", root, "training")
    sixteen = build_dataset("cityscapes", root, "val", num_classes=16)
    assert set(np.unique(sixteen.load_label(0))) <= set(range(16)) | {255}


def test_synthia_reads_16_bit_channel_0(tmp_path):
    root = write_synthia(tmp_path / "synthia", n=2, size=(6, 10))
    dataset = build_dataset("synthia", root, "all", num_classes=16)
    raw = dataset.load_raw_label(0)
    assert raw.dtype == np.uint16 and raw.shape == (6, 10) and raw.max() <= 22
    assert dataset.label_set is SYNTHIA_16
    assert np.array_equal(dataset[0]["mask"].numpy(), SYNTHIA_16.lookup_table(65536)[raw])
    assert build_dataset("synthia", root, "all", num_classes=19).label_set is SYNTHIA_19
    with pytest.raises(ValueError, match="16 or 19"):
        build_dataset("synthia", root, "all", num_classes=13)


def test_synscapes_layout(tmp_path):
    root = write_synscapes(tmp_path / "syn", n=2)
    dataset = build_dataset("synscapes", root, "all")
    assert dataset.names == ["1", "2"] and dataset[0]["mask"].max() <= 255


def test_folder_identity_and_id_map(tmp_path):
    root = write_folder(tmp_path / "mine", n=2, label_ids=(0, 1, 2, 255))
    identity = build_dataset("folder", root, "all")
    raw = identity.load_raw_label(0)
    assert np.array_equal(identity.load_label(0), raw)
    id_map = tmp_path / "ids.yaml"
    id_map.write_text("0: 2\n1: 255\n2: 0\n255: 255\n")
    mapped = build_dataset("folder", root, "all", id_map=id_map)
    expected = np.vectorize({0: 2, 1: 255, 2: 0, 255: 255}.get)(raw)
    assert set(np.unique(raw)) == {0, 1, 2, 255} and np.array_equal(mapped.load_label(0), expected)
    json_map = tmp_path / "ids.json"
    json_map.write_text('{"0": 1}')
    with pytest.raises(ValueError, match=r"unknown to label set 'folder19': \[1, 2, 255\]"):
        build_dataset("folder", root, "all", id_map=json_map).load_label(0)
    bad_map = tmp_path / "bad.yaml"
    bad_map.write_text("3: 40\n")
    with pytest.raises(ValueError, match="bad.yaml: ID 3 maps to 40"):
        build_dataset("folder", root, "all", id_map=bad_map)
    with pytest.raises(ValueError, match="only used by the 'folder' dataset"):
        build_dataset("gta5", write_gta5(tmp_path / "g", n=1), "all", id_map=id_map)


def test_list_file_split(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=4)
    list_file = tmp_path / "list.txt"
    list_file.write_text("00003.png\n00001.png\n")
    assert build_dataset("gta5", root, str(list_file)).names == ["00003", "00001"]
    list_file.write_text("00009.png\n")
    with pytest.raises(FileNotFoundError, match="list.txt names 1 file"):
        build_dataset("gta5", root, str(list_file))
    with pytest.raises(FileNotFoundError, match="neither one of"):
        build_dataset("gta5", root, "val")


def test_missing_root_and_folder_show_expected_tree(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist. Expected layout:\n<root>/\n  images/"):
        build_dataset("gta5", tmp_path / "nowhere", "all")
    root = write_gta5(tmp_path / "gta5", n=1)
    for label in (root / "labels").iterdir():
        label.unlink()
    (root / "labels").rmdir()
    with pytest.raises(FileNotFoundError, match=r"labels does not exist. Expected layout"):
        build_dataset("gta5", root, "all")
    with pytest.raises(FileNotFoundError, match="leftImg8bit/<city>|gtFine"):
        build_dataset("cityscapes", write_cityscapes(tmp_path / "cs", splits=("train",)), "val")


def test_missing_label_file_is_named(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=2)
    (root / "labels" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match="00002.png"):
        build_dataset("gta5", root, "all")


def test_corrupt_image_names_the_file(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=2)
    (root / "images" / "00002.png").write_bytes(b"not a png at all")
    dataset = build_dataset("gta5", root, "all")
    dataset[0]
    with pytest.raises(ValueError, match=r"cannot read image .*00002.png"):
        dataset[1]


def test_unknown_ids_raise_with_file_and_ids(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=1, size=(4, 4))
    label = np.full((4, 4), 7, dtype=np.uint8)
    label[0, 0], label[1, 1] = 40, 200
    write_label_png(root / "labels" / "00001.png", label, palettised=True)
    with pytest.raises(ValueError, match=r"00001.png holds IDs unknown to label set 'cityscapes19': \[40, 200\]"):
        build_dataset("gta5", root, "all")[0]
    synthia = write_synthia(tmp_path / "synthia", n=1, size=(4, 4))
    write_synthia_label(synthia / "GT" / "LABELS" / "0000000.png", np.full((4, 4), 23, dtype=np.uint16))
    with pytest.raises(ValueError, match=r"unknown to label set 'synthia16': \[23\]"):
        build_dataset("synthia", synthia, "all", num_classes=16).load_label(0)


def test_size_mismatch_resizes_label_and_warns_once(tmp_path, caplog):
    root = write_gta5(tmp_path / "gta5", n=1, size=(8, 12))
    write_label_png(root / "labels" / "00001.png", np.full((4, 6), 7, dtype=np.uint8), palettised=True)
    dataset = build_dataset("gta5", root, "all")
    with caplog.at_level(logging.WARNING):
        first, second = dataset[0], dataset[0]
    assert first["mask"].shape == (8, 12) and (first["mask"] == 0).all()
    assert torch.equal(first["mask"], second["mask"])
    warnings = [r for r in caplog.records if "resizing the label" in r.getMessage()]
    assert len(warnings) == 1 and "00001.png" in warnings[0].getMessage()


def test_corrupt_or_colour_label_names_the_file(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=2)
    (root / "labels" / "00001.png").write_bytes(b"\x89PNG broken")
    Image.new("RGB", (12, 8)).save(root / "labels" / "00002.png")
    dataset = build_dataset("gta5", root, "all")
    with pytest.raises(ValueError, match=r"cannot read label .*00001.png"):
        dataset.load_label(0)
    with pytest.raises(ValueError, match=r"00002.png: expected a single-channel label image, got mode 'RGB'"):
        dataset[1]


def test_small_split_is_decoded_once_and_large_split_read_every_time(tmp_path, monkeypatch):
    from crossregion.data import datasets

    root = write_gta5(tmp_path / "gta5", n=3, size=(8, 12))
    dataset = build_dataset("gta5", root, "all")
    first = dataset[2]
    # Overwrite the files on disk: a cached split keeps serving what it decoded.
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(dataset.image_paths[2])
    again = dataset[2]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert again["mask"] is not first["mask"]  # a training transform may change its sample in place

    monkeypatch.setattr(datasets, "DECODED_CACHE_BYTES", 100)  # 3 samples of 8x12x4 bytes do not fit
    uncached = build_dataset("gta5", root, "all")
    assert int(uncached[2]["image"].sum()) == 0
    Image.fromarray(np.full((8, 12, 3), 7, np.uint8)).save(dataset.image_paths[2])
    assert int(uncached[2]["image"].max()) == 7
