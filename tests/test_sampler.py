import numpy as np
import pytest
import torch
from fixtures import write_gta5

from crossregion.data.datasets import build_dataset
from crossregion.data.sampler import ClassBalancedSampler, compute_class_presence


def rare_class_presence():
    """20 images: class 0 in all, class 1 in 18, class 2 (rare) in image 7 only."""
    presence = np.zeros((20, 3), dtype=bool)
    presence[:, 0] = True
    presence[:18, 1] = True
    presence[7, 2] = True
    return presence


def test_sampler_favours_rare_classes():
    torch.manual_seed(0)
    sampler = ClassBalancedSampler(rare_class_presence(), num_samples=600, sub_epoch_size=300)
    draws = list(sampler)
    assert len(draws) == len(sampler) == 600 and set(draws) <= set(range(20))
    # Uniform sampling would draw image 7 about 600/20 = 30 times; balancing draws it far more.
    assert draws.count(7) > 100
    # Images 18 and 19 lack class 1, so class-1 draws never pick them: they are the least drawn.
    assert draws.count(18) + draws.count(19) < draws.count(0) + draws.count(1)


def test_sampler_is_reproducible_and_rounds_up_to_sub_epochs():
    presence = rare_class_presence()
    first = list(ClassBalancedSampler(presence, 250, sub_epoch_size=100, generator=torch.Generator().manual_seed(1)))
    second = list(ClassBalancedSampler(presence, 250, sub_epoch_size=100, generator=torch.Generator().manual_seed(1)))
    assert first == second and len(first) == 300


def test_sampler_rejects_empty_presence():
    with pytest.raises(ValueError, match="no class in any image"):
        ClassBalancedSampler(np.zeros((3, 19), dtype=bool), 10)


def test_class_presence_from_labels_and_cache(tmp_path):
    root = write_gta5(tmp_path / "gta5", n=3, size=(4, 4), label_ids=(7, 8, 26))  # road, sidewalk, car
    dataset = build_dataset("gta5", root, "all")
    cache = tmp_path / "presence.json"
    presence = compute_class_presence(dataset, cache)
    assert presence.shape == (3, 19) and cache.is_file()
    for index in range(3):
        assert np.flatnonzero(presence[index]).tolist() == np.unique(dataset.load_label(index)).tolist()
    (root / "labels" / "00001.png").write_bytes(b"broken")  # a cache hit never reads labels again
    assert np.array_equal(compute_class_presence(dataset, cache), presence)
