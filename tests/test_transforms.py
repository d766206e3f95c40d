import pytest
import torch

from crossregion.config.schema import INPUT_NORMS, DatasetSpec
from crossregion.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_NORM_STATS,
    ColorJitter,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    eval_transform,
    normalize_for,
    train_transform,
)


def striped_sample(height=16, width=24, column=5):
    """Image, mask and entropy with one vertical stripe at ``column``, and a marker key."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[:, :, column] = 200
    mask = torch.zeros(height, width, dtype=torch.int64)
    mask[:, column] = 7
    pseudo_mask = mask.clone()
    entropy = torch.zeros(height, width, dtype=torch.float32)
    entropy[:, column] = 0.5
    return {"image": image, "mask": mask, "pseudo_mask": pseudo_mask, "entropy": entropy, "name": "a", "index": 3}


def stripe_columns(sample):
    """Columns where image, mask, pseudo mask and entropy show the stripe."""
    return (
        set((sample["image"][0] > 100).any(0).nonzero().flatten().tolist()),
        set((sample["mask"] == 7).any(0).nonzero().flatten().tolist()),
        set((sample["pseudo_mask"] == 7).any(0).nonzero().flatten().tolist()),
        set((sample["entropy"] > 0.25).any(0).nonzero().flatten().tolist()),
    )


def test_flip_moves_every_map_together():
    torch.manual_seed(0)
    out = RandomHorizontalFlip(p=1.0)(striped_sample(width=24, column=5))
    assert all(columns == {18} for columns in stripe_columns(out))
    assert out["name"] == "a" and out["index"] == 3
    unflipped = RandomHorizontalFlip(p=0.0)(striped_sample(column=5))
    assert all(columns == {5} for columns in stripe_columns(unflipped))


def test_crop_keeps_alignment_and_dtypes():
    for seed in range(5):
        torch.manual_seed(seed)
        out = RandomCrop(8, 12)(striped_sample(height=16, width=24, column=10))
        assert out["image"].shape == (3, 8, 12) and out["mask"].shape == (8, 12)
        image_cols, mask_cols, pseudo_cols, entropy_cols = stripe_columns(out)
        assert image_cols == mask_cols == pseudo_cols == entropy_cols
        assert out["mask"].dtype == torch.int64 and out["entropy"].dtype == torch.float32


def test_crop_pads_with_ignore_values():
    torch.manual_seed(0)
    out = RandomCrop(20, 30, float_ignore=-1.0)(striped_sample(height=16, width=24))
    assert out["image"].shape == (3, 20, 30)
    assert (out["image"][:, 16:, :] == 0).all() and (out["image"][:, :, 24:] == 0).all()
    assert (out["mask"][16:, :] == 255).all() and (out["mask"][:, 24:] == 255).all()
    assert (out["pseudo_mask"][:, 24:] == 255).all()
    assert (out["entropy"][16:, :] == -1.0).all() and (out["entropy"][:, 24:] == -1.0).all()
    assert set(out["mask"][:16, :24].unique().tolist()) == {0, 7}


def test_random_scale_keeps_alignment_and_label_values():
    torch.manual_seed(1)
    out = RandomScale(2.0, 2.0)(striped_sample(height=16, width=24, column=5))
    assert out["image"].shape == (3, 32, 48) and out["mask"].shape == (32, 48)
    assert set(out["mask"].unique().tolist()) <= {0, 7}  # nearest: no new label values
    image_cols, mask_cols, pseudo_cols, entropy_cols = stripe_columns(out)
    assert mask_cols == pseudo_cols == {10, 11}
    assert mask_cols <= image_cols and mask_cols <= entropy_cols


def test_resize_and_eval_transform():
    out = Resize(8, 12)(striped_sample(height=16, width=24, column=10))
    assert out["mask"].shape == (8, 12) and out["entropy"].shape == (8, 12)
    assert stripe_columns(out)[1] == {5}
    evaluated = eval_transform(size=(8, 12), input_norm="imagenet")(striped_sample(height=16, width=24))
    assert evaluated["image"].shape == (3, 8, 12) and evaluated["image"].dtype == torch.float32
    assert evaluated["mask"].shape == (16, 24)  # scored at full label resolution
    with pytest.raises(ValueError, match="image_interpolation"):
        Resize(8, 12, image_interpolation="lanczos")


def test_color_jitter_touches_image_only():
    torch.manual_seed(0)
    sample = striped_sample()
    sample["image"] = torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8)
    out = ColorJitter(0.5, 0.5, 0.5, 0.2)(sample)
    assert not torch.equal(out["image"], sample["image"]) and out["image"].dtype == torch.uint8
    assert torch.equal(out["mask"], sample["mask"]) and torch.equal(out["entropy"], sample["entropy"])


def test_normalize_converts_uint8():
    sample = {"image": torch.full((3, 2, 2), 255, dtype=torch.uint8)}
    out = Normalize()(sample)
    expected = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out["image"][:, 0, 0], expected)


def test_each_input_norm_has_its_scaling():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    imagenet = normalize_for("imagenet")({"image": pixels})["image"][:, 0, 0]
    unit = normalize_for("unit")({"image": pixels})["image"][:, 0, 0]
    torch.testing.assert_close(unit, torch.tensor([0.0, 0.2, 1.0]))  # ProDA: RGB / 255, nothing else
    torch.testing.assert_close(
        imagenet, (torch.tensor([0.0, 0.2, 1.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    )
    assert tuple(INPUT_NORM_STATS) == INPUT_NORMS
    spec = DatasetSpec(name="gta5", root="unused")
    torch.testing.assert_close(train_transform(spec, input_norm="unit")({"image": pixels})["image"][:, 0, 0], unit)
    torch.testing.assert_close(eval_transform(input_norm="unit")({"image": pixels})["image"][:, 0, 0], unit)
    with pytest.raises(ValueError, match="unknown input normalisation 'caffe'"):
        normalize_for("caffe")


def test_train_preset_output_and_determinism():
    spec = DatasetSpec(
        name="gta5", root="unused", crop=(8, 12), scale_range=(0.5, 1.5), flip=True, color_jitter=(0.5, 0.5, 0.5, 0.2)
    )
    preset = train_transform(spec, input_norm="imagenet")
    # The official CRA order: jitter on the whole image first, normalisation last.
    assert [type(step).__name__ for step in preset.transforms] == [
        "ColorJitter",
        "RandomScale",
        "RandomCrop",
        "RandomHorizontalFlip",
        "Normalize",
    ]
    torch.manual_seed(3)
    first = preset(striped_sample())
    torch.manual_seed(3)
    second = preset(striped_sample())
    assert first["image"].shape == (3, 8, 12) and first["image"].dtype == torch.float32
    assert first["mask"].dtype == torch.int64 and set(first["mask"].unique().tolist()) <= {0, 7, 255}
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])
