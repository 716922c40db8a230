"""Image loading: every Pillow mode becomes RGB, bad files fail with one clear line."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_cfg
from nstexp import images
from nstexp.run import inputs, masks
from nstexp.eval import metrics
from nstexp.errors import NstexpError


def _save(img, path, **kw):
    img.save(path, **kw)
    return str(path)


def _palette(colour):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, *colour] + [0] * 762)
    return img


@pytest.mark.parametrize("ext", ["png", "tif"])
@pytest.mark.parametrize(
    "mode,make,expected",
    [
        ("RGB", lambda: Image.new("RGB", (8, 8), (10, 20, 30)), (10, 20, 30)),
        ("L", lambda: Image.new("L", (8, 8), 128), (128, 128, 128)),
        ("1", lambda: Image.new("1", (8, 8), 1), (255, 255, 255)),
        ("P", lambda: _palette((200, 100, 50)), (200, 100, 50)),
        ("RGBA", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)), (255, 255, 255)),  # transparent -> white
        ("RGBA", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 255)), (255, 0, 0)),
        ("LA", lambda: Image.new("LA", (8, 8), (0, 128)), (128, 128, 128)),  # half-transparent black over white
        ("CMYK", lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
    ],
)
def test_modes_become_rgb(tmp_path, ext, mode, make, expected):
    if mode == "CMYK" and ext == "png":  # PNG has no CMYK: JPEG does
        path = _save(make(), tmp_path / "x.jpg", quality=100)
    else:
        path = _save(make(), tmp_path / f"x.{ext}")
    assert Image.open(path).mode == mode  # the file holds the mode under test
    img = images.load_image(path)
    assert img.mode == "RGB"
    assert img.getpixel((4, 4)) == pytest.approx(expected, abs=3)


def _deep(mode, values):
    """A 2 x 1 image of `mode` holding `values`."""
    if mode == "I;16B":
        return Image.frombytes(mode, (2, 1), np.array(values, dtype=">u2").tobytes())
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    img = Image.fromarray(np.array([values], dtype=dtype))
    assert img.mode == mode
    return img


# (mode, format, values, white): white follows from the mode and the depth the file declares.
DEEP = [
    ("I;16", "png", [200, 100], 65535),  # a dark 16-bit image: every value <= 255
    ("I;16", "tif", [200, 100], 65535),
    ("I;16B", "tif", [200, 100], 65535),
    ("I;16", "png", [200, 40000], 65535),
    ("I", "tif", [200, 2**30], 2**31 - 1),  # Pillow writes I as 32-bit signed TIFF
    ("F", "tif", [0.25, 2.0], 1.0),  # floating point holds [0, 1]; above is white
]


@pytest.mark.parametrize("mode,ext,values,top", DEEP)
def test_deep_modes_are_scaled_by_their_depth_not_their_values(tmp_path, mode, ext, values, top):
    """200 of 65535 is nearly black, even when no value in the image is above 255."""
    path = _save(_deep(mode, values), tmp_path / f"deep.{ext}")
    assert Image.open(path).mode == mode
    out = images.load_image(path)
    for x, value in enumerate(values):
        grey = min(255.0, value / top * 255)
        assert out.getpixel((x, 0)) == pytest.approx((grey,) * 3, abs=1), (x, value)


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
    assert {"chelsea", "swirls", "coffee", "mosaic", "tubingen", "starry_night"} <= set(images.samples())
    assert images.load_image("sample:chelsea").size == (451, 300)
    # The Figure 2 inputs are JPEG copies, 512 px on the long side.
    assert images.load_image("sample:tubingen").size == (512, 384)
    assert max(images.load_image("sample:starry_night").size) == 512
    with pytest.raises(NstexpError, match="allowed: sample:chelsea, sample:coffee, sample:coffee_saucer, "
                       "sample:coffee_table, sample:mosaic, sample:shipwreck, sample:starry_night, "
                       "sample:swirls, sample:the_scream, sample:tubingen, or a file path"):
        images.load_image("sample:nope", "style.image")


@pytest.mark.parametrize("pair", ["chelsea_swirls", "coffee_mosaic", "tubingen_starry_night"])
def test_a_pair_sets_both_images_to_bundled_samples(pair):
    from nstexp.composition import compose_job

    cfg = compose_job([f"pair={pair}"])
    content, style = pair.split("_", 1)
    assert (cfg.content.image, cfg.style.image) == (f"sample:{content}", f"sample:{style}")
    assert images.load_image(cfg.content.image) and images.load_image(cfg.style.image)
    # After a recipe in the defaults list: the pair wins over the recipe's own images.
    assert compose_job(["experiment=seed004_style_only", f"pair={pair}"]).style.image == f"sample:{style}"


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


def test_every_reader_of_images_scales_a_dark_16_bit_file_alike(tmp_path):
    """Inputs, init images, masks and the metrics (what `nstexp evaluate` reads) all read 200 of 65535."""
    path = _save(Image.fromarray(np.full((48, 64), 200, dtype=np.uint16)), tmp_path / "dark16.png")
    cpu = torch.device("cpu")
    cfg = tiny_cfg(f"content.image={path}", f"style.image={path}", "size=64", "init=image", f"init.path={path}")
    content, styles = inputs.load(cfg, 64, {"relu5_1": 4}, cpu, [], lambda *sizes: None)
    readers = {
        "images.load_image": images.to_tensor(images.load_image(path)),
        "content.image": content,
        "style.image": styles[0],
        "init.path": inputs.initial_image(cfg, content, styles),
        "style.masks": masks.load(path, "style.masks[0]", (64, 48), cpu),
        "metrics.load": metrics.load(path, "result"),
    }
    for name, image in readers.items():
        assert image.min() == image.max(), name  # flat
        assert image.max().item() == pytest.approx(200 / 65535, abs=0.5 / 255), name
