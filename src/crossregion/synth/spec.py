"""The constants that shape the synthetic benchmark's domain gap, named in one frozen dataclass.

The per-domain scene statistics (focal length, camera height, object rates, palettes, vehicle
colours) are the fields of ``styles.DomainStyle``; ``BenchmarkSpec`` names the rest: how large
thin objects are drawn, and how the source is rendered and the target photographed.
``SPEC`` is the spec the generator renders; changing any value changes the files, so it needs a
``GENERATOR_VERSION`` bump (``benchmark.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

Rgb = tuple[int, int, int]


@dataclass(frozen=True)
class BenchmarkSpec:
    """Ranges are ``(low, high)`` for a uniform draw per image; lengths are in metres."""

    # Thin objects are drawn wider than life and no farther than object_far_z, so that each of the
    # 19 classes covers whole cells of a stride-8 segmenter at the benchmark's 96x192 to 128x256
    # (life-size poles and signs are narrower than one output cell: unlearnable, so they would only
    # pull the oracle and every method's mIoU down without telling them apart).
    pole_half_width: tuple[float, float] = (0.16, 0.26)  # half the width of a pole
    sign_radius: float = 0.6  # half the width of a traffic sign
    light_size: tuple[float, float] = (0.55, 1.4)  # width and height of a traffic light's housing
    figure_width: float = 1.6  # persons and riders: width multiplier at life height
    two_wheeler_scale: float = 1.4  # bicycles and motorcycles: size multiplier of wheels and frame
    object_far_z: float = 28.0  # farthest depth of poles, people and two-wheelers

    # The rendered source.
    source_palette_jitter: float = 24.0  # per-image colour jitter around the base palette (0..255 units)
    source_overcast: tuple[float, float] = (0.0, 0.9)  # per-image blend of the sky toward overcast_sky
    source_texture: float = 0.8  # amplitude of surface texture relative to the photographed one
    source_sign_rim: Rgb = (200, 30, 30)  # red rim of round and triangular signs
    overcast_sky: Rgb = (205, 210, 215)  # the sky colour of a fully overcast source image

    # The photographed target's palette: the source's hues, greyer (styles.photographed_palette).
    target_palette_jitter: float = 14.0  # per-image colour jitter around the muted palette
    target_grey: float = 118.0  # luma that contrast compression pulls every colour toward
    target_contrast: float = 0.7  # factor on each colour's luma distance from target_grey
    target_saturation: float = 0.55  # factor on each colour's chroma (distance from its luma)
    target_sign_rim_shade: float = 0.7  # sign rims: the sign face darkened by this factor, not red

    # Surface texture (value-noise fBm), per class: amplitude of the coarse and the fine noise.
    texture_default: tuple[float, float] = (0.06, 0.04)  # (coarse, fine) of classes not listed below
    texture_per_class: tuple[tuple[str, float, float], ...] = (
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
    )
    texture_coarse_cells: int = 6  # noise cells across the width in the coarse noise's first octave
    texture_coarse_octaves: int = 3
    texture_fine_cell_pixels: int = 6  # pixels per noise cell in the fine noise's first octave
    texture_fine_min_cells: int = 8  # fewest noise cells across the width of the fine noise
    texture_fine_octaves: int = 2

    # The photographed target's camera and light.
    exposure: tuple[float, float] = (0.65, 1.25)  # per-image brightness factor
    colour_cast: tuple[float, float] = (0.9, 1.1)  # per-image factor of each RGB channel
    light_ramp: float = 0.18  # largest left-right brightness gradient (fraction at each edge)
    shadow_length: tuple[float, float] = (3.0, 14.0)  # how far the sunny side's facades shadow the street
    shadow_light: tuple[float, float] = (0.45, 0.65)  # brightness factor of shadowed ground
    target_haze: tuple[float, float] = (0.0, 0.6)  # per-image haze strength at the horizon row
    haze_falloff: float = 0.2  # haze decays by e every this fraction of the height from the horizon
    haze_colour: tuple[float, float, float] = (200.0, 205.0, 212.0)  # haze at exposure 1
    blur_radius: tuple[float, float] = (0.4, 1.0)  # Gaussian blur radius (pixels) at 256 pixels wide
    blur_reference_width: int = 256  # wider images are blurred proportionally more
    noise_sigma: tuple[float, float] = (2.0, 7.0)  # per-image standard deviation of pixel noise
    jpeg_quality: tuple[int, int] = (30, 75)  # per-image JPEG quality, high end excluded


SPEC = BenchmarkSpec()
