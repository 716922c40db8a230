"""Spatial control: guided statistics against the statistics of the selected positions alone."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import sections
from nstexp import losses
from nstexp.run import masks
from nstexp.losses import guides
from nstexp.network.backbone import FeatureExtractor
from nstexp.errors import NstexpError
from nstexp.losses.objective import Objective

STYLE = {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0}


def _features(seed=0, shape=(1, 8, 6, 10)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _left_half(shape=(6, 10)):
    guide = torch.zeros(1, 1, *shape, dtype=torch.float64)
    guide[..., : shape[1] // 2] = 1.0
    return guide


@pytest.mark.parametrize("normalization,divisor", [("gatys", lambda n, m: m), ("mean", lambda n, m: n * m)])
def test_a_binary_guide_gives_the_gram_matrix_of_the_selected_positions(normalization, divisor):
    f = _features()
    sel = f[0, :, :, :5].reshape(8, -1).numpy()  # the left half's positions only
    want = sel @ sel.T / divisor(8, sel.shape[1])
    got = losses.gram_matrix(f, normalization, _left_half())[0].numpy()
    assert np.allclose(got, want, rtol=1e-12)


def test_a_binary_guide_gives_the_mean_and_covariance_of_the_selected_positions():
    f = _features(1)
    sel = f[0, :, :, :5].reshape(8, -1).numpy()
    mean, cov = losses.centered_covariance(f, eps=0.0, guide=_left_half())
    assert np.allclose(mean[0].numpy(), sel.mean(1), rtol=1e-12)
    assert np.allclose(cov[0].numpy(), np.cov(sel, bias=True), rtol=1e-10)


def test_an_all_ones_guide_changes_nothing():
    f = _features(2)
    ones = torch.ones(1, 1, 6, 10, dtype=torch.float64)
    for norm in ("gatys", "mean", "cosine"):
        assert torch.allclose(losses.gram_matrix(f, norm, ones), losses.gram_matrix(f, norm), rtol=1e-14)
    assert torch.allclose(losses.content_loss(f, 0 * f, "gatys", ones), losses.content_loss(f, 0 * f, "gatys"))
    assert torch.allclose(losses.content_loss(f, 0 * f, "mean", ones), losses.content_loss(f, 0 * f, "mean"))


def test_a_content_mask_keeps_only_the_masked_positions_terms():
    f, p = _features(3), _features(4)
    diff = (f - p)[0, :, :, :5].numpy()
    assert losses.content_loss(f, p, "gatys", _left_half()).item() == pytest.approx(0.5 * (diff**2).sum())
    assert losses.content_loss(f, p, "mean", _left_half()).item() == pytest.approx((diff**2).mean())


def test_masks_are_area_averaged_to_each_layer():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :3] = 1.0  # three of eight columns
    small = guides.to_layer(mask, (4, 4))
    assert small[0, 0, 0].tolist() == [1.0, 0.5, 0.0, 0.0]  # the second cell is half inside


def test_mask_files_are_read_as_weights_and_an_all_black_one_is_refused(tmp_path):
    Image.new("L", (20, 10), 255).save(tmp_path / "white.png")
    Image.new("RGB", (20, 10), (0, 0, 0)).save(tmp_path / "black.png")
    white = masks.load(str(tmp_path / "white.png"), "style.masks[0]", (40, 20), torch.device("cpu"))
    assert white.shape == (1, 1, 20, 40) and torch.equal(white, torch.ones_like(white))
    with pytest.raises(NstexpError, match=r"style.masks\[1\]=.*all black"):
        masks.load(str(tmp_path / "black.png"), "style.masks[1]", (40, 20), torch.device("cpu"))


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor("vgg19", "caffe", [*STYLE, "relu4_2"])


@pytest.mark.parametrize("loss", ["gram", "w2"])
def test_one_mask_over_everything_is_the_unmasked_objective(extractor, loss):
    gen = torch.Generator().manual_seed(0)
    content, style, image = (torch.rand(1, 3, 48, 64, generator=gen) for _ in range(3))
    kwargs = dict(style={"loss": loss})
    plain = Objective(extractor, content, [style], *sections({"relu4_2": 1.0}, STYLE, 1.0, 1e3, 0.0, **kwargs))
    ones = torch.ones(1, 1, 48, 64)
    masked = Objective(extractor, content, [style], *sections({"relu4_2": 1.0}, STYLE, 1.0, 1e3, 0.0, **kwargs),
                       style_masks=[ones], content_mask=ones)
    with torch.no_grad():
        a, b = plain(image), masked(image)
    assert torch.allclose(a.total, b.total, rtol=1e-5)
    for layer in STYLE:
        assert torch.allclose(a.style_layers[layer], b.style_layers[layer], rtol=1e-5)


def test_each_style_is_matched_in_its_own_region_only(extractor):
    """Style A on the left, B on the right: an image that is A on the left and B on the right
    has a far lower masked style loss than the same image mirrored."""
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, 48, 32, generator=gen) * torch.tensor([0.2, 0.3, 1.0]).reshape(1, 3, 1, 1)
    b = torch.full((1, 3, 48, 32), 0.5)
    b[..., ::4, :] = 1.0  # stripes
    left = torch.zeros(1, 1, 48, 64)
    left[..., :32] = 1.0
    obj = Objective(extractor, torch.cat([a, b], -1), [a, b], *sections({}, STYLE, 0.0, 1.0, 0.0),
                    style_masks=[left, 1 - left])
    with torch.no_grad():
        right_way, mirrored = obj(torch.cat([a, b], -1)).style.item(), obj(torch.cat([b, a], -1)).style.item()
    assert right_way < 0.2 * mirrored
