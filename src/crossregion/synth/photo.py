"""Surface texture for both domains, and the camera that turns the target's rendering into a photo."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from crossregion.synth.label_ids import ID
from crossregion.synth.spec import SPEC

# Texture amplitude per label ID: (coarse fBm, fine grain).
TEXTURE_COARSE = np.full(256, SPEC.texture_default[0], dtype=np.float32)
TEXTURE_FINE = np.full(256, SPEC.texture_default[1], dtype=np.float32)
for _name, _coarse, _fine in SPEC.texture_per_class:
    TEXTURE_COARSE[ID[_name]] = _coarse
    TEXTURE_FINE[ID[_name]] = _fine
# Label IDs that lie on the ground plane: cast shadows darken only these.
GROUND_MASK = np.zeros(256, dtype=bool)
for _name in ("road", "sidewalk", "terrain", "parking", "ground", "rail track"):
    GROUND_MASK[ID[_name]] = True


def value_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Uniform noise on a coarse grid (``cells`` across the width), bilinearly upsampled.

    Shape:
        - output: (height, width) float32 in [-1, 1]
    """
    grid_w = max(2, cells)
    grid_h = max(2, round(cells * height / width))
    grid = rng.uniform(-1.0, 1.0, size=(grid_h, grid_w)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BILINEAR))


def fbm(rng: np.random.Generator, height: int, width: int, base_cells: int, octaves: int) -> np.ndarray:
    """Fractional Brownian motion: value noise summed over octaves of doubling frequency.

    Shape:
        - output: (height, width) float32, roughly in [-1, 1]
    """
    total = np.zeros((height, width), dtype=np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amplitude * value_noise(rng, height, width, base_cells * 2**octave)
        norm += amplitude
        amplitude *= 0.5
    return total / norm


def texture_gain(labels: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel brightness gain of surface texture: value-noise fBm, coarse and fine, per class.

    Shape:
        - labels: (H, W) uint8 label IDs
        - output: (H, W) float32 around 1
    """
    height, width = labels.shape
    coarse = fbm(rng, height, width, base_cells=SPEC.texture_coarse_cells, octaves=SPEC.texture_coarse_octaves)
    fine_cells = max(SPEC.texture_fine_min_cells, width // SPEC.texture_fine_cell_pixels)
    fine = fbm(rng, height, width, base_cells=fine_cells, octaves=SPEC.texture_fine_octaves)
    return 1.0 + amplitude * (TEXTURE_COARSE[labels] * coarse + TEXTURE_FINE[labels] * fine)


def photograph(
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
    gain = texture_gain(labels, 1.0, rng)
    # Uneven illumination: an exposure, a colour cast and a soft left-right gradient.
    exposure = rng.uniform(*SPEC.exposure)
    cast = rng.uniform(*SPEC.colour_cast, size=3).astype(np.float32)
    ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32) * rng.uniform(-SPEC.light_ramp, SPEC.light_ramp)
    light = exposure * (1.0 + ramp)[None, :] * gain
    in_shadow = (shadow > 0) & GROUND_MASK[labels]
    light = np.where(in_shadow, light * rng.uniform(*SPEC.shadow_light), light)
    photo = image.astype(np.float32) * light[..., None] * cast
    rows = np.arange(height, dtype=np.float32)[:, None, None]
    haze_weight = rng.uniform(*haze) * np.exp(-np.abs(rows - horizon_row) / (SPEC.haze_falloff * height))
    haze_colour = np.asarray(SPEC.haze_colour, dtype=np.float32) * exposure
    photo = photo * (1.0 - haze_weight) + haze_colour * haze_weight
    photo = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8))
    blur_radius = rng.uniform(*SPEC.blur_radius) * max(1.0, width / SPEC.blur_reference_width)
    photo = photo.filter(ImageFilter.GaussianBlur(radius=blur_radius))
    noise_sigma = rng.uniform(*SPEC.noise_sigma)
    noisy = np.asarray(photo, dtype=np.float32) + rng.normal(0.0, noise_sigma, size=(height, width, 3))
    photo = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=int(rng.integers(*SPEC.jpeg_quality)), subsampling=0, optimize=False)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))
