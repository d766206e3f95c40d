"""Street geometry: a pinhole camera over a flat ground plane, and the canvas scenes are drawn on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from crossregion.synth.label_ids import ID
from crossregion.synth.spec import Rgb

# Nearest depth (metres) anything is drawn at; ground strips start here.
NEAR_Z = 0.8
FAR_Z = 400.0


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at height ``height_m`` looking along +Z over a flat ground plane."""

    focal: float
    centre_x: float
    horizon_y: float
    height_m: float

    def project(self, x, y, z) -> np.ndarray:
        """World points (metres; X right, Y up, Z forward) to pixel coordinates.

        Shape:
            - x, y, z: broadcastable arrays
            - output: (..., 2) as (column, row)
        """
        z = np.maximum(np.asarray(z, dtype=np.float64), NEAR_Z)
        column = self.centre_x + self.focal * np.asarray(x) / z
        row = self.horizon_y + self.focal * (self.height_m - np.asarray(y)) / z
        return np.stack(np.broadcast_arrays(column, row), axis=-1)


class Canvas:
    """A label canvas (Cityscapes label IDs), an image canvas and a cast-shadow mask, drawn together."""

    def __init__(self, height: int, width: int, camera: Camera, sky_colour: Rgb):
        self.camera = camera
        self.labels = Image.new("L", (width, height), ID["sky"])
        self.image = Image.new("RGB", (width, height), sky_colour)
        self.shadow = Image.new("L", (width, height), 0)
        self._labels = ImageDraw.Draw(self.labels)
        self._image = ImageDraw.Draw(self.image)
        self._shadow = ImageDraw.Draw(self.shadow)

    def polygon(self, points, label: int | None, colour: Rgb) -> None:
        """Fill a pixel polygon; ``label=None`` paints the image only (a detail of the same class)."""
        flat = np.asarray(points, dtype=np.float64).ravel().tolist()
        self._fill(flat, label, colour)

    def _fill(self, flat: list[float], label: int | None, colour: Rgb) -> None:
        if label is not None:
            self._labels.polygon(flat, fill=label)
        self._image.polygon(flat, fill=colour)

    def quad(self, corners_world, label: int | None, colour: Rgb) -> None:
        """Fill the projection of a planar world quad given as four (x, y, z) corners.

        Plain Python arithmetic: for four points it is ~10x faster than NumPy, and scenes
        draw thousands of quads (windows, fence posts).
        """
        camera = self.camera
        flat = []
        for x, y, z in corners_world:
            z = max(z, NEAR_Z)
            flat += (
                camera.centre_x + camera.focal * x / z,
                camera.horizon_y + camera.focal * (camera.height_m - y) / z,
            )
        self._fill(flat, label, colour)

    def ellipse(self, x, y, z, radius_x, radius_y, label: int | None, colour: Rgb, ring: float = 0.0):
        """An upright ellipse (or a ring of width ``ring`` metres) facing the camera at depth z."""
        centre = self.camera.project(x, y, z)
        half_w = self.camera.focal * radius_x / max(z, NEAR_Z)
        half_h = self.camera.focal * radius_y / max(z, NEAR_Z)
        box = [centre[0] - half_w, centre[1] - half_h, centre[0] + half_w, centre[1] + half_h]
        width = max(1, round(self.camera.focal * ring / max(z, NEAR_Z))) if ring else 0
        if label is not None:
            self._labels.ellipse(box, fill=None if ring else label, outline=label if ring else None, width=width or 1)
        self._image.ellipse(box, fill=None if ring else colour, outline=colour if ring else None, width=width or 1)

    def box(self, x0, x1, y0, y1, z0, z1, label: int, colour: Rgb, top_colour: Rgb, side_colour: Rgb):
        """An axis-aligned box: its visible faces (back, inner side, top) in three shades."""
        cam_h = self.camera.height_m
        self.quad([(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)], label, colour)
        if x0 > 0:
            self.quad([(x0, y0, z0), (x0, y0, z1), (x0, y1, z1), (x0, y1, z0)], label, side_colour)
        if x1 < 0:
            self.quad([(x1, y0, z0), (x1, y0, z1), (x1, y1, z1), (x1, y1, z0)], label, side_colour)
        if y1 < cam_h:
            self.quad([(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)], label, top_colour)

    def ground_shadow(self, corners_world) -> None:
        """Mark a ground-plane quad as shadowed (used by the photographed domain only)."""
        corners = np.asarray(corners_world, dtype=np.float64)
        pixels = self.camera.project(corners[:, 0], corners[:, 1], corners[:, 2])
        self._shadow.polygon(pixels.ravel().tolist(), fill=255)


def shade(colour: Rgb, factor: float) -> Rgb:
    """``colour`` scaled by ``factor``, clipped to 0..255."""
    return tuple(int(min(255, max(0, round(c * factor)))) for c in colour)
