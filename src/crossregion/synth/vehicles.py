"""Vehicles: cars, trucks and buses in lanes, a tram on rails, and the recording car's bonnet."""

from __future__ import annotations

import numpy as np

from crossregion.synth.geometry import FAR_Z, NEAR_Z, shade
from crossregion.synth.label_ids import ID
from crossregion.synth.scene import Scene


def vehicles(scene: Scene) -> list:
    """Cars, trucks and buses queued in four lanes, and sometimes a tram, as (nearest depth, draw
    function) pairs."""
    rng, style = scene.rng, scene.style
    r = scene.road_half
    kinds = (
        ["car"] * rng.poisson(style.cars) + ["truck"] * rng.poisson(style.trucks) + ["bus"] * rng.poisson(style.buses)
    )
    rng.shuffle(kinds)
    lanes = [-r * 0.5, r * 0.5, -(r - 1.1), r - 1.1]
    next_free = {lane: rng.uniform(6.0, 20.0) for lane in range(len(lanes))}
    items = []
    if rng.random() < style.train_prob:
        z0 = rng.uniform(10.0, 40.0)
        items.append((z0, _train_drawer(scene, z0)))
    for kind in kinds:
        lane = int(rng.integers(0, len(lanes)))
        z0 = next_free[lane] + rng.uniform(0.0, 12.0)
        if z0 > 60.0:
            continue
        length = {"car": rng.uniform(3.9, 4.8), "truck": rng.uniform(7.0, 10.0), "bus": rng.uniform(10.5, 13.0)}[kind]
        next_free[lane] = z0 + length + 1.5
        items.append((z0, _vehicle_drawer(scene, kind, lanes[lane], z0, length)))
    return items


def _vehicle_drawer(scene: Scene, kind: str, x: float, z0: float, length: float):
    """Cars (low, with a cabin), trucks (tall cab + taller cargo box) and buses (long, window band)."""
    rng, c = scene.rng, scene.canvas
    label = ID[kind]
    if kind == "car":
        body = scene.style.vehicle_colours[int(rng.integers(0, len(scene.style.vehicle_colours)))]
        body = shade(body, rng.uniform(0.85, 1.15))
    else:
        body = scene.colour(kind, 12)
    width = {"car": rng.uniform(1.7, 1.9), "truck": 2.4, "bus": 2.5}[kind]
    x0, x1 = x - width / 2, x + width / 2
    glass = scene.colour("window")
    dark = scene.colour("dark")
    cabin_top = rng.uniform(1.4, 1.55)
    cab = shade(body, 0.9) if rng.random() < 0.5 else scene.colour("truck", 30)
    cargo_top = rng.uniform(3.4, 3.9)

    def shades(colour):
        return colour, shade(colour, 1.2), shade(colour, 0.75)

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
            c.quad([(x0 + 0.2, 1.5, z0), (x1 - 0.2, 1.5, z0), (x1 - 0.2, 2.6, z0), (x0 + 0.2, 2.6, z0)], None, glass)
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


def _train_drawer(scene: Scene, z0: float):
    """A tram on rails in the middle of the road (rail track is a void class in Cityscapes)."""
    c = scene.canvas
    length = scene.rng.uniform(20.0, 35.0)
    body = scene.colour("train", 10)

    def draw():
        c.quad(
            [(-0.9, 0, NEAR_Z), (0.9, 0, NEAR_Z), (0.9, 0, FAR_Z), (-0.9, 0, FAR_Z)],
            ID["rail track"],
            scene.colour("rail"),
        )
        c.box(-1.3, 1.3, 0.0, 0.5, z0, z0 + length, ID["train"], *(scene.colour("dark"),) * 3)
        c.box(-1.3, 1.3, 0.5, 3.6, z0, z0 + length, ID["train"], body, shade(body, 1.2), shade(body, 0.75))
        c.quad([(-1.1, 1.6, z0), (1.1, 1.6, z0), (1.1, 2.8, z0), (-1.1, 2.8, z0)], None, scene.colour("window"))

    return draw


def ego_vehicle(scene: Scene) -> None:
    """The recording car's bonnet along the bottom edge (Cityscapes 'ego vehicle', void)."""
    rise = scene.height * scene.rng.uniform(0.05, 0.09)
    w, h = scene.width, scene.height
    xs = np.linspace(0, w, 17)
    bulge = rise * (1.0 - 0.5 * ((xs - w / 2) / (w / 2)) ** 2)
    points = [(0.0, float(h))] + [(float(x), float(h - b)) for x, b in zip(xs, bulge)] + [(float(w), float(h))]
    scene.canvas.polygon(np.asarray(points), ID["ego vehicle"], scene.colour("dark"))
