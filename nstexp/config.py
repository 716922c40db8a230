"""The configuration schema: one dataclass per config node, registered with Hydra.

Structured configs make Hydra reject unknown keys and wrong types when it composes
the config; `validate` then checks what a type cannot express (choices, layer names,
non-negative weights) so that every bad value fails before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
import math
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from nstexp.errors import ConfigError

ARCHS = ("vgg19", "vgg16")
WEIGHTS = ("caffe", "imagenet", "random")  # or a path to a state dict file
PREPROCESSING = ("auto", "caffe", "imagenet")
POOLING = ("max", "avg", "avg_scaled")
PADDINGS = ("zeros", "reflect", "replicate")
CONTENT_NORMALIZATIONS = ("gatys", "mean")
STYLE_NORMALIZATIONS = ("gatys", "mean", "cosine")
STYLE_LOSSES = ("gram", "w2", "sliced")
STYLE_BALANCES = ("none", "content")
OPTIMIZERS = ("lbfgs", "adam")
LINE_SEARCHES = ("none", "strong_wolfe")
INITS = ("content", "noise", "style", "image")
CLAMPS = ("every_step", "at_end")
WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class BackboneConfig:
    arch: str = "vgg19"
    # caffe | imagenet | random | path to a state dict file
    weights: str = "caffe"
    # auto: the preprocessing the weights were trained with
    preprocessing: str = "auto"
    # The paper reports slightly nicer results with average pooling; avg_scaled keeps the
    # activations' magnitudes of max pooling.
    pooling: str = "max"
    # Of every convolution: zeros (VGG's), reflect, replicate (fewer edge artefacts).
    padding: str = "zeros"


@dataclass
class LayersConfig:
    name: str = MISSING
    # layer name -> weight (the paper's w_l for style layers)
    content: Dict[str, float] = field(default_factory=dict)
    style: Dict[str, float] = field(default_factory=dict)


@dataclass
class ContentConfig:
    image: str = "sample:chelsea"
    weight: float = 1.0
    normalization: str = "gatys"


@dataclass
class StyleConfig:
    image: str = "sample:swirls"
    # Extra style images whose Gram matrices are blended with the first one's.
    blend_images: List[str] = field(default_factory=list)
    # One weight per style image (the first one included); empty means equal weights.
    blend_weights: List[float] = field(default_factory=list)
    # Longest side of the style image relative to the content image's.
    scale: float = 1.0
    weight: float = 1e3
    # gram (Gatys et al.), w2 (Wasserstein-2 between Gaussian fits), sliced (Heitz et al.)
    loss: str = "gram"
    # Of the Gram matrices; the w2 and sliced losses have no normalization to choose.
    normalization: str = "gatys"
    # none: the equations as written; content: each layer's term divided by its value on the
    # content image, so that every layer counts by its weight w_l.
    balance: str = "none"


@dataclass
class TVConfig:
    weight: float = 0.0
    # TV = sum ((Δx)² + (Δy)²)^exponent; 1 is the plain sum of squares, seed 000 uses 1.25.
    exponent: float = 1.0


@dataclass
class LBFGSConfig:
    name: str = "lbfgs"
    lr: float = 1.0
    history_size: int = 100
    # L-BFGS iterations per harness step; 1 makes a step comparable to an Adam step.
    max_iter: int = 1
    line_search: str = "none"
    # Divide the loss by its first value before differentiating. The minimizer is the same,
    # but with VGG's raw activations the gradient is ~1e9 per pixel, and L-BFGS's first and
    # fallback steps (which move by the gradient itself) would blow the image up.
    normalize_loss: bool = True


@dataclass
class AdamConfig:
    name: str = "adam"
    # In units of the RGB [0, 1] image.
    lr: float = 0.02
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # Decay of a bias-corrected exponential average of the iterates, reported instead of
    # the last iterate (crowsonkb uses 0.99); 0 = off.
    ema: float = 0.0


@dataclass
class InitConfig:
    kind: str = "content"
    # For kind=image: the image to start from.
    path: Optional[str] = None


@dataclass
class ScalesConfig:
    # Smallest longest side in pixels; None: one level, at `size`.
    min: Optional[int] = None
    # Each level's longest side is `factor` times the previous one's (crowsonkb's √2).
    factor: float = 1.4142135623730951
    # Steps at the first level (None: `steps`, as at every other level).
    first_steps: Optional[int] = None


@dataclass
class WandbConfig:
    mode: str = "auto"
    project: str = "nstexp"
    entity: Optional[str] = None
    # None: one group per multirun sweep; a single run has no group.
    group: Optional[str] = None
    # None: made from the command-line overrides.
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class Config:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    layers: LayersConfig = field(default_factory=LayersConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    tv: TVConfig = field(default_factory=TVConfig)
    # Typed by the schema of the chosen optimizer/ option.
    optimizer: Any = MISSING
    init: InitConfig = field(default_factory=InitConfig)
    # None: 400 on CPU, 500 on a GPU.
    steps: Optional[int] = None
    # Longest side of the content image in pixels. None: 384 on CPU, 512 on a GPU.
    size: Optional[int] = None
    # Coarse-to-fine levels; `steps` counts within each.
    scales: ScalesConfig = field(default_factory=ScalesConfig)
    seed: int = 0
    # auto: cuda, then mps, then cpu
    device: str = "auto"
    clamp: str = "every_step"
    log_every: int = 1
    snapshot_every: int = 50
    progress: bool = True
    # Multirun only: rerun just the jobs of the latest matching sweep that did not complete.
    resume: bool = False
    wandb: WandbConfig = field(default_factory=WandbConfig)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="optimizer", name="lbfgs_schema", node=LBFGSConfig)
    cs.store(group="optimizer", name="adam_schema", node=AdamConfig)


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed (allowed: {', '.join(allowed)})")


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


def _at_least(key: str, value: float, low: float, strict: bool = False) -> None:
    if value < low or (strict and value == low):
        raise ConfigError(f"{key}={value} must be {'>' if strict else '>='} {low}")


def validate(cfg: DictConfig) -> None:
    """Check what the schema's types cannot; raise ConfigError with a one-line message."""
    from nstexp.backbone import layer_names  # the layer names come from the network itself

    _check_finite(OmegaConf.to_container(cfg, resolve=True))
    b = cfg.backbone
    _choice("backbone.arch", b.arch, ARCHS)
    if b.weights not in WEIGHTS and not os.path.isfile(b.weights):
        raise ConfigError(
            f"backbone.weights={b.weights!r} is neither a known source nor a file "
            f"(allowed: {', '.join(WEIGHTS)}, or a path to a state dict file)"
        )
    if b.weights == "caffe" and b.arch != "vgg19":
        raise ConfigError(
            f"backbone.weights=caffe exists only for vgg19, not {b.arch} "
            "(use backbone.weights=imagenet|random|<path>)"
        )
    _choice("backbone.preprocessing", b.preprocessing, PREPROCESSING)
    _choice("backbone.pooling", b.pooling, POOLING)
    _choice("backbone.padding", b.padding, PADDINGS)

    names = layer_names(b.arch)
    for part in ("content", "style"):
        layers = cfg.layers[part]
        if not any(w > 0 for w in layers.values()) and cfg[part].weight > 0:
            raise ConfigError(f"layers.{part} has no layer with a weight > 0 but {part}.weight > 0")
        for name, w in layers.items():
            if name not in names:
                raise ConfigError(
                    f"layers.{part}: unknown layer {name!r} for {b.arch} "
                    f"(allowed: {', '.join(names)})"
                )
            _at_least(f"layers.{part}.{name}", w, 0)

    _choice("content.normalization", cfg.content.normalization, CONTENT_NORMALIZATIONS)
    _choice("style.normalization", cfg.style.normalization, STYLE_NORMALIZATIONS)
    _choice("style.loss", cfg.style.loss, STYLE_LOSSES)
    _choice("style.balance", cfg.style.balance, STYLE_BALANCES)
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

    opt = cfg.optimizer
    _choice("optimizer.name", opt.name, OPTIMIZERS)
    _at_least("optimizer.lr", opt.lr, 0, strict=True)
    if opt.name == "lbfgs":
        _choice("optimizer.line_search", opt.line_search, LINE_SEARCHES)
        _at_least("optimizer.max_iter", opt.max_iter, 1)
        _at_least("optimizer.history_size", opt.history_size, 1)
    else:
        if len(opt.betas) != 2 or not all(0 <= b < 1 for b in opt.betas):
            raise ConfigError(f"optimizer.betas={list(opt.betas)} must be two numbers in [0, 1)")
        _at_least("optimizer.eps", opt.eps, 0, strict=True)
        if not 0 <= opt.ema < 1:
            raise ConfigError(f"optimizer.ema={opt.ema} must be in [0, 1) (0 = no averaging)")

    _choice("init.kind", cfg.init.kind, INITS)
    if cfg.init.kind == "image" and not cfg.init.path:
        raise ConfigError("init.kind=image needs init.path=<image file>")
    _choice("clamp", cfg.clamp, CLAMPS)
    _choice("wandb.mode", cfg.wandb.mode, WANDB_MODES)
    if cfg.steps is not None:
        _at_least("steps", cfg.steps, 0)
    if cfg.size is not None:
        _at_least("size", cfg.size, 16)  # the upper limit is the memory: see nstexp.memory
    if cfg.scales.min is not None:
        _at_least("scales.min", cfg.scales.min, 16)
        if cfg.size is not None and cfg.scales.min > cfg.size:
            raise ConfigError(f"scales.min={cfg.scales.min} must be <= size={cfg.size}")
    _at_least("scales.factor", cfg.scales.factor, 1, strict=True)
    if cfg.scales.first_steps is not None:
        _at_least("scales.first_steps", cfg.scales.first_steps, 0)
    if not 0 <= cfg.seed < 2**63:
        raise ConfigError(f"seed={cfg.seed} must be in [0, 2**63)")
    _at_least("log_every", cfg.log_every, 1)
    _at_least("snapshot_every (0 disables snapshots)", cfg.snapshot_every, 0)
    dev = cfg.device
    if dev not in ("auto", "cpu", "mps") and not (dev == "cuda" or dev.startswith("cuda:")):
        raise ConfigError(f"device={dev!r} is not allowed (allowed: auto, cpu, cuda, cuda:N, mps)")
