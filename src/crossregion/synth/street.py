"""The street: distant skyline, ground strips, and the facades, greenery, walls and fences beside it."""

from __future__ import annotations

import numpy as np

from crossregion.synth.geometry import FAR_Z, NEAR_Z, shade
from crossregion.synth.label_ids import ID
from crossregion.synth.scene import Scene


def skyline(scene: Scene) -> None:
    """Distant buildings and trees closing the street at the horizon."""
    rng, c = scene.rng, scene.canvas
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
                scene.colour("vegetation", 6),
            )
        else:
            top = rng.uniform(6.0, 45.0)
            c.quad(
                [(x, 0, z), (x + block, 0, z), (x + block, top, z), (x, top, z)],
                ID["building"],
                scene.colour("building", 10),
            )
        x += block


def ground(scene: Scene) -> None:
    """Verge, sidewalks with curbs, road with lane marks, parking strips, rail track."""
    rng, c = scene.rng, scene.canvas
    r, s = scene.road_half, scene.sidewalk
    below = [(-1e4, 0, NEAR_Z), (1e4, 0, NEAR_Z), (1e4, 0, FAR_Z), (-1e4, 0, FAR_Z)]
    verge = "terrain" if rng.random() < 0.6 else "ground"
    c.quad(below, ID[verge], scene.colour("terrain" if verge == "terrain" else "void"))
    for side in (-1.0, 1.0):
        inner, outer = side * r, side * (r + s)
        c.quad(
            [(inner, 0, NEAR_Z), (outer, 0, NEAR_Z), (outer, 0, FAR_Z), (inner, 0, FAR_Z)],
            ID["sidewalk"],
            scene.colour("sidewalk"),
        )
    c.quad([(-r, 0, NEAR_Z), (r, 0, NEAR_Z), (r, 0, FAR_Z), (-r, 0, FAR_Z)], ID["road"], scene.colour("road"))
    for side in (-1.0, 1.0):
        if rng.random() < 0.3:
            z0 = rng.uniform(4.0, 30.0)
            z1 = z0 + rng.uniform(8.0, 30.0)
            edge = side * r
            c.quad(
                [(edge - side * 2.3, 0, z0), (edge, 0, z0), (edge, 0, z1), (edge - side * 2.3, 0, z1)],
                ID["parking"],
                shade(scene.colour("road"), 1.15),
            )
        # Raised curb: a 15 cm face where the sidewalk meets the road, in both domains.
        edge = side * r
        c.quad(
            [(edge, 0, NEAR_Z), (edge, 0.15, NEAR_Z), (edge, 0.15, FAR_Z), (edge, 0, FAR_Z)],
            ID["sidewalk"],
            scene.colour("curb"),
        )
    z = rng.uniform(2.0, 6.0)
    while z < 120.0:
        c.quad([(-0.07, 0, z), (0.07, 0, z), (0.07, 0, z + 3), (-0.07, 0, z + 3)], None, scene.colour("lane"))
        z += 9.0


def roadside(scene: Scene, side: float) -> list:
    """Segments along one side of the street, as (nearest depth, draw function) pairs."""
    rng, style = scene.rng, scene.style
    front = side * (scene.road_half + scene.sidewalk)
    items = []
    z = rng.uniform(0.0, 4.0)
    while z < 170.0:
        length = rng.uniform(8.0, 28.0)
        kind = rng.choice(style.segment_kinds, p=style.segment_probs)
        z0, z1 = z, z + length
        if kind == "building":
            setback = rng.uniform(0.0, 3.0)
            items.append((z0, _facade_drawer(scene, front + side * setback, z0, z1, side)))
        else:
            if rng.random() < 0.6:
                back = front + side * rng.uniform(8.0, 20.0)
                items.append((z0 + 1e-3, _facade_drawer(scene, back, z0, z1, side)))
            if kind == "greenery":
                items.append((z0, _lawn_drawer(scene, front, front + side * 30.0, z0, z1)))
                items.append((z0, _hedge_drawer(scene, front + side * rng.uniform(2.0, 6.0), z0, z1)))
            elif kind in ("wall", "fence"):
                items.append((z0, _barrier_drawer(scene, kind, front, z0, z1)))
        z = z1
    return items


