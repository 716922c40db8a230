"""Checks of a composed config that its types cannot express; each failure is one line.

Choices, ranges, layer names, list lengths, files and the sizes the run works at (nstexp.input_sizes)
are all checked before any work starts, so a bad value never costs a run.
"""

from __future__ import annotations

import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from nstexp.config import (ARCHS, CAFFE_WEIGHTS, CLAMPS, COLOR_MODES, CONTENT_NORMALIZATIONS, CONTENT_WEIGHT_AT, INITS,
                           LINE_SEARCHES, OPTIMIZERS, PADDINGS, PARAMS, POOLING, PRECISIONS, PREPROCESSING,
                           STYLE_BALANCES, STYLE_NORMALIZATIONS, WANDB_MODES, WEIGHTS)
from nstexp.errors import ConfigError
from nstexp.loss_catalogue import decomposing_losses, joint_losses, registered_losses
from nstexp import input_sizes, video_options
# The one-line checks of a choice and of a lower bound, which the single losses' options share.
from nstexp.loss_options import at_least as _at_least, check_options, choice as _choice, style_mix


def _check_finite(node: Any, key: str = "") -> None:
    """Refuse nan and inf anywhere in the config: no setting has a use for them."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node} must be a finite number")


def _style_mix(loss: Any, allowed: dict[str, bool]) -> dict[str, float]:
    """{name: weight} of `style.loss`, a registered name or a mapping name -> weight (a mix)."""
    if isinstance(loss, str):
        _choice("style.loss", loss, tuple(allowed))
        return {loss: 1.0}
    if not isinstance(loss, (dict, DictConfig)) or not loss:
        raise ConfigError(f"style.loss={loss!r} must be a style loss name or a mapping name -> weight "
                          f"(allowed names: {', '.join(allowed)})")
    mix = {}
    for name, weight in loss.items():
        if name not in allowed:
            raise ConfigError(f"style.loss: unknown loss {name!r} in the mix (allowed: {', '.join(allowed)})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"style.loss.{name}={weight!r} must be a finite number >= 0 (a weight of the mix)")
        mix[name] = float(weight)
    if not any(w > 0 for w in mix.values()):
        raise ConfigError("style.loss: every weight of the mix is 0 (give at least one loss a weight > 0)")
    return style_mix(loss)


def validate(cfg: DictConfig) -> None:
    """Check what the schema's types cannot; raise ConfigError with a one-line message.

    One check per concern, in this order: numbers, backbone, layers, losses, weights and blends,
    masks, the single losses' options, controls, optimizer, start, schedule, outputs, the final
    pass (as a run of its own), a video's settings (nstexp.video_options), and last the sizes
    (nstexp.input_sizes), which need all the rest.
    """
    declared = registered_losses()
    _check_finite(OmegaConf.to_container(cfg, resolve=True))
    _choice("precision", cfg.precision, PRECISIONS)
    names = _backbone(cfg.backbone)
    _layers(cfg, names)
    mix = _losses(cfg, declared)
    _weights_and_blends(cfg)
    _masks(cfg, mix, declared)
    _tiles(cfg, mix)
    check_options(cfg.style, cfg.content, mix)
    _controls(cfg, names)
    _optimizer(cfg.optimizer)
    _start(cfg)
    _schedule(cfg)
    _outputs(cfg)
    _final_pass(cfg, declared)
    video_options.check(cfg)
    input_sizes.check(cfg)


def _backbone(b) -> tuple[str, ...]:
    """`backbone`: the network and its weights; returns its layer names."""
    from nstexp.network.layout import layer_names

    _choice("backbone.arch", b.arch, ARCHS)
    if b.weights not in WEIGHTS and not os.path.isfile(b.weights):
        raise ConfigError(f"backbone.weights={b.weights!r} is neither a known source nor a file "
                          f"(allowed: {', '.join(WEIGHTS)}, or a path to a state dict file)")
    if b.weights in CAFFE_WEIGHTS and b.arch != "vgg19":
        raise ConfigError(f"backbone.weights={b.weights} exists only for vgg19, not {b.arch} "
                          "(use backbone.weights=imagenet|random|<path>)")
    _choice("backbone.preprocessing", b.preprocessing, PREPROCESSING)
    _choice("backbone.pooling", b.pooling, POOLING)
    _choice("backbone.padding", b.padding, PADDINGS)
    return layer_names(b.arch)


def _layers(cfg: DictConfig, names: tuple[str, ...]) -> None:
    """`layers.content`, `layers.style`: the network's layer names, weights >= 0, one > 0 where the part counts."""
    for part in ("content", "style"):
        layers = cfg.layers[part]
        if not any(w > 0 for w in layers.values()) and cfg[part].weight > 0:
            raise ConfigError(f"layers.{part} has no layer with a weight > 0 but {part}.weight > 0")
        for name, w in layers.items():
            if name not in names:
                raise ConfigError(f"layers.{part}: unknown layer {name!r} for {cfg.backbone.arch} "
                                  f"(allowed: {', '.join(names)})")
            _at_least(f"layers.{part}.{name}", w, 0)


