"""The embedded synthetic benchmark: a GTA5-like source and a Cityscapes-like target.

``crossregion data synth OUT_DIR ...`` renders street scenes with a pinhole camera over a
flat ground plane (road converging to a vanishing point, sidewalks with curbs, facades,
walls, fences, greenery, poles with lights and signs, people, riders, vehicles), drawn back
to front so nearer objects occlude farther ones. Both domains share the scene grammar, so
shape and layout carry the same information in both; they differ in appearance. The source is
rendered: saturated colours drawn per image around a base palette (domain randomisation, with
skies from blue to overcast and cars of many colours), and surface texture at 0.8 of the
target's amplitude. The target is photographed: the source's hues at half their saturation,
value-noise texture, uneven light, cast shadows, haze that grows toward the horizon with a
strength drawn per image (so far regions of some images are uncertain next to clear
foregrounds), blur, noise and JPEG; and it has its own class frequencies and object scales
(longer focal length, lower camera, more greenery and people).

Generator version 2 sized the scene for a stride-8 segmenter at 80x160 to 128x256: thin objects
(poles, signs, lights, people, two-wheelers) are drawn wider than life and no farther than
OBJECT_FAR_Z, and trains, trucks, buses and two-wheelers appear often enough for every one of
the 19 classes to be learnable from a few hundred images (docs/benchmarks.md measures the
oracle and the domain gap this gives).

Files use the official layouts (``docs/architecture.md``), so the demo runs through the
same loaders as real data:

    OUT_DIR/gta5/images/00001.png, OUT_DIR/gta5/labels/00001.png   (P-mode, label IDs)
    OUT_DIR/synthia/RGB/0000000.png, OUT_DIR/synthia/GT/LABELS/0000000.png  (16-bit, ch 0)
    OUT_DIR/cityscapes/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
    OUT_DIR/cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png
    OUT_DIR/synth.json

Every image has its own ``numpy`` Generator seeded from (seed, domain, split, index), and
PNG/JPEG encoder settings are fixed, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import png
from PIL import Image, ImageDraw, ImageFilter

from crossregion import __version__
from crossregion.data.labels import CITYSCAPES_LABELS
from crossregion.files import (
    check_output_folder,
    is_temp_file,
    remove_stale_temp_files,
    write_bytes_atomically,
    write_text_atomically,
)

logger = logging.getLogger(__name__)

SUMMARY_FILE = "synth.json"
# Written before the first image and removed after synth.json: a folder holding it is a run that
# was interrupted, and may be continued by the same arguments.
RUNNING_FILE = ".synth-running.json"
# The arguments of generate_benchmark, as synth.json records them.
ARGUMENT_KEYS = (
    "source_layout",
    "source_images",
    "target_train_images",
    "target_val_images",
    "height",
    "width",
    "seed",
)

# Bump when the rendering changes, so stale benchmarks can be told apart (written to synth.json).
GENERATOR_VERSION = 2

SOURCE_LAYOUTS = ("gta5", "synthia")
# The benchmark `crossregion data synth` writes by default, and the one the demo and the accuracy
# benchmarks run on (their presets are sized for it: docs/benchmarks.md).
DEFAULT_ARGUMENTS = {
    "source_images": 1000,
    "target_train_images": 500,
    "target_val_images": 200,
    "height": 80,
    "width": 160,
    "seed": 0,
}
# Fictional cities; train and val cities are disjoint, as in Cityscapes.
TRAIN_CITIES = ("aldport", "brenvik", "corstadt")
VAL_CITIES = ("dunmere", "elsburg")
# Cityscapes annotates frame 19 of each 30-frame snippet; the file names keep that convention.
ANNOTATED_FRAME = 19

# Fixed encoder settings: part of the byte-identical guarantee.
PNG_COMPRESS_LEVEL = 6

ID = {label.name: label.id for label in CITYSCAPES_LABELS if label.id >= 0}

# Cityscapes label ID -> SYNTHIA class ID (GT/LABELS channel 0); void IDs -> 0, parking -> 13.
CITYSCAPES_ID_TO_SYNTHIA_ID = {
    ID["road"]: 3,
    ID["sidewalk"]: 4,
    ID["building"]: 2,
    ID["wall"]: 21,
    ID["fence"]: 5,
    ID["pole"]: 7,
    ID["traffic light"]: 15,
    ID["traffic sign"]: 9,
    ID["vegetation"]: 6,
    ID["terrain"]: 16,
    ID["sky"]: 1,
    ID["person"]: 10,
    ID["rider"]: 17,
    ID["car"]: 8,
    ID["truck"]: 18,
    ID["bus"]: 19,
    ID["train"]: 20,
    ID["motorcycle"]: 12,
    ID["bicycle"]: 11,
    ID["parking"]: 13,
}

# Thin objects are drawn wider than life and no farther than OBJECT_FAR_Z, so that each of the
# 19 classes covers whole cells of a stride-8 segmenter at the benchmark's 96x192 to 128x256
# (life-size poles and signs are narrower than one output cell: unlearnable, so they would only
# pull the oracle and every method's mIoU down without telling them apart).
POLE_HALF_WIDTH = (0.16, 0.26)
SIGN_RADIUS = 0.6
LIGHT_SIZE = (0.55, 1.4)  # width, height (metres)
FIGURE_WIDTH = 1.6  # persons and riders: width multiplier at life height
TWO_WHEELER_SCALE = 1.4
OBJECT_FAR_Z = 28.0

OVERCAST_SKY = (205, 210, 215)

# Nearest depth (metres) anything is drawn at; ground strips start here.
NEAR_Z = 0.8
FAR_Z = 400.0
Rgb = tuple[int, int, int]


@dataclass(frozen=True)
class DomainStyle:
    """Scene statistics and appearance of one domain.

    Ranges are ``(low, high)`` for a uniform draw per image; rates are Poisson means per image.
    """

    name: str
    focal: tuple[float, float]  # focal length / image width
    horizon: tuple[float, float]  # horizon row / image height
    camera_height: tuple[float, float]  # metres
    road_half_width: tuple[float, float]
    sidewalk_width: tuple[float, float]
    segment_kinds: tuple[str, ...]  # roadside segment kinds and their probabilities
    segment_probs: tuple[float, ...]
    building_height: tuple[float, float]
    trees: float
    cars: float
    trucks: float
    buses: float
    train_prob: float
    persons: float
    two_wheelers: float
    poles: float
    palette: dict[str, Rgb]  # class name -> base colour
    palette_jitter: float  # per-image colour jitter (0..255 units)
    vehicle_colours: tuple[Rgb, ...]
    photographic: bool
    ego_vehicle: bool
    haze: tuple[float, float] = (0.0, 0.0)  # photographed only: per-image haze strength at the horizon
    overcast: tuple[float, float] = (0.0, 0.0)  # per-image blend of the sky toward OVERCAST_SKY
    texture: float = 0.0  # rendered only: amplitude of surface texture relative to the photographed one


SOURCE_STYLE = DomainStyle(
    name="source",
    focal=(0.75, 0.95),
    horizon=(0.40, 0.50),
    camera_height=(1.5, 1.9),
    road_half_width=(4.0, 7.5),
    sidewalk_width=(3.0, 5.5),
    segment_kinds=("building", "greenery", "wall", "fence", "open"),
    segment_probs=(0.36, 0.26, 0.13, 0.13, 0.12),
    building_height=(6.0, 24.0),
    trees=7.0,
    cars=4.0,
    trucks=1.2,
    buses=0.8,
    train_prob=0.35,
    persons=3.0,
    two_wheelers=1.6,
    poles=5.0,
    palette={
        "road": (78, 74, 96),
        "sidewalk": (214, 170, 118),
        "building": (176, 84, 64),
        "wall": (226, 214, 150),
        "fence": (150, 96, 30),
        "pole": (190, 190, 200),
        "traffic light": (40, 40, 40),
        "traffic sign": (250, 250, 250),
        "vegetation": (40, 170, 40),
        "terrain": (176, 200, 60),
        "sky": (90, 170, 250),
        "person": (200, 40, 160),
        "rider": (250, 110, 20),
        "car": (30, 60, 220),
        "truck": (240, 200, 20),
        "bus": (230, 40, 40),
        "train": (20, 200, 210),
        "motorcycle": (150, 30, 240),
        "bicycle": (250, 60, 130),
        "window": (40, 70, 140),
        "lane": (250, 250, 250),
        "curb": (240, 240, 240),
        "dark": (20, 20, 25),
        "skin": (230, 180, 140),
        "void": (120, 40, 160),
        "rail": (110, 70, 40),
    },
    # Domain randomisation, as a renderer with varied materials and weather gives: every image
    # draws its own palette around the base colours and its own sky from blue to overcast, so a
    # model trained on the source cannot key on one exact colour per class.
    palette_jitter=24.0,
    vehicle_colours=(
        (30, 60, 220),
        (20, 140, 230),
        (200, 40, 40),
        (240, 240, 240),
        (30, 30, 36),
        (40, 160, 70),
        (230, 200, 30),
    ),
    photographic=False,
    ego_vehicle=False,
    overcast=(0.0, 0.9),
    # Rendered surfaces carry texture too (as game engines draw them), at half the photographed
    # amplitude and without the camera's light, haze, blur, noise and compression.
    texture=0.8,
)


def _photographed_palette(palette: dict[str, Rgb]) -> dict[str, Rgb]:
    """The target's palette: the source's hues at half their saturation, contrast compressed.

    Classes keep their hue order (so shape, context and a faint colour cue carry over), but
    road/sidewalk, building/wall/fence, vegetation/terrain and the vehicles move close together,
    as real photographs are greyer than renderings. Sky, lane marks and glass get real-world
    colours instead.
    """
    muted = {}
    for name, colour in palette.items():
        rgb = np.asarray(colour, dtype=np.float64)
        luma = float(rgb @ (0.299, 0.587, 0.114))
        grey = 118.0 + 0.7 * (luma - 118.0)
        muted[name] = tuple(int(round(grey + (c - luma) * 0.55)) for c in rgb)
    muted.update(
        {
            "sky": (200, 208, 215),
            "lane": (200, 200, 196),
            "curb": (170, 166, 160),
            "window": (70, 76, 84),
            "dark": (35, 35, 38),
            "skin": (190, 160, 140),
        }
    )
    return muted


TARGET_STYLE = DomainStyle(
    name="target",
    focal=(0.95, 1.2),
    horizon=(0.36, 0.46),
    camera_height=(1.2, 1.5),
    road_half_width=(3.5, 6.0),
    sidewalk_width=(2.5, 4.5),
    segment_kinds=("building", "greenery", "wall", "fence", "open"),
    segment_probs=(0.42, 0.26, 0.12, 0.12, 0.08),
    building_height=(10.0, 30.0),
    trees=9.0,
    cars=6.0,
    trucks=1.0,
    buses=0.8,
    train_prob=0.3,
    persons=5.0,
    two_wheelers=1.6,
    poles=7.0,
    palette=_photographed_palette(SOURCE_STYLE.palette),
    palette_jitter=14.0,
    vehicle_colours=((90, 96, 104), (150, 150, 150), (40, 42, 48), (120, 40, 40), (200, 200, 205), (60, 70, 90)),
    photographic=True,
    ego_vehicle=True,
    haze=(0.0, 0.6),
)

DOMAIN_CODES = {"source": 0, "target": 1}
SPLIT_CODES = {"train": 0, "val": 1}

# Texture amplitude per label ID for the photographed target: (coarse fBm, fine grain).
_TEXTURE_COARSE = np.full(256, 0.06, dtype=np.float32)
_TEXTURE_FINE = np.full(256, 0.04, dtype=np.float32)
for _name, _coarse, _fine in (
    ("road", 0.10, 0.07),
    ("sidewalk", 0.08, 0.10),
    ("building", 0.14, 0.06),
    ("wall", 0.12, 0.09),
    ("fence", 0.10, 0.10),
    ("vegetation", 0.28, 0.32),
    ("terrain", 0.22, 0.26),
    ("sky", 0.08, 0.0),
    ("car", 0.03, 0.02),
    ("truck", 0.04, 0.03),
    ("bus", 0.04, 0.03),
    ("train", 0.05, 0.03),
):
    _TEXTURE_COARSE[ID[_name]] = _coarse
    _TEXTURE_FINE[ID[_name]] = _fine
# Label IDs that lie on the ground plane: cast shadows darken only these.
_GROUND_MASK = np.zeros(256, dtype=bool)
for _name in ("road", "sidewalk", "terrain", "parking", "ground", "rail track"):
    _GROUND_MASK[ID[_name]] = True


@dataclass(frozen=True)
class _Camera:
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


class _Canvas:
    """A label canvas (Cityscapes label IDs), an image canvas and a cast-shadow mask, drawn together."""

    def __init__(self, height: int, width: int, camera: _Camera, sky_colour: Rgb):
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


def _shade(colour: Rgb, factor: float) -> Rgb:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in colour)


class _SceneRenderer:
    """Draws one street scene for one domain; all randomness comes from ``rng``."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, style: DomainStyle):
        self.rng = rng
        self.style = style
        self.height = height
        self.width = width
        jitter = style.palette_jitter
        self.colours = {
            name: tuple(int(np.clip(c + rng.normal(0, jitter), 0, 255)) for c in rgb)
            for name, rgb in style.palette.items()
        }
        overcast = rng.uniform(*style.overcast)
        self.colours["sky"] = tuple(
            int(round((1 - overcast) * c + overcast * o)) for c, o in zip(self.colours["sky"], OVERCAST_SKY)
        )
        camera = _Camera(
            focal=width * rng.uniform(*style.focal),
            centre_x=width * rng.uniform(0.42, 0.58),
            horizon_y=height * rng.uniform(*style.horizon),
            height_m=rng.uniform(*style.camera_height),
        )
        self.canvas = _Canvas(height, width, camera, self.colours["sky"])
        self.road_half = rng.uniform(*style.road_half_width)
        self.sidewalk = rng.uniform(*style.sidewalk_width)
        # The sun falls from one side: that side's facades shadow the street.
        self.sun_side = float(rng.choice((-1.0, 1.0)))
        self.shadow_length = rng.uniform(3.0, 14.0)

    def colour(self, name: str, spread: float = 0.0) -> Rgb:
        base = self.colours[name]
        if not spread:
            return base
        return tuple(int(np.clip(c + self.rng.normal(0, spread), 0, 255)) for c in base)

    def render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._skyline()
        self._ground()
        structures = []
        for side in (-1.0, 1.0):
            structures += self._roadside(side)
        # Painter's algorithm: farthest first.
        for _, draw in sorted(structures, key=lambda item: -item[0]):
            draw()
        for _, draw in sorted(self._objects(), key=lambda item: -item[0]):
            draw()
        if self.style.ego_vehicle:
            self._ego_vehicle()
        c = self.canvas
        return np.asarray(c.labels), np.asarray(c.image), np.asarray(c.shadow)

    def _skyline(self) -> None:
        """Distant buildings and trees closing the street at the horizon."""
        rng, c = self.rng, self.canvas
        z = rng.uniform(120.0, 220.0)
        x = -z * 1.2
        while x < z * 1.2:
            block = rng.uniform(8.0, 30.0)
            if rng.random() < 0.25:
                c.ellipse(
                    x + block / 2,
                    rng.uniform(3, 8),
                    z,
                    block / 2,
                    rng.uniform(3, 7),
                    ID["vegetation"],
                    self.colour("vegetation", 6),
                )
            else:
                top = rng.uniform(6.0, 45.0)
                c.quad(
                    [(x, 0, z), (x + block, 0, z), (x + block, top, z), (x, top, z)],
                    ID["building"],
                    self.colour("building", 10),
                )
            x += block

    def _ground(self) -> None:
        """Verge, sidewalks with curbs, road with lane marks, parking strips, rail track."""
        rng, c = self.rng, self.canvas
        r, s = self.road_half, self.sidewalk
        below = [(-1e4, 0, NEAR_Z), (1e4, 0, NEAR_Z), (1e4, 0, FAR_Z), (-1e4, 0, FAR_Z)]
        verge = "terrain" if rng.random() < 0.6 else "ground"
        c.quad(below, ID[verge], self.colour("terrain" if verge == "terrain" else "void"))
        for side in (-1.0, 1.0):
            inner, outer = side * r, side * (r + s)
            c.quad(
                [(inner, 0, NEAR_Z), (outer, 0, NEAR_Z), (outer, 0, FAR_Z), (inner, 0, FAR_Z)],
                ID["sidewalk"],
                self.colour("sidewalk"),
            )
        c.quad([(-r, 0, NEAR_Z), (r, 0, NEAR_Z), (r, 0, FAR_Z), (-r, 0, FAR_Z)], ID["road"], self.colour("road"))
        for side in (-1.0, 1.0):
            if rng.random() < 0.3:
                z0 = rng.uniform(4.0, 30.0)
                z1 = z0 + rng.uniform(8.0, 30.0)
                edge = side * r
                c.quad(
                    [(edge - side * 2.3, 0, z0), (edge, 0, z0), (edge, 0, z1), (edge - side * 2.3, 0, z1)],
                    ID["parking"],
                    _shade(self.colour("road"), 1.15),
                )
            # Raised curb: a 15 cm face where the sidewalk meets the road, in both domains.
            edge = side * r
            c.quad(
                [(edge, 0, NEAR_Z), (edge, 0.15, NEAR_Z), (edge, 0.15, FAR_Z), (edge, 0, FAR_Z)],
                ID["sidewalk"],
                self.colour("curb"),
            )
        z = rng.uniform(2.0, 6.0)
        while z < 120.0:
            c.quad([(-0.07, 0, z), (0.07, 0, z), (0.07, 0, z + 3), (-0.07, 0, z + 3)], None, self.colour("lane"))
            z += 9.0

    def _roadside(self, side: float) -> list:
        """Segments along one side of the street, as (nearest depth, draw function) pairs."""
        rng, style = self.rng, self.style
        front = side * (self.road_half + self.sidewalk)
        items = []
        z = rng.uniform(0.0, 4.0)
        while z < 170.0:
            length = rng.uniform(8.0, 28.0)
            kind = rng.choice(style.segment_kinds, p=style.segment_probs)
            z0, z1 = z, z + length
            if kind == "building":
                setback = rng.uniform(0.0, 3.0)
                items.append((z0, self._facade_drawer(front + side * setback, z0, z1, side)))
            else:
                if rng.random() < 0.6:
                    back = front + side * rng.uniform(8.0, 20.0)
                    items.append((z0 + 1e-3, self._facade_drawer(back, z0, z1, side)))
                if kind == "greenery":
                    items.append((z0, self._lawn_drawer(front, front + side * 30.0, z0, z1)))
                    items.append((z0, self._hedge_drawer(front + side * rng.uniform(2.0, 6.0), z0, z1)))
                elif kind in ("wall", "fence"):
                    items.append((z0, self._barrier_drawer(kind, front, z0, z1)))
            z = z1
        return items

    def _facade_drawer(self, x: float, z0: float, z1: float, side: float):
        rng, c = self.rng, self.canvas
        top = rng.uniform(*self.style.building_height)
        wall_colour = self.colour("building", 10)
        floors = rng.integers(0, 2) == 0

        def draw():
            c.quad([(x, 0, z0), (x, 0, z1), (x, top, z1), (x, top, z0)], ID["building"], wall_colour)
            # The end wall faces the camera where the street opens up.
            c.quad(
                [(x, 0, z0), (x + side * 12, 0, z0), (x + side * 12, top, z0), (x, top, z0)],
                ID["building"],
                _shade(wall_colour, 0.8),
            )
            self._windows(x, z0, z1, top, floors)
            if side == self.sun_side:
                inner = x - side * self.shadow_length
                c.ground_shadow([(x, 0, z0), (inner, 0, z0), (inner, 0, z1), (x, 0, z1)])

        return draw

    def _windows(self, x: float, z0: float, z1: float, top: float, banded: bool) -> None:
        """Window grid on a facade, up to the depth where a 1.2 m window is ~1.5 pixels wide.

        A window at depth z on a facade at lateral offset x spans about focal * |x| * 1.2 / z**2
        pixels; the farther ones would cost draw calls without showing.
        """
        c = self.canvas
        z1 = min(z1, float(np.sqrt(c.camera.focal * abs(x) * 1.2 / 1.5)))
        if z1 <= z0 + 2.0:
            return
        glass = self.colour("window")
        for y in np.arange(2.0, top - 1.0, 3.2):
            if banded:
                c.quad(
                    [(x, y, z0 + 0.5), (x, y, z1 - 0.5), (x, y + 1.3, z1 - 0.5), (x, y + 1.3, z0 + 0.5)], None, glass
                )
                continue
            for z in np.arange(z0 + 1.0, z1 - 1.5, 2.6):
                c.quad([(x, y, z), (x, y, z + 1.2), (x, y + 1.5, z + 1.2), (x, y + 1.5, z)], None, glass)

    def _lawn_drawer(self, x_inner: float, x_outer: float, z0: float, z1: float):
        """Grass on the ground plane (terrain: flat, unlike upright vegetation)."""
        colour = self.colour("terrain", 8)

        def draw():
            self.canvas.quad(
                [(x_inner, 0, z0), (x_outer, 0, z0), (x_outer, 0, z1), (x_inner, 0, z1)], ID["terrain"], colour
            )

        return draw

    def _hedge_drawer(self, x: float, z0: float, z1: float):
        top = self.rng.uniform(0.8, 2.2)
        colour = self.colour("vegetation", 8)

        def draw():
            self.canvas.quad([(x, 0, z0), (x, 0, z1), (x, top, z1), (x, top, z0)], ID["vegetation"], colour)

        return draw

    def _barrier_drawer(self, kind: str, x: float, z0: float, z1: float):
        """A wall (solid, 0.8–2.5 m) or a fence (posts and rails, 1–2 m), both lower than buildings."""
        c = self.canvas
        top = self.rng.uniform(1.5, 3.5) if kind == "wall" else self.rng.uniform(1.5, 3.0)
        colour = self.colour(kind, 8)

        def draw():
            c.quad([(x, 0, z0), (x, 0, z1), (x, top, z1), (x, top, z0)], ID[kind], colour)
            if kind == "wall":
                c.quad(
                    [(x, top - 0.15, z0), (x, top - 0.15, z1), (x, top, z1), (x, top, z0)], None, _shade(colour, 1.25)
                )
                return
            dark = _shade(colour, 0.55)
            step = max(0.25, z0 / c.camera.focal * 6.0)
            for z in np.arange(z0, z1, step * 2):
                c.quad([(x, 0.1, z), (x, 0.1, z + step), (x, top - 0.2, z + step), (x, top - 0.2, z)], None, dark)

        return draw

    def _objects(self) -> list:
        """Poles, signs, lights, trees, static props, people, two-wheelers and vehicles."""
        rng, style = self.rng, self.style
        r, s = self.road_half, self.sidewalk
        items = []
        for _ in range(rng.poisson(style.poles)):
            side = float(rng.choice((-1.0, 1.0)))
            z = rng.uniform(4.0, OBJECT_FAR_Z)
            items.append((z, self._pole_drawer(side * (r + 0.4), z)))
        for _ in range(rng.poisson(style.trees)):
            side = float(rng.choice((-1.0, 1.0)))
            z = rng.uniform(5.0, 90.0)
            items.append((z, self._tree_drawer(side * (r + s * rng.uniform(0.6, 0.9)), z)))
        for _ in range(rng.poisson(1.5)):
            side = float(rng.choice((-1.0, 1.0)))
            z = rng.uniform(4.0, 50.0)
            items.append((z, self._static_drawer(side * (r + s * rng.uniform(0.3, 0.9)), z)))
        for _ in range(rng.poisson(style.persons)):
            side = float(rng.choice((-1.0, 1.0)))
            z = rng.uniform(3.5, OBJECT_FAR_Z)
            items.append((z, self._person_drawer(side * (r + s * rng.uniform(0.2, 0.9)), z)))
        for _ in range(rng.poisson(style.two_wheelers)):
            z = rng.uniform(4.0, OBJECT_FAR_Z)
            x = rng.uniform(-r + 0.5, r - 0.5) if rng.random() < 0.6 else float(rng.choice((-1, 1))) * (r + s * 0.5)
            motor = rng.random() < 0.5
            ridden = x * x < r * r or rng.random() < 0.2
            items.append((z, self._two_wheeler_drawer(x, z, motor, ridden)))
        items += self._vehicles()
        return items

    def _vehicles(self) -> list:
        rng, style = self.rng, self.style
        r = self.road_half
        kinds = (
            ["car"] * rng.poisson(style.cars)
            + ["truck"] * rng.poisson(style.trucks)
            + ["bus"] * rng.poisson(style.buses)
        )
        rng.shuffle(kinds)
        lanes = [-r * 0.5, r * 0.5, -(r - 1.1), r - 1.1]
        next_free = {lane: rng.uniform(6.0, 20.0) for lane in range(len(lanes))}
        items = []
        if rng.random() < style.train_prob:
            z0 = rng.uniform(10.0, 40.0)
            items.append((z0, self._train_drawer(z0)))
        for kind in kinds:
            lane = int(rng.integers(0, len(lanes)))
            z0 = next_free[lane] + rng.uniform(0.0, 12.0)
            if z0 > 60.0:
                continue
            length = {"car": rng.uniform(3.9, 4.8), "truck": rng.uniform(7.0, 10.0), "bus": rng.uniform(10.5, 13.0)}[
                kind
            ]
            next_free[lane] = z0 + length + 1.5
            items.append((z0, self._vehicle_drawer(kind, lanes[lane], z0, length)))
        return items

    def _pole_drawer(self, x: float, z: float):
        rng, c = self.rng, self.canvas
        top = rng.uniform(3.0, 8.0)
        half = rng.uniform(*POLE_HALF_WIDTH)
        attachment = rng.choice(("none", "light", "sign", "sign"))
        height = rng.uniform(2.0, min(top, 3.5)) + SIGN_RADIUS
        shape = rng.choice(("circle", "square", "triangle"))

        def draw():
            c.quad(
                [(x - half, 0, z), (x + half, 0, z), (x + half, top, z), (x - half, top, z)],
                ID["pole"],
                self.colour("pole"),
            )
            if attachment == "light":
                lw, lh = LIGHT_SIZE
                ly = top - lh
                c.quad(
                    [(x - lw / 2, ly, z), (x + lw / 2, ly, z), (x + lw / 2, ly + lh, z), (x - lw / 2, ly + lh, z)],
                    ID["traffic light"],
                    self.colour("traffic light"),
                )
                for k, lamp in enumerate(((230, 40, 30), (240, 180, 20), (40, 220, 80))):
                    c.ellipse(x, ly + lh * (0.8 - 0.3 * k), z - 0.01, lw * 0.25, lw * 0.25, None, lamp)
            elif attachment == "sign":
                face = self.colour("traffic sign")
                rim = (200, 30, 30) if not self.style.photographic else _shade(face, 0.7)
                radius = SIGN_RADIUS
                if shape == "circle":
                    c.ellipse(x, height, z - 0.01, radius, radius, ID["traffic sign"], rim)
                    c.ellipse(x, height, z - 0.02, radius * 0.75, radius * 0.75, None, face)
                elif shape == "square":
                    c.quad(
                        [
                            (x - radius, height - radius, z),
                            (x + radius, height - radius, z),
                            (x + radius, height + radius, z),
                            (x - radius, height + radius, z),
                        ],
                        ID["traffic sign"],
                        face,
                    )
                else:
                    c.quad(
                        [
                            (x - radius * 1.15, height - radius * 0.85, z),
                            (x + radius * 1.15, height - radius * 0.85, z),
                            (x, height + radius * 1.15, z),
                            (x, height + radius * 1.15, z),
                        ],
                        ID["traffic sign"],
                        rim,
                    )

        return draw

    def _tree_drawer(self, x: float, z: float):
        rng, c = self.rng, self.canvas
        crown_y = rng.uniform(3.5, 6.5)
        crown_r = rng.uniform(1.5, 3.2)
        lobes = [
            (rng.uniform(-0.6, 0.6) * crown_r, rng.uniform(-0.4, 0.4) * crown_r, crown_r * rng.uniform(0.6, 0.9))
            for _ in range(3)
        ]
        leaf = self.colour("vegetation", 10)

        def draw():
            c.quad(
                [(x - 0.15, 0, z), (x + 0.15, 0, z), (x + 0.15, crown_y, z), (x - 0.15, crown_y, z)],
                ID["vegetation"],
                _shade(leaf, 0.55),
            )
            for dx, dy, radius in lobes:
                c.ellipse(x + dx, crown_y + dy, z, radius, radius * 0.9, ID["vegetation"], leaf)
            c.ground_shadow(
                [
                    (x - crown_r, 0, z - crown_r),
                    (x + crown_r, 0, z - crown_r),
                    (x + crown_r, 0, z + crown_r),
                    (x - crown_r, 0, z + crown_r),
                ]
            )

        return draw

    def _static_drawer(self, x: float, z: float):
        """A bin, bench or box: Cityscapes 'static' (void), so some void pixels sit among the classes."""
        width = self.rng.uniform(0.4, 1.6)
        top = self.rng.uniform(0.5, 1.1)
        colour = self.colour("void", 10)

        def draw():
            self.canvas.quad(
                [(x - width / 2, 0, z), (x + width / 2, 0, z), (x + width / 2, top, z), (x - width / 2, top, z)],
                ID["static"],
                colour,
            )

        return draw

    def _person_drawer(self, x: float, z: float):
        rng = self.rng
        tall = rng.uniform(1.55, 1.95)
        clothes = self.colour("person", 40)
        legs = _shade(self.colour("person", 30), 0.6)
        stride = rng.uniform(0.0, 0.2)

        def draw():
            self._upright_figure(x, 0.0, z, tall, ID["person"], clothes, legs, stride)

        return draw

    def _upright_figure(self, x, base, z, tall, label, clothes, legs, stride):
        """Legs, torso and head of a standing or seated figure of height ``tall`` above ``base``."""
        c, k = self.canvas, FIGURE_WIDTH
        hip = base + tall * 0.5
        shoulder = base + tall * 0.82
        c.quad(
            [
                (x - k * (0.16 + stride), base, z),
                (x - k * 0.02, base, z),
                (x - k * 0.02, hip, z),
                (x - k * 0.17, hip, z),
            ],
            label,
            legs,
        )
        c.quad(
            [
                (x + k * 0.02, base, z),
                (x + k * (0.16 + stride), base, z),
                (x + k * 0.17, hip, z),
                (x + k * 0.02, hip, z),
            ],
            label,
            legs,
        )
        c.quad(
            [(x - k * 0.22, hip, z), (x + k * 0.22, hip, z), (x + k * 0.24, shoulder, z), (x - k * 0.24, shoulder, z)],
            label,
            clothes,
        )
        c.ellipse(x, shoulder + tall * 0.07, z, k * 0.11, tall * 0.07, label, self.colour("skin"))

    def _two_wheeler_drawer(self, x: float, z: float, motor: bool, ridden: bool):
        """A bicycle or motorcycle seen from the side (crossing), with a rider when ridden."""
        c = self.canvas
        label = ID["motorcycle"] if motor else ID["bicycle"]
        colour = self.colour("motorcycle" if motor else "bicycle", 25)
        wheel = (0.3 if motor else 0.34) * TWO_WHEELER_SCALE
        half = (0.7 if motor else 0.55) * TWO_WHEELER_SCALE
        rider_clothes = self.colour("rider", 40)

        def draw():
            for dx in (-half, half):
                if motor:
                    c.ellipse(x + dx, wheel, z, wheel, wheel, label, self.colour("dark"))
                else:
                    c.ellipse(x + dx, wheel, z, wheel, wheel, label, colour, ring=0.12)
            if motor:
                c.quad(
                    [
                        (x - half, wheel, z),
                        (x + half, wheel, z),
                        (x + half * 0.6, wheel + 0.55, z),
                        (x - half * 0.8, wheel + 0.45, z),
                    ],
                    label,
                    colour,
                )
            else:
                c.quad(
                    [
                        (x - half, wheel, z),
                        (x + half, wheel, z),
                        (x + 0.1, wheel + 0.45, z),
                        (x - 0.1, wheel + 0.45, z),
                    ],
                    label,
                    colour,
                )
            if ridden:
                seat = wheel + (0.45 if motor else 0.5)
                self._upright_figure(
                    x, seat - 0.55, z - 0.01, 1.4, ID["rider"], rider_clothes, _shade(rider_clothes, 0.6), 0.15
                )

        return draw

    def _vehicle_drawer(self, kind: str, x: float, z0: float, length: float):
        """Cars (low, with a cabin), trucks (tall cab + taller cargo box) and buses (long, window band)."""
        rng, c = self.rng, self.canvas
        label = ID[kind]
        if kind == "car":
            body = self.style.vehicle_colours[int(rng.integers(0, len(self.style.vehicle_colours)))]
            body = _shade(body, rng.uniform(0.85, 1.15))
        else:
            body = self.colour(kind, 12)
        width = {"car": rng.uniform(1.7, 1.9), "truck": 2.4, "bus": 2.5}[kind]
        x0, x1 = x - width / 2, x + width / 2
        glass = self.colour("window")
        dark = self.colour("dark")
        cabin_top = rng.uniform(1.4, 1.55)
        cab = _shade(body, 0.9) if rng.random() < 0.5 else self.colour("truck", 30)
        cargo_top = rng.uniform(3.4, 3.9)

        def shades(colour):
            return colour, _shade(colour, 1.2), _shade(colour, 0.75)

        def draw():
            if kind == "car":
                c.box(x0, x1, 0.0, 0.3, z0, z0 + length, label, *shades(dark))
                c.box(x0, x1, 0.3, 0.95, z0, z0 + length, label, *shades(body))
                cz0, cz1 = z0 + length * 0.25, z0 + length * 0.75
                c.box(x0 + 0.12, x1 - 0.12, 0.95, cabin_top, cz0, cz1, label, *shades(glass))
            elif kind == "truck":
                cargo = length - 2.4
                c.box(x0 + 0.05, x1 - 0.05, 0.0, 3.0, z0 + cargo + 0.2, z0 + length, label, *shades(cab))
                c.box(x0, x1, 0.0, 0.45, z0, z0 + cargo, label, *shades(dark))
                c.box(x0, x1, 0.45, cargo_top, z0, z0 + cargo, label, *shades(body))
            else:
                c.box(x0, x1, 0.0, 0.4, z0, z0 + length, label, *shades(dark))
                c.box(x0, x1, 0.4, 3.2, z0, z0 + length, label, *shades(body))
                c.quad(
                    [(x0 + 0.2, 1.5, z0), (x1 - 0.2, 1.5, z0), (x1 - 0.2, 2.6, z0), (x0 + 0.2, 2.6, z0)], None, glass
                )
                side_x = x0 if x0 > 0 else x1
                if x0 > 0 or x1 < 0:
                    c.quad(
                        [
                            (side_x, 1.4, z0 + 0.5),
                            (side_x, 1.4, z0 + length - 0.5),
                            (side_x, 2.6, z0 + length - 0.5),
                            (side_x, 2.6, z0 + 0.5),
                        ],
                        None,
                        glass,
                    )

        return draw

    def _train_drawer(self, z0: float):
        """A tram on rails in the middle of the road (rail track is a void class in Cityscapes)."""
        c = self.canvas
        length = self.rng.uniform(20.0, 35.0)
        body = self.colour("train", 10)

        def draw():
            c.quad(
                [(-0.9, 0, NEAR_Z), (0.9, 0, NEAR_Z), (0.9, 0, FAR_Z), (-0.9, 0, FAR_Z)],
                ID["rail track"],
                self.colour("rail"),
            )
            c.box(-1.3, 1.3, 0.0, 0.5, z0, z0 + length, ID["train"], *(self.colour("dark"),) * 3)
            c.box(-1.3, 1.3, 0.5, 3.6, z0, z0 + length, ID["train"], body, _shade(body, 1.2), _shade(body, 0.75))
            c.quad([(-1.1, 1.6, z0), (1.1, 1.6, z0), (1.1, 2.8, z0), (-1.1, 2.8, z0)], None, self.colour("window"))

        return draw

    def _ego_vehicle(self) -> None:
        """The recording car's bonnet along the bottom edge (Cityscapes 'ego vehicle', void)."""
        rise = self.height * self.rng.uniform(0.05, 0.09)
        w, h = self.width, self.height
        xs = np.linspace(0, w, 17)
        bulge = rise * (1.0 - 0.5 * ((xs - w / 2) / (w / 2)) ** 2)
        points = [(0.0, float(h))] + [(float(x), float(h - b)) for x, b in zip(xs, bulge)] + [(float(w), float(h))]
        self.canvas.polygon(np.asarray(points), ID["ego vehicle"], self.colour("dark"))


