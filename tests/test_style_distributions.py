"""The w2 and sliced style losses against closed forms and scipy, on features whose answer is known."""

import numpy as np
import pytest
import torch

from nstexp import losses


def _with_moments(mean: np.ndarray, cov: np.ndarray, m: int = 400, seed: int = 0) -> torch.Tensor:
    """Features (1, N, 1, m) whose empirical mean and covariance (over positions) are exactly these."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(mean), m))
    x -= x.mean(1, keepdims=True)
    x = np.linalg.inv(np.linalg.cholesky(x @ x.T / m)) @ x  # white: identity covariance
    x = np.linalg.cholesky(cov) @ x + mean[:, None]
    return torch.from_numpy(x).reshape(1, len(mean), 1, m)


def _w2(features: torch.Tensor, style: torch.Tensor) -> float:
    mean, second = losses.moments(style)
    cov = losses.covariance(mean, second)
    return losses.w2_loss(features, mean, cov, losses.sqrtm(cov)).item()


def _closed_form(mu1, cov1, mu2, cov2, eps=losses.wasserstein.EPS):
    """W2² between Gaussians, with scipy's matrix square root (the loss adds eps I to both covariances)."""
    import scipy.linalg  # here: slow to import, and only these tests need it

    cov1, cov2 = cov1 + eps * np.eye(len(mu1)), cov2 + eps * np.eye(len(mu2))
    root = scipy.linalg.sqrtm(cov2)
    cross = scipy.linalg.sqrtm(root @ cov1 @ root).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * cross))


def test_w2_of_diagonal_gaussians_is_the_hand_computed_value():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    sd1, sd2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    f = _with_moments(mu1, np.diag(sd1**2))
    s = _with_moments(mu2, np.diag(sd2**2), m=250, seed=1)  # another number of positions
    # ‖μ1 − μ2‖² + Σ (σ1 − σ2)²  (eps-free: the eps shifts it by about 1e-4)
    expected = (1 + 0 + 4) + (1 + 0 + 4)
    assert _w2(f, s) == pytest.approx(expected, rel=1e-4)


def test_w2_of_full_covariance_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    cov1, cov2 = a @ a.T + 0.5 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    got = _w2(_with_moments(mu1, cov1), _with_moments(mu2, cov2, seed=2))
    assert got == pytest.approx(_closed_form(mu1, cov1, mu2, cov2), rel=1e-8)


@pytest.mark.parametrize("n", [3, 16, 64])
def test_square_roots_match_scipy_on_random_spd_matrices(n):
    import scipy.linalg  # here: slow to import, and only these tests need it

    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n))
    spd = a @ a.T + 1e-3 * np.eye(n)
    expected = scipy.linalg.sqrtm(spd).real
    assert np.allclose(losses.sqrtm(torch.from_numpy(spd)).numpy(), expected, rtol=1e-6, atol=1e-8)
    tr = losses.trace_sqrt(torch.from_numpy(spd).float().unsqueeze(0)).item()
    assert tr == pytest.approx(np.trace(expected), rel=1e-4)  # float32, as in a run


def test_each_loss_is_zero_for_identical_distributions():
    torch.manual_seed(0)
    f = torch.randn(1, 8, 6, 7) * 3 + 1
    assert abs(_w2(f, f)) < 1e-4 * f.var(dim=(2, 3)).sum().item()
    points, weights = f[0].flatten(1), torch.full((42,), 1 / 42)
    d = losses.random_directions(8, 8, torch.Generator().manual_seed(0), f)
    assert losses.sliced_loss(f, points, weights, d).item() == 0.0


def test_sliced_ignores_the_order_of_positions_and_sees_a_shift():
    torch.manual_seed(1)
    style = torch.randn(1, 5, 8, 8)
    points, weights = style[0].flatten(1), torch.full((64,), 1 / 64)
    gen = torch.Generator().manual_seed(0)
    d = losses.random_directions(5, 5, gen, style)
    shuffled = style.flatten(2)[:, :, torch.randperm(64)].reshape(1, 5, 8, 8)
    assert losses.sliced_loss(shuffled, points, weights, d).item() == pytest.approx(0.0, abs=1e-10)
    shifted = style + torch.tensor([1.0, 0, 0, 0, 0]).view(1, 5, 1, 1)
    loss = losses.sliced_loss(shifted, points, weights, d).item()
    # Along direction d the projections move by d_0: the loss is the mean of d_0².
    assert loss == pytest.approx(d[:, 0].pow(2).mean().item(), rel=1e-5)


def test_sliced_reads_a_style_of_another_size_at_its_quantiles():
    # The style has each value twice: the same distribution at twice the positions.
    f = torch.arange(6.0).reshape(1, 1, 2, 3)
    style = f.flatten(2).repeat(1, 1, 2)[0]  # (1, 12)
    d = torch.ones(1, 1)
    assert losses.sliced_loss(f, style, torch.full((12,), 1 / 12), d).item() == 0.0
    # A mixture of two styles with weights 3:1 is read at the generated image's quantiles.
    q = losses.quantiles(torch.tensor([[0.0, 10.0]]), torch.tensor([0.75, 0.25]), 4)
    assert q.tolist() == [[0.0, 0.0, 0.0, 10.0]]


@pytest.mark.parametrize("loss", ["w2", "sliced"])
def test_gradients_are_finite_on_rank_deficient_features(loss):
    flat = torch.full((1, 6, 4, 4), 2.0, requires_grad=True)  # a flat image: zero covariance
    style = torch.randn(1, 6, 5, 5, generator=torch.Generator().manual_seed(0))
    if loss == "w2":
        mean, second = losses.moments(style)
        cov = losses.covariance(mean, second)
        value = losses.w2_loss(flat, mean, cov, losses.sqrtm(cov))
    else:
        d = losses.random_directions(6, 6, torch.Generator().manual_seed(0), style)
        value = losses.sliced_loss(flat, style[0].flatten(1), torch.full((25,), 1 / 25), d)
    value.sum().backward()
    assert torch.isfinite(value).all() and value.item() > 0
    assert torch.isfinite(flat.grad).all() and flat.grad.abs().sum() > 0


def test_losses_are_per_sample():
    torch.manual_seed(2)
    style, batch = torch.randn(1, 4, 5, 5), torch.randn(3, 4, 5, 5)
    mean, second = losses.moments(style)
    cov = losses.covariance(mean, second)
    w2 = losses.w2_loss(batch, mean, cov, losses.sqrtm(cov))
    singles = torch.cat([losses.w2_loss(batch[i : i + 1], mean, cov, losses.sqrtm(cov)) for i in range(3)])
    assert w2.shape == (3,) and torch.allclose(w2, singles)
    d = losses.random_directions(4, 4, torch.Generator().manual_seed(0), style)
    sw = losses.sliced_loss(batch, style[0].flatten(1), torch.full((25,), 1 / 25), d)
    singles = torch.cat([losses.sliced_loss(batch[i : i + 1], style[0].flatten(1), torch.full((25,), 1 / 25), d)
                         for i in range(3)])
    assert sw.shape == (3,) and torch.allclose(sw, singles)