def _losses(cfg: DictConfig, declared: dict) -> dict[str, float]:
    """`content.loss`, `style.loss` (a name or a mix) and their normalizations; returns the mix."""
    _choice("content.normalization", cfg.content.normalization, CONTENT_NORMALIZATIONS)
    _choice("style.normalization", cfg.style.normalization, STYLE_NORMALIZATIONS)
    _choice("content.loss", cfg.content.loss, tuple(declared["content"]))
    mix = _style_mix(cfg.style.loss, declared["style"])
    joint = [name for name in mix if name in joint_losses()["style"]]
    if joint and len(mix) > 1:
        raise ConfigError(f"style.loss={joint[0]} takes all its style layers at once and is not for a mix "
                          f"(give style.loss={joint[0]} alone)")
    if "nnst_split" in mix:
        active = [k for k, w in cfg.layers.style.items() if w > 0]
        for k in cfg.style.nnst.split_layers:
            if k not in active:
                raise ConfigError(f"style.nnst.split_layers: {k!r} is not a style layer weighted > 0 "
                                  f"(layers.style: {', '.join(active)})")
    _choice("style.balance", cfg.style.balance, STYLE_BALANCES)
    return mix


def _weights_and_blends(cfg: DictConfig) -> None:
    """The terms' weights, `style.scale`, `tv.exponent`, and `style.blend_weights` against the style images."""
    for key in ("content.weight", "style.weight", "tv.weight"):
        _at_least(key, cfg[key.split(".")[0]].weight, 0)
    _at_least("style.scale", cfg.style.scale, 0, strict=True)
    # Below 1 the slope at a flat patch, where (Δx)² + (Δy)² = 0, is infinite.
    _at_least("tv.exponent", cfg.tv.exponent, 1)
    n_styles = 1 + len(cfg.style.blend_images)
    if cfg.style.blend_weights and len(cfg.style.blend_weights) != n_styles:
        raise ConfigError(
            f"style.blend_weights has {len(cfg.style.blend_weights)} values for {n_styles} "
            "style images (give one per image, the first included, or none)"
        )
    for w in cfg.style.blend_weights:
        _at_least("style.blend_weights", w, 0)
    if cfg.style.blend_weights and sum(cfg.style.blend_weights) <= 0:
        raise ConfigError("style.blend_weights are all 0 (give at least one weight > 0, or none for equal weights)")


