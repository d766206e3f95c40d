"""Target-train images with their pseudo label and entropy from a pseudo-label store.

The dataset of CRA, its Table-3 baselines and self-distillation. A sample is the unlabelled
target sample (``image``, ``name``, ``index``, never a ``mask``) plus ``pseudo_mask`` (int64
train IDs) and ``entropy`` (float32 normalised entropy), all three augmented jointly by one
transform: geometric transforms move the maps with the image, padding gives pseudo label 255
and entropy -1 (neither trusted nor untrusted), photometric ones touch the image only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from crossregion.data.datasets import SegmentationDataset
from crossregion.data.pseudo_labels import PseudoLabelStore

Sample = dict[str, object]


class PseudoLabelledDataset(torch.utils.data.Dataset):
    """An unlabelled target dataset joined, by image name, with a pseudo-label store.

    Args:
        images: the target split, built with ``labelled=False`` and no transform.
        store: a finished pseudo-label store of that split.
        transform: applied to the joined sample (image uint8, maps at the image's size).

    Raises:
        ValueError: ``images`` carries ground truth, has a transform of its own, or has images
            the store lacks.
    """

    def __init__(
        self, images: SegmentationDataset, store: PseudoLabelStore, transform: Callable[[Sample], Sample] | None = None
    ) -> None:
        if images.labelled:
            raise ValueError(
                "the pseudo-labelled dataset must be built on an unlabelled split (labelled=False): "
                "target ground truth never reaches a training step"
            )
        if images.transform is not None:
            raise ValueError(
                "build the target images without a transform: the pseudo-labelled dataset "
                "augments image, pseudo label and entropy jointly"
            )
        store.check_compatible(names=images.names)
        self.images = images
        self.store = store
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        sample = self.images[index]
        name = sample["name"]
        pseudo_label, entropy = self.store.load(name)
        image_size = tuple(sample["image"].shape[-2:])
        if pseudo_label.shape != image_size:
            raise ValueError(
                f"pseudo-label store {self.store.path}: maps of {name!r} are {pseudo_label.shape[0]}×"
                f"{pseudo_label.shape[1]} but the image is {image_size[0]}×{image_size[1]}; the store was "
                "made from other images — remake it with `crossregion pseudo-label` on this dataset"
            )
        sample["pseudo_mask"] = torch.from_numpy(pseudo_label.astype(np.int64))
        sample["entropy"] = torch.from_numpy(np.ascontiguousarray(entropy, dtype=np.float32))
        return self.transform(sample) if self.transform is not None else sample
