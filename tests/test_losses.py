"""Each loss against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from nstexp import losses

# Two channels over M = 2 positions: a = [1, 2], b = [3, 4]; shape (B=1, N=2, H=1, W=2).
F = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])


def test_content_loss_gatys_is_half_sum_of_squares():
    p = torch.zeros_like(F)
    assert losses.content_loss(F, p, "gatys").item() == pytest.approx(0.5 * (1 + 4 + 9 + 16))


def test_content_loss_mean_is_mse():
    p = torch.ones_like(F)
    assert losses.content_loss(F, p, "mean").item() == pytest.approx((0 + 1 + 4 + 9) / 4)


def test_gram_matrix_gatys_is_per_position():
    g = losses.gram_matrix(F, "gatys")
    assert g.shape == (1, 2, 2)
    # G = [[1+4, 3+8], [3+8, 9+16]] summed over M = 2 positions, divided by M.
    assert g[0].tolist() == [[5 / 2, 11 / 2], [11 / 2, 25 / 2]]


def test_gram_matrix_mean_divides_by_n_times_m():
    g = losses.gram_matrix(F, "mean")
    assert torch.allclose(g[0], torch.tensor([[5 / 4, 11 / 4], [11 / 4, 25 / 4]]))


def test_gram_matrix_cosine_has_unit_diagonal():
    g = losses.gram_matrix(F, "cosine")
    cos_ab = 11 / (math.sqrt(5) * 5)
    assert torch.allclose(g[0], torch.tensor([[1.0, cos_ab], [cos_ab, 1.0]]), atol=1e-6)


def test_style_loss_gatys_eq4():
    g = losses.gram_matrix(F, "gatys")
    a = torch.zeros_like(g)
    # Paper eq. 4 with the unnormalized G: sum (G - A)^2 = 25 + 121 + 121 + 625 = 892;
    # N = 2, M = 2 -> / (4 * N^2 * M^2) = / 64.
    assert losses.style_loss(g, a, n=2, normalization="gatys").item() == pytest.approx(892 / 64)


@pytest.mark.parametrize("norm", ["mean", "cosine"])
def test_style_loss_mse_variants(norm):
    g = torch.tensor([[[1.0, 2.0], [2.0, 5.0]]])
    a = torch.tensor([[[0.0, 2.0], [2.0, 3.0]]])
    assert losses.style_loss(g, a, n=2, normalization=norm).item() == pytest.approx((1 + 0 + 0 + 4) / 4)


def test_tv_loss():
    img = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    # vertical: (2-0)^2 + (3-1)^2 = 8; horizontal: (1-0)^2 + (3-2)^2 = 2
    assert losses.tv_loss(img).item() == pytest.approx(10.0)
    # Per pixel ((Δx)² + (Δy)²)^β: top left 1 + 4, top right 0 + 4, bottom left 1 + 0, bottom right 0.
    assert losses.tv_loss(img, 1.25).item() == pytest.approx(5**1.25 + 4**1.25 + 1)
    assert losses.tv_loss(img, 2.0).item() == pytest.approx(25 + 16 + 1)


def test_losses_are_per_sample():
    torch.manual_seed(0)
    f = torch.randn(3, 4, 5, 5)
    p = torch.randn(1, 4, 5, 5)
    batch = losses.content_loss(f, p)
    singles = torch.stack([losses.content_loss(f[i : i + 1], p)[0] for i in range(3)])
    assert batch.shape == (3,)
    assert torch.allclose(batch, singles)
    g = losses.gram_matrix(f)
    s = losses.style_loss(g, g[:1], 4)
    assert s.shape == (3,) and s[0].item() == 0.0 and s[1].item() > 0
    assert losses.tv_loss(torch.rand(2, 3, 4, 4)).shape == (2,)


def test_unknown_normalization_is_rejected():
    with pytest.raises(ValueError):
        losses.content_loss(F, F, "sum")
    with pytest.raises(ValueError):
        losses.style_loss(F[0], F[0], 2, "bogus")


@pytest.mark.parametrize("norm", ["gatys", "mean", "cosine"])
def test_style_target_does_not_grow_with_the_style_images_size(norm):
    """A style image that is the generated image tiled twice has the same statistics: loss 0.

    Before Grams were normalized by their own number of positions, the `gatys` target of
    the tiled image was twice as large and this loss was far from 0.
    """
    torch.manual_seed(0)
    f = torch.randn(1, 4, 3, 5)  # (B, N, H, W): the generated image's features
    tiled = torch.cat([f, f], dim=3)  # the style image: same statistics, M_s = 2 M
    g, a = losses.gram_matrix(f, norm), losses.gram_matrix(tiled, norm)
    assert torch.allclose(g, a, rtol=1e-5, atol=1e-6)
    assert losses.style_loss(g, a, n=4, normalization=norm).item() == pytest.approx(0.0, abs=1e-9)
    # ... while a different distribution is not matched.
    other = losses.gram_matrix(2 * tiled, norm)
    if norm != "cosine":  # cosine Grams ignore a global scale by design
        assert losses.style_loss(g, other, n=4, normalization=norm).item() > 1e-3


def test_the_gram_products_gradient_is_autograds():
    from nstexp.losses.gram import outer_product

    f = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(outer_product, (f,))
    weights = torch.randn(2, 3, 3, dtype=torch.float64)
    (ours,) = torch.autograd.grad((outer_product(f) * weights).sum(), f)
    (plain,) = torch.autograd.grad(((f @ f.transpose(1, 2)) * weights).sum(), f)
    assert torch.allclose(ours, plain)
