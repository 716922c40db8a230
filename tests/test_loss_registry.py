"""Losses behind one interface: each registered under its config name, the objective knowing none by name."""

import math

import pytest
import torch

from conftest import sections, tiny_cfg
from nstexp import losses
from nstexp.errors import ConfigError
from nstexp.losses.base import CONTENT_LOSSES, STYLE_LOSSES, ContentLoss, StyleLoss, register
from nstexp.losses.objective import Objective
from nstexp.validation import validate


class _Means(StyleLoss):
    """A toy style loss for these tests: squared distance between channel means, (B,)."""

    name = "test_means"

    def target(self, feats, shares):
        return sum(w * f.mean(dim=(2, 3)) for f, w in zip(feats, shares))  # (1, N)

    def distance(self, f, target, guide=None):
        return (f.mean(dim=(2, 3)) - target).pow(2).sum(1)


@pytest.fixture
def registered():
    register(_Means)
    yield _Means
    del STYLE_LOSSES[_Means.name]


def test_the_config_names_are_the_registered_classes():
    assert {k: v.__name__ for k, v in STYLE_LOSSES.items()} == {
        "gram": "Gram", "w2": "W2", "sliced": "Sliced", "mmd_linear": "MMDLinear", "mmd_poly": "MMDPoly",
        "mmd_gaussian": "MMDGaussian", "bn": "BN", "cmd": "CMD", "histogram": "Histogram",
        "mrf": "MRF", "strotss": "STROTSS", "nnst": "NNST", "nnst_split": "NNSTSplit"}
    assert {k: v.__name__ for k, v in CONTENT_LOSSES.items()} == {"squared_error": "SquaredError",
                                                                  "self_similarity": "SelfSimilarity"}
    for name, cls in {**STYLE_LOSSES, **CONTENT_LOSSES}.items():
        assert cls.name == name


def test_a_new_loss_needs_no_change_to_the_objective(registered):
    # Identity "network": the features are the image itself, so the loss is computable by hand.
    def extractor(x):
        return {"relu1_1": x, "relu4_2": x}

    content = torch.zeros(1, 3, 4, 4)
    a, b = torch.full((1, 3, 4, 4), 1.0), torch.full((1, 3, 4, 4), 3.0)
    obj = Objective(extractor, content, [a, b], *sections({}, {"relu1_1": 1.0}, 0.0, 2.0, 0.0,
                                                              style={"loss": "test_means", "blend_weights": [1, 3]}))
    image = torch.full((2, 3, 4, 4), 0.5)
    image[1] = 2.5  # blended target: (1 * 1 + 3 * 3) / 4 = 2.5 per channel
    terms = obj(image)
    # Sample 0: 3 channels, each (0.5 - 2.5)² = 4, times style.weight 2; sample 1 on target.
    assert terms.style.tolist() == [24.0, 0.0]
    assert terms.style_layers["relu1_1"].tolist() == [12.0, 0.0]


def test_validation_allows_exactly_the_registered_names(registered):
    validate(tiny_cfg("style.loss=test_means"))  # a registered name is an option at once
    names = ", ".join(STYLE_LOSSES)
    assert names.endswith(", test_means")
    with pytest.raises(ConfigError, match=rf"style.loss.*allowed: {names}\)"):
        validate(tiny_cfg("style.loss=nope"))
    with pytest.raises(ConfigError, match=r"content.loss.*allowed: squared_error"):
        validate(tiny_cfg("content.loss=nope"))


def test_masks_need_a_guided_loss(registered):
    registered.guided = False
    try:
        with pytest.raises(ConfigError, match=r"style.masks works with style.loss=gram or w2 or mmd_linear or mmd_poly "
                                              r"or bn or cmd or mrf \(every loss of a mix\), not test_means"):
            validate(tiny_cfg("style.loss=test_means", "style.masks=[sample:coffee_saucer]"))
        # In a mix, every loss must be guided.
        with pytest.raises(ConfigError, match=r"\(every loss of a mix\), not histogram$"):
            validate(tiny_cfg("style.loss={gram:1,histogram:0.5}", "style.masks=[sample:coffee_saucer]"))
    finally:
        registered.guided = True


