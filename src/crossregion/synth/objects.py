"""Objects beside and on the street: poles with lights and signs, trees, props, people, two-wheelers."""

from __future__ import annotations

from crossregion.synth.geometry import shade
from crossregion.synth.label_ids import ID
from crossregion.synth.scene import Scene
from crossregion.synth.spec import SPEC
from crossregion.synth.vehicles import vehicles


def objects(scene: Scene) -> list:
    """Poles, signs, lights, trees, static props, people, two-wheelers and vehicles."""
    rng, style = scene.rng, scene.style
    r, s = scene.road_half, scene.sidewalk
    items = []
    for _ in range(rng.poisson(style.poles)):
        side = float(rng.choice((-1.0, 1.0)))
        z = rng.uniform(4.0, SPEC.object_far_z)
        items.append((z, _pole_drawer(scene, side * (r + 0.4), z)))
    for _ in range(rng.poisson(style.trees)):
        side = float(rng.choice((-1.0, 1.0)))
        z = rng.uniform(5.0, 90.0)
        items.append((z, _tree_drawer(scene, side * (r + s * rng.uniform(0.6, 0.9)), z)))
    for _ in range(rng.poisson(1.5)):
        side = float(rng.choice((-1.0, 1.0)))
        z = rng.uniform(4.0, 50.0)
        items.append((z, _static_drawer(scene, side * (r + s * rng.uniform(0.3, 0.9)), z)))
    for _ in range(rng.poisson(style.persons)):
        side = float(rng.choice((-1.0, 1.0)))
        z = rng.uniform(3.5, SPEC.object_far_z)
        items.append((z, _person_drawer(scene, side * (r + s * rng.uniform(0.2, 0.9)), z)))
    for _ in range(rng.poisson(style.two_wheelers)):
        z = rng.uniform(4.0, SPEC.object_far_z)
        x = rng.uniform(-r + 0.5, r - 0.5) if rng.random() < 0.6 else float(rng.choice((-1, 1))) * (r + s * 0.5)
        motor = rng.random() < 0.5
        ridden = x * x < r * r or rng.random() < 0.2
        items.append((z, _two_wheeler_drawer(scene, x, z, motor, ridden)))
    items += vehicles(scene)
    return items


def _pole_drawer(scene: Scene, x: float, z: float):
    rng, c = scene.rng, scene.canvas
    top = rng.uniform(3.0, 8.0)
    half = rng.uniform(*SPEC.pole_half_width)
    attachment = rng.choice(("none", "light", "sign", "sign"))
    height = rng.uniform(2.0, min(top, 3.5)) + SPEC.sign_radius
    shape = rng.choice(("circle", "square", "triangle"))

    def draw():
        c.quad(
            [(x - half, 0, z), (x + half, 0, z), (x + half, top, z), (x - half, top, z)],
            ID["pole"],
            scene.colour("pole"),
        )
        if attachment == "light":
            lw, lh = SPEC.light_size
            ly = top - lh
            c.quad(
                [(x - lw / 2, ly, z), (x + lw / 2, ly, z), (x + lw / 2, ly + lh, z), (x - lw / 2, ly + lh, z)],
                ID["traffic light"],
                scene.colour("traffic light"),
            )
            for k, lamp in enumerate(((230, 40, 30), (240, 180, 20), (40, 220, 80))):
                c.ellipse(x, ly + lh * (0.8 - 0.3 * k), z - 0.01, lw * 0.25, lw * 0.25, None, lamp)
        elif attachment == "sign":
            face = scene.colour("traffic sign")
            rim = SPEC.source_sign_rim if not scene.style.photographic else shade(face, SPEC.target_sign_rim_shade)
            radius = SPEC.sign_radius
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


def _tree_drawer(scene: Scene, x: float, z: float):
    rng, c = scene.rng, scene.canvas
    crown_y = rng.uniform(3.5, 6.5)
    crown_r = rng.uniform(1.5, 3.2)
    lobes = [
        (rng.uniform(-0.6, 0.6) * crown_r, rng.uniform(-0.4, 0.4) * crown_r, crown_r * rng.uniform(0.6, 0.9))
        for _ in range(3)
    ]
    leaf = scene.colour("vegetation", 10)

    def draw():
        c.quad(
            [(x - 0.15, 0, z), (x + 0.15, 0, z), (x + 0.15, crown_y, z), (x - 0.15, crown_y, z)],
            ID["vegetation"],
            shade(leaf, 0.55),
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


def _static_drawer(scene: Scene, x: float, z: float):
    """A bin, bench or box: Cityscapes 'static' (void), so some void pixels sit among the classes."""
    width = scene.rng.uniform(0.4, 1.6)
    top = scene.rng.uniform(0.5, 1.1)
    colour = scene.colour("void", 10)

    def draw():
        scene.canvas.quad(
            [(x - width / 2, 0, z), (x + width / 2, 0, z), (x + width / 2, top, z), (x - width / 2, top, z)],
            ID["static"],
            colour,
        )

    return draw


def _person_drawer(scene: Scene, x: float, z: float):
    rng = scene.rng
    tall = rng.uniform(1.55, 1.95)
    clothes = scene.colour("person", 40)
    legs = shade(scene.colour("person", 30), 0.6)
    stride = rng.uniform(0.0, 0.2)

    def draw():
        _upright_figure(scene, x, 0.0, z, tall, ID["person"], clothes, legs, stride)

    return draw


def _upright_figure(scene: Scene, x, base, z, tall, label, clothes, legs, stride):
    """Legs, torso and head of a standing or seated figure of height ``tall`` above ``base``."""
    c, k = scene.canvas, SPEC.figure_width
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
    c.ellipse(x, shoulder + tall * 0.07, z, k * 0.11, tall * 0.07, label, scene.colour("skin"))


def _two_wheeler_drawer(scene: Scene, x: float, z: float, motor: bool, ridden: bool):
    """A bicycle or motorcycle seen from the side (crossing), with a rider when ridden."""
    c = scene.canvas
    label = ID["motorcycle"] if motor else ID["bicycle"]
    colour = scene.colour("motorcycle" if motor else "bicycle", 25)
    wheel = (0.3 if motor else 0.34) * SPEC.two_wheeler_scale
    half = (0.7 if motor else 0.55) * SPEC.two_wheeler_scale
    rider_clothes = scene.colour("rider", 40)

    def draw():
        for dx in (-half, half):
            if motor:
                c.ellipse(x + dx, wheel, z, wheel, wheel, label, scene.colour("dark"))
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
            _upright_figure(
                scene, x, seat - 0.55, z - 0.01, 1.4, ID["rider"], rider_clothes, shade(rider_clothes, 0.6), 0.15
            )

    return draw
