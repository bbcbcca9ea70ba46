"""A small world whose truth is known: one coloured shape (circle, square or triangle) on a plain
background of another colour, 64×64 pixels, with the prompt that names them
("a red circle on a blue background"). ``judge`` reads a picture back from its pixels alone (no neural
judge): background = the border's colour, shape = the colour that differs from it and how much of its
bounding box it fills (square ≈ 1, circle ≈ π/4, triangle ≈ 1/2)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40), "white": (240, 240, 240)}
SHAPES = ("circle", "square", "triangle")
EDGE = 3  # pixels of the frame the judge ignores


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


ALL_SCENES = [Scene(s, c, b) for s, c, b in itertools.product(SHAPES, COLOURS, COLOURS) if c != b]  # 60
# Held out of distillation training (the teacher saw them): every shape and colour still occurs in training.
HELD_OUT = [s for i, s in enumerate(ALL_SCENES) if i % 5 == 2]
TRAIN_SCENES = [s for s in ALL_SCENES if s not in HELD_OUT]


FORM = "a <colour> <shape> on a <colour> background"
VOCABULARY = ("a", "on", "background", *COLOURS, *SHAPES)


def unknown_words(prompt: str) -> list[str]:
    """The words of ``prompt`` the toy model never saw (it was trained on lower-case prompts of FORM only)."""
    return [w for w in prompt.replace(",", " ").split() if w not in VOCABULARY]


def parse_prompt(prompt: str) -> Scene | None:
    words = prompt.lower().replace(",", " ").split()
    shape = next((w for w in words if w in SHAPES), None)
    colours = [w for w in words if w in COLOURS]
    if shape is None or len(colours) < 2:
        return None
    return Scene(shape, colours[0], colours[1])


def draw(scene: Scene, rng: random.Random, wide: bool = False) -> np.ndarray:
    """[64, 64, 3] uint8; size and place vary a little around the centre (``wide``: anywhere, any
    size from 11 px; the VAE learns on that wider set)."""
    image = Image.new("RGB", (SIZE, SIZE), COLOURS[scene.background])
    pen = ImageDraw.Draw(image)
    if wide:
        half = rng.randint(11, 18)
        cx, cy = rng.randint(half + 4, SIZE - half - 4), rng.randint(half + 4, SIZE - half - 4)
    else:
        half = rng.randint(13, 18)
        cx, cy = SIZE // 2 + rng.randint(-6, 6), SIZE // 2 + rng.randint(-6, 6)
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif scene.shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    return np.asarray(image).copy()


def _nearest(rgb) -> str:
    return min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], rgb)))


def judge(image: np.ndarray) -> Scene | None:
    """What the picture shows, read off its pixels; None when no single shape stands out."""
    pixels = image.astype(np.int32)[EDGE:-EDGE, EDGE:-EDGE]  # a decoder's outermost pixels may smear
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    mask = np.abs(pixels - background_rgb).sum(-1) > 120
    if mask.sum() < 60:
        return None
    ys, xs = np.nonzero(mask)
    # the box from the 1st to the 99th percentile: a few stray pixels do not stretch it
    (y0, y1), (x0, x1) = np.percentile(ys, [1, 99]), np.percentile(xs, [1, 99])
    fill = mask[int(y0):int(y1) + 1, int(x0):int(x1) + 1].sum() / ((int(y1) - int(y0) + 1) * (int(x1) - int(x0) + 1))
    shape = "square" if fill > 0.9 else "circle" if fill > 0.75 else "triangle"  # measured: ~0.97, ~0.84, ~0.67 after the VAE
    return Scene(shape, _nearest(np.median(pixels[mask], axis=0)), _nearest(background_rgb))


def is_right(image: np.ndarray, scene: Scene) -> bool:
    return judge(image) == scene


def dataset(count: int, seed: int, scenes=ALL_SCENES, wide: bool = False) -> tuple[np.ndarray, list[Scene]]:
    rng = random.Random(seed)
    chosen = [rng.choice(scenes) for _ in range(count)]
    return np.stack([draw(s, rng, wide) for s in chosen]), chosen