def test_register_refuses_a_second_loss_of_one_name_and_a_non_loss():
    class Twin(StyleLoss):
        name = "gram"

    with pytest.raises(ValueError, match="two losses are named 'gram'"):
        register(Twin)
    with pytest.raises(TypeError, match="neither a StyleLoss nor a ContentLoss"):
        register(type("Other", (), {"name": "other"}))
    assert STYLE_LOSSES["gram"] is losses.gram.Gram


def test_the_default_content_loss_is_the_papers_eq_1():
    loss = CONTENT_LOSSES["squared_error"](sections({}, {})[1])
    f, p = torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[0.0, 0.0]]]])
    assert loss.distance(f, loss.target(p)).tolist() == [2.5]  # ½ (1² + 2²)
    assert isinstance(loss, ContentLoss)


def test_validation_reads_the_registered_losses_off_their_source(registered):
    """Validation names the losses without importing them (no torch); the registries are the truth.
    A loss registered at run time only (this test's) is not in any source file, so it is left out."""
    from nstexp.loss_catalogue import losses_in_source

    declared = losses_in_source()
    assert declared["style"] == {name: cls.guided for name, cls in STYLE_LOSSES.items() if cls is not registered}
    assert declared["content"] == {name: cls.guided for name, cls in CONTENT_LOSSES.items()}
    assert list(declared["style"]) == [n for n in STYLE_LOSSES if n != registered.name]  # the options' order


_networks: dict = {}


def _run_objective(cfg, image):
    """The loss of `image` under the objective the runner builds for `cfg` (64 px images)."""
    from nstexp.run import runner

    validate(cfg)
    spec = runner.network_spec(cfg)
    key = tuple(spec["layers"])
    if key not in _networks:
        _networks[key] = runner.network(cfg, torch.device("cpu"), "fp32", False)
    gen = torch.Generator().manual_seed(1)
    content, style = torch.rand(1, 3, 48, 64, generator=gen), torch.rand(1, 3, 64, 64, generator=gen)
    obj = Objective(_networks[key], content, [style], cfg.layers, cfg.content, cfg.style, cfg.tv, cfg.seed)
    with torch.no_grad():  # the first evaluation: losses that draw anew at each one draw the same
        terms = obj(image)
    return terms.total.item(), terms.style.item(), obj


# One loss with options that give its target more than the style image (mrf's rotated copies).
_ONE = [(name, ()) for name in sorted(STYLE_LOSSES)] + [("mrf", ("style.mrf.rotations=[-7.5,7.5]",))]


@pytest.mark.parametrize("name, options", _ONE, ids=[n + ("+rotations" if o else "") for n, o in _ONE])
def test_a_mix_of_one_loss_is_that_loss_as_validation_accepts_it(name, options):
    # Validation and the objective read style.loss the same way: {name: 1} and {name: 1, gram: 0}
    # are the loss itself, {name: 2} twice it, with its views (mrf's copies) and its joint layers.
    if name == "mix" or name.startswith("test_"):
        pytest.skip("not a loss of its own")
    extra = ("style.nnst.split_layers=[relu3_1]",) if name == "nnst_split" else ()
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    # 64 px, as the objective's images: at 48 px the content image has 2 rows at relu5_1, fewer than
    # mrf's 3x3 patches need, which validation refuses.
    extra += ("size=64",)
    alone, style_part, obj = _run_objective(tiny_cfg(f"style.loss={name}", *options, *extra), image)
    assert math.isfinite(alone) and alone > 0
    n_views = len(obj.style_loss.views(torch.zeros(1, 3, 8, 8)))
    other = "bn" if name == "gram" else "gram"
    for mix, factor in ((f"{{{name}:1}}", 1.0), (f"{{{name}:1,{other}:0}}", 1.0), (f"{{{name}:2}}", 2.0)):
        value, _, mixed = _run_objective(tiny_cfg(f"style.loss={mix}", *options, *extra), image)
        assert len(mixed.style_loss.views(torch.zeros(1, 3, 8, 8))) == n_views, mix
        assert mixed.style_loss.joint == obj.style_loss.joint
        # The other terms are the same in both.
        assert value == pytest.approx(alone + (factor - 1) * style_part, rel=1e-5), mix
