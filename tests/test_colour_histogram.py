"""HistoGAN's RGB-uv histogram and its Hellinger distance (nstexp.eval.colour_histogram) against
numpy written from RGBuvHistBlock and StyleID's evaluation/eval_histogan.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nstexp.eval import colour_histogram, metrics

EPS = 1e-6


def resize_bilinear(image, h, w):
    """(3, H, W) -> (3, h, w): bilinear with half-pixel centres, no antialiasing (torch's
    align_corners=False), the resizing RGBuvHistBlock applies over 256 px."""

    def taps(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = taps(image.shape[1], h)
    x0, x1, fx = taps(image.shape[2], w)
    rows = image[:, y0] * (1 - fy)[None, :, None] + image[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def histogram(image):
    """RGBuvHistBlock(h=64, insz=256, 'inverse-quadratic', sigma=0.02, intensity_scale=True) of (3, H, W)."""
    image = np.clip(image, 0, 1)
    if image.shape[1] > 256 or image.shape[2] > 256:
        image = resize_bilinear(image, 256, 256)
    i = image.reshape(3, -1).T  # (N, 3)
    iy = np.sqrt((i**2).sum(1) + EPS)[:, None]
    bins = np.linspace(-3, 3, num=64)[None, :]
    out = []
    for c, (a, b) in enumerate([(1, 2), (0, 2), (0, 1)]):
        iu = (np.log(i[:, c] + EPS) - np.log(i[:, a] + EPS))[:, None]
        iv = (np.log(i[:, c] + EPS) - np.log(i[:, b] + EPS))[:, None]
        ku = 1 / (1 + np.abs(iu - bins) ** 2 / 0.02**2)
        kv = 1 / (1 + np.abs(iv - bins) ** 2 / 0.02**2)
        out.append((iy * ku).T @ kv)
    hists = np.stack(out)
    return hists / (hists.sum() + EPS)


def hellinger(x, y):
    """eval_histogan.py's loss for a batch of one: 1/√2 ‖√H_target − √H_input‖."""
    return 1 / np.sqrt(2.0) * np.sqrt(((np.sqrt(histogram(y)) - np.sqrt(histogram(x))) ** 2).sum())


@pytest.mark.parametrize("shape", [(3, 20, 30), (3, 300, 40)])  # the second is resized to 256 x 256
def test_histogram_and_distance_are_the_references(shape):
    gen = torch.Generator().manual_seed(shape[1])
    x = torch.rand(1, *shape, generator=gen, dtype=torch.float64)
    y = (0.6 * x + 0.4 * torch.rand(1, *shape, generator=gen, dtype=torch.float64) ** 2).clamp(0, 1)
    h = colour_histogram.rgb_uv_histogram(x)
    assert h.shape == (3, 64, 64)
    np.testing.assert_allclose(h.numpy(), histogram(x[0].numpy()), rtol=1e-6, atol=1e-12)
    distance = colour_histogram.ColourHellinger(y)(x)
    assert distance == pytest.approx(hellinger(x[0].numpy(), y[0].numpy()), abs=1e-6)
    assert 0.01 < distance < 1


def test_the_yardstick_scores_the_result_against_the_style():
    content = F.interpolate(metrics.load("sample:chelsea", "c"), size=(64, 96), mode="bilinear", antialias=True)
    style = F.interpolate(metrics.load("sample:swirls", "s"), size=(96, 96), mode="bilinear", antialias=True)
    evaluator = metrics.Evaluator(content, style, 96)
    assert evaluator(content)["eval/colour_hellinger"] == pytest.approx(
        hellinger(content[0].double().numpy(), style[0].double().numpy()), abs=1e-6)
    # The style's own colours, whatever their arrangement: about 0 (the rows lose a third of the pixels).
    assert evaluator(style[..., 16:80, :].flip(-1))["eval/colour_hellinger"] < 0.1


def test_same_colours_are_at_0_and_opposite_ones_near_1():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=gen)
    score = colour_histogram.ColourHellinger(x)
    assert score(x) == 0.0
    assert score(x.flip(-1).transpose(-1, -2)) == pytest.approx(0.0, abs=1e-12)  # the same pixels, moved
    reddish = torch.tensor([0.8, 0.2, 0.2]).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    bluish = torch.tensor([0.2, 0.2, 0.8]).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    assert colour_histogram.ColourHellinger(reddish)(bluish) > 0.95
