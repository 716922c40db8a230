"""Paints the bundled style image `swirls.png`: brush strokes that follow a swirling flow field.

The project generates its own style sample so that it can be redistributed freely (CC0).
Run `python nstexp/samples/make_swirls.py` to recreate it; the output is deterministic.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 512
# Night-sky blues, with warm yellows around the vortices.
BLUES = [(18, 38, 92), (30, 64, 140), (52, 98, 170), (88, 140, 200), (140, 180, 220), (22, 50, 110)]
WARMS = [(242, 204, 72), (250, 228, 130), (226, 160, 40), (255, 244, 190)]
VORTICES = [(0.30, 0.32, 1.0), (0.70, 0.55, -1.0), (0.42, 0.80, 1.0), (0.85, 0.18, 1.0)]


def flow_angle(x: float, y: float) -> float:
    """Direction of the brush at (x, y) in [0, 1]^2: circles around each vortex plus a drift."""
    vx, vy = 0.45, 0.1
    for cx, cy, spin in VORTICES:
        dx, dy = x - cx, y - cy
        r2 = dx * dx + dy * dy + 0.004
        vx += spin * -dy / r2 * 0.08
        vy += spin * dx / r2 * 0.08
    return math.atan2(vy, vx)


def warmth(x: float, y: float) -> float:
    return max(math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.012) for cx, cy, _ in VORTICES)


def paint(seed: int = 7) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (SIZE, SIZE), BLUES[0])
    draw = ImageDraw.Draw(img)
    for _ in range(5200):
        x, y = rng.random(2)
        warm = rng.random() < warmth(x, y) * 0.9
        palette = WARMS if warm else BLUES
        color = palette[rng.integers(len(palette))]
        width = int(rng.integers(4, 10))
        points = [(x * SIZE, y * SIZE)]
        for _ in range(int(rng.integers(6, 16))):
            a = flow_angle(x, y)
            x, y = x + math.cos(a) * 0.008, y + math.sin(a) * 0.008
            points.append((x * SIZE, y * SIZE))
        dark = tuple(int(c * 0.55) for c in color)
        draw.line(points, fill=dark, width=width + 2, joint="curve")
        draw.line(points, fill=color, width=width, joint="curve")
    return img.filter(ImageFilter.SMOOTH)


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "swirls.png")
    paint().save(out, optimize=True)
    print(out)