def _masks(cfg: DictConfig, mix: dict[str, float], declared: dict) -> None:
    """`content.mask` and `style.masks`: one mask per style image, and losses that take them."""
    if cfg.content.mask and not declared["content"][cfg.content.loss]:
        guided = " or ".join(name for name, takes_masks in declared["content"].items() if takes_masks)
        raise ConfigError(f"content.mask works with content.loss={guided}, not {cfg.content.loss}")
    n_styles = 1 + len(cfg.style.blend_images)
    if cfg.style.masks and len(cfg.style.masks) != n_styles:
        raise ConfigError(
            f"style.masks has {len(cfg.style.masks)} images for {n_styles} style images "
            "(give one mask per style image, the first included, or none)"
        )
    unguided = [name for name in mix if not declared["style"][name]]
    if cfg.style.masks and unguided:
        guided = " or ".join(name for name, takes_masks in declared["style"].items() if takes_masks)
        raise ConfigError(f"style.masks works with style.loss={guided} (every loss of a mix), not {unguided[0]}")
    if cfg.laplacian.weight > 0 and cfg.content.mask:
        raise ConfigError("laplacian.weight > 0 does not take content.mask (the Laplacian term has no region; "
                          "set laplacian.weight=0 or drop the mask)")


def _controls(cfg: DictConfig, names: tuple[str, ...]) -> None:
    """The Laplacian term's settings, `color.preserve` and `style.scale_control`."""
    _at_least("laplacian.weight", cfg.laplacian.weight, 0)
    _at_least("laplacian.pool", cfg.laplacian.pool, 0)  # the largest the image allows: nstexp.input_sizes
    _choice("color.preserve", cfg.color.preserve, COLOR_MODES)
    sc = cfg.style.scale_control
    for name in sc.fine_layers:
        if name not in names:
            raise ConfigError(f"style.scale_control.fine_layers: unknown layer {name!r} for {cfg.backbone.arch} "
                              f"(allowed: {', '.join(names)})")
    if sc.fine_image is not None and not sc.fine_layers:
        raise ConfigError("style.scale_control.fine_layers is empty (name the layers whose statistics are fine)")
    _at_least("style.scale_control.steps", sc.steps, 0)


def _optimizer(opt) -> None:
    """`optimizer`: the settings of the chosen optimizer."""
    _choice("optimizer.name", opt.name, OPTIMIZERS)
    _at_least("optimizer.lr", opt.lr, 0, strict=True)
    if opt.name == "lbfgs":
        _choice("optimizer.line_search", opt.line_search, LINE_SEARCHES)
        _at_least("optimizer.max_iter", opt.max_iter, 1)
        _at_least("optimizer.history_size", opt.history_size, 1)
        return
    if opt.name == "adam" and (len(opt.betas) != 2 or not all(0 <= b < 1 for b in opt.betas)):
        raise ConfigError(f"optimizer.betas={list(opt.betas)} must be two numbers in [0, 1)")
    if opt.name == "rmsprop" and not 0 <= opt.alpha < 1:
        raise ConfigError(f"optimizer.alpha={opt.alpha} must be in [0, 1) (the decay of the gradients' squares)")
    _at_least("optimizer.eps", opt.eps, 0, strict=True)
    if not 0 <= opt.ema < 1:
        raise ConfigError(f"optimizer.ema={opt.ema} must be in [0, 1) (0 = no averaging)")


def _start(cfg: DictConfig) -> None:
    """What is optimized and from where: `param`, `init`, `clamp`."""
    _choice("param", cfg.param, PARAMS)
    if cfg.param == "laplacian_pyramid":
        _at_least("param_levels (the Laplacian pyramid's bands)", cfg.param_levels, 1)
    _choice("init.kind", cfg.init.kind, INITS)
    if cfg.init.kind == "image" and not cfg.init.path:
        raise ConfigError("init.kind=image needs init.path=<image file>")
    _choice("clamp", cfg.clamp, CLAMPS)


