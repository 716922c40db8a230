"""StyleEval: the three quality factors of Wang et al., "Evaluate and Improve the Quality of
Neural Style Transfer" (CVIU 2021; EndyWon/StyleEval, `quality_criteria.py`), each a
similarity, 1 at best.

On the features of the Caffe VGG-19 with average pooling (relu = the reference's conv layers,
which include their ReLU), for a result X, content C and style S:

- CF, content fidelity: the cosine of X's and C's whole feature tensors at relu4_1 and relu5_1,
  the mean over the two layers.
- GE, global effects: ½ the mean over relu2_1 … relu5_1 of the cosine of X's and S's Gram
  matrices FᵀF (F: positions × channels, unnormalized), plus ½ the mean over R, G and B of the
  cosine of X's and S's colour histograms (128 bins).
- LP, local patterns: at relu3_1 and relu4_1, every 3 × 3 patch of X's features (stride 1, no
  padding) and its nearest patch of S's by cosine. LP1 is the mean of those cosines; LP2 the
  number of distinct style patches so used over the number of distinct patches in S (the
  patches that are some style patch's nearest one). LP = ½ mean(LP1) + ½ mean(LP2).

`eval/styleeval` is the mean of CF, GE and LP: the reference prints the three and combines
them no further. LP (and so the mean) is NaN where the result's or the style's features have
a side of fewer than 3 positions at an LP layer (under 24 px at relu4_1): no patch to match. Departures (docs/metrics.md): histograms over the fixed range [0, 1] (the
reference's matplotlib bins span each image's own range); a patch of zeros has cosine 0 to every
patch (the reference divides by zero); similarities within TIE of a row's best count as ties,
which the first patch wins, as an exact argmax would, so that copies of a style patch (flat
regions) count once whatever the rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POOLING = "avg"
CF_LAYERS = ("relu4_1", "relu5_1")
GE_LAYERS = ("relu2_1", "relu3_1", "relu4_1", "relu5_1")
LP_LAYERS = ("relu3_1", "relu4_1")
LAYERS = tuple(sorted({*CF_LAYERS, *GE_LAYERS, *LP_LAYERS}))
HISTOGRAM_BINS = 128
GRAM_SHARE = 0.5  # the reference's weight_of_gram: the rest of GE is the colour histograms'
LP1_SHARE = 0.5  # the reference's weight_of_part1: the rest of LP is LP2's
PATCH = 3
# Cosines of float32 patches are exact to about 1e-6: closer ones are one tie, so a style
# patch and its exact copy (flat regions) stay one patch whatever the rounding.
TIE = 1e-5
BLOCK = 1024  # rows of a similarity matrix at a time


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩ / (‖a‖ ‖b‖) of two tensors taken as vectors, in float64."""
    a, b = a.flatten().to(torch.float64), b.flatten().to(torch.float64)
    return (a @ b / (a.norm() * b.norm())).item()


def gram(f: torch.Tensor) -> torch.Tensor:
    """FᵀF (C × C) of features (1, C, H, W), F = (HW, C), in float64."""
    x = f[0].flatten(1).to(torch.float64)
    return x @ x.T


def colour_histograms(image: torch.Tensor) -> torch.Tensor:
    """Pixel counts (3, HISTOGRAM_BINS) of each channel of (1, 3, H, W) in [0, 1], equal bins over [0, 1]."""
    bins = (image[0].flatten(1).clamp(0.0, 1.0) * HISTOGRAM_BINS).floor().clamp(max=HISTOGRAM_BINS - 1).long()
    return torch.stack([torch.bincount(b, minlength=HISTOGRAM_BINS) for b in bins]).to(torch.float64)


def patches(f: torch.Tensor) -> torch.Tensor:
    """Every PATCH × PATCH patch of features (1, C, H, W), stride 1, no padding, as unit rows (L, C·PATCH²)."""
    p = F.unfold(f, PATCH)[0].T
    norm = p.norm(dim=1, keepdim=True)
    return p / torch.where(norm > 0, norm, torch.ones_like(norm))


def has_patches(f: torch.Tensor) -> bool:
    """Whether features (1, C, H, W) hold a whole PATCH × PATCH patch."""
    return min(f.shape[-2:]) >= PATCH


def nearest(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each unit row of x, its best cosine with a row of s and that row's index (the first
    within TIE of the best): (len(x),) each, computed BLOCK rows at a time."""
    best, index = [], []
    for start in range(0, x.shape[0], BLOCK):
        sim = x[start:start + BLOCK] @ s.T
        top = sim.max(dim=1).values
        best.append(top)
        index.append((sim >= top[:, None] - TIE).to(torch.uint8).argmax(dim=1))  # argmax: the first of the maxima
    return torch.cat(best), torch.cat(index)


class StyleEval:
    """CF, GE, LP and their mean for results against one content and one style image.

    Takes features of the average-pooling Caffe VGG-19 at LAYERS ({layer: (1, C, H, W)}) and the
    images (1, 3, H, W) in [0, 1]; a result has the content image's shape.
    """

    def __init__(self, content_features: dict[str, torch.Tensor], style_features: dict[str, torch.Tensor],
                 style: torch.Tensor):
        self.content = {k: content_features[k] for k in CF_LAYERS}
        self.grams = {k: gram(style_features[k]) for k in GE_LAYERS}
        self.histograms = colour_histograms(style)
        self.patches = {k: patches(style_features[k]) for k in LP_LAYERS if has_patches(style_features[k])}
        # Each style patch's nearest style patch: itself, or the first of its copies. The
        # distinct patches of S are the distinct values of this (the reference's category_s).
        self.representative = {k: _roots(nearest(p, p)[1]) for k, p in self.patches.items()}
        self.distinct = {k: r.unique().numel() for k, r in self.representative.items()}

    def __call__(self, features: dict[str, torch.Tensor], image: torch.Tensor) -> dict[str, float]:
        cf = _mean(cosine(features[k], self.content[k]) for k in CF_LAYERS)
        hist = colour_histograms(image)
        ge = (GRAM_SHARE * _mean(cosine(gram(features[k]), self.grams[k]) for k in GE_LAYERS)
              + (1 - GRAM_SHARE) * _mean(cosine(hist[c], self.histograms[c]) for c in range(3)))
        lp = math.nan
        if len(self.patches) == len(LP_LAYERS) and all(has_patches(features[k]) for k in LP_LAYERS):
            lp1, lp2 = [], []
            for k in LP_LAYERS:
                best, index = nearest(patches(features[k]), self.patches[k])
                lp1.append(best.to(torch.float64).mean().item())
                # category_x / category_s: the style patches used, each copy counted once.
                lp2.append(self.representative[k][index].unique().numel() / self.distinct[k])
            lp = LP1_SHARE * _mean(lp1) + (1 - LP1_SHARE) * _mean(lp2)
        return {"eval/styleeval_cf": cf, "eval/styleeval_ge": ge, "eval/styleeval_lp": lp,
                "eval/styleeval": (cf + ge + lp) / 3}


def _roots(first: torch.Tensor) -> torch.Tensor:
    """Each index followed along `first` to a fixed point. first[i] <= i (a unit patch is within
    TIE of itself), so chains end; with exact copies `first` is its own fixed point already,
    and with near-copies a chain a <- b <- c makes one patch of the three, as TIE intends."""
    while not torch.equal(nxt := first[first], first):
        first = nxt
    return first


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
