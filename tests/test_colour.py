"""Colour control: YIQ, luminance matching and linear colour transfer, on images whose answer is known."""

import colorsys

import numpy as np
import pytest
import torch

from nstexp.run import colour


def _image(seed, shape=(1, 3, 20, 30), low=0.0, high=1.0):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, generator=g)


def test_yiq_agrees_with_the_standard_library_and_published_values():
    # colorsys rounds the NTSC coefficients to two digits: agreement to 1e-2.
    for rgb in [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.2, 0.5, 0.9), (1.0, 1.0, 1.0)]:
        ours = colour.rgb_to_yiq(torch.tensor(rgb).reshape(1, 3, 1, 1)).flatten().tolist()
        assert ours == pytest.approx(colorsys.rgb_to_yiq(*rgb), abs=1e-2)
    red = colour.rgb_to_yiq(torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)).flatten().tolist()
    assert red == pytest.approx([0.299, 0.596, 0.211], abs=1e-6)
    white = colour.rgb_to_yiq(torch.ones(1, 3, 1, 1)).flatten().tolist()
    assert white == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)  # grey has no chrominance


def test_rgb_yiq_rgb_round_trip_is_the_identity():
    x = _image(0).double()
    assert torch.allclose(colour.yiq_to_rgb(colour.rgb_to_yiq(x)), x, atol=1e-12)


def test_matched_colours_have_the_reference_mean_and_covariance():
    # A dull, reddish image matched to a bluish, contrasty one.
    image = _image(1) * torch.tensor([0.3, 0.2, 0.1]).reshape(1, 3, 1, 1) + 0.4
    reference = _image(2) * torch.tensor([0.5, 0.7, 0.9]).reshape(1, 3, 1, 1)
    reference[:, 2] = 0.5 * reference[:, 2] + 0.5 * reference[:, 0]  # correlated channels
    out = colour.match_colours(image, reference)
    got = out[0].flatten(1).double().numpy()
    want = reference[0].flatten(1).double().numpy()
    assert np.abs(got.mean(1) - want.mean(1)).max() < 1e-3
    assert np.abs(np.cov(got, bias=True) - np.cov(want, bias=True)).max() < 1e-3
    assert not np.allclose(np.cov(image[0].flatten(1).numpy(), bias=True), np.cov(want, bias=True), atol=1e-3)


def test_matching_an_image_to_itself_changes_nothing():
    x = _image(3)
    assert torch.allclose(colour.match_colours(x, x), x, atol=1e-5)


def test_luminance_mode_feeds_grey_images_with_the_contents_luminance_statistics():
    content, style = _image(4, low=0.3, high=0.7), _image(5, low=0.0, high=0.4)  # no clamping
    seen_content, (seen_style,) = colour.prepare("luminance", content, [style])
    for img in (seen_content, seen_style):
        assert torch.equal(img[:, 0], img[:, 1]) and torch.equal(img[:, 1], img[:, 2])
    y_c, y_s = colour.luminance(content), seen_style[:, :1]
    assert y_s.mean().item() == pytest.approx(y_c.mean().item(), abs=1e-4)
    assert y_s.std().item() == pytest.approx(y_c.std().item(), rel=1e-3)


def test_present_keeps_the_results_luminance_and_the_contents_chrominance():
    content = _image(6, low=0.3, high=0.7)  # away from the clamp
    result = _image(7, low=0.4, high=0.6)
    shown = colour.present("swap", result, content)
    yiq_shown, yiq_result, yiq_content = map(colour.rgb_to_yiq, (shown, result, content))
    assert torch.allclose(yiq_shown[:, 1:], yiq_content[:, 1:], atol=1e-5)
    assert torch.allclose(yiq_shown[:, 0], yiq_result[:, 0], atol=1e-5)
    assert torch.equal(colour.present("none", result, content), result)
    assert torch.equal(colour.present("histogram", result, content), result)
