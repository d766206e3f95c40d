"""Label definitions: on-disk label IDs, train IDs, class names and palettes.

Inside the package every label is a train ID in ``0..K-1`` and ``IGNORE_INDEX`` (255) marks
pixels that are not scored. Each dataset maps its on-disk IDs with a lookup table built once
from a ``LabelSet``; IDs the label set does not know are reported, never silently mapped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


@dataclass(frozen=True)
class CityscapesLabel:
    """One row of the official Cityscapes label table (cityscapesScripts ``helpers/labels.py``)."""

    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


# The official table: every label ID with its train ID (255 = void) and colour.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
    # ID -1 (license plate) cannot occur in an 8-bit label image; it is listed for completeness.
    CityscapesLabel("license plate", -1, 255, (0, 0, 142)),
)

# The SYNTHIA class IDs of SYNTHIA-RAND-CITYSCAPES (GT/LABELS, channel 0).
SYNTHIA_CLASS_NAMES: dict[int, str] = {
    0: "void",
    1: "sky",
    2: "building",
    3: "road",
    4: "sidewalk",
    5: "fence",
    6: "vegetation",
    7: "pole",
    8: "car",
    9: "traffic sign",
    10: "pedestrian",
    11: "bicycle",
    12: "motorcycle",
    13: "parking-slot",
    14: "road-work",
    15: "traffic light",
    16: "terrain",
    17: "rider",
    18: "truck",
    19: "bus",
    20: "train",
    21: "wall",
    22: "lanemarking",
}


@dataclass(frozen=True)
class LabelSet:
    """The classes a model predicts and how one on-disk ID space maps onto them.

    Args:
        name: short identifier, e.g. ``"cityscapes19"``.
        class_names: one name per train ID.
        palette: one RGB colour per train ID.
        id_to_train_id: every on-disk ID this label set knows, mapped to a train ID or to
            ``IGNORE_INDEX`` for void IDs. IDs missing here are *unknown*.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    id_to_train_id: dict[int, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def lookup_table(self, size: int = 256) -> np.ndarray:
        """``lut[id]`` is the train ID of on-disk ``id``; unknown IDs map to ``IGNORE_INDEX``.

        Use ``known_ids_mask`` to find unknown IDs before mapping: they must be reported.
        """
        lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
        for label_id, train_id in self.id_to_train_id.items():
            if 0 <= label_id < size:
                lut[label_id] = train_id
        return lut

    def known_ids_mask(self, size: int = 256) -> np.ndarray:
        """Boolean table: ``known[id]`` is True for every ID this label set defines."""
        known = np.zeros(size, dtype=bool)
        for label_id in self.id_to_train_id:
            if 0 <= label_id < size:
                known[label_id] = True
        return known

    def train_id_to_cityscapes_id(self) -> np.ndarray:
        """``table[train_id]`` is the Cityscapes label ID of that class (for the test server)."""
        table = np.zeros(256, dtype=np.uint8)
        for train_id, class_name in enumerate(self.class_names):
            table[train_id] = _CITYSCAPES_ID_BY_NAME[class_name]
        return table


_CITYSCAPES_ID_BY_NAME = {label.name: label.id for label in CITYSCAPES_LABELS if label.train_id != 255}

CITYSCAPES_19 = LabelSet(
    name="cityscapes19",
    class_names=tuple(
        label.name for label in sorted(CITYSCAPES_LABELS, key=lambda x: x.train_id) if label.train_id != 255
    ),
    palette=tuple(
        label.color for label in sorted(CITYSCAPES_LABELS, key=lambda x: x.train_id) if label.train_id != 255
    ),
    id_to_train_id={label.id: label.train_id for label in CITYSCAPES_LABELS if label.id >= 0},
)

# The 16 classes shared by SYNTHIA and Cityscapes, as FADA/CRA index them (contiguous 0..15).
_SYNTHIA16_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "sky",
    "person",
    "rider",
    "car",
    "bus",
    "motorcycle",
    "bicycle",
)
_CITYSCAPES_TRAIN_ID_BY_NAME = {label.name: label.train_id for label in CITYSCAPES_LABELS}


def _train_id_16(train_id_19: int) -> int:
    """The 16-class train ID of a 19-class one; terrain, truck, train and void become void."""
    if train_id_19 == IGNORE_INDEX:
        return IGNORE_INDEX
    name = CITYSCAPES_19.class_names[train_id_19]
    return _SYNTHIA16_CLASSES.index(name) if name in _SYNTHIA16_CLASSES else IGNORE_INDEX


# Cityscapes label IDs scored in the 16-class setting; terrain, truck and train become void.
CITYSCAPES_16 = LabelSet(
    name="cityscapes16",
    class_names=_SYNTHIA16_CLASSES,
    palette=tuple(CITYSCAPES_19.palette[_CITYSCAPES_TRAIN_ID_BY_NAME[n]] for n in _SYNTHIA16_CLASSES),
    id_to_train_id={label_id: _train_id_16(train_id) for label_id, train_id in CITYSCAPES_19.id_to_train_id.items()},
)

# SYNTHIA IDs mapped onto the 19 Cityscapes train IDs (the mapping common in the literature).
SYNTHIA_19 = LabelSet(
    name="synthia19",
    class_names=CITYSCAPES_19.class_names,
    palette=CITYSCAPES_19.palette,
    id_to_train_id={
        3: 0,
        4: 1,
        2: 2,
        21: 3,
        5: 4,
        7: 5,
        15: 6,
        9: 7,
        6: 8,
        16: 9,
        1: 10,
        10: 11,
        17: 12,
        8: 13,
        18: 14,
        19: 15,
        20: 16,
        12: 17,
        11: 18,
        0: 255,
        13: 255,
        14: 255,
        22: 255,
    },
)

# SYNTHIA IDs in the 16-class setting: the 19-class mapping without terrain, truck and train.
SYNTHIA_16 = LabelSet(
    name="synthia16",
    class_names=_SYNTHIA16_CLASSES,
    palette=CITYSCAPES_16.palette,
    id_to_train_id={synthia_id: _train_id_16(train_id) for synthia_id, train_id in SYNTHIA_19.id_to_train_id.items()},
)

# The 13-class subset reported for SYNTHIA (mIoU13): the 16 classes without wall, fence, pole.
SYNTHIA_13_CLASS_NAMES = tuple(n for n in _SYNTHIA16_CLASSES if n not in ("wall", "fence", "pole"))


def label_set_for(num_classes: int) -> LabelSet:
    """The Cityscapes-side label set a model with ``num_classes`` outputs predicts."""
    if num_classes == 19:
        return CITYSCAPES_19
    if num_classes == 16:
        return CITYSCAPES_16
    raise ValueError(f"no label set with {num_classes} classes; supported: 19 (Cityscapes), 16 (SYNTHIA)")
