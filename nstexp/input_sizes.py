"""The sizes a run works at, checked before anything runs; each refusal is one line.

What is checked, for every job (nstexp.validation.validate calls `check` last):

- **The input images.** content.image, style.image and every style.blend_images has at least
  2^p px on its shorter side, p the poolings before the deepest weighted layer (16 px for
  relu5_1, 8 for relu4_2): one position of that layer at the image's own resolution. A smaller
  image holds less than one position of the deepest layer; all the run would see there is what
  upsampling made up.
- **Every coarse-to-fine level** (`scales.min` up to `size`; at the device's default size where
  `size` is null, both defaults for device=auto), in the run's own arithmetic (nstexp.run.inputs.load):
  the content image and each style image resized for the level (the style times style.scale)
  reach the deepest layer (twice that with backbone.padding=reflect); with laplacian.weight > 0
  the content has at least 3 · 2^laplacian.pool px per side (the 3×3 Laplacian after the
  pooling); every view of a style image (mrf's rotated and scaled copies) reaches the deepest
  layer; and a loss that needs k > 1 positions per side (StyleLoss.min_positions: mrf's
  patch size) has them at each of its layers, in the result and in some view of the style.

Why in the config's checks rather than when the run sets up: all of this is arithmetic on the
VGG layout and on the image files' headers (Pillow reads a size without decoding the pixels),
so the command refuses any job of a sweep, at any level, before the first job starts, and
without importing torch. An image this cannot read ahead (a pipe, a missing file) is left to the
run, which reads it and checks its sizes again at each level (nstexp.run.inputs.load).
"""

from __future__ import annotations

import functools
import os
import stat

from omegaconf import OmegaConf

from nstexp.errors import ConfigError
from nstexp.loss_catalogue import min_positions
from nstexp.loss_options import mrf_view_sizes, style_mix
from nstexp.network.layout import pools_before
from nstexp.optim.levels import levels

# The longest side when `size` is null: a GPU affords larger images (nstexp.run.runner).
DEFAULT_SIZE = {"cpu": 256, "gpu": 512}
# The style views a loss makes of each style image, as (height, width) (StyleLoss.views).
VIEWS = {"mrf": lambda style, h, w: mrf_view_sizes(h, w, style.mrf.rotations, style.mrf.scales)}


def pools_through(arch: str, layer: str) -> int:
    """The 2x poolings an image has passed once it reaches `layer`'s output (a pool layer's own too)."""
    return pools_before(arch, layer) + (1 if layer.startswith("pool") else 0)


def positions(arch: str, layer: str, h: int, w: int) -> tuple[int, int]:
    """(height, width) of `layer`'s features for an h × w image: 3×3 convolutions padded by 1 keep
    the size, each 2×2 pooling of stride 2 halves it, rounding down."""
    p = pools_through(arch, layer)
    return h >> p, w >> p


def image_size(spec: str, key: str) -> tuple[int, int] | None:
    """(width, height) of an input image, upright, from its file's header; None where it cannot
    be read ahead (a pipe, a missing or unreadable file: the run reports those)."""
    from nstexp import images  # Pillow and numpy: only once a config has passed every other check

    path = images.resolve(spec, key)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _header(path, st.st_mtime_ns, st.st_size) if stat.S_ISREG(st.st_mode) else None


@functools.lru_cache(maxsize=256)
def _header(path: str, mtime_ns: int, size: int) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            # EXIF orientations 5-8 turn the image a quarter (images.load_image makes it upright).
            return (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)
    except Exception:  # not an image: images.load_image says so when the run reads it
        return None


def sizes_to_check(cfg) -> list[tuple[int, str]]:
    """The longest sides the run may take, with how to name each: `size`, or where it is null the
    default of the device (of both kinds for device=auto)."""
    if cfg.size is not None:
        return [(cfg.size, f"size={cfg.size}")]
    kinds = ["cpu"] if cfg.device == "cpu" else ["cpu", "gpu"] if cfg.device == "auto" else ["gpu"]
    return [(DEFAULT_SIZE[k], f"size={DEFAULT_SIZE[k]} (the {k.upper()} default)") for k in kinds]


def check(cfg) -> None:
    """Refuse, in one line, an input image or a level too small for what the run asks of it."""
    arch = cfg.backbone.arch
    layers = [k for part in ("content", "style") for k, w in cfg.layers[part].items() if w > 0]
    if cfg.style.scale_control.fine_image:
        layers += list(cfg.style.scale_control.fine_layers)
    if not layers:
        return
    deepest = max(layers, key=lambda k: pools_before(arch, k))
    need = 2 ** pools_before(arch, deepest)
    keys = [("content.image", cfg.content.image), ("style.image", cfg.style.image)] + [
        (f"style.blend_images[{i}]", s) for i, s in enumerate(cfg.style.blend_images)]
    files = {key: image_size(spec, key) for key, spec in keys}
    for key, wh in files.items():
        if wh is not None and min(wh) < need:
            raise ConfigError(f"{key}: {wh[0]}x{wh[1]} px is smaller than the smallest image a run takes, "
                              f"{need} px on the shorter side (one position of {deepest}, the deepest layer; "
                              "use a larger image)")
    if files["content.image"] is None:
        return
    for size, name in sizes_to_check(cfg):
        sides = levels(size, cfg.scales.min, cfg.scales.factor)
        for side in sides:
            where = name if len(sides) == 1 else f"the {side} px level of {name}"
            check_level(cfg, side, where, len(sides) > 1, files, deepest, need)


