"""The synthetic benchmark generator: layouts, label IDs, determinism, domain gap, loaders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image

from crossregion import cli
from crossregion.data.labels import CITYSCAPES_19, SYNTHIA_CLASS_NAMES
from crossregion.synth import benchmark as synth
from crossregion.synth.label_ids import ID
from crossregion.synth.layouts import CITYSCAPES_ID_TO_SYNTHIA_ID, TRAIN_CITIES, cityscapes_stem
from crossregion.synth.render import render_sample

HEIGHT, WIDTH = 48, 96
VOID_IDS = {0, 1, 4, 6, 9}
ID_ROAD = 7


def _generate(out_dir: Path, layout: str = "gta5") -> None:
    synth.generate_benchmark(
        out_dir,
        source_images=3,
        target_train_images=4,
        target_val_images=2,
        height=HEIGHT,
        width=WIDTH,
        seed=0,
        source_layout=layout,
    )


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("synth")
    _generate(out_dir)
    return out_dir


def test_gta5_and_cityscapes_layouts_use_official_names(benchmark_dir):
    names = set(_all_files(benchmark_dir))
    for index in ("00001", "00002", "00003"):
        assert f"gta5/images/{index}.png" in names
        assert f"gta5/labels/{index}.png" in names
    train_cities = {p.name for p in (benchmark_dir / "cityscapes/leftImg8bit/train").iterdir()}
    val_cities = {p.name for p in (benchmark_dir / "cityscapes/leftImg8bit/val").iterdir()}
    assert train_cities and val_cities and not train_cities & val_cities
    stem = cityscapes_stem(TRAIN_CITIES[0], 0)
    assert stem == f"{TRAIN_CITIES[0]}_000000_000019"
    city = TRAIN_CITIES[0]
    assert f"cityscapes/leftImg8bit/train/{city}/{stem}_leftImg8bit.png" in names
    assert f"cityscapes/gtFine/train/{city}/{stem}_gtFine_labelIds.png" in names
    image_count = sum(n.endswith("_leftImg8bit.png") for n in names)
    label_count = sum(n.endswith("_gtFine_labelIds.png") for n in names)
    assert image_count == label_count == 6
    summary = json.loads((benchmark_dir / "synth.json").read_text())
    assert summary["generator_version"] == synth.GENERATOR_VERSION
    assert summary["source_images"] == 3 and summary["seed"] == 0


def test_labels_are_label_ids_with_some_void(benchmark_dir):
    gta5_label = Image.open(benchmark_dir / "gta5/labels/00001.png")
    assert gta5_label.mode == "P" and gta5_label.size == (WIDTH, HEIGHT)
    assert gta5_label.getpalette()[3 * 7 : 3 * 8] == [128, 64, 128]  # road in the Cityscapes palette
    city_labels = sorted((benchmark_dir / "cityscapes/gtFine").rglob("*_gtFine_labelIds.png"))
    ids = set()
    for path in city_labels:
        label = Image.open(path)
        assert label.mode == "L" and label.size == (WIDTH, HEIGHT)
        ids |= set(np.unique(np.asarray(label)).tolist())
    ids |= set(np.unique(np.asarray(gta5_label)).tolist())
    assert ID_ROAD in ids  # label ID 7, not train ID 0
    assert ids <= set(range(34))
    assert ids & VOID_IDS


def test_all_19_classes_appear_in_a_small_set():
    lut = CITYSCAPES_19.lookup_table()
    present = np.zeros(256, dtype=bool)
    for domain in ("source", "target"):
        for index in range(24):
            _, labels = render_sample(0, domain, "train", index, HEIGHT * 2, WIDTH * 2)
            present[np.unique(lut[labels])] = True
    missing = [name for train_id, name in enumerate(CITYSCAPES_19.class_names) if not present[train_id]]
    assert not missing


def test_second_run_is_byte_identical(benchmark_dir, tmp_path):
    _generate(tmp_path)
    assert _all_files(tmp_path) == _all_files(benchmark_dir)


# sha256 of the files two small benchmarks consist of (see _output_digest), one per source layout,
# as generator version OUTPUT_DIGESTS_VERSION writes them.
OUTPUT_DIGESTS_VERSION = 2
OUTPUT_DIGESTS = {
    (80, 160, 0, "gta5"): "bc08b6e85f5042e51726d5f54914adce037eaa0893a7c6b0f5a87aac54d232f8",
    (96, 192, 7, "synthia"): "923fc7aaf4bc4a78b5846f6fa080b115446bfe841a1d192515a95f323961b048",
}


def _output_digest(root: Path) -> str:
    """sha256 over the sorted relative paths and bytes of every file but synth.json, which also
    records the package version."""
    digest = hashlib.sha256()
    for name, data in _all_files(root).items():
        if name != synth.SUMMARY_FILE:
            digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


@pytest.mark.parametrize("height, width, seed, layout", list(OUTPUT_DIGESTS))
def test_output_is_fixed_for_the_generator_version(tmp_path, height, width, seed, layout):
    """The generator writes the same bytes as when GENERATOR_VERSION was set: a change of these
    digests needs a GENERATOR_VERSION bump (and new digests here)."""
    assert synth.GENERATOR_VERSION == OUTPUT_DIGESTS_VERSION, "new generator version: record its digests"
    synth.generate_benchmark(
        tmp_path,
        source_images=6,
        target_train_images=4,
        target_val_images=3,
        height=height,
        width=width,
        seed=seed,
        source_layout=layout,
    )
    assert _output_digest(tmp_path) == OUTPUT_DIGESTS[height, width, seed, layout]


def test_target_colours_differ_from_source_for_the_same_class():
    """Mean colour of each large class differs between domains by a clear margin."""
    sums = {domain: {} for domain in ("source", "target")}
    for domain in sums:
        for index in range(6):
            image, labels = render_sample(1, domain, "train", index, HEIGHT, WIDTH)
            for name in ("road", "sidewalk", "building", "vegetation", "sky"):
                mask = labels == ID[name]
                sums[domain].setdefault(name, []).append(image[mask].astype(np.float64))
    for name in ("road", "sidewalk", "building", "vegetation", "sky"):
        source_mean = np.concatenate(sums["source"][name]).mean(axis=0)
        target_mean = np.concatenate(sums["target"][name]).mean(axis=0)
        assert np.abs(source_mean - target_mean).max() > 20, name
    # Photographed target pixels vary within a class; rendered source pixels are flat.
    image, labels = render_sample(1, "target", "train", 0, HEIGHT, WIDTH)
    road = image[labels == ID["road"]].astype(np.float64)
    assert road.std(axis=0).mean() > 3


def test_synthia_layout_labels_decode_to_synthia_ids_in_channel_0(tmp_path):
    _generate(tmp_path, layout="synthia")
    assert (tmp_path / "synthia/RGB/0000000.png").is_file()
    label_path = tmp_path / "synthia/GT/LABELS/0000000.png"
    width, height, rows, info = png.Reader(filename=str(label_path)).read()
    assert info["bitdepth"] == 16 and info["planes"] == 3 and (width, height) == (WIDTH, HEIGHT)
    channels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, 3)
    ids = set(np.unique(channels[..., 0]).tolist())
    assert ids <= set(SYNTHIA_CLASS_NAMES)
    assert 3 in ids  # road is SYNTHIA ID 3
    # Channel 0 equals the Cityscapes rendering mapped through the SYNTHIA table.
    _, labels = render_sample(0, "source", "train", 0, HEIGHT, WIDTH)
    expected = np.vectorize(lambda i: CITYSCAPES_ID_TO_SYNTHIA_ID.get(i, 0))(labels)
    assert np.array_equal(channels[..., 0], expected)
    assert not (tmp_path / "gta5").exists()


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="--source-layout"):
        synth.generate_benchmark(
            tmp_path,
            source_images=1,
            target_train_images=1,
            target_val_images=1,
            height=32,
            width=64,
            seed=0,
            source_layout="carla",
        )
    with pytest.raises(ValueError, match="--target-val-images"):
        synth.generate_benchmark(
            tmp_path, source_images=1, target_train_images=1, target_val_images=-1, height=32, width=64, seed=0
        )


def test_cli_writes_data_that_data_check_accepts(tmp_path, capsys):
    out_dir = tmp_path / "bench"
    status = cli.main(
        [
            "data",
            "synth",
            str(out_dir),
            "--source-images",
            "2",
            "--target-train-images",
            "3",
            "--target-val-images",
            "2",
            "--height",
            str(HEIGHT),
            "--width",
            str(WIDTH),
            "--seed",
            "0",
        ]
    )
    assert status == 0
    assert cli.main(["data", "check", "--dataset", "gta5", "--root", str(out_dir / "gta5")]) == 0
    assert (
        cli.main(["data", "check", "--dataset", "cityscapes", "--root", str(out_dir / "cityscapes"), "--split", "val"])
        == 0
    )
    # "--split=train" as one token: cli.build_parser treats a bare "train" token as the train command.
    assert (
        cli.main(["data", "check", "--dataset", "cityscapes", "--root", str(out_dir / "cityscapes"), "--split=train"])
        == 0
    )


def test_synthia_layout_passes_data_check(tmp_path):
    _generate(tmp_path, layout="synthia")
    assert (
        cli.main(["data", "check", "--dataset", "synthia", "--root", str(tmp_path / "synthia"), "--num-classes", "16"])
        == 0
    )
