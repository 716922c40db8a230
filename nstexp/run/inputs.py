"""The images a run starts from: content and style at the sizes the run uses, and the initial image.

Sizes are worked out from the config and checked (large enough for the deepest layer, small
enough for the memory) before any image is resized. Inside the harness an image is RGB in
[0, 1], shape (1, 3, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from PIL import Image

from nstexp import images
from nstexp.errors import NstexpError
from nstexp.losses.base import CONTENT_LOSSES
from nstexp.losses.mix import style_loss_for
from nstexp.losses.objective import weighted_layers
from nstexp.network import memory
from nstexp.network.backbone import FeatureExtractor
from nstexp.optim.pyramid import level_settings
from nstexp.run import colour, masks, tiling

# Upscaling an input by more than this blurs it visibly: the run says so.
UPSCALE_WARNING = 2.0


@dataclass
class Inputs:
    """What one size of a run starts from; images (1, 3, H, W), masks (1, 1, H, W)."""

    content: torch.Tensor  # as the network sees it (grey under color.preserve=luminance)
    styles: list[torch.Tensor]  # as the network sees them (colour-matched under histogram)
    colours: torch.Tensor  # the content image in its own colours, for `colour.present`
    style_masks: list[torch.Tensor] | None
    content_mask: torch.Tensor | None


def prepare(cfg: DictConfig, size: int, deepest: dict[str, int], device: torch.device, warnings: list[str],
            check_memory, style_image: Image.Image | None = None) -> Inputs:
    """The run's inputs at one size: `load`ed images, the colour control applied, masks read.

    `style_image` replaces the file of `style.image` (scale control makes its own).
    """
    content, styles = load(cfg, size, deepest, device, warnings, check_memory, style_image)
    wh = (content.shape[-1], content.shape[-2])
    style_masks = [masks.load(spec, f"style.masks[{i}]", wh, device)
                   for i, spec in enumerate(cfg.style.masks)] or None
    content_mask = masks.load(cfg.content.mask, "content.mask", wh, device) if cfg.content.mask else None
    seen, seen_styles = colour.prepare(cfg.color.preserve, content, styles)
    return Inputs(seen, seen_styles, content, style_masks, content_mask)


def load(cfg: DictConfig, size: int, deepest: dict[str, int], device: torch.device, warnings: list[str],
         check_memory, style_image: Image.Image | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Content and style images at the sizes the run uses, as (1, 3, H, W) tensors.

    Sizes are worked out and checked (large enough for the deepest layer, small enough for
    the memory, via `check_memory(content_wh, style_whs)`) before any image is resized.
    """
    specs = [("content.image", cfg.content.image), ("style.image", cfg.style.image)] + [
        (f"style.blend_images[{i}]", s) for i, s in enumerate(cfg.style.blend_images)
    ]
    pils = {key: images.load_image(spec, key) for key, spec in specs}
    if style_image is not None:
        pils["style.image"] = style_image
    content_wh = images.fit_longest(pils["content.image"].size, size)
    style_size = max(1, round(max(content_wh) * cfg.style.scale))
    sizes = {key: content_wh if key == "content.image" else images.fit_longest(pils[key].size, style_size)
             for key in pils}
    layer, pools = max(deepest.items(), key=lambda kv: kv[1])
    need = 2**pools
    # Reflect padding needs 2 px per side at the deepest convolution (torch pads by reflecting
    # the row next to the edge, which a 1 px map lacks).
    least = 2 * need if cfg.backbone.padding == "reflect" else need
    for key, (w, h) in sizes.items():
        if min(w, h) < least:
            raise NstexpError(
                f"{key}: {w}x{h} px after resizing is too small for layer {layer} "
                f"(needs at least {least} px per side{' with backbone.padding=reflect' if least > need else ''}; "
                "raise size or style.scale)"
            )
        factor = max(w, h) / max(pils[key].size)
        if factor > UPSCALE_WARNING:
            warnings.append(f"{key} is {pils[key].width}x{pils[key].height} px: upscaled {factor:.1f}x to "
                            f"{max(w, h)} px, expect a blurry target (use a larger image or a smaller size)")
    # The generated image's sides are multiples of the deepest layer's total pooling: otherwise
    # its last rows and columns, dropped by the poolings, reach only the first layers and come
    # out as noise. This changes the aspect ratio by a few pixels at most.
    sizes["content.image"] = images.round_to(content_wh, need)
    style_keys = [key for key, _ in specs[1:]]
    check_memory(sizes["content.image"], [sizes[k] for k in style_keys])
    content = images.to_tensor(images.resize(pils["content.image"], sizes["content.image"]), device)
    styles = [images.to_tensor(images.resize(pils[k], sizes[k]), device) for k in style_keys]
    return content, styles


