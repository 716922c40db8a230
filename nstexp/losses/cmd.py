"""Central moment discrepancy style loss (Kalischek et al., "In the light of feature
distributions: moment matching for neural style transfer", CVPR 2021; their code:
D1noFuzi/cmd_styletransfer, losses.py and main.py).

Per layer, the pre-ReLU features are squashed into (0, 1) by a sigmoid, s = σ(F / scale), and
per channel their mean c_1 = E[s] and central moments c_k = E[(s − c_1)^k], k = 2..K, are
compared:

    CMD = Σ_{k=1..K} ‖c_k(X) − c_k(Y)‖₂          (norms over the N channels; (B, N) each)

The authors' moments are means over positions, so an image's size does not change them; their
weights per moment are all 1 and the interval's 1 / |b − a|^k is 1 for the sigmoid's (0, 1).
Their network is torchvision's VGG-19, whose activations are about 57.6 times smaller than the
Caffe network's (see CMDConfig.scale): the features are divided by `scale` before the sigmoid.
Blending styles mixes the distributions: raw moments average, and the mixture's central
moments follow from them.
"""

from __future__ import annotations

from math import comb

import torch

from nstexp.losses.base import StyleLoss, register
from nstexp.losses.mmd import position_weights

# Inside each norm's square root: equal moments (a norm of 0) keep a finite gradient.
EPS = 1e-20


def central_moments(s: torch.Tensor, order: int, guide: torch.Tensor | None = None) -> list[torch.Tensor]:
    """[c_1, ..., c_K], each (B, N): the mean and central moments of s (B, N, H, W) over positions."""
    b, n = s.shape[:2]
    p = position_weights(s, guide)  # (B or 1, 1, M)
    f = s.reshape(b, n, -1)
    mean = (f * p).sum(2)
    centred = f - mean.unsqueeze(2)
    out, power = [mean], centred
    for _ in range(2, order + 1):
        power = power * centred
        out.append((power * p).sum(2))
    return out


def mixture_central_moments(feats: list[torch.Tensor], shares: list[float], order: int) -> list[torch.Tensor]:
    """The central moments (1, N) of the mixture of distributions (1, N, H_i, W_i), in float64:
    raw moments E[s^j] average with the shares; c_k = Σ_j C(k, j) E[s^j] (−c_1)^(k − j)."""
    raw = [sum(w * f.flatten(2).double().pow(j).mean(2) for f, w in zip(feats, shares)) for j in range(order + 1)]
    mean = raw[1]
    central = [sum(comb(k, j) * raw[j] * (-mean).pow(k - j) for j in range(k + 1)) for k in range(2, order + 1)]
    return [mean, *central]


def cmd_loss(s: torch.Tensor, target: list[torch.Tensor], guide: torch.Tensor | None = None) -> torch.Tensor:
    """CMD of squashed features s (B, N, H, W) against target moments [c_1..c_K] (1, N) -> (B,)."""
    moments = central_moments(s, len(target), guide)
    return sum(((m - t).pow(2).sum(1) + EPS).sqrt() for m, t in zip(moments, target))


@register
class CMD(StyleLoss):
    """style.loss=cmd: central moments up to style.cmd.order of σ(F / style.cmd.scale).
    Read pre-ReLU layers (conv*_*) as the authors do; on relu*_* layers the sigmoid sees the
    clipped values."""

    name = "cmd"

    def __init__(self, style, seed: int = 0):
        super().__init__(style, seed)
        self.order, self.scale = style.cmd.order, style.cmd.scale

    def target(self, feats, shares):
        squashed = [torch.sigmoid(f / self.scale) for f in feats]
        return [m.to(feats[0].dtype) for m in mixture_central_moments(squashed, shares, self.order)]

    def distance(self, f, target, guide=None):
        return cmd_loss(torch.sigmoid(f / self.scale), target, guide)

    # The power sums Σ_p (s_p − a)^k, k = 1..K, per channel over the positions, a = the style's c_1,
    # accumulated in float64: the binomial expansion c_k = Σ_j C(k, j) E[(s − a)^j] (−d)^(k − j),
    # d = c_1 − a, cancels digits (c_5 ~ 1e-6 from terms ~ 1e-2), and raw fp32 sums (a = 0) left
    # relative errors of 1e-3 to 1e-2 in c_5; centring on a keeps the cancellation small as d shrinks.
    decomposes = "statistics"

    def partial(self, f, target, box):
        s = torch.sigmoid(f.float() / self.scale).flatten(2)  # (B, N, m), as `distance` squashes
        c = s.double() - target[0].double().unsqueeze(2)
        out, power = [c.sum(2)], c
        for _ in range(2, self.order + 1):
            power = power * c
            out.append(power.sum(2))
        return tuple(out)  # (B, N) each, float64

    def finish(self, sums, target, positions):
        raw = [torch.ones_like(sums[0]), *(s.double() / positions for s in sums)]  # E[(s − a)^j], j = 0..K
        d = raw[1]  # c_1 − a
        moments = [target[0].double() + d]
        moments += [raw[k] + sum(comb(k, j) * raw[j] * (-d).pow(k - j) for j in range(k))
                    for k in range(2, self.order + 1)]
        return sum(((m - t.double()).pow(2).sum(1) + EPS).sqrt() for m, t in zip(moments, target)).float()
