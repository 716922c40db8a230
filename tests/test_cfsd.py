"""CFSD (nstexp.eval.cfsd) against numpy written from StyleID's PatchSimi
(evaluation/image_metrics.py), on the shipped Caffe VGG-19's relu3_1 features."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nstexp.eval import cfsd, metrics
from nstexp.network.backbone import FeatureExtractor


@pytest.fixture(scope="module")
def net():
    # The reference's layer: torchvision's VGG-19 features[:12], relu3_1 after max pooling.
    return FeatureExtractor("vgg19", "caffe", ["relu3_1"])


@pytest.fixture(scope="module")
def images():
    content = F.interpolate(metrics.load("sample:chelsea", "c"), size=(64, 96), mode="bilinear", antialias=True)
    style = F.interpolate(metrics.load("sample:swirls", "s"), size=(96, 96), mode="bilinear", antialias=True)
    result = (0.6 * content + 0.4 * style[..., 16:80, :]).clamp(0, 1)
    return content, style, result


def relu3_1(net, image) -> np.ndarray:
    with torch.no_grad():
        return net(image)["relu3_1"][0].double().numpy()  # (C, H, W)


def reference(fx, fc):
    """F.kl_div(log_softmax(S_result), softmax(S_content), reduction="batchmean") for a batch of
    one, S = (F/C)(F/C)ᵀ with F the (positions, C) features."""

    def log_softmax_rows(f):
        c = f.shape[0]
        x = f.reshape(c, -1).T / c
        s = x @ x.T
        s = s - s.max(1, keepdims=True)
        return s - np.log(np.exp(s).sum(1, keepdims=True))

    log_q, log_p = log_softmax_rows(fx), log_softmax_rows(fc)
    return float((np.exp(log_p) * (log_p - log_q)).sum())


def test_the_yardstick_gives_the_reference_value(net, images):
    content, style, result = images
    m = metrics.Evaluator(content, style, 96)(result)
    expected = reference(relu3_1(net, result), relu3_1(net, content))
    assert m["eval/cfsd"] == pytest.approx(expected, rel=1e-6)
    assert expected > 1  # a real distance, not a rounding error


def test_blocks_of_rows_sum_to_the_whole(net, images, monkeypatch):
    content, _, result = images
    fc, fx = net(content)["relu3_1"], net(result)["relu3_1"]
    whole = cfsd.CFSD(fc)(fx)
    monkeypatch.setattr(cfsd, "BLOCK", 100)  # 384 positions: blocks of 100, 100, 100 and 84 rows
    assert cfsd.CFSD(fc)(fx) == pytest.approx(whole, rel=1e-12)


def test_the_content_image_is_at_distance_0_and_others_are_not(net, images):
    content, style, result = images
    score = cfsd.CFSD(net(content)["relu3_1"])
    assert score(net(content)["relu3_1"]) == 0.0
    assert 0 < score(net(result)["relu3_1"]) < score(net(style[..., 16:80, :])["relu3_1"])
