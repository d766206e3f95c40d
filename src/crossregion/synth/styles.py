"""The two domains' scene statistics and palettes: a rendered source, a photographed target."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crossregion.synth.spec import SPEC, Rgb


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
    overcast: tuple[float, float] = (0.0, 0.0)  # per-image blend of the sky toward SPEC.overcast_sky
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
    palette_jitter=SPEC.source_palette_jitter,
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
    overcast=SPEC.source_overcast,
    # Rendered surfaces carry texture too (as game engines draw them), weaker than photographed
    # ones and without the camera's light, haze, blur, noise and compression.
    texture=SPEC.source_texture,
)


def photographed_palette(palette: dict[str, Rgb]) -> dict[str, Rgb]:
    """The target's palette: the source's hues, desaturated and contrast compressed.

    Classes keep their hue order (so shape, context and a faint colour cue carry over), but
    road/sidewalk, building/wall/fence, vegetation/terrain and the vehicles move close together,
    as real photographs are greyer than renderings. Sky, lane marks and glass get real-world
    colours instead.
    """
    muted = {}
    for name, colour in palette.items():
        rgb = np.asarray(colour, dtype=np.float64)
        luma = float(rgb @ (0.299, 0.587, 0.114))
        grey = SPEC.target_grey + SPEC.target_contrast * (luma - SPEC.target_grey)
        muted[name] = tuple(int(round(grey + (c - luma) * SPEC.target_saturation)) for c in rgb)
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
    palette=photographed_palette(SOURCE_STYLE.palette),
    palette_jitter=SPEC.target_palette_jitter,
    vehicle_colours=((90, 96, 104), (150, 150, 150), (40, 42, 48), (120, 40, 40), (200, 200, 205), (60, 70, 90)),
    photographic=True,
    ego_vehicle=True,
    haze=SPEC.target_haze,
)
