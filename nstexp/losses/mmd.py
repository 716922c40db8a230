"""Maximum mean discrepancy and batch-norm statistics style losses (Li et al., "Demystifying
Neural Style Transfer", IJCAI 2017; their code: lyttonhao/Neural-Style-MMD, mmd_loss.py and
bn_loss.py).

A layer's features are samples: each of its M positions is one point x_i in R^N. With X the
generated image's points and Y the style's, the squared MMD under a kernel k is

    MMD²(X, Y) = E k(x, x') + E k(y, y') − 2 E k(x, y).

- linear, k(x, y) = xᵀy:              MMD² = ‖μ_X − μ_Y‖²
- polynomial, k(x, y) = (xᵀy + c)²:    MMD² = ‖G_X/M − G_Y/M_s‖²_F + 2c ‖μ_X − μ_Y‖²  (G = F Fᵀ)
- Gaussian, k(x, y) = exp(−γ‖x − y‖²): no closed form; estimated (below).

The first two are exact, from means and Gram matrices (the cost of the Gram loss). The paper
defines the polynomial kernel (xᵀy + c)^d and uses d = 2; other degrees have no form of Gram
size, so d is fixed at 2. Statistics are means over each image's own positions, so an image's
size does not change the loss's strength; blending styles mixes their distributions.
"""

from __future__ import annotations

import torch

from nstexp.losses.base import StyleLoss, register
from nstexp.losses.gram import gram_matrix, outer_product

EPS = 1e-8  # inside σ's square root: a flat image (σ = 0) keeps a finite gradient


