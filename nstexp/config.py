"""The configuration schema: one dataclass per config node, registered with Hydra.

Structured configs make Hydra reject unknown keys and wrong types when it composes
the config; `nstexp.validation.validate` then checks what a type cannot express (choices,
layer names, non-negative weights) so that every bad value fails before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from nstexp.errors import NstexpError
from nstexp.loss_options import (MRF_REDUCTIONS, CMDConfig, MMDConfig, MRFConfig, NNSTConfig,  # noqa: F401
                                 SelfSimilarityConfig, STROTSSConfig)
from nstexp.output_options import EvalConfig, WandbConfig
from nstexp.video_options import VideoConfig


def _data_dir(name: str, marker: str) -> str:
    """`conf/` and `sweeps/` ship inside the installed package; in a checkout they sit beside it."""
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here.parent / name):
        if (candidate / marker).exists():
            return str(candidate)
    raise NstexpError(f"{name} folder not found: reinstall nstexp (pip install .)")


CONFIG_DIR = _data_dir("conf", "config.yaml")
SWEEPS_DIR = _data_dir("sweeps", "seeds.yaml")

ARCHS = ("vgg19", "vgg16")
WEIGHTS = ("caffe", "caffe_normalized", "imagenet", "random")  # or a path to a state dict file
# The weights that exist only for VGG-19 and take Caffe's preprocessing.
CAFFE_WEIGHTS = ("caffe", "caffe_normalized")
PREPROCESSING = ("auto", "caffe", "imagenet")
POOLING = ("max", "avg", "avg_scaled")
PADDINGS = ("zeros", "reflect", "replicate", "circular")
CONTENT_NORMALIZATIONS = ("gatys", "mean")
STYLE_NORMALIZATIONS = ("gatys", "mean", "cosine")
STYLE_BALANCES = ("none", "content")
COLOR_MODES = ("none", "luminance", "histogram", "swap", "nnst")
OPTIMIZERS = ("lbfgs", "adam", "rmsprop")
PARAMS = ("pixels", "laplacian_pyramid")  # what the optimizer moves (nstexp/optim/parameterization.py)
LINE_SEARCHES = ("none", "strong_wolfe")
INITS = ("content", "noise", "style", "image")
CLAMPS = ("every_step", "at_end")
CONTENT_WEIGHT_AT = ("finest", "coarsest")  # the level whose content weight is content.weight
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class BackboneConfig:
    arch: str = "vgg19"
    # caffe | caffe_normalized (Gatys et al.'s rescaled VGG-19) | imagenet | random | path to a state dict file
    weights: str = "caffe"
    # auto: the preprocessing the weights were trained with
    preprocessing: str = "auto"
    # The paper reports slightly nicer results with average pooling; avg_scaled keeps the
    # activations' magnitudes of max pooling.
    pooling: str = "max"
    # Of every convolution: zeros (VGG's), reflect, replicate (fewer edge artefacts), circular (seamless textures).
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
    # A registered content loss (nstexp.losses.base.CONTENT_LOSSES): squared_error (Gatys et al., eq. 1),
    # self_similarity (STROTSS's: the content's pattern of cosine self-distances, all content layers at once).
    loss: str = "squared_error"
    normalization: str = "gatys"
    # A mask image, white where the content is kept (grey is a partial weight); None: everywhere.
    mask: Optional[str] = None
    # A clip (a video file, a folder of frames, sample:pan): each frame is the content in turn (`video`).
    video: Optional[str] = None
    self_similarity: SelfSimilarityConfig = field(default_factory=SelfSimilarityConfig)


@dataclass
class ScaleControlConfig:
    # The image whose fine texture (the `fine_layers` statistics) is painted onto `style.image`,
    # which keeps its coarse structure; the result is the run's style image. None: off.
    fine_image: Optional[str] = None
    # The layers whose statistics count as "fine"; the authors use relu1_1 and relu2_1.
    fine_layers: List[str] = field(default_factory=lambda: ["relu1_1", "relu2_1"])
    # L-BFGS steps of that first transfer (the authors use 500).
    steps: int = 500
    # Give the fine image the coarse image's colours first, so that only its texture moves.
    match_colours: bool = True


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
    # A registered style loss (nstexp.losses.base.STYLE_LOSSES, listed in docs/config.md: gram,
    # w2, sliced, ..., the joint strotss, nnst and nnst_split, not for a mix), or a weighted mix,
    # a mapping name -> weight: {gram: 1, histogram: 0.5}.
    loss: Any = "gram"
    # Of the Gram matrices; the w2 and sliced losses have no normalization to choose.
    normalization: str = "gatys"
    # none: the equations as written; content: each layer's term divided by its value on the
    # content image, so that every layer counts by its weight w_l.
    balance: str = "none"
    # One mask image per style image (the first, then each blend image), white where that
    # style applies: each style's target is matched inside its region only. Empty: no masks.
    masks: List[str] = field(default_factory=list)
    scale_control: ScaleControlConfig = field(default_factory=ScaleControlConfig)
    mmd: MMDConfig = field(default_factory=MMDConfig)
    cmd: CMDConfig = field(default_factory=CMDConfig)
    mrf: MRFConfig = field(default_factory=MRFConfig)
    strotss: STROTSSConfig = field(default_factory=STROTSSConfig)
    nnst: NNSTConfig = field(default_factory=NNSTConfig)


@dataclass
class ColorConfig:
    # none | luminance | histogram | swap | nnst (see nstexp/run/colour.py)
    preserve: str = "none"


@dataclass
class TVConfig:
    weight: float = 0.0
    # TV = sum ((Δx)² + (Δy)²)^exponent; 1 is the plain sum of squares, seed 000 uses 1.25.
    exponent: float = 1.0


@dataclass
class LaplacianConfig:
    # Li et al. (ACM MM 2017): weight × mean((L(pool(x)) − L(pool(c)))²), L the 3×3 Laplacian
    # summed over RGB, pool a 2^pool average pooling, on the RGB image in [0, 1]; 0 = off.
    weight: float = 0.0
    pool: int = 2


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
class RMSpropConfig:
    name: str = "rmsprop"
    # STROTSS's, for the bands of a Laplacian pyramid (param=laplacian_pyramid), in units of the
    # RGB [0, 1] image; no bias correction: the first steps move about 10x lr.
    lr: float = 2e-3
    # Decay of the average of squared gradients (torch's default, STROTSS's).
    alpha: float = 0.99
    eps: float = 1e-8
    # As Adam's: the decay of a bias-corrected average of the images reported; 0 = off.
    ema: float = 0.0


@dataclass
class InitConfig:
    kind: str = "content"
    # For kind=image: the image to start from.
    path: Optional[str] = None


@dataclass
class ScalesConfig:
    # Smallest longest side in pixels; None: one level at `size` (docs/default.md for 128).
    min: Optional[int] = 128
    # Each level's longest side is `factor` times the previous one's (crowsonkb uses √2).
    factor: float = 2.0
    # Steps at the first level (None: `steps`, as at every other level).
    first_steps: Optional[int] = None
    # Each level's content weight is this times the next finer level's (STROTSS: 2), content.weight
    # being the finest's or the coarsest's (STROTSS: 16 at its first level at any size).
    content_weight_ratio: float = 1.0
    content_weight_at: str = "finest"
    # A last pass at the finest size: `final_steps` more (None: `steps`) with style.loss `final_loss` (NNST's).
    final_pass: bool = False
    final_steps: Optional[int] = None
    final_loss: Optional[str] = None
    # The learning rate at the finest level (None: optimizer.lr, as at every level); STROTSS: 1e-3.
    last_lr: Optional[float] = None


@dataclass
class Config:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    layers: LayersConfig = field(default_factory=LayersConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    color: ColorConfig = field(default_factory=ColorConfig)
    tv: TVConfig = field(default_factory=TVConfig)
    laplacian: LaplacianConfig = field(default_factory=LaplacianConfig)
    # Typed by the schema of the chosen optimizer/ option.
    optimizer: Any = MISSING
    # What the optimizer moves: pixels, or laplacian_pyramid (the `param_levels` bands and the
    # low-pass residual of a Laplacian pyramid of the image, as STROTSS does; rebuilt from the
    # upsampled image at each coarse-to-fine level).
    param: str = "pixels"
    param_levels: int = 5
    init: InitConfig = field(default_factory=InitConfig)
    # None: 100 on CPU, 200 on a GPU (per coarse-to-fine level).
    steps: Optional[int] = None
    # Longest side of the content image in pixels. None: 256 on CPU, 512 on a GPU.
    size: Optional[int] = None
    # Coarse-to-fine levels; `steps` counts within each.
    scales: ScalesConfig = field(default_factory=ScalesConfig)
    seed: int = 0
    # auto: cuda, then mps, then cpu
    device: str = "auto"
    # The network's arithmetic: auto (bf16 where the device computes it natively, else fp32),
    # fp32, bf16, fp16 (CUDA only). The image, optimizer, Gram matrices and losses stay fp32.
    precision: str = "auto"
    # Memory format of the network's activations; None (auto): on CUDA only.
    channels_last: Optional[bool] = None
    # Recompute each VGG block's activations in the backward pass: larger images fit, ~1.3x time.
    checkpoint: bool = False
    # Exact tiled evaluation (nstexp.tiling): auto (when the run would not fit whole), off, or a tile's side in px.
    tiles: Any = "auto"
    # torch.compile the network (the first evaluation then takes a while to compile).
    compile: bool = False
    # true: deterministic algorithms only (cuDNN's, torch's), so a rerun on the same GPU and
    # software gives bit-identical images; false: cuDNN picks the fastest per image size. CPU
    # runs repeat exactly either way.
    deterministic: bool = False
    clamp: str = "every_step"
    # Log metrics every N steps; None: 1 on a CPU, 10 on a GPU (the losses are read from the
    # device only then, so a GPU does not wait for the host in between).
    log_every: Optional[int] = None
    snapshot_every: int = 50
    progress: bool = True
    # A single run: go on from the saved state of the latest stopped run of the same command (or in
    # hydra.run.dir); a sweep: rerun the jobs of the latest matching sweep that did not complete
    # (each from its state, where it left one); a video run (content.video): go on from the last
    # finished frame of the latest run of the same command.
    resume: bool = False
    # A single run saves its state (state.pt: the image, the optimizer's state) every this many
    # minutes (and at least 10x as long as the last write took) and when stopped; 0: only when stopped.
    save_state_every_min: float = 10.0
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    video: VideoConfig = field(default_factory=VideoConfig)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="optimizer", name="lbfgs_schema", node=LBFGSConfig)
    cs.store(group="optimizer", name="adam_schema", node=AdamConfig)
    cs.store(group="optimizer", name="rmsprop_schema", node=RMSpropConfig)