def stack_shape(shapes: dict[str, tuple[int, int, int]], layers, hw: tuple[int, int]) -> tuple[int, int, int]:
    """A joint loss's LayerStack as one (D, H, W): D = 3 + Σ_l N_l values at each of the H × W pixels."""
    return (3 + sum(shapes[k][0] for k in layers if k in shapes), *hw)


def style_bytes(loss, layers, result: dict, styles: list[dict], hw: tuple[int, int], style_hws: list) -> int:
    """A style loss's working bytes for the result's and the style images' feature shapes."""
    if loss.joint:  # once, with its stack's shape: the RGB and every layer's channels per pixel
        return loss.working_bytes(stack_shape(result, layers, hw),
                                  [stack_shape(s, layers, shw) for s, shw in zip(styles, style_hws)])
    return sum(loss.working_bytes(result[k], [s[k] for s in styles]) for k in layers if k in result)


# The tiles a refusal names the L-BFGS history for when not even the smallest tiles fit (the size
# the bench measures on a CPU; smaller tiles hold less but take longer).
REFERENCE_TILE = 512


def memory_check(extractor: FeatureExtractor, cfg, device: torch.device, summary: dict, batch: int = 1,
                 job_cfgs: list | None = None):
    """A `check_memory` for `load` that refuses what cannot fit and records the estimate (of a
    batch of `batch` jobs, whose own configs `job_cfgs` name each job's style loss and layers;
    None: `cfg`'s, for every job)."""
    # The losses' own memory (mrf's patches and similarities, strotss's and self_similarity's cost
    # matrices): per job, as they are per-job settings.
    cfgs = job_cfgs or [cfg] * batch
    # Each job's style loss, and its final pass's where that has another (the larger counts).
    passes = [[c] + ([level_settings(c, 1, 1)] if c.scales.final_pass and c.scales.final_loss else []) for c in cfgs]
    losses = [[(style_loss_for(p.style), weighted_layers(p.layers)[1]) for p in ps] for ps in passes]
    content_losses = [(CONTENT_LOSSES[c.content.loss](c.content), weighted_layers(c.layers)[0]) for c in cfgs]

    can_tile = tiling.tileable(cfgs)

    def check(content_wh: tuple[int, int], style_whs: list[tuple[int, int]]) -> None:
        w, h = content_wh

        def loss_bytes(hh: int, ww: int) -> int:  # the style images scaled with the content
            result = memory.feature_shapes(extractor, hh, ww)
            style_hws = [(round(sh * hh / h), round(sw * hh / h)) for sw, sh in style_whs]
            styles = [memory.feature_shapes(extractor, *hw) for hw in style_hws]
            total = 0
            for job_losses in losses:
                total += max(style_bytes(loss, layers, result, styles, (hh, ww), style_hws) for loss, layers in job_losses)
            for loss, layers in content_losses:
                if loss.joint:
                    total += loss.working_bytes(stack_shape(result, layers, (hh, ww)))
                else:
                    total += sum(loss.working_bytes(result[k]) for k in layers if k in result)
            return total

        need = memory.estimate_bytes(extractor, h, w, cfg.optimizer, batch, loss_bytes)
        have = memory.available_bytes(device)
        # Tiled, the style images pass in tiles one layer at a time (nstexp.losses.objective): one
        # layer's maps at the style's size stay, beside a tile's memory.
        maps = max(4 * c * hh * ww for sw, sh in style_whs for c, hh, ww in memory.feature_shapes(extractor, sh, sw).values())
        tile = tiling.plan(cfg, extractor, h, w, batch, need, have, loss_bytes, can_tile, maps,
                           tiling.CPU_TILE if device.type == "cpu" else None)
        if tile:  # the level is evaluated in tiles (nstexp.tiling): a tile's memory, and the image's
            check.tiles[(h, w)] = tile
            need = tiling.estimate(cfg, extractor, h, w, tile, batch, loss_bytes, maps)
        for sw, sh in style_whs if not tile else []:  # style images pass once, without a graph: about
            need = max(need, 3 * memory.activation_bytes(extractor, sh, sw)[1])  # their largest activations
        # The largest of the sizes checked (a coarse-to-fine run checks each level).
        summary["memory_estimate_mb"] = max(summary.get("memory_estimate_mb", 0.0), need / 2**20)

        def history(estimate: int, where: str = "") -> str:  # the most L-BFGS pairs with which it would fit
            n = memory.largest_history(estimate, have, h, w, cfg.optimizer, batch)
            return f"optimizer.history_size={n} would fit{where}; " if 0 < n < cfg.optimizer.history_size else ""

        if have is not None and need > have and tile:
            raise NstexpError(
                f"size={max(w, h)} in tiles of {tile} px (precision={extractor.precision}"
                f"{f', a batch of {batch} jobs' if batch > 1 else ''}): needs about {need / 2**30:.1f} GiB, "
                f"{have / 2**30:.1f} GiB available on {device}: tiles bound the network's memory, not the "
                f"image's, the optimizer's state ({memory.image_bytes(h, w, cfg.optimizer, batch) / 2**30:.1f} GiB "
                f"with the image and its gradient) or the style image's pass ({history(need)}lower size, style.scale, "
                "optimizer.history_size or the tiles, or use optimizer=adam)")
        if have is not None and need > have:
            fits = memory.largest_fitting(extractor, h, w, cfg.optimizer, have, batch, loss_bytes)
            tiled = can_tile and cfg.tiles != "off"  # then the history that tiles of REFERENCE_TILE px would take
            pairs = history(tiling.estimate(cfg, extractor, h, w, REFERENCE_TILE, batch, loss_bytes, maps),
                            f" in tiles of {REFERENCE_TILE} px") if tiled else history(need)
            hint = pairs + (f"size={fits} would fit" if fits else "no size fits")
            if not extractor.checkpoint:
                hint += ", more with checkpoint=true"
            lower = "lower size or style.scale"
            if can_tile and cfg.tiles != "off":  # not even the smallest tiles fit: name what they cannot lift
                state = memory.image_bytes(h, w, cfg.optimizer, batch) / 2**30
                lower += (f"; no tiles fit either: whatever the tiles, the image, its gradient and the optimizer's "
                          f"state take {state:.1f} GiB and a layer of the style's targets {maps / 2**30:.1f} GiB, so "
                          "lower optimizer.history_size, use optimizer=adam or lower style.scale")
            raise NstexpError(
                f"size={max(w, h)} (style.scale={cfg.style.scale}, precision={extractor.precision}"
                f"{f', a batch of {batch} jobs' if batch > 1 else ''}): needs about "
                f"{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available on {device} ({hint}; {lower})"
            )

    check.tiles = {}  # (H, W) -> the tile side of a level that is evaluated in tiles
    return check


def initial_image(cfg: DictConfig, content: torch.Tensor, styles: list[torch.Tensor]) -> torch.Tensor:
    """The image the optimization starts from, in the colours the network sees (grey when
    color.preserve=luminance); `content` and `styles` as `Inputs` holds them."""
    kind = cfg.init.kind
    h, w = content.shape[-2:]
    if kind == "content":
        return content.clone()
    if kind == "noise":
        # Drawn on the CPU so the same seed gives the same start on every device.
        gen = torch.Generator().manual_seed(cfg.seed)
        image = torch.rand(content.shape, generator=gen).to(content.device)
    elif kind == "style":
        image = images.to_tensor(images.to_pil(styles[0]).resize((w, h), Image.Resampling.LANCZOS), content.device)
    else:  # image
        pil = images.load_image(cfg.init.path, "init.path").resize((w, h), Image.Resampling.LANCZOS)
        image = images.to_tensor(pil, content.device)
    return colour.grey(colour.luminance(image)) if cfg.color.preserve == "luminance" else image
