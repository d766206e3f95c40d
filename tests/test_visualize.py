"""Colour maps, overlays, entropy rendering and the Fig. 3 panel writer."""

import numpy as np
import pytest
import torch
from PIL import Image

from crossregion.data.labels import CITYSCAPES_19
from crossregion.eval.visualize import (
    ENTROPY_COLOURS,
    UNSCORED_COLOUR,
    colorize,
    overlay,
    render_entropy,
    render_trusted,
    write_panel,
)


def test_colorize_uses_the_official_palette_and_blacks_out_ignore():
    ids = torch.tensor([[0, 10], [255, 18]])
    rgb = colorize(ids, CITYSCAPES_19.palette)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 0]) == (128, 64, 128)  # road
    assert tuple(rgb[0, 1]) == (70, 130, 180)  # sky, the official value (FADA's palette differs)
    assert tuple(rgb[1, 0]) == (0, 0, 0)
    assert tuple(rgb[1, 1]) == (119, 11, 32)  # bicycle


def test_overlay_blends_and_checks_sizes():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    colour = np.full((2, 2, 3), 200, dtype=np.uint8)
    assert (overlay(image, colour, alpha=0.25) == 125).all()
    assert (overlay(torch.from_numpy(image).permute(2, 0, 1), colour, alpha=1.0) == 200).all()
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, np.zeros((3, 2, 3), dtype=np.uint8))


def test_render_entropy_is_monotone_and_marks_ignore():
    entropy = torch.tensor([[0.0, 0.5, 1.0, -1.0]])
    rgb = render_entropy(entropy, vmax=1.0)
    assert tuple(rgb[0, 0]) == tuple(ENTROPY_COLOURS[0])
    assert tuple(rgb[0, 2]) == tuple(ENTROPY_COLOURS[255])
    assert tuple(rgb[0, 3]) == UNSCORED_COLOUR
    brightness = ENTROPY_COLOURS.astype(int).sum(1)
    assert (np.diff(brightness) >= -2).all()  # lighter as entropy grows: readable in grey scale
    # default vmax: the largest valid value reaches the top of the colour map
    assert tuple(render_entropy(np.array([[0.0, 0.2]]))[0, 1]) == tuple(ENTROPY_COLOURS[255])


def test_render_trusted():
    rgb = render_trusted(np.array([[True, False, True]]), scored=np.array([[True, True, False]]))
    assert [tuple(p) for p in rgb[0]] == [(255, 255, 255), (0, 0, 0), UNSCORED_COLOUR]


def test_write_panel_lays_out_rows_and_titled_columns(tmp_path):
    rng = np.random.default_rng(0)
    titles = ["image", "prediction A", "trusted / untrusted", "prediction B", "ground truth"]
    rows = 2
    columns = [(title, [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(rows)]) for title in titles]
    columns[1] = (
        titles[1],
        [np.zeros((10, 15, 3), dtype=np.uint8)] * rows,
    )  # resized to the row's size
    path = write_panel(tmp_path / "fig" / "panel.png", columns, gap=4)
    panel = np.asarray(Image.open(path))
    assert panel.shape[1] == 5 * 30 + 6 * 4
    assert panel.shape[0] > rows * 20 + rows * 4  # plus a title strip
    title_strip = panel[: panel.shape[0] - rows * 24]
    assert (title_strip < 128).any()  # the titles are drawn
    top = panel.shape[0] - rows * 24
    np.testing.assert_array_equal(panel[top : top + 20, 4:34], columns[0][1][0])
    assert (panel[top : top + 20, 38:68] == 0).all()
    with pytest.raises(ValueError, match="same, non-zero number"):
        write_panel(tmp_path / "bad.png", [("a", [columns[0][1][0]]), ("b", [])])
