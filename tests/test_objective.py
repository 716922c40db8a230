"""Style targets with the real Caffe VGG-19: their size does not change their strength."""

import hashlib

import pytest
import torch

from conftest import sections
from nstexp.network.backbone import FeatureExtractor
from nstexp.losses.objective import Objective

STYLE = {"relu1_1": 0.25, "relu2_1": 0.25, "relu3_1": 0.25, "relu4_1": 0.25}
# Every style loss, the Gram loss with each of its normalizations: (style loss, normalization).
LOSSES = [("gram", "gatys"), ("gram", "mean"), ("gram", "cosine"), ("w2", "gatys"), ("sliced", "gatys"),
          ("mmd_linear", "gatys"), ("mmd_poly", "gatys"), ("mmd_gaussian", "gatys"), ("bn", "gatys"),
          ("cmd", "gatys"), ("histogram", "gatys"), ({"gram": 1.0, "histogram": 0.5}, "gatys")]


class _SharedFeatures(FeatureExtractor):
    """The Caffe VGG-19, whose features of an image are computed once for the module: the
    losses compared here read the same images' features (no gradient is taken)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shared: dict = {}

    def forward(self, image, layers=None):
        if torch.is_grad_enabled() and image.requires_grad:
            return super().forward(image, layers)
        key = (tuple(image.shape), hashlib.sha1(image.detach().contiguous().numpy().tobytes()).hexdigest(),
               None if layers is None else frozenset(layers))
        if key not in self.shared:
            self.shared[key] = {k: v.clone() for k, v in super().forward(image, layers).items()}
        return {k: v.clone() for k, v in self.shared[key].items()}  # a caller may change its copy


@pytest.fixture(scope="module")
def extractor():
    return _SharedFeatures("vgg19", "caffe", [*STYLE, "relu4_2"])


def _objective(extractor, content, styles, loss, blend=None):
    return Objective(extractor, content, styles, *sections({"relu4_2": 1.0}, STYLE, 1.0, 1.0, 0.0, style=dict(
        normalization=loss[1], blend_weights=blend or [], loss=loss[0])))


def _texture(tiles: int) -> torch.Tensor:
    """A periodic texture: the same random 32 px tile repeated tiles x tiles times."""
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 32, 32, generator=gen).repeat(1, 1, tiles, tiles)


@pytest.mark.parametrize("loss", LOSSES)
def test_a_same_scale_crop_of_the_style_image_has_almost_no_style_loss(extractor, loss):
    style, crop = _texture(8), _texture(4)  # 256 px and a 128 px crop of the same texture
    grey = torch.full_like(crop, 0.5)
    grey[..., ::2, :] = 0.6  # a different texture of the same size, for scale
    obj = _objective(extractor, crop, [style], loss)
    with torch.no_grad():
        own, other = obj(crop), obj(grey)
    for layer in STYLE:
        # Not exactly 0: zero padding makes the borders differ, and the crop has more border.
        # With the target summed over the style image's 4x as many positions (the old
        # `gatys`), the crop's loss was several times the other texture's.
        assert own.style_layers[layer] < 0.35 * other.style_layers[layer], layer


@pytest.mark.parametrize("loss", LOSSES)
def test_style_image_size_leaves_the_target_per_position_unchanged(extractor, loss):
    """A flat colour at 64 and at 128 px: the same style, so (away from borders) the same target."""
    colour = torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1)
    small, large = colour.expand(1, 3, 64, 64), colour.expand(1, 3, 128, 128)
    content = torch.rand(1, 3, 64, 64)
    objectives = [_objective(extractor, content, [img], loss) for img in (small, large)]
    blended = _objective(extractor, content, [small, large], loss, blend=[0.5, 0.5])
    with torch.no_grad():
        # The style loss of the 64 px image itself, and of another colour, against each target.
        a, b, ab = (o(small).style_layers["relu1_1"] for o in (*objectives, blended))
        other = objectives[1](torch.full_like(small, 0.9)).style_layers["relu1_1"]
    # Against the 128 px target the 64 px image scores about as well as against its own, far
    # better than another colour (at relu1_1: a receptive field small enough for the interior
    # to dominate). The old `gatys` target of the 128 px image was 4x as large.
    # mmd_gaussian's is a random estimate of MMD² (unbiased, so it can fall below 0): its spread.
    own = 1e-2 if loss[0] == "mmd_gaussian" else 1e-3
    assert abs(a) < own * other and b < 0.01 * other and ab < 0.01 * other
    if loss[0] == "gram":
        ratio = (objectives[1].style_targets["relu1_1"].norm() / objectives[0].style_targets["relu1_1"].norm()).item()
        assert 0.95 < ratio < 1.05, ratio
        # Blending the two is then a blend of equals, whatever their sizes.
        assert torch.allclose(blended.style_targets["relu1_1"],
                              0.5 * sum(o.style_targets["relu1_1"] for o in objectives))


def test_balance_makes_every_layer_count_by_its_weight_and_keeps_the_total(extractor):
    torch.manual_seed(0)
    content, style = torch.rand(1, 3, 64, 64), _texture(2)
    weights = {"relu1_1": 0.1, "relu2_1": 0.2, "relu3_1": 0.3, "relu4_1": 0.4}
    obj = Objective(extractor, content, [style], *sections({"relu4_2": 1.0}, weights, 1.0, 2.0, 0.0))
    with torch.no_grad():
        before = obj(content)
        factors = obj.balance_style(content)
        after = obj(content)
    raw = {k: v.item() for k, v in before.style_layers.items()}
    assert max(raw.values()) / min(raw.values()) > 100  # the raw terms are far apart
    # On the balancing image, layer l contributes w_l times the same amount ...
    contributions = {k: weights[k] * factors[k] * raw[k] for k in weights}
    for k, c in contributions.items():
        assert c / weights[k] == pytest.approx(contributions["relu1_1"] / 0.1, rel=1e-5), k
    # ... the weighted style loss is unchanged, and the logged per-layer values stay raw.
    assert after.style.item() == pytest.approx(before.style.item(), rel=1e-5)
    assert {k: v.item() for k, v in after.style_layers.items()} == raw


def test_balance_on_an_image_with_the_styles_own_statistics_keeps_factor_1(extractor):
    """The default balances the layers: a photo stylized with itself has nothing to balance."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 64)
    layers = {"relu1_1": 0.5, "relu2_1": 0.5}
    obj = Objective(extractor, image, [image], *sections({"relu4_2": 1.0}, layers, 1.0, 2.0, 0.0))
    assert obj.balance_style(image) == {"relu1_1": 1.0, "relu2_1": 1.0}
