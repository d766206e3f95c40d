import numpy as np
import pytest
from cityscapesscripts.helpers import labels as official

from crossregion.data.labels import (
    CITYSCAPES_16,
    CITYSCAPES_19,
    IGNORE_INDEX,
    SYNTHIA_13_CLASS_NAMES,
    SYNTHIA_16,
    SYNTHIA_19,
    label_set_for,
)

# docs/spec.md §5.4, 16-class table: (index, class, SYNTHIA id, Cityscapes label ID, 19-class train ID).
SPEC_SYNTHIA_16 = [
    (0, "road", 3, 7, 0),
    (1, "sidewalk", 4, 8, 1),
    (2, "building", 2, 11, 2),
    (3, "wall", 21, 12, 3),
    (4, "fence", 5, 13, 4),
    (5, "pole", 7, 17, 5),
    (6, "traffic light", 15, 19, 6),
    (7, "traffic sign", 9, 20, 7),
    (8, "vegetation", 6, 21, 8),
    (9, "sky", 1, 23, 10),
    (10, "person", 10, 24, 11),
    (11, "rider", 17, 25, 12),
    (12, "car", 8, 26, 13),
    (13, "bus", 19, 28, 15),
    (14, "motorcycle", 12, 32, 17),
    (15, "bicycle", 11, 33, 18),
]


def test_cityscapes_19_matches_cityscapesscripts_for_every_id():
    official_ids = [label for label in official.labels if label.id >= 0]
    lut = CITYSCAPES_19.lookup_table()
    known = CITYSCAPES_19.known_ids_mask()
    for label in official_ids:
        expected = label.trainId if label.trainId not in (-1, 255) else IGNORE_INDEX
        assert lut[label.id] == expected, label.name
        assert known[label.id]
    assert set(CITYSCAPES_19.id_to_train_id) == {label.id for label in official_ids}
    for train_id, name in enumerate(CITYSCAPES_19.class_names):
        assert official.trainId2label[train_id].name == name
        assert tuple(official.trainId2label[train_id].color) == CITYSCAPES_19.palette[train_id]
    assert not known[34:].any()  # IDs outside the official table are unknown, not void


def test_synthia_16_matches_spec():
    lut = SYNTHIA_16.lookup_table()
    for index, name, synthia_id, cityscapes_id, train_id_19 in SPEC_SYNTHIA_16:
        assert SYNTHIA_16.class_names[index] == name
        assert lut[synthia_id] == index
        assert CITYSCAPES_16.lookup_table()[cityscapes_id] == index
        assert SYNTHIA_19.lookup_table()[synthia_id] == train_id_19
    mapped = {synthia_id for _, _, synthia_id, _, _ in SPEC_SYNTHIA_16}
    for synthia_id in set(SYNTHIA_16.id_to_train_id) - mapped:  # 0, 13, 14, 16, 18, 20, 22
        assert lut[synthia_id] == IGNORE_INDEX
    for void_cityscapes_id in (22, 27, 31):  # terrain, truck, train are void in the 16-class setting
        assert CITYSCAPES_16.lookup_table()[void_cityscapes_id] == IGNORE_INDEX
    assert SYNTHIA_13_CLASS_NAMES == tuple(
        name for _, name, *_ in SPEC_SYNTHIA_16 if name not in ("wall", "fence", "pole")
    )


def test_synthia_19_matches_spec():
    expected = {
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
    }
    assert SYNTHIA_19.id_to_train_id == expected


def test_label_set_for():
    assert label_set_for(19) is CITYSCAPES_19 and label_set_for(16) is CITYSCAPES_16
    with pytest.raises(ValueError, match="supported: 19"):
        label_set_for(7)


def test_lookup_table_on_a_label_image():
    raw = np.array([[7, 8, 0], [33, 26, 1]], dtype=np.uint8)
    assert CITYSCAPES_19.lookup_table()[raw].tolist() == [[0, 1, 255], [18, 13, 255]]