def _value_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Uniform noise on a coarse grid (``cells`` across the width), bilinearly upsampled.

    Shape:
        - output: (height, width) float32 in [-1, 1]
    """
    grid_w = max(2, cells)
    grid_h = max(2, round(cells * height / width))
    grid = rng.uniform(-1.0, 1.0, size=(grid_h, grid_w)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BILINEAR))


def _fbm(rng: np.random.Generator, height: int, width: int, base_cells: int, octaves: int) -> np.ndarray:
    """Fractional Brownian motion: value noise summed over octaves of doubling frequency.

    Shape:
        - output: (height, width) float32, roughly in [-1, 1]
    """
    total = np.zeros((height, width), dtype=np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amplitude * _value_noise(rng, height, width, base_cells * 2**octave)
        norm += amplitude
        amplitude *= 0.5
    return total / norm


def _texture_gain(labels: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel brightness gain of surface texture: value-noise fBm, coarse and fine, per class.

    Shape:
        - labels: (H, W) uint8 label IDs
        - output: (H, W) float32 around 1
    """
    height, width = labels.shape
    coarse = _fbm(rng, height, width, base_cells=6, octaves=3)
    fine = _fbm(rng, height, width, base_cells=max(8, width // 6), octaves=2)
    return 1.0 + amplitude * (_TEXTURE_COARSE[labels] * coarse + _TEXTURE_FINE[labels] * fine)


def _photograph(
    image: np.ndarray,
    labels: np.ndarray,
    shadow: np.ndarray,
    horizon_row: float,
    haze: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Turn a flat rendering into a camera-like photo: texture, light, shadows, haze, blur, noise, JPEG.

    Haze grows toward the horizon row (where things are far), with a strength drawn per image:
    distant parts of some images wash out while the foreground stays clear, so every image has
    regions a model is unsure of next to regions it is sure of.

    Shape:
        - image: (H, W, 3) uint8; labels, shadow: (H, W) uint8
        - output: (H, W, 3) uint8
    """
    height, width = labels.shape
    gain = _texture_gain(labels, 1.0, rng)
    # Uneven illumination: an exposure, a colour cast and a soft left-right gradient.
    exposure = rng.uniform(0.65, 1.25)
    cast = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32) * rng.uniform(-0.18, 0.18)
    light = exposure * (1.0 + ramp)[None, :] * gain
    in_shadow = (shadow > 0) & _GROUND_MASK[labels]
    light = np.where(in_shadow, light * rng.uniform(0.45, 0.65), light)
    photo = image.astype(np.float32) * light[..., None] * cast
    rows = np.arange(height, dtype=np.float32)[:, None, None]
    haze_weight = rng.uniform(*haze) * np.exp(-np.abs(rows - horizon_row) / (0.2 * height))
    haze_colour = np.asarray((200.0, 205.0, 212.0), dtype=np.float32) * exposure
    photo = photo * (1.0 - haze_weight) + haze_colour * haze_weight
    photo = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8))
    photo = photo.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.4, 1.0) * max(1.0, width / 256)))
    noisy = np.asarray(photo, dtype=np.float32) + rng.normal(0.0, rng.uniform(2.0, 7.0), size=(height, width, 3))
    photo = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=int(rng.integers(30, 75)), subsampling=0, optimize=False)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def render_sample(
    seed: int, domain: str, split: str, index: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Render one image and its label map; a pure function of its arguments.

    Args:
        seed: benchmark seed.
        domain: ``"source"`` (rendered look) or ``"target"`` (photographed look).
        split: ``"train"`` or ``"val"``.
        index: image index within (domain, split).
        height, width: image size in pixels.

    Returns:
        ``(image, labels)``: uint8 RGB and uint8 Cityscapes label IDs.

    Shape:
        - image: (height, width, 3)
        - labels: (height, width)
    """
    style = {"source": SOURCE_STYLE, "target": TARGET_STYLE}[domain]
    rng = np.random.default_rng([seed, DOMAIN_CODES[domain], SPLIT_CODES[split], index])
    renderer = _SceneRenderer(rng, height, width, style)
    labels, image, shadow = renderer.render()
    if not style.photographic and style.texture:
        image = np.clip(image * _texture_gain(labels, style.texture, rng)[..., None], 0, 255).astype(np.uint8)
    if style.photographic:
        image = _photograph(image, labels, shadow, renderer.canvas.camera.horizon_y, style.haze, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


_COLOURISE_LUT = np.zeros((256, 3), dtype=np.uint8)
for _label in CITYSCAPES_LABELS:
    if _label.id >= 0:
        _COLOURISE_LUT[_label.id] = _label.color


def colourise(labels: np.ndarray) -> np.ndarray:
    """Cityscapes label IDs to the official Cityscapes colours.

    Shape:
        - labels: (H, W) uint8
        - output: (H, W, 3) uint8
    """
    return _COLOURISE_LUT[labels]


def _save_png(array: np.ndarray, path: Path, palette: list[int] | None = None) -> None:
    if palette is None:
        image = Image.fromarray(array)
    else:
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    write_bytes_atomically(path, buffer.getbuffer())


def _save_synthia_label(labels: np.ndarray, path: Path) -> None:
    """16-bit 3-channel PNG: SYNTHIA class ID in channel 0, instance ID 0 in channel 1, 0 in 2."""
    lut = np.zeros(256, dtype=np.uint16)
    for cityscapes_id, synthia_id in CITYSCAPES_ID_TO_SYNTHIA_ID.items():
        lut[cityscapes_id] = synthia_id
    channels = np.zeros(labels.shape + (3,), dtype=np.uint16)
    channels[..., 0] = lut[labels]
    height, width = labels.shape
    writer = png.Writer(width=width, height=height, bitdepth=16, greyscale=False, compression=PNG_COMPRESS_LEVEL)
    buffer = io.BytesIO()
    writer.write(buffer, channels.reshape(height, width * 3))
    write_bytes_atomically(path, buffer.getbuffer())


_GTA5_PALETTE = _COLOURISE_LUT.ravel().tolist()


def cityscapes_stem(city: str, sequence: int) -> str:
    """``<city>_<seq:06d>_<frame:06d>``, the Cityscapes file stem."""
    return f"{city}_{sequence:06d}_{ANNOTATED_FRAME:06d}"


def validate_arguments(
    *,
    source_images: int,
    target_train_images: int,
    target_val_images: int,
    height: int,
    width: int,
    seed: int,
    source_layout: str,
) -> None:
    """Raise ``ValueError`` for arguments ``generate_benchmark`` cannot render, before any file is touched."""
    if source_layout not in SOURCE_LAYOUTS:
        raise ValueError(f"--source-layout must be one of {SOURCE_LAYOUTS}, got {source_layout!r}")
    for name, count in (
        ("--source-images", source_images),
        ("--target-train-images", target_train_images),
        ("--target-val-images", target_val_images),
    ):
        if count < 1:  # every split is read by the commands the benchmark is for
            raise ValueError(f"{name} must be at least 1, got {count}")
    if height < 16 or width < 16:
        raise ValueError(f"--height and --width must be at least 16 pixels, got {height}x{width}")


def generate_benchmark(
    out_dir: str | Path,
    *,
    source_images: int,
    target_train_images: int,
    target_val_images: int,
    height: int,
    width: int,
    seed: int,
    source_layout: str = "gta5",
) -> dict:
    """Write the source and target domains under ``out_dir``; returns what ``synth.json`` holds.

    Raises:
        ValueError: a count is negative, the size is too small, or the layout is unknown.
    """
    validate_arguments(
        source_images=source_images,
        target_train_images=target_train_images,
        target_val_images=target_val_images,
        height=height,
        width=width,
        seed=seed,
        source_layout=source_layout,
    )
    out_dir = Path(out_dir)
    arguments = {
        "source_layout": source_layout,
        "source_images": source_images,
        "target_train_images": target_train_images,
        "target_val_images": target_val_images,
    }
    for domain, split, index, image_path, label_path in benchmark_files(out_dir, arguments):
        image, labels = render_sample(seed, domain, split, index, height, width)
        image_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        _save_png(image, image_path)
        if domain == "target":
            _save_png(labels, label_path)
        elif source_layout == "gta5":
            _save_png(labels, label_path, palette=_GTA5_PALETTE)
        else:
            _save_synthia_label(labels, label_path)

    summary = {
        "generator_version": GENERATOR_VERSION,
        "crossregion_version": __version__,
        "source_layout": source_layout,
        "source_images": source_images,
        "target_train_images": target_train_images,
        "target_val_images": target_val_images,
        "height": height,
        "width": width,
        "seed": seed,
    }
    write_text_atomically(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def benchmark_files(out_dir: Path, arguments: dict) -> Iterator[tuple[str, str, int, Path, Path]]:
    """(domain, split, index, image path, label path) of every sample a benchmark of ``arguments``
    holds, in the order they are written: the one place that names the files."""
    layout = arguments["source_layout"]
    if layout == "gta5":
        image_dir, label_dir = out_dir / "gta5" / "images", out_dir / "gta5" / "labels"
    else:
        image_dir, label_dir = out_dir / "synthia" / "RGB", out_dir / "synthia" / "GT" / "LABELS"
    for index in range(arguments["source_images"]):
        # GTA5 numbers from 00001, SYNTHIA from 0000000.
        name = f"{index + 1:05d}.png" if layout == "gta5" else f"{index:07d}.png"
        yield "source", "train", index, image_dir / name, label_dir / name
    root = out_dir / "cityscapes"
    for split, count, cities in (
        ("train", arguments["target_train_images"], TRAIN_CITIES),
        ("val", arguments["target_val_images"], VAL_CITIES),
    ):
        for index in range(count):
            city = cities[index % len(cities)]
            stem = cityscapes_stem(city, index // len(cities))
            yield (
                "target",
                split,
                index,
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
            )


def holds_only_a_benchmark(out_dir: Path) -> bool:
    """True when every file under ``out_dir`` is one a benchmark of its recorded arguments consists
    of (or the marker or temp file of its run): a folder this generator wrote and nobody added to,
    which may be replaced without losing anyone's files."""
    recorded = _recorded_arguments(out_dir)
    if recorded is None or recorded.get("source_layout") not in SOURCE_LAYOUTS:
        return False
    try:
        expected = {path for _, _, _, *paths in benchmark_files(out_dir, recorded) for path in paths}
    except (TypeError, ValueError):  # counts that are not numbers: not a record this generator wrote
        return False
    expected |= {out_dir / SUMMARY_FILE, out_dir / RUNNING_FILE}
    folders = {parent for path in expected for parent in path.parents}
    return all(
        (path in folders if path.is_dir() and not path.is_symlink() else path in expected or is_temp_file(path))
        for path in out_dir.rglob("*")
    )


def save_sample_figure(path: str | Path, *, height: int = 256, width: int = 512, seed: int = 0) -> None:
    """A 2x2 figure for the README: source and target images (left) with colourised labels (right)."""
    rows = []
    for domain in ("source", "target"):
        image, labels = render_sample(seed, domain, "train", 0, height, width)
        gap = np.full((height, 4, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([image, gap, colourise(labels)], axis=1))
    figure = np.concatenate([rows[0], np.full((4, rows[0].shape[1], 3), 255, np.uint8), rows[1]], axis=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _save_png(figure, Path(path))


def prepare_out_dir(out_dir: Path, arguments: dict, *, force: bool) -> None:
    """Make ``out_dir`` safe to generate into with ``arguments``; leaves a running marker.

    Same arguments give byte-identical files, so a folder made (or being made, when a run was
    interrupted) with the same arguments and generator version is simply written again. Any
    other non-empty folder is refused: writing into it would mix two benchmarks (stale files of
    another size or seed next to new ones). ``force`` empties it first.

    Raises:
        ValueError: the folder is not empty and holds something else, and ``force`` is off.
    """
    check_output_folder(out_dir, "OUT_DIR")
    expected = {"generator_version": GENERATOR_VERSION, **arguments}
    if out_dir.is_dir() and any(out_dir.iterdir()):
        recorded = _recorded_arguments(out_dir)
        if recorded != expected:
            if not force:
                if recorded is None:
                    what = f"files not written by `crossregion data synth` (no readable {SUMMARY_FILE})"
                else:
                    differing = [
                        f"{key} {recorded.get(key)!r} -> {value!r}"
                        for key, value in expected.items()
                        if recorded.get(key) != value
                    ]
                    what = f"a benchmark of other arguments ({', '.join(differing)})"
                raise ValueError(
                    f"OUT_DIR {out_dir} is not empty: it holds {what}; pass --force to empty it "
                    "first, or choose another folder"
                )
            logger.info("--force: emptying %s", out_dir)
            for entry in out_dir.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        remove_stale_temp_files(out_dir)  # left by an interrupted run of the same arguments
    write_text_atomically(out_dir / RUNNING_FILE, json.dumps(expected, sort_keys=True) + "\n")


def _recorded_arguments(out_dir: Path) -> dict | None:
    """The generator version and arguments the folder was (or is being) made with, or None."""
    for name in (RUNNING_FILE, SUMMARY_FILE):
        try:
            recorded = json.loads((out_dir / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(recorded, dict):
            return {key: recorded.get(key) for key in ("generator_version", *ARGUMENT_KEYS)}
    return None


# Measured on the generator: rendering one image holds about 30-95 bytes per pixel (numpy and
# PIL buffers), its two PNGs take under 2 bytes per pixel; each file also fills a disk block.
RENDER_BYTES_PER_PIXEL = 100
FILE_BYTES_PER_PIXEL = 2
BLOCK_BYTES = 4096


def check_resources(out_dir: Path, arguments: dict) -> None:
    """Refuse, before any file is written, a benchmark whose one image does not fit in the free
    memory or whose files do not fit on the disk, with the estimate and what there is.

    Raises:
        ValueError: not enough memory or disk.
    """
    pixels = arguments["height"] * arguments["width"]
    available = _available_memory()
    needed = pixels * RENDER_BYTES_PER_PIXEL
    if available is not None and needed > available:
        raise ValueError(
            f"--height {arguments['height']} --width {arguments['width']}: rendering one image needs about "
            f"{_size(needed)} of memory, and {_size(available)} is available; choose a smaller size"
        )
    samples = arguments["source_images"] + arguments["target_train_images"] + arguments["target_val_images"]
    needed = samples * (pixels * FILE_BYTES_PER_PIXEL + 2 * BLOCK_BYTES)
    existing = next(parent for parent in (out_dir.absolute(), *out_dir.absolute().parents) if parent.exists())
    # Files already there are rewritten in place, or removed first (--force).
    present = sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file()) if out_dir.is_dir() else 0
    free = shutil.disk_usage(existing).free
    if needed - present > free:
        raise ValueError(
            f"OUT_DIR {out_dir}: {samples} images of {arguments['height']}x{arguments['width']} need about "
            f"{_size(needed)} of disk, and {_size(free)} is free there; ask for fewer or smaller images"
        )


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _size(count: int) -> str:
    value, unit = float(count), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


def generate_into(out_dir: str | Path, arguments: dict, *, force: bool) -> dict:
    """``generate_benchmark`` behind the checks of ``prepare_out_dir``; returns the summary."""
    out_dir = Path(out_dir)
    validate_arguments(**arguments)
    check_resources(out_dir, arguments)
    prepare_out_dir(out_dir, arguments, force=force)
    summary = generate_benchmark(out_dir, **arguments)
    (out_dir / RUNNING_FILE).unlink()
    return summary
