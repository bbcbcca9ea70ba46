"""Draws the example pictures the ControlNet workflows load (example_workflows/input/): a small scene
for canny and tile, its depth map, an OpenPose skeleton and an inpaint source with a transparent hole.
Drawn, not downloaded, so they carry no one's copyright. ``python -m zimage_pack.workflows.example_inputs``
rewrites them; a test checks the committed ones equal what this draws."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 1024


def scene() -> Image.Image:
    """A house on a hill under an evening sky: clear edges for canny, flat areas for tile."""
    y = np.linspace(0, 1, SIZE)[:, None, None]
    sky = (np.array([40, 70, 140]) * (1 - y) + np.array([250, 170, 110]) * y).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(sky, (SIZE, SIZE, 3)).copy())
    draw = ImageDraw.Draw(image)
    draw.ellipse((700, 140, 860, 300), fill=(255, 230, 150))
    draw.polygon([(0, 720), (300, 600), (620, 660), (1024, 560), (1024, 1024), (0, 1024)], fill=(70, 120, 60))
    draw.rectangle((330, 470, 640, 700), fill=(200, 180, 150), outline=(60, 40, 30), width=6)
    draw.polygon([(300, 480), (485, 330), (670, 480)], fill=(150, 50, 40), outline=(60, 30, 20))
    draw.rectangle((450, 580, 520, 700), fill=(90, 60, 40))
    for left in (360, 560):
        draw.rectangle((left, 520, left + 55, 570), fill=(250, 230, 140), outline=(60, 40, 30), width=4)
    draw.rectangle((770, 520, 800, 700), fill=(90, 60, 40))
    draw.ellipse((700, 380, 870, 560), fill=(40, 100, 50))
    return image


def depth_map() -> Image.Image:
    """Near = white, as depth preprocessors (Depth Anything, MiDaS) draw it: ground receding, a ball, a box."""
    y = np.linspace(0, 1, SIZE)[:, None]
    depth = np.broadcast_to(np.clip((y - 0.45) / 0.55, 0, 1) * 200 + 20, (SIZE, SIZE)).astype(np.float32).copy()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    ball = (xx - 330) ** 2 + (yy - 640) ** 2 < 170 ** 2
    depth[ball] = 150 + 100 * np.sqrt(np.clip(1 - ((xx[ball] - 330) ** 2 + (yy[ball] - 640) ** 2) / 170 ** 2, 0, 1))
    depth[420:760, 600:900] = 120
    return Image.fromarray(np.clip(depth, 0, 255).astype(np.uint8)).convert("RGB")


# OpenPose (COCO 18) keypoints of a standing figure and the limb colours OpenPose draws with
_JOINTS = [(512, 180), (512, 290), (420, 295), (390, 430), (380, 560), (604, 295), (640, 430), (650, 560), (450, 560), (440, 740), (430, 910),
           (574, 560), (584, 740), (594, 910), (492, 160), (532, 160), (470, 175), (554, 175)]
_LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
_COLOURS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170),
            (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]


def pose_map() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    for (a, b), colour in zip(_LIMBS, _COLOURS):
        draw.line([_JOINTS[a], _JOINTS[b]], fill=tuple(int(c * 0.6) for c in colour), width=14)
    for (x, y), colour in zip(_JOINTS, _COLOURS):
        draw.ellipse((x - 9, y - 9, x + 9, y + 9), fill=colour)
    return image


def inpaint_source() -> Image.Image:
    """The scene with a transparent window where the tree was: LoadImage gives that area as the mask."""
    image = scene().convert("RGBA")
    alpha = Image.new("L", image.size, 255)
    ImageDraw.Draw(alpha).ellipse((680, 360, 900, 720), fill=0)
    image.putalpha(alpha)
    return image


def tile_lowres() -> Image.Image:
    return scene().resize((256, 256), Image.BICUBIC).filter(ImageFilter.GaussianBlur(1))


PICTURES = {"canny_source.png": scene, "depth_map.png": depth_map, "pose_map.png": pose_map, "inpaint_source.png": inpaint_source, "tile_lowres.png": tile_lowres}


def main() -> None:
    from .build import INPUT_DIR

    os.makedirs(INPUT_DIR, exist_ok=True)
    for name, draw in PICTURES.items():
        draw().save(os.path.join(INPUT_DIR, name), optimize=True)
        print("wrote", os.path.join(INPUT_DIR, name))


if __name__ == "__main__":
    main()
