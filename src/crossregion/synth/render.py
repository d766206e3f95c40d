"""One image and its label map: the scene drawn back to front, then textured or photographed."""

from __future__ import annotations

import numpy as np

from crossregion.synth import objects, street, vehicles
from crossregion.synth.photo import photograph, texture_gain
from crossregion.synth.scene import Scene
from crossregion.synth.styles import SOURCE_STYLE, TARGET_STYLE

# Parts of each image's random seed, after the benchmark seed and before the image index.
DOMAIN_CODES = {"source": 0, "target": 1}
SPLIT_CODES = {"train": 0, "val": 1}


def render_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the whole scene; returns its label, image and cast-shadow canvases as arrays."""
    street.skyline(scene)
    street.ground(scene)
    structures = []
    for side in (-1.0, 1.0):
        structures += street.roadside(scene, side)
    # Painter's algorithm: farthest first.
    for _, draw in sorted(structures, key=lambda item: -item[0]):
        draw()
    for _, draw in sorted(objects.objects(scene), key=lambda item: -item[0]):
        draw()
    if scene.style.ego_vehicle:
        vehicles.ego_vehicle(scene)
    c = scene.canvas
    return np.asarray(c.labels), np.asarray(c.image), np.asarray(c.shadow)


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
    scene = Scene(rng, height, width, style)
    labels, image, shadow = render_scene(scene)
    if not style.photographic and style.texture:
        image = np.clip(image * texture_gain(labels, style.texture, rng)[..., None], 0, 255).astype(np.uint8)
    if style.photographic:
        image = photograph(image, labels, shadow, scene.canvas.camera.horizon_y, style.haze, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)
