"""The state one image's drawing shares: its random draws, per-image colours, camera and street."""

from __future__ import annotations

import numpy as np

from crossregion.synth.geometry import Camera, Canvas
from crossregion.synth.spec import SPEC, Rgb
from crossregion.synth.styles import DomainStyle


class Scene:
    """One street scene of one domain being drawn; all randomness comes from ``rng``.

    The drawing functions (``street``, ``objects``, ``vehicles``) read and draw through it, in the
    order ``render.render_scene`` calls them: that order fixes the random draws, and so the files.
    """

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
            int(round((1 - overcast) * c + overcast * o)) for c, o in zip(self.colours["sky"], SPEC.overcast_sky)
        )
        camera = Camera(
            focal=width * rng.uniform(*style.focal),
            centre_x=width * rng.uniform(0.42, 0.58),
            horizon_y=height * rng.uniform(*style.horizon),
            height_m=rng.uniform(*style.camera_height),
        )
        self.canvas = Canvas(height, width, camera, self.colours["sky"])
        self.road_half = rng.uniform(*style.road_half_width)
        self.sidewalk = rng.uniform(*style.sidewalk_width)
        # The sun falls from one side: that side's facades shadow the street.
        self.sun_side = float(rng.choice((-1.0, 1.0)))
        self.shadow_length = rng.uniform(*SPEC.shadow_length)

    def colour(self, name: str, spread: float = 0.0) -> Rgb:
        """This image's colour of ``name``; with ``spread``, jittered again for this one use."""
        base = self.colours[name]
        if not spread:
            return base
        return tuple(int(np.clip(c + self.rng.normal(0, spread), 0, 255)) for c in base)
