"""Style targets with the real Caffe VGG-19: their size does not change their strength."""

import pytest
import torch

from nstexp.backbone import FeatureExtractor
from nstexp.objective import Objective

STYLE = {"relu1_1": 0.25, "relu2_1": 0.25, "relu3_1": 0.25, "relu4_1": 0.25}
NORMS = ["gatys", "mean", "cosine"]


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor("vgg19", "caffe", [*STYLE, "relu4_2"])


def _objective(extractor, content, styles, norm, blend=None):
    return Objective(extractor, content, styles, {"relu4_2": 1.0}, STYLE, 1.0, 1.0, 0.0,
                     style_normalization=norm, blend_weights=blend)


def _texture(tiles: int) -> torch.Tensor:
    """A periodic texture: the same random 32 px tile repeated tiles x tiles times."""
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 32, 32, generator=gen).repeat(1, 1, tiles, tiles)


@pytest.mark.parametrize("norm", NORMS)
def test_a_same_scale_crop_of_the_style_image_has_almost_no_style_loss(extractor, norm):
    style, crop = _texture(8), _texture(4)  # 256 px and a 128 px crop of the same texture
    grey = torch.full_like(crop, 0.5)
    grey[..., ::2, :] = 0.6  # a different texture of the same size, for scale
    obj = _objective(extractor, crop, [style], norm)
    with torch.no_grad():
        own, other = obj(crop), obj(grey)
    for layer in STYLE:
        # Not exactly 0: zero padding makes the borders differ, and the crop has more border.
        # With the target summed over the style image's 4x as many positions (the old
        # `gatys`), the crop's loss was several times the other texture's.
        assert own.style_layers[layer] < 0.35 * other.style_layers[layer], layer


@pytest.mark.parametrize("norm", NORMS)
def test_style_image_size_leaves_the_target_per_position_unchanged(extractor, norm):
    """A flat colour at 64 and at 128 px: the same style, so (away from borders) the same target."""
    colour = torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1)
    small, large = colour.expand(1, 3, 64, 64), colour.expand(1, 3, 128, 128)
    content = torch.rand(1, 3, 64, 64)
    a = _objective(extractor, content, [small], norm).style_targets
    b = _objective(extractor, content, [large], norm).style_targets
    for layer in ("relu1_1", "relu2_1"):  # receptive fields small enough for the interior to dominate
        ratio = (b[layer].norm() / a[layer].norm()).item()
        assert 0.9 < ratio < 1.1, (layer, ratio)  # it was 4 (the pixel count ratio) for `gatys`
    # Blending the two is then a blend of equals, whatever their sizes.
    blended = _objective(extractor, content, [small, large], norm, blend=[0.5, 0.5]).style_targets
    assert torch.allclose(blended["relu1_1"], 0.5 * (a["relu1_1"] + b["relu1_1"]))