def position_weights(features: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
    """Each position's probability (B or 1, 1, M) for features (B, N, H, W): 1 / M, or inside
    a guide (B or 1, 1, H, W) T² / Σ T², as the guided Gram matrix weighs positions."""
    b, n, h, w = features.shape
    if guide is None:
        return features.new_full((1, 1, h * w), 1.0 / (h * w))
    t2 = guide.reshape(guide.shape[0], 1, h * w).to(features.dtype).pow(2)
    return t2 / t2.sum(2, keepdim=True)


def weighted_mean(features: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
    """μ (B, N): the mean of features (B, N, H, W) over positions (inside `guide`)."""
    b, n = features.shape[:2]
    return (features.reshape(b, n, -1) * position_weights(features, guide)).sum(2)


def mmd_linear_loss(features: torch.Tensor, target_mean: torch.Tensor, guide=None) -> torch.Tensor:
    """MMD² with k(x, y) = xᵀy: ‖μ_X − μ_Y‖²; features (B, N, H, W), target μ_Y (1, N) -> (B,)."""
    return (weighted_mean(features, guide) - target_mean).pow(2).sum(1)


def mmd_poly_loss(features: torch.Tensor, target_mean: torch.Tensor, target_second: torch.Tensor,
                  c: float = 0.0, guide=None) -> torch.Tensor:
    """MMD² with k(x, y) = (xᵀy + c)²; target μ_Y (1, N) and E[y yᵀ] = G_Y / M_s (1, N, N) -> (B,).

    E (xᵀx')² = ‖E[x xᵀ]‖²_F and E xᵀy = μ_Xᵀ μ_Y, so MMD² = ‖E[x xᵀ] − E[y yᵀ]‖²_F + 2c ‖μ_X − μ_Y‖².
    """
    second = gram_matrix(features, "gatys", guide)  # E[x xᵀ] = G_X / M, (B, N, N)
    loss = (second - target_second).pow(2).flatten(1).sum(1)
    return loss + 2 * c * mmd_linear_loss(features, target_mean, guide) if c else loss


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a_p − b_p‖² of paired points, (B, N, P) and (B or 1, N, P) -> (B, P)."""
    return (a - b).pow(2).sum(1)


def gaussian_mmd2_linear(x0, x1, y0, y1, gamma: float | None = None) -> torch.Tensor:
    """Gretton et al.'s linear-time MMD²_l: the mean over P disjoint pairs of
    h = k(x0, x1) + k(y0, y1) − k(x0, y1) − k(x1, y0); points (B, N, P), (1, N, P) -> (B,).

    Unbiased for MMD² (each pair holds distinct points). gamma None: 1 / the mean of the four
    squared distances, per sample and held constant (Li et al.'s rule; their γ multiplier is 1).
    """
    d = [squared_distances(x0, x1), squared_distances(y0, y1), squared_distances(x0, y1), squared_distances(x1, y0)]
    if gamma is None:
        g = 1.0 / (sum(t.mean(1) for t in d) / 4).detach().clamp_min(1e-12).unsqueeze(1)  # (B, 1)
    else:
        g = gamma
    xx, yy, xy, yx = (torch.exp(-g * t) for t in d)
    return (xx + yy - xy - yx).mean(1)


def gaussian_mmd2_exact(x: torch.Tensor, y: torch.Tensor, gamma: float | None = None) -> torch.Tensor:
    """The unbiased MMD²_u of point sets x (B, N, n) and y (1, N, m), O((n + m)² N) -> (B,):
    mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) − 2 mean k(x_i, y_j).

    gamma None: 1 / mean squared distance, the xx, yy and (twice) xy means weighed as in the
    linear estimator's four terms, held constant.

    A set of one point (a layer of one position) has no pair i ≠ j: its mean is taken over the one
    pair (i, i), k(x, x) = 1 at distance 0, which makes the loss the MMD² of that point's Dirac
    measure, 1 + mean_{i≠j} k(y_i, y_j) − 2 mean k(x, y_j), finite and pulling x towards the style."""
    def dist(a, b):  # (B, n, m)
        a2, b2 = a.pow(2).sum(1).unsqueeze(2), b.pow(2).sum(1).unsqueeze(1)
        return (a2 + b2 - 2 * a.transpose(1, 2) @ b).clamp_min(0)

    n, m = x.shape[2], y.shape[2]
    dxx, dyy, dxy = dist(x, x), dist(y, y), dist(x, y)

    def off(t, k, diagonal):  # the mean over i ≠ j of (k, k) values whose diagonal is `diagonal`
        if k == 1:  # one point: no pair i ≠ j; the point itself, as the V-statistic has it (see above)
            return torch.full_like(t[:, 0, 0], diagonal)
        return (t.sum((1, 2)) - k * diagonal) / (k * (k - 1))

    if gamma is None:
        g = (4.0 / (off(dxx, n, 0.0) + off(dyy, m, 0.0) + 2 * dxy.mean((1, 2))).clamp_min(1e-12)).detach().view(-1, 1, 1)
    else:
        g = gamma
    kxx, kyy, kxy = torch.exp(-g * dxx), torch.exp(-g * dyy), torch.exp(-g * dxy)
    return off(kxx, n, 1.0) + off(kyy, m, 1.0) - 2 * kxy.mean((1, 2))


def sample_style(points: list[torch.Tensor], shares: list[float], count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` points of the style mixture, shuffled, (N, count): image i gives round(count × share_i)
    of its (N, M_i) points, drawn without replacement where it has that many (stratified)."""
    counts = [int(round(count * s)) for s in shares]
    counts[max(range(len(counts)), key=lambda i: shares[i])] += count - sum(counts)
    picks = []
    for p, k in zip(points, counts):
        size = p.shape[1]
        idx = torch.randperm(size, generator=generator)[:k] if k <= size else torch.randint(size, (k,), generator=generator)
        picks.append(p[:, idx.to(p.device)])
    y = torch.cat(picks, dim=1)
    return y[:, torch.randperm(count, generator=generator).to(y.device)]


def bn_loss(features: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor, guide=None) -> torch.Tensor:
    """(‖μ_X − μ_Y‖² + ‖σ_X − σ_Y‖²) / N, per-channel mean and (biased) deviation over positions;
    features (B, N, H, W), targets (1, N) -> (B,)."""
    b, n = features.shape[:2]
    f = features.reshape(b, n, -1)  # (B, N, M)
    p = position_weights(features, guide)
    mean = (f * p).sum(2)
    std = (((f - mean.unsqueeze(2)).pow(2) * p).sum(2) + EPS).sqrt()
    return ((mean - target_mean).pow(2).sum(1) + (std - target_std).pow(2).sum(1)) / n


def mixture_moments(feats: list[torch.Tensor], shares: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The style mixture's mean (1, N) and per-channel second moment E[y²] (1, N), float64."""
    mean = sum(w * f.flatten(2).double().mean(2) for f, w in zip(feats, shares))
    second = sum(w * f.flatten(2).double().pow(2).mean(2) for f, w in zip(feats, shares))
    return mean, second


@register
class MMDLinear(StyleLoss):
    """style.loss=mmd_linear: MMD² with the linear kernel, ‖μ_X − μ_Y‖²."""

    name = "mmd_linear"

    def target(self, feats, shares):
        return mixture_moments(feats, shares)[0].to(feats[0].dtype)

    def distance(self, f, target, guide=None):
        return mmd_linear_loss(f, target, guide)

    decomposes = "statistics"  # Σ_p (x_p − μ_Y) over the positions: M (μ_X − μ_Y)

    def partial(self, f, target, box):
        return ((f.float().flatten(2) - target.float().unsqueeze(2)).sum(2),)  # (B, N)

    def finish(self, sums, target, positions):
        (s,) = sums
        return (s / positions).pow(2).sum(1)


@register
class MMDPoly(StyleLoss):
    """style.loss=mmd_poly: MMD² with the kernel (xᵀy + c)², c = style.mmd.c, in closed form."""

    name = "mmd_poly"

    def target(self, feats, shares):
        mean = mixture_moments(feats, shares)[0].to(feats[0].dtype)
        return mean, sum(w * gram_matrix(f, "gatys") for f, w in zip(feats, shares))

    def distance(self, f, target, guide=None):
        return mmd_poly_loss(f, *target, c=self.options.mmd.c, guide=guide)

    # Σ_p x_p x_pᵀ = G_X over the positions, and with c ≠ 0 Σ_p (x_p − μ_Y) = M (μ_X − μ_Y) too
    # (only what the loss uses: each sum must take a part in its gradient).
    decomposes = "statistics"

    def partial(self, f, target, box):
        x = f.float().flatten(2)  # (B, N, m)
        if not self.options.mmd.c:
            return (outer_product(x),)
        return outer_product(x), (x - target[0].float().unsqueeze(2)).sum(2)

    def finish(self, sums, target, positions):
        loss = (sums[0] / positions - target[1]).pow(2).flatten(1).sum(1)
        c = self.options.mmd.c
        return loss + 2 * c * (sums[1] / positions).pow(2).sum(1) if c else loss


@register
class MMDGaussian(StyleLoss):
    """style.loss=mmd_gaussian: MMD² with a Gaussian kernel, estimated anew at every evaluation
    from a generator seeded with the run's seed: the linear-time MMD²_l over M/2 random pairs
    (style.mmd.samples=0) or the exact MMD²_u on `samples` random positions of each image."""
    stateful = True  # its positions, drawn at each evaluation

    name = "mmd_gaussian"
    guided = False  # the random pairs have no notion of a region
    # decomposes: none — the kernel's pairs of positions are drawn at random over the whole image
    # (and exp(−γ‖x − y‖²) of all pairs has no sums over single positions; γ is a global mean)

    def __init__(self, style, seed: int = 0):
        super().__init__(style, seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.gamma, self.samples = style.mmd.gamma, style.mmd.samples

    def target(self, feats, shares):
        return [f[0].flatten(1) for f in feats], list(shares)  # (N, M_i) each

    def distance(self, f, target, guide=None):
        points, shares = target
        b, n, h, w = f.shape
        x = f.reshape(b, n, h * w)
        if self.samples:
            k = min(self.samples, h * w)
            x = x[:, :, torch.randperm(h * w, generator=self.generator)[:k].to(f.device)]
            k = min(self.samples, sum(p.shape[1] for p in points))
            y = sample_style(points, shares, k, self.generator).unsqueeze(0).to(f.dtype)
            return gaussian_mmd2_exact(x, y, self.gamma)
        pairs = h * w // 2
        if pairs:
            x = x[:, :, torch.randperm(h * w, generator=self.generator)[:2 * pairs].to(f.device)]
        else:  # one position: its point pairs with itself, the Dirac measure's MMD² (gaussian_mmd2_exact)
            pairs, x = 1, x.repeat(1, 1, 2)
        y = sample_style(points, shares, 2 * pairs, self.generator).unsqueeze(0).to(f.dtype)
        return gaussian_mmd2_linear(x[:, :, 0::2], x[:, :, 1::2], y[:, :, 0::2], y[:, :, 1::2], self.gamma)


@register
class BN(StyleLoss):
    """style.loss=bn: Li et al.'s batch-norm statistics, (‖μ_X − μ_Y‖² + ‖σ_X − σ_Y‖²) / N."""

    name = "bn"

    def target(self, feats, shares):
        mean, second = mixture_moments(feats, shares)
        return mean.to(feats[0].dtype), (second - mean.pow(2)).clamp_min(0).add(EPS).sqrt().to(feats[0].dtype)

    def distance(self, f, target, guide=None):
        return bn_loss(f, *target, guide=guide)

    # Σ_p (x_p − μ_Y) and Σ_p (x_p − μ_Y)² per channel over the positions, centred on the style's
    # mean so that the variance E[(x − μ_Y)²] − (μ_X − μ_Y)² loses few digits in fp32.
    decomposes = "statistics"

    def partial(self, f, target, box):
        c = f.float().flatten(2) - target[0].float().unsqueeze(2)  # (B, N, m)
        return c.sum(2), c.pow(2).sum(2)

    def finish(self, sums, target, positions):
        s1, s2 = (s.double() for s in sums)  # (B, N) each
        d = s1 / positions  # μ_X − μ_Y
        # bn_loss's biased deviation, (E[(x − μ_X)²] + EPS)^½ (clamped: rounding may cross 0)
        std = ((s2 / positions - d.pow(2)).clamp_min(0) + EPS).sqrt()
        n = d.shape[1]
        return ((d.pow(2).sum(1) + (std - target[1].double()).pow(2).sum(1)) / n).float()
