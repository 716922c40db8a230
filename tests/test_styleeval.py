"""StyleEval's CF, GE and LP (nstexp.eval.styleeval) against numpy written from the reference's
formulas (EndyWon/StyleEval, quality_criteria.py), on the shipped Caffe VGG-19's features."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nstexp.eval import metrics, styleeval
from nstexp.network.backbone import FeatureExtractor

# The reference's layers (its conv layers include their ReLU) and its network: average pooling.
CONTENT_LAYERS = ("relu4_1", "relu5_1")
LOCAL_STYLE_LAYERS = ("relu3_1", "relu4_1")
GLOBAL_STYLE_LAYERS = ("relu2_1", "relu3_1", "relu4_1", "relu5_1")


@pytest.fixture(scope="module")
def average_net():
    return FeatureExtractor("vgg19", "caffe", list(GLOBAL_STYLE_LAYERS), pooling="avg")


@pytest.fixture(scope="module")
def images():
    """Content 64 x 96, style 96 x 96 and a result between them: at eval size 96 none is resized."""
    content = F.interpolate(metrics.load("sample:chelsea", "c"), size=(64, 96), mode="bilinear", antialias=True)
    style = F.interpolate(metrics.load("sample:swirls", "s"), size=(96, 96), mode="bilinear", antialias=True)
    noise = torch.rand(content.shape, generator=torch.Generator().manual_seed(0))
    result = (0.5 * content + 0.3 * style[..., 16:80, :] + 0.2 * noise).clamp(0, 1)
    return content, style, result


def features(net, image) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v[0].double().numpy() for k, v in net(image).items()}  # (C, H, W)


def cos(a, b):
    a, b = a.ravel(), b.ravel()
    return a @ b / np.sqrt((a @ a) * (b @ b))


def all_patches(f):
    """Every 3 x 3 window of (C, H, W), stride 1, no padding: (L, C * 9)."""
    c, h, w = f.shape
    return np.array([f[:, i:i + 3, j:j + 3].ravel() for i in range(h - 2) for j in range(w - 2)])


def unit_rows(x):
    return x / np.sqrt((x**2).sum(1, keepdims=True))


def reference(fc, fs, fx, style, result):
    """CF, GE, LP as quality_criteria.py computes them, from features (C, H, W) and images (3, H, W)."""
    cf = np.mean([cos(fx[k], fc[k]) for k in CONTENT_LAYERS])

    def gram(f):
        m = f.reshape(f.shape[0], -1).T  # (M positions, N channels)
        return m.T @ m

    gram_sim = np.mean([cos(gram(fx[k]), gram(fs[k])) for k in GLOBAL_STYLE_LAYERS])
    hist_sim = np.mean([cos(np.histogram(style[c], bins=128, range=(0, 1))[0].astype(float),
                            np.histogram(result[c], bins=128, range=(0, 1))[0].astype(float)) for c in range(3)])
    ge = 0.5 * gram_sim + 0.5 * hist_sim

    local_sim1 = local_sim2 = 0.0
    for k in LOCAL_STYLE_LAYERS:
        patches, targets = all_patches(fx[k]), all_patches(fs[k])
        norm_patch, norm_target = unit_rows(patches), unit_rows(targets)
        max_ind = (norm_patch @ norm_target.T).argmax(1)
        local_sim1 += np.mean((norm_patch * unit_rows(targets[max_ind])).sum(1))  # diag of all_sim
        s_max_ind = (norm_target @ norm_target.T).argmax(1)
        local_sim2 += len(set(max_ind)) / len(set(s_max_ind))
    lp = 0.5 * local_sim1 / 2 + 0.5 * local_sim2 / 2
    return cf, ge, lp


def test_the_yardstick_gives_the_reference_values(average_net, images):
    content, style, result = images
    m = metrics.Evaluator(content, style, 96)(result)
    fc, fs, fx = (features(average_net, x) for x in images)
    cf, ge, lp = reference(fc, fs, fx, style[0].double().numpy(), result[0].double().numpy())
    assert m["eval/styleeval_cf"] == pytest.approx(cf, abs=1e-6)
    assert m["eval/styleeval_ge"] == pytest.approx(ge, abs=1e-6)
    assert m["eval/styleeval_lp"] == pytest.approx(lp, abs=1e-6)
    assert m["eval/styleeval"] == pytest.approx((cf + ge + lp) / 3, abs=1e-6)
    assert 0 < cf < 1 and 0 < ge < 1 and 0 < lp < 1


def test_each_factor_is_1_for_the_image_it_measures(average_net, images):
    content, style, _ = images
    fc, fs = average_net(content), average_net(style)
    score = styleeval.StyleEval(fc, fs, style)
    assert score(fc, content)["eval/styleeval_cf"] == pytest.approx(1.0, abs=1e-6)
    # The style as its own result (content of the style's shape): every style patch is used.
    as_style = styleeval.StyleEval(fs, fs, style)(fs, style)
    assert as_style["eval/styleeval_ge"] == pytest.approx(1.0, abs=1e-6)
    assert as_style["eval/styleeval_lp"] == pytest.approx(1.0, abs=1e-6)
    assert as_style["eval/styleeval"] == pytest.approx(1.0, abs=1e-6)


def test_copies_of_a_style_patch_count_as_one(average_net):
    """A style of two flat blocks has many identical patches: they are one patch, so the style
    itself uses all of its distinct patches (LP2 = 1), and an image of one block far fewer."""
    style = torch.zeros(1, 3, 96, 96)
    style[..., :48, :] = torch.tensor([0.9, 0.2, 0.1]).view(1, 3, 1, 1)
    style[..., 48:, :] = torch.tensor([0.1, 0.3, 0.8]).view(1, 3, 1, 1)
    fs = average_net(style)
    score = styleeval.StyleEval(fs, fs, style)
    for k in LOCAL_STYLE_LAYERS:
        assert score.distinct[k] < styleeval.patches(fs[k]).shape[0], k  # copies were merged
    assert score(fs, style)["eval/styleeval_lp"] == pytest.approx(1.0, abs=1e-6)
    top = style.clone()
    top[..., 48:, :] = style[..., :48, :]  # the top colour only: LP2 drops
    assert score(average_net(top), top)["eval/styleeval_lp"] < 0.9


def test_a_patch_of_zeros_has_no_similarity():
    f = torch.zeros(1, 2, 4, 4)
    f[0, 0, 0, 0] = 1.0  # only the first patch is not zero
    p = styleeval.patches(f)
    assert p.shape == (4, 18) and torch.isfinite(p).all()
    assert p[0].norm().item() == pytest.approx(1.0) and p[1:].abs().sum() == 0


def test_local_patterns_need_a_whole_patch_at_each_layer():
    """At eval.size 32 a 2:1 photo is 32 x 16 px: relu4_1 has 4 x 2 positions, no 3 x 3 patch,
    so LP (and the mean) is undefined, NaN, while CF and GE are not."""
    content = F.interpolate(metrics.load("sample:chelsea", "c"), size=(60, 120), mode="bilinear", antialias=True)
    style = metrics.load("sample:swirls", "s")
    m = metrics.Evaluator(content, style, 32)(content)
    assert np.isnan(m["eval/styleeval_lp"]) and np.isnan(m["eval/styleeval"])
    assert m["eval/styleeval_cf"] == pytest.approx(1.0, abs=1e-6) and 0 < m["eval/styleeval_ge"] < 1
