"""Draws the bundled masks `coffee_saucer.png` and `coffee_table.png` for `sample:coffee`.

Two regions for spatial control: the cup on its saucer (two ellipses traced by hand over
the photo) and the table around it (its complement). Run `python nstexp/samples/make_coffee_masks.py`
to recreate them; the output is deterministic. CC0.
"""

from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageOps

SIZE = (600, 400)  # coffee.png's
SAUCER = (76, 68, 481, 390)  # ellipses' bounding boxes (left, top, right, bottom)
CUP_RIM = (170, 16, 412, 210)


def draw() -> tuple[Image.Image, Image.Image]:
    saucer = Image.new("L", SIZE, 0)
    pen = ImageDraw.Draw(saucer)
    pen.ellipse(SAUCER, fill=255)
    pen.ellipse(CUP_RIM, fill=255)
    return saucer, ImageOps.invert(saucer)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    for name, mask in zip(("coffee_saucer", "coffee_table"), draw()):
        mask.save(os.path.join(here, f"{name}.png"), optimize=True)
        print(os.path.join(here, f"{name}.png"))
