"""The statistics family of style losses and the Laplacian term, against independent
references: closed forms in numpy, scipy's moments, POT's exact 1-D optimal transport."""

import numpy as np
import pytest
import torch

from conftest import sections
from nstexp.config import CMDConfig, MMDConfig, StyleConfig
from nstexp.losses import STYLE_LOSSES, laplacian_loss
from nstexp.losses.histogram import histogram_remap
from nstexp.losses.mix import style_loss_for
from nstexp.losses.mmd import gaussian_mmd2_exact
from nstexp.losses.objective import Objective

NEW = ("mmd_linear", "mmd_poly", "mmd_gaussian", "bn", "cmd", "histogram")


def _feats(seed, n=5, h=6, w=7, shift=0.0):
    return torch.randn(1, n, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def _loss(name, **options):
    style = StyleConfig(loss=name, mmd=MMDConfig(**options.pop("mmd", {})), cmd=CMDConfig(**options.pop("cmd", {})))
    return STYLE_LOSSES[name](style, 0) if isinstance(name, str) else style_loss_for(style, 0)


def _value(name, f, styles, shares=None, **options):
    loss = _loss(name, **options)
    return loss.distance(f, loss.target(styles, shares or [1.0 / len(styles)] * len(styles)))


def _points(f):  # (1, N, H, W) -> (M, N) numpy
    return f[0].flatten(1).T.numpy()


def test_mmd_linear_is_the_squared_distance_of_the_means():
    x, y = _feats(0), _feats(1, h=9, w=4, shift=0.5)
    expected = np.sum((_points(x).mean(0) - _points(y).mean(0)) ** 2)
    assert _value("mmd_linear", x, [y]).item() == pytest.approx(expected, rel=1e-9)


def test_mmd_poly_with_c_0_is_the_distance_of_the_normalized_grams():
    x, y = _feats(0), _feats(1, h=9, w=4, shift=0.5)
    px, py = _points(x), _points(y)
    expected = np.sum((px.T @ px / len(px) - py.T @ py / len(py)) ** 2)
    assert _value("mmd_poly", x, [y]).item() == pytest.approx(expected, rel=1e-9)


def _mmd2_u(px, py, gamma=None, c=None):
    """The unbiased MMD² by brute force over every pair; gaussian, or (xᵀy + c)² with c."""
    def k(a, b):
        if c is not None:
            return (a @ b.T + c) ** 2
        return np.exp(-gamma * ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    kxx, kyy, kxy = k(px, px), k(py, py), k(px, py)
    n, m = len(px), len(py)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def _mmd2_v(px, py, c):
    """The plain (V-statistic) MMD² of the two empirical distributions, every pair with itself too."""
    k = lambda a, b: (a @ b.T + c) ** 2  # noqa: E731
    return k(px, px).mean() + k(py, py).mean() - 2 * k(px, py).mean()


def test_mmd_poly_with_c_is_the_brute_force_mmd_of_the_empirical_distributions():
    x, y = _feats(0), _feats(1, h=9, w=4, shift=0.5)
    expected = _mmd2_v(_points(x), _points(y), c=1.5)
    assert _value("mmd_poly", x, [y], mmd={"c": 1.5}).item() == pytest.approx(expected, rel=1e-9)


def test_the_exact_gaussian_mmd_agrees_with_a_direct_computation():
    x, y = _feats(0), _feats(1, h=9, w=4, shift=0.5)
    expected = _mmd2_u(_points(x), _points(y), gamma=0.1)
    got = gaussian_mmd2_exact(x.flatten(2), y.flatten(2), 0.1).item()
    assert got == pytest.approx(expected, rel=1e-9)
    # style.mmd.samples at least every position: the exact MMD²_u of all of them.
    assert _value("mmd_gaussian", x, [y], mmd={"gamma": 0.1, "samples": 1000}).item() == pytest.approx(expected, rel=1e-9)


def test_the_linear_time_gaussian_estimator_is_unbiased_within_its_spread():
    x, y = _feats(0, n=4, h=8, w=8), _feats(1, n=4, h=8, w=8, shift=0.4)
    expected = _mmd2_u(_points(x), _points(y), gamma=0.2)
    loss = _loss("mmd_gaussian", mmd={"gamma": 0.2})
    target = loss.target([y], [1.0])
    draws = np.array([loss.distance(x, target).item() for _ in range(400)])
    standard_error = draws.std(ddof=1) / np.sqrt(len(draws))
    assert abs(draws.mean() - expected) < 4 * standard_error, (draws.mean(), expected, standard_error)
    assert draws.std() > 0  # the pairs are drawn anew at every evaluation


def test_bn_is_the_distance_of_numpys_means_and_deviations():
    x, y = _feats(0), _feats(1, h=9, w=4, shift=0.5)
    px, py = _points(x), _points(y)
    expected = (np.sum((px.mean(0) - py.mean(0)) ** 2) + np.sum((px.std(0) - py.std(0)) ** 2)) / px.shape[1]
    assert _value("bn", x, [y]).item() == pytest.approx(expected, rel=1e-6)


def test_cmd_is_the_sum_of_norms_of_scipys_central_moment_differences():
    from scipy import stats  # here: slow to import, and only this test needs it

    x, y = _feats(0) * 60, _feats(1, h=9, w=4, shift=0.5) * 60
    sx, sy = (1 / (1 + np.exp(-_points(f) / 57.6)) for f in (x, y))
    expected = np.linalg.norm(sx.mean(0) - sy.mean(0))
    expected += sum(np.linalg.norm(stats.moment(sx, k, axis=0) - stats.moment(sy, k, axis=0)) for k in range(2, 6))
    assert _value("cmd", x, [y]).item() == pytest.approx(expected, rel=1e-6)


def test_blended_targets_are_the_mixtures():
    """Two styles blended 0.3 / 0.7: the target of the pooled positions, each weighed by its share
    over its image's own positions (here sizes 24 and 48, so equal per-position weights need 1 : 2)."""
    a, b = _feats(1, h=4, w=6), _feats(2, h=8, w=6, shift=1.0)
    pooled = torch.cat([a.flatten(2), b.flatten(2)], 2).reshape(1, 5, 72, 1)  # shares 1/3, 2/3
    x = _feats(0)
    for name in ("mmd_linear", "mmd_poly", "bn", "cmd", "histogram"):
        assert _value(name, x, [a, b], [1 / 3, 2 / 3]).item() == pytest.approx(
            _value(name, x, [pooled]).item(), rel=1e-6), name


def test_histogram_is_zero_on_the_styles_own_features_and_its_remap_is_1d_optimal_transport():
    import ot  # here: slow to import, and only this test needs it

    y = _feats(1, h=9, w=4)
    assert _value("histogram", y, [y]).item() == pytest.approx(0, abs=1e-20)
    x = _feats(0, h=6, w=6, shift=0.3)  # as many positions (36) as the style
    remap = histogram_remap(x, _loss("histogram").target([y], [1.0]))
    for j in range(x.shape[1]):
        u, v = x[0, j].flatten().numpy(), y[0, j].flatten().numpy()
        plan = ot.emd_1d(u, v)  # the exact optimal transport plan, uniform weights
        assert np.allclose(remap[0, j].flatten().numpy(), plan @ v * len(u))


def test_histogram_remap_of_a_larger_style_reads_its_sorted_quantiles():
    x, y = _feats(0, h=4, w=5), _feats(1, h=9, w=7)  # 20 and 63 positions
    remap = histogram_remap(x, _loss("histogram").target([y], [1.0]))[0].flatten(1).numpy()
    for j in range(x.shape[1]):
        v = np.sort(y[0, j].flatten().numpy())
        levels = (np.arange(20) + 0.5) / 20
        expected = np.interp(levels, (np.arange(63) + 0.5) / 63, v)  # numpy's sorted quantiles
        assert np.allclose(np.sort(remap[j]), expected)
        assert (np.argsort(remap[j]) == np.argsort(x[0, j].flatten().numpy())).all()  # order kept


def test_histogram_of_a_style_layer_of_one_position_remaps_every_position_to_its_value():
    """A 16 px style image leaves relu5_1 one position: its quantile function is that value
    (np.interp of a single point), not an index error."""
    x, y = _feats(0, h=3, w=2), _feats(1, h=1, w=1)
    remap = histogram_remap(x, _loss("histogram").target([y], [1.0]))[0].flatten(1).numpy()
    for j in range(x.shape[1]):
        expected = np.interp((np.arange(6) + 0.5) / 6, [0.5], y[0, j].flatten().numpy())
        assert np.allclose(remap[j], expected)
    assert np.isfinite(_value("histogram", x, [y]).item())


def test_histogram_is_invariant_to_permuting_positions():
    x, y = _feats(0), _feats(1, h=9, w=4)
    perm = torch.randperm(42, generator=torch.Generator().manual_seed(3))
    shuffled = x.flatten(2)[:, :, perm].reshape(x.shape)
    assert _value("histogram", shuffled, [y]).item() == pytest.approx(_value("histogram", x, [y]).item(), rel=1e-12)


def test_a_mix_is_the_weighted_sum_of_its_losses():
    x, y = _feats(0), _feats(1, shift=0.2)
    mix = _value({"gram": 1.0, "histogram": 0.5, "bn": 0.0}, x, [y])
    assert mix.item() == pytest.approx(_value("gram", x, [y]).item() + 0.5 * _value("histogram", x, [y]).item())


def test_laplacian_agrees_with_a_hand_computed_value():
    # 4x4, pool 0: the 3x3 Laplacian summed over RGB has 2x2 valid outputs.
    image = torch.zeros(1, 3, 4, 4)
    image[0, 0, 1, 1] = 1.0  # a red dot at (1, 1): D = 4 there, -1 at its neighbours (1, 2), (2, 1), 0 at (2, 2)
    image[0, 2, 2, 2] = 0.5  # a blue dot at (2, 2): +2 there, -0.5 at (1, 2) and (2, 1)
    content = torch.zeros(1, 1, 2, 2)
    # D over the valid 2x2: [[4, -1.5], [-1.5, 2]]; the mean of squares (16 + 2.25 + 2.25 + 4) / 4.
    assert laplacian_loss(image, content, 0).item() == pytest.approx(24.5 / 4)
    # Pool 1 of an 8x8 image is the 4x4 image above, block for block.
    big = image.repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert laplacian_loss(big, content, 1).item() == pytest.approx(24.5 / 4)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("bf16", [False, True])
def test_every_loss_has_a_finite_gradient_on_a_flat_image(name, bf16):
    f = torch.full((1, 8, 16, 16), 3.0, requires_grad=True)
    style = torch.rand(1, 8, 12, 12, generator=torch.Generator().manual_seed(0)) * 50
    loss = _loss(name)
    target = loss.target([style], [1.0])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        value = loss.distance(f * 1.0, target)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(f.grad).all(), name
    # And against itself, where every statistic matches (norms of 0, σ = 0).
    g = torch.full((1, 8, 16, 16), 3.0, requires_grad=True)
    loss.distance(g, loss.target([g.detach()], [1.0])).sum().backward()
    assert torch.isfinite(g.grad).all(), name


def test_the_laplacian_term_enters_the_objective_and_is_logged():
    from nstexp.config import LaplacianConfig
    from nstexp.network.backbone import FeatureExtractor

    extractor = FeatureExtractor("vgg19", "random", ["relu1_1"])
    # A flat black content image: its Laplacian is 0. The image: 2x2 blocks of the 4x4 image of the
    # hand-computed test above, so after the 2x2 average pooling (pool 1) D is [[4, -1.5], [-1.5, 2]],
    # the mean of squares 24.5 / 4, and with weight 2 the term is 12.25.
    content = torch.zeros(1, 3, 8, 8)
    small = torch.zeros(1, 3, 4, 4)
    small[0, 0, 1, 1], small[0, 2, 2, 2] = 1.0, 0.5
    image = small.repeat_interleave(2, 2).repeat_interleave(2, 3)
    args = sections({"relu1_1": 1.0}, {"relu1_1": 1.0})
    obj = Objective(extractor, content, [content], *args, laplacian_config=LaplacianConfig(weight=2.0, pool=1))
    t = obj(image)
    assert t.laplacian.item() == pytest.approx(12.25, rel=1e-6)
    assert t.total.item() == pytest.approx((t.content + t.style + t.tv + t.laplacian).item(), rel=1e-6)
    assert t.as_floats()["loss/laplacian"] == pytest.approx(12.25, rel=1e-6)
    assert Objective(extractor, content, [content], *args)(image).as_floats()["loss/laplacian"] == 0.0


def test_a_conv_layer_reads_the_pre_relu_response():
    from nstexp.network.backbone import FeatureExtractor

    extractor = FeatureExtractor("vgg19", "random", ["conv1_1", "relu1_1", "conv2_1", "relu2_1"])
    feats = extractor(torch.rand(1, 3, 32, 32))
    for block in (1, 2):
        conv, relu = feats[f"conv{block}_1"], feats[f"relu{block}_1"]
        assert (conv < 0).any()  # not overwritten by the ReLU after it
        assert torch.equal(conv.clamp_min(0), relu)