def check_level(cfg, side: int, where: str, several: bool, files: dict, deepest: str, need: int) -> None:
    """One level's sizes, as nstexp.run.inputs.load makes them (`files`: the inputs' (width, height))."""
    from nstexp.images import fit_longest, round_to

    arch, raise_ = cfg.backbone.arch, "raise size or scales.min" if several else "raise size"
    least = 2 * need if cfg.backbone.padding == "reflect" else need
    content_wh = fit_longest(files["content.image"], side)
    style_side = max(1, round(max(content_wh) * cfg.style.scale))
    resized = {key: content_wh if key == "content.image" else fit_longest(wh, style_side)
               for key, wh in files.items() if wh is not None}
    for key, (w, h) in resized.items():
        if min(w, h) < least:
            raise ConfigError(f"{key}: {w}x{h} px after resizing at {where} is too small for layer {deepest} "
                              f"(needs at least {least} px per side"
                              f"{' with backbone.padding=reflect' if least > need else ''}; {raise_} or style.scale)")
    w, h = round_to(content_wh, need)  # the result's size
    lap = cfg.laplacian
    if lap.weight > 0 and min(w, h) >> lap.pool < 3:
        least_lap = 3 * 2**lap.pool if lap.pool <= 16 else f"3 x 2^{lap.pool}"
        raise ConfigError(f"laplacian.pool={lap.pool}: the result is {w}x{h} px at {where}, and the 3x3 Laplacian "
                          f"after its 2^{lap.pool} pooling needs at least {least_lap} px per side "
                          f"(lower laplacian.pool or {raise_})")
    needs = min_positions()
    style_layers = [k for k, v in cfg.layers.style.items() if v > 0]
    content_layers = [k for k, v in cfg.layers.content.items() if v > 0]
    k_content = option(cfg.content, needs["content"].get(cfg.content.loss, 1))
    for layer in content_layers if cfg.content.weight > 0 else []:
        fh, fw = positions(arch, layer, h, w)
        if min(fh, fw) < k_content:
            raise ConfigError(f"content.loss={cfg.content.loss}: layer {layer} has {fw}x{fh} positions at {where}, "
                              f"fewer than {k_content} per side ({raise_}, or drop {layer})")
    if cfg.style.weight <= 0:
        return
    style_keys = list(files)[1:]
    shares = dict(zip(style_keys, list(cfg.style.blend_weights) or [1.0] * len(style_keys)))
    for loss in style_mix(cfg.style.loss):
        # Each style image's views as (height, width), and whether its blend share is > 0.
        views = {key: (VIEWS[loss](cfg.style, wh[1], wh[0]) if loss in VIEWS else [(wh[1], wh[0])], shares[key] > 0)
                 for key, wh in resized.items() if key != "content.image"}
        for key, (hws, _) in views.items():
            for vh, vw in hws:
                if min(vh, vw) < least:
                    raise ConfigError(f"style.loss={loss}: a view of {key} (style.mrf.rotations, style.mrf.scales) "
                                      f"is {vw}x{vh} px at {where}, too small for layer {deepest} (needs at least "
                                      f"{least} px per side; {raise_} or style.scale, or use larger style.mrf.scales)")
        key_k = needs["style"].get(loss, 1)
        k = option(cfg.style, key_k)
        if k <= 1:
            continue
        what = f"style.{key_k}={k}" if isinstance(key_k, str) else str(k)
        for layer in style_layers:
            fh, fw = positions(arch, layer, h, w)
            if min(fh, fw) < k:
                raise ConfigError(f"style.loss={loss}: style layer {layer} of the result has {fw}x{fh} positions at "
                                  f"{where}, fewer than {what} per side ({raise_}, or drop {layer})")
            seen = [positions(arch, layer, vh, vw) for hws, used in views.values() if used for vh, vw in hws]
            if seen and all(min(p) < k for p in seen):
                shown = ", ".join(f"{pw}x{ph}" for ph, pw in dict.fromkeys(seen))
                raise ConfigError(f"style.loss={loss}: style layer {layer} of the style has {shown} positions at "
                                  f"{where}, fewer than {what} per side ({raise_} or style.scale, or drop {layer})")


def option(section, need: int | str) -> int:
    """A loss's minimum positions per side: `need` itself, or the option of `section` it names."""
    return int(OmegaConf.select(section, need)) if isinstance(need, str) else int(need)