def _schedule(cfg: DictConfig) -> None:
    """`steps`, `size` and the coarse-to-fine `scales` (their final pass: `_final_pass`)."""
    if cfg.steps is not None:
        _at_least("steps", cfg.steps, 0)
    if cfg.size is not None:
        _at_least("size", cfg.size, 16)  # the upper limit is the memory: see nstexp.network.memory
    if cfg.scales.min is not None:
        _at_least("scales.min", cfg.scales.min, 16)  # above `size`: one level (the default's 128 at small sizes)
    _at_least("scales.factor", cfg.scales.factor, 1, strict=True)
    if cfg.scales.first_steps is not None:
        _at_least("scales.first_steps", cfg.scales.first_steps, 0)
    _at_least("scales.content_weight_ratio", cfg.scales.content_weight_ratio, 0, strict=True)
    _choice("scales.content_weight_at", cfg.scales.content_weight_at, CONTENT_WEIGHT_AT)
    if cfg.scales.final_steps is not None:
        _at_least("scales.final_steps", cfg.scales.final_steps, 0)
    if cfg.scales.last_lr is not None:
        _at_least("scales.last_lr", cfg.scales.last_lr, 0, strict=True)


def _tiles(cfg: DictConfig, mix: dict[str, float]) -> None:
    """`tiles`: auto, off, or a tile's side in px, for losses that decompose over positions only."""
    t = cfg.tiles
    if t in ("auto", "off"):
        return
    if isinstance(t, bool) or not isinstance(t, int) or t < 16:
        raise ConfigError(f"tiles={t!r} is not allowed (allowed: auto, off, or a tile's side in px >= 16)")
    ok = decomposing_losses()
    for kind, names in (("content", [cfg.content.loss]), ("style", list(mix))):
        for name in names:
            if name not in ok[kind]:
                raise ConfigError(f"tiles={t}: {kind}.loss={name} does not decompose over positions, so it cannot "
                                  f"be tiled (tiled: {', '.join(sorted(ok[kind]))}; or tiles=off)")
    if cfg.style.masks or cfg.content.mask or cfg.backbone.padding == "circular":
        raise ConfigError(f"tiles={t}: masks and backbone.padding=circular are not tiled (drop them, or tiles=off)")


def _outputs(cfg: DictConfig) -> None:
    """The seed, the yardstick, what is logged and kept and where the run goes: `seed`, `eval`,
    `log_every`, `snapshot_every`, `save_state_every_min`, `wandb.mode`, `device`."""
    if not 0 <= cfg.seed < 2**63:
        raise ConfigError(f"seed={cfg.seed} must be in [0, 2**63)")
    if cfg.eval.every is not None:
        _at_least("eval.every (0: only at the end)", cfg.eval.every, 0)
    _at_least("eval.size", cfg.eval.size, 32)
    if cfg.log_every is not None:
        _at_least("log_every", cfg.log_every, 1)
    _at_least("snapshot_every (0 disables snapshots)", cfg.snapshot_every, 0)
    _at_least("save_state_every_min (0: only when stopped)", cfg.save_state_every_min, 0)
    _choice("wandb.mode", cfg.wandb.mode, WANDB_MODES)
    dev = cfg.device
    if dev not in ("auto", "cpu", "mps") and not (dev == "cuda" or dev.startswith("cuda:")):
        raise ConfigError(f"device={dev!r} is not allowed (allowed: auto, cpu, cuda, cuda:N, mps)")


def _final_pass(cfg: DictConfig, declared: dict) -> None:
    """`scales.final_loss`: a style loss; with `scales.final_pass`, its settings checked as a run of
    their own, at the finest size only (the one the final pass takes)."""
    if cfg.scales.final_loss is None:
        return
    _choice("scales.final_loss", cfg.scales.final_loss, tuple(declared["style"]))
    if cfg.scales.final_pass:
        final = cfg.copy()
        with open_dict(final):
            final.style.loss, final.scales.final_loss, final.scales.min = cfg.scales.final_loss, None, None
        try:
            validate(final)
        except ConfigError as exc:
            raise ConfigError(f"scales.final_loss={cfg.scales.final_loss}: {exc}") from None