def _facade_drawer(scene: Scene, x: float, z0: float, z1: float, side: float):
    rng, c = scene.rng, scene.canvas
    top = rng.uniform(*scene.style.building_height)
    wall_colour = scene.colour("building", 10)
    floors = rng.integers(0, 2) == 0

    def draw():
        c.quad([(x, 0, z0), (x, 0, z1), (x, top, z1), (x, top, z0)], ID["building"], wall_colour)
        # The end wall faces the camera where the street opens up.
        c.quad(
            [(x, 0, z0), (x + side * 12, 0, z0), (x + side * 12, top, z0), (x, top, z0)],
            ID["building"],
            shade(wall_colour, 0.8),
        )
        _windows(scene, x, z0, z1, top, floors)
        if side == scene.sun_side:
            inner = x - side * scene.shadow_length
            c.ground_shadow([(x, 0, z0), (inner, 0, z0), (inner, 0, z1), (x, 0, z1)])

    return draw


def _windows(scene: Scene, x: float, z0: float, z1: float, top: float, banded: bool) -> None:
    """Window grid on a facade, up to the depth where a 1.2 m window is ~1.5 pixels wide.

    A window at depth z on a facade at lateral offset x spans about focal * |x| * 1.2 / z**2
    pixels; the farther ones would cost draw calls without showing.
    """
    c = scene.canvas
    z1 = min(z1, float(np.sqrt(c.camera.focal * abs(x) * 1.2 / 1.5)))
    if z1 <= z0 + 2.0:
        return
    glass = scene.colour("window")
    for y in np.arange(2.0, top - 1.0, 3.2):
        if banded:
            c.quad([(x, y, z0 + 0.5), (x, y, z1 - 0.5), (x, y + 1.3, z1 - 0.5), (x, y + 1.3, z0 + 0.5)], None, glass)
            continue
        for z in np.arange(z0 + 1.0, z1 - 1.5, 2.6):
            c.quad([(x, y, z), (x, y, z + 1.2), (x, y + 1.5, z + 1.2), (x, y + 1.5, z)], None, glass)


def _lawn_drawer(scene: Scene, x_inner: float, x_outer: float, z0: float, z1: float):
    """Grass on the ground plane (terrain: flat, unlike upright vegetation)."""
    colour = scene.colour("terrain", 8)

    def draw():
        scene.canvas.quad(
            [(x_inner, 0, z0), (x_outer, 0, z0), (x_outer, 0, z1), (x_inner, 0, z1)], ID["terrain"], colour
        )

    return draw


def _hedge_drawer(scene: Scene, x: float, z0: float, z1: float):
    top = scene.rng.uniform(0.8, 2.2)
    colour = scene.colour("vegetation", 8)

    def draw():
        scene.canvas.quad([(x, 0, z0), (x, 0, z1), (x, top, z1), (x, top, z0)], ID["vegetation"], colour)

    return draw


def _barrier_drawer(scene: Scene, kind: str, x: float, z0: float, z1: float):
    """A wall (solid, 0.8–2.5 m) or a fence (posts and rails, 1–2 m), both lower than buildings."""
    c = scene.canvas
    top = scene.rng.uniform(1.5, 3.5) if kind == "wall" else scene.rng.uniform(1.5, 3.0)
    colour = scene.colour(kind, 8)

    def draw():
        c.quad([(x, 0, z0), (x, 0, z1), (x, top, z1), (x, top, z0)], ID[kind], colour)
        if kind == "wall":
            c.quad([(x, top - 0.15, z0), (x, top - 0.15, z1), (x, top, z1), (x, top, z0)], None, shade(colour, 1.25))
            return
        dark = shade(colour, 0.55)
        step = max(0.25, z0 / c.camera.focal * 6.0)
        for z in np.arange(z0, z1, step * 2):
            c.quad([(x, 0.1, z), (x, 0.1, z + step), (x, top - 0.2, z + step), (x, top - 0.2, z)], None, dark)

    return draw
