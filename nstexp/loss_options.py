"""The schema's sections for the options of single losses: `style.mmd`, `style.cmd`, `style.mrf`,
`style.strotss`, `style.nnst` and `content.self_similarity` (nstexp.config holds the rest of the schema, and
includes these). Each loss reads its own section; validation checks them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from nstexp.errors import ConfigError

def style_mix(loss) -> dict[str, float]:
    """The losses `style.loss` names, with their weights: a name is that loss, weighted 1; a mapping
    name -> weight is a mix, whose components weighted 0 are left out. Validation and the objective
    (nstexp.losses.mix.style_loss_for) both read `style.loss` through this, so what validation
    accepts is what runs: a mix of one component is that loss, times its weight."""
    if isinstance(loss, str):
        return {loss: 1.0}
    return {str(k): float(v) for k, v in loss.items() if float(v) > 0}


# style.mrf.reduction's choices (nstexp.losses.mrf.mrf_loss).
MRF_REDUCTIONS = ("mean", "sum")
# style.nnst.augment's choices (nstexp.losses.nnst.rotated).
NNST_AUGMENTS = ("none", "rotations", "rotations_mirrored")


@dataclass
class SelfSimilarityConfig:
    # self_similarity (Kolkin et al. 2019): the content layers' hypercolumns at this many random
    # positions, drawn anew at every evaluation (STROTSS's 32² = 1024), the same for result and content.
    samples: int = 1024
    # The network's features are divided by this in the hypercolumns (the RGB in [0, 1] is not): as
    # style.strotss.scale, 255 puts the Caffe VGG-19's on the scale of STROTSS's network; 4.43 with imagenet.
    scale: float = 255.0


@dataclass
class MMDConfig:
    # mmd_poly: the kernel (xᵀy + c)² (Li et al. 2017 use c = 0; d = 2, the degree with a closed form).
    c: float = 0.0
    # mmd_gaussian: γ of exp(−γ‖x − y‖²); None: the paper's rule, 1 / the mean squared distance
    # of the pairs compared (held constant in the gradient), at every evaluation.
    gamma: Optional[float] = None
    # mmd_gaussian: 0: the linear-time estimator over all positions (disjoint random pairs,
    # Gretton et al.'s MMD²_l, as Li et al.'s code); k > 0: the exact unbiased MMD²_u on k random
    # positions of each image (cost k² N per layer).
    samples: int = 0


@dataclass
class CMDConfig:
    # Central moments up to this order (Kalischek et al. use 5); order 1 is the mean alone.
    order: int = 5
    # Pre-ReLU features are divided by this before the sigmoid. The sigmoid's scale is
    # torchvision's network's, whose inputs are (x − mean) / std (std ≈ 0.226) where the Caffe
    # network's are 255 (x − mean): 255 × 0.226 = 57.6. Use 1 with backbone.weights=imagenet.
    scale: float = 57.6


@dataclass
class MRFConfig:
    # mrf (Li & Wand 2016): k x k patches every `stride` positions of result and style, and the last
    # row and column (paper: stride 1, CNNMRF: 2); the squared distances' mean per value, or the paper's sum.
    patch_size: int = 3
    stride: int = 1
    reduction: str = "mean"
    # Also patches of each style image rotated by these angles (degrees, counter-clockwise), and of
    # each of those scaled by these factors (CNNMRF's: ±7.5 and 1.05^±1).
    rotations: List[float] = field(default_factory=list)
    scales: List[float] = field(default_factory=list)


def rotated_size(h: int, w: int, degrees: float) -> tuple[int, int]:
    """(height, width) of an h × w image rotated by `degrees` and cropped to the largest centred
    rectangle of its aspect ratio inside the rotated one (nstexp.losses.mrf.rotate)."""
    a = math.radians(degrees)
    c, s = abs(math.cos(a)), abs(math.sin(a))
    keep = min(w / (w * c + h * s), h / (w * s + h * c))  # the crop's sides over the image's
    return max(1, math.floor(h * keep)), max(1, math.floor(w * keep))


def scaled_size(h: int, w: int, factor: float) -> tuple[int, int]:
    """(height, width) of an h × w image resized by `factor` (nstexp.losses.mrf.rescale)."""
    return max(1, round(h * factor)), max(1, round(w * factor))


def mrf_view_sizes(h: int, w: int, rotations, scales) -> list[tuple[int, int]]:
    """(height, width) of each of mrf's views of an h × w style image, in `augmented`'s order: the
    image, and its copies for every rotation × every scale (each rotation also unscaled, each
    scale also unrotated)."""
    out = []
    for r in dict.fromkeys([0.0, *map(float, rotations)]):
        turned = rotated_size(h, w, r) if r else (h, w)
        out.extend(scaled_size(*turned, s) if s != 1 else turned for s in dict.fromkeys([1.0, *map(float, scales)]))
    return out


@dataclass
class STROTSSConfig:
    # strotss (Kolkin et al. 2019): the result's hypercolumns at this many random positions, drawn anew
    # at every evaluation (STROTSS's 32² = 1024), and the style's at this many, drawn once per target
    # (STROTSS's 5 × 1000), each style image's share by its blend weight.
    samples: int = 1024
    style_samples: int = 5000
    # E = ℓ_r + moment_weight (ℓ_m + palette_weight ℓ_p): the relaxed EMD, the moment term and the
    # palette term. STROTSS: moment weight 1, palette weight 1 / max(content weight, 1).
    moment_weight: float = 1.0
    palette_weight: float = 1.0
    # The network's features are divided by this in the hypercolumns (the RGB in [0, 1] is not).
    # STROTSS feeds torchvision's VGG-16 the RGB in [0, 1] as it is (no mean, no std); the Caffe
    # VGG-19 takes 255 × the RGB less the mean pixel, so its activations are about 255 times the
    # size STROTSS's terms were made for (the scale sets the RGB's share of the cosines and the
    # moment term's size). With backbone.weights=imagenet, whose inputs are (x − mean) / std
    # (std ≈ 0.226): 1 / 0.226 = 4.43.
    scale: float = 255.0


@dataclass
class NNSTConfig:
    # nnst (Kolkin et al. 2022): hypercolumns on a grid of one cell every `stride` pixels (NNST's 4).
    stride: int = 4
    # The content's share α of the image (1 − α) result + α content whose features are matched to
    # the style's (NNST's --alpha, 0.75); 0: the result's own.
    alpha: float = 0.75
    # The targets are searched anew every this many evaluations, and at each level's first;
    # 0: once per level (NNST's), 1: at every evaluation.
    refresh: int = 0
    # The style's views: none, rotations (by 90, 180, 270 degrees: NNST's flip_aug), or
    # rotations_mirrored (each rotation mirrored too: 8 views).
    augment: str = "rotations"
    # nnst_split (NNST's final pass): each layer sampled on a sub-grid of about this many positions
    # a side (NNST's 64), every position of a layer no larger.
    split_side: int = 64
    # nnst_split: the style layers it matches (empty: every style layer). NNST's code matches
    # relu1_1 to relu3_3 at 512 px (its relu4 terms compare mismatched tensors, see nnst_split.py).
    split_layers: List[str] = field(default_factory=list)


def choice(key: str, value, allowed: tuple) -> None:
    """Refuse a value outside `allowed` in one line (the config's checks, nstexp.validation, use it too)."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed (allowed: {', '.join(allowed)})")


def at_least(key: str, value: float, low: float, strict: bool = False) -> None:
    """Refuse a value below `low` (or equal to it, `strict`) in one line."""
    if value < low or (strict and value == low):
        raise ConfigError(f"{key}={value} must be {'>' if strict else '>='} {low}")


def check_options(style, content, mix: dict[str, float]) -> None:
    """Refuse bad options of the single losses in one line: `style.mmd`, `style.cmd`, `style.mrf`
    (`mix`: the style losses `style.loss` names), `style.strotss`, `style.nnst`, `content.self_similarity`."""
    at_least("style.mmd.c", style.mmd.c, 0)
    if style.mmd.gamma is not None:
        at_least("style.mmd.gamma", style.mmd.gamma, 0, strict=True)
    if style.mmd.samples < 0 or style.mmd.samples == 1:
        raise ConfigError(f"style.mmd.samples={style.mmd.samples} must be 0 (the linear-time estimator) or >= 2")
    at_least("style.cmd.order", style.cmd.order, 1)
    at_least("style.cmd.scale", style.cmd.scale, 0, strict=True)
    check_mrf(style.mrf, mix)
    st = style.strotss
    at_least("style.strotss.samples", st.samples, 2)
    at_least("style.strotss.style_samples", st.style_samples, 2)
    at_least("style.strotss.moment_weight", st.moment_weight, 0)
    at_least("style.strotss.palette_weight", st.palette_weight, 0)
    at_least("style.strotss.scale", st.scale, 0, strict=True)
    check_nnst(style.nnst)
    ss = content.self_similarity
    at_least("content.self_similarity.samples", ss.samples, 2)
    at_least("content.self_similarity.scale", ss.scale, 0, strict=True)


def check_mrf(mrf, mix: dict[str, float]) -> None:
    """Refuse bad `style.mrf` options in one line (the sizes its patches need: nstexp.input_sizes)."""
    at_least("style.mrf.patch_size", mrf.patch_size, 1)
    at_least("style.mrf.stride", mrf.stride, 1)
    choice("style.mrf.reduction", mrf.reduction, MRF_REDUCTIONS)
    if mrf.stride > mrf.patch_size:
        raise ConfigError(f"style.mrf.stride={mrf.stride} must be <= style.mrf.patch_size={mrf.patch_size} "
                          "(a larger stride leaves positions between the patches out)")
    for angle in mrf.rotations:
        if not -180 <= angle <= 180:
            raise ConfigError(f"style.mrf.rotations: {angle} must be in [-180, 180] (degrees)")
    for factor in mrf.scales:
        if not 0 < factor <= 4:
            raise ConfigError(f"style.mrf.scales: {factor} must be in (0, 4]")
    if (mrf.rotations or mrf.scales) and "mrf" in mix and len(mix) > 1:
        raise ConfigError("style.mrf.rotations and style.mrf.scales take style.loss=mrf alone, not in a mix "
                          "(the losses of a mix share one set of style images)")


def check_nnst(o) -> None:
    """Refuse bad `style.nnst` options in one line (nstexp.validation calls this)."""
    if o.split_side < 1:
        raise ConfigError(f"style.nnst.split_side={o.split_side} must be >= 1")
    if o.stride < 1 or o.refresh < 0:
        key, value, low = ("stride", o.stride, 1) if o.stride < 1 else ("refresh", o.refresh, 0)
        raise ConfigError(f"style.nnst.{key}={value} must be >= {low}" + (" (0: once per level)" if low == 0 else ""))
    if not 0 <= o.alpha <= 1:
        raise ConfigError(f"style.nnst.alpha={o.alpha} must be in [0, 1] (the content's share of the matched image)")
    if o.augment not in NNST_AUGMENTS:
        raise ConfigError(f"style.nnst.augment={o.augment!r} is not allowed (allowed: {', '.join(NNST_AUGMENTS)})")
