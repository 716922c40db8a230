"""Image loading: every Pillow mode becomes RGB, bad files fail with one clear line."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from nstexp import images
from nstexp.errors import NstexpError


def _save(img, path, **kw):
    img.save(path, **kw)
    return str(path)


@pytest.mark.parametrize(
    "mode,color,expected",
    [
        ("RGB", (10, 20, 30), (10, 20, 30)),
        ("L", 128, (128, 128, 128)),
        ("1", 1, (255, 255, 255)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent red -> white background
        ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
        ("LA", (0, 128), (128, 128, 128)),  # half-transparent black over white
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ],
)
def test_modes_become_rgb(tmp_path, mode, color, expected):
    ext = "jpg" if mode == "CMYK" else "png"
    if mode == "CMYK":
        path = _save(Image.new(mode, (8, 8), color), tmp_path / f"x.{ext}", quality=100)
    else:
        path = _save(Image.new(mode, (8, 8), color), tmp_path / f"x.{ext}")
    img = images.load_image(path)
    assert img.mode == "RGB"
    assert img.getpixel((4, 4)) == pytest.approx(expected, abs=3)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.info["transparency"] = 0
    img.putpixel((0, 0), 0)
    path = _save(img, tmp_path / "p.png", transparency=0)
    out = images.load_image(path)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 255, 0)


def test_16_bit_grayscale(tmp_path):
    arr = np.full((6, 6), 65535 // 2, dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    px = images.load_image(path).getpixel((0, 0))
    assert px == pytest.approx((127, 127, 127), abs=1)


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(img, tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    out = images.load_image(path)
    assert out.size == (20, 40)
    assert out.getpixel((10, 2))[0] > 200  # the red strip is now at the top


def test_bad_files(tmp_path):
    with pytest.raises(NstexpError, match=r"content.image=.*missing.png: file not found"):
        images.load_image(str(tmp_path / "missing.png"), "content.image")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(NstexpError, match="file is empty"):
        images.load_image(str(tmp_path / "empty.png"))
    (tmp_path / "notes.txt").write_text("hello, not an image")
    with pytest.raises(NstexpError, match="not an image Pillow can read"):
        images.load_image(str(tmp_path / "notes.txt"))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:-40])
    with pytest.raises(NstexpError, match="corrupt or truncated"):
        images.load_image(str(tmp_path / "cut.png"))
    with pytest.raises(NstexpError, match="is a directory"):
        images.load_image(str(tmp_path))


def test_decompression_bomb_is_refused(tmp_path):
    # A few kilobytes on disk, just over Pillow's pixel limit once decoded.
    side = int(images.MAX_PIXELS**0.5) + 64
    path = _save(Image.new("1", (side, side)), tmp_path / "bomb.png")
    with pytest.raises(NstexpError, match="decompression bomb"):
        images.load_image(path, "style.image")


def test_samples_and_unknown_sample():
    assert {"chelsea", "swirls", "coffee", "mosaic"} <= set(images.samples())
    assert images.load_image("sample:chelsea").size == (451, 300)
    with pytest.raises(NstexpError, match="allowed: sample:chelsea, sample:coffee, sample:coffee_saucer, "
                       "sample:coffee_table, sample:mosaic, sample:swirls, or a file path"):
        images.load_image("sample:nope", "style.image")


def test_resize_and_tensor_round_trip():
    img = Image.new("RGB", (300, 150), (255, 0, 51))
    small = images.resize_longest(img, 64)
    assert small.size == (64, 32)
    t = images.to_tensor(small)
    assert t.shape == (1, 3, 32, 64) and t.dtype == torch.float32
    assert t[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert images.to_pil(t).getpixel((0, 0)) == (255, 0, 51)
    assert images.round_to((384, 255), 16) == (384, 256)
    assert images.round_to((20, 5), 16) == (16, 16)
