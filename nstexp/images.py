"""Reading, resizing and writing images. Inside the harness an image is RGB in [0, 1], (B, 3, H, W)."""

from __future__ import annotations

import importlib.resources
import os
import stat
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nstexp.errors import NstexpError

if TYPE_CHECKING:
    import torch

SAMPLE_PREFIX = "sample:"
# The bundled samples (nstexp/samples/README.md): the made ones as PNG, the paintings and photos as JPEG.
SAMPLE_TYPES = (".png", ".jpg")
# A pipe (`content.image=<(curl -s URL)`) can be read only once: what each gave, by path, for
# the later reads of the same run (coarse-to-fine levels, the metrics) and of later jobs.
_PIPES: dict[str, Image.Image] = {}
# Pillow's default limit (about 89 megapixels); larger images are treated as decompression bombs.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def samples() -> list[str]:
    folder = importlib.resources.files("nstexp") / "samples"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(SAMPLE_TYPES))


def resolve(spec: str, key: str) -> str:
    """A file path for an image spec: a path, or `sample:<name>` for a bundled image."""
    if spec.startswith(SAMPLE_PREFIX):
        name = spec[len(SAMPLE_PREFIX) :]
        if name not in samples():
            allowed = ", ".join(SAMPLE_PREFIX + s for s in samples())
            raise NstexpError(f"{key}={spec}: no such bundled sample (allowed: {allowed}, or a file path)")
        folder = importlib.resources.files("nstexp") / "samples"
        return str(next(folder / f"{name}{t}" for t in SAMPLE_TYPES if (folder / f"{name}{t}").is_file()))
    return spec


# Modes whose values run beyond 8 bits; what white is in them comes from `white`.
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def white(img: Image.Image) -> float:
    """The value of white in a deep mode, decided by the mode and the file's declared bit depth,
    never by the values: a dark 16-bit image (all values <= 255) is still 16-bit.

    F (floating point) holds [0, 1]. I;16* holds 16 bits, and so does I unless the file says
    otherwise: Pillow reads 16-bit PNG and PPM as I or I;16 (PPM scaled to 0..65535). A TIFF
    declares its bits per sample and whether they are signed (I is then often 32-bit).
    """
    if img.mode == "F":
        return 1.0
    bits, signed = 16, False
    tags = getattr(img, "tag_v2", None)  # TIFF only
    if tags is not None:
        declared, sample_format = tags.get(258), tags.get(339)
        first = lambda v: v[0] if isinstance(v, tuple) else v  # noqa: E731 (per sample, all alike here)
        bits = first(declared) or bits
        signed = first(sample_format) == 2
    return float(2 ** (bits - signed) - 1)


def to_rgb(img: Image.Image, top: float | None = None) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited over white.

    `top`: white in a deep mode (see `white`), read off the file before any transpose drops
    its tags; by default read off `img`.
    """
    if img.mode in DEEP_MODES:
        arr = np.asarray(img, dtype=np.float64)
        top = white(img) if top is None else top
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(spec: str, key: str = "image") -> Image.Image:
    """Open an image file as 8-bit RGB, upright per its EXIF orientation.

    Raises NstexpError naming `key` for missing, empty, corrupt, non-image and
    oversized (decompression bomb) files.
    """
    path = resolve(spec, key)
    if path in _PIPES:
        return _PIPES[path].copy()
    if not os.path.exists(path):
        raise NstexpError(f"{key}={spec}: file not found")
    if os.path.isdir(path):
        raise NstexpError(f"{key}={spec}: is a directory, not an image file")
    if stat.S_ISREG(os.stat(path).st_mode) and os.path.getsize(path) == 0:  # a pipe is read as it comes
        raise NstexpError(f"{key}={spec}: file is empty")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise Image.DecompressionBombError("too many pixels")
                top = white(img) if img.mode in DEEP_MODES else None
                img = ImageOps.exif_transpose(img)
                img.load()
                rgb = to_rgb(img, top)
                if not stat.S_ISREG(os.stat(path).st_mode):
                    _PIPES[path] = rgb.copy()
                return rgb
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise NstexpError(
            f"{key}={spec}: refused, more than {MAX_PIXELS} pixels (possible decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise NstexpError(f"{key}={spec}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise NstexpError(f"{key}={spec}: corrupt or truncated image ({exc})") from None


def fit_longest(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(width, height) scaled so the longest side is `longest` pixels, keeping the aspect ratio."""
    scale = longest / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def round_to(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(width, height) with both sides rounded to multiples of `multiple` (the nearest, at least one)."""
    return tuple(max(multiple, round(side / multiple) * multiple) for side in size)


def rounding_error(multiple: int) -> float:
    """The most a side of `round_to(fit_longest(size, n), multiple)` can differ from its exact
    length (the side times n / the longest side), for sides of at least `multiple` px (a run
    refuses smaller ones): half a pixel from `fit_longest`, half the multiple from `round_to`."""
    return 0.5 + multiple / 2


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img.resize(size, Image.Resampling.LANCZOS) if size != img.size else img


def resize_longest(img: Image.Image, longest: int) -> Image.Image:
    """Scale so the longest side is `longest` pixels, keeping the aspect ratio."""
    return resize(img, fit_longest(img.size, longest))


def to_tensor(img: Image.Image, device: torch.device | str = "cpu") -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float in [0, 1]."""
    import torch  # here: reading and writing image files needs no torch

    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> PIL RGB (values outside [0, 1] are clipped)."""
    if image.dim() == 4:
        image = image[0]
    arr = image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def save_image(image: torch.Tensor, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Write then rename, so an interruption never leaves a half-written PNG.
    tmp = f"{path}.tmp"
    to_pil(image).save(tmp, format="PNG")
    os.replace(tmp, path)
