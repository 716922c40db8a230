"""The smallest inputs a run takes: every loss on a layer of one position, and the sizes a run refuses
before anything runs (nstexp.input_sizes), each in one line."""

import pytest
import torch
from PIL import Image

from conftest import TINY, refused_in_one_line, run_cli, tiny_cfg
from nstexp.loss_catalogue import registered_losses



@pytest.fixture(scope="module")
def extractor():
    from nstexp.network.backbone import FeatureExtractor

    return FeatureExtractor("vgg19", "caffe", ["relu5_1"])


def _images(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 16, 16, generator=gen) for _ in range(3)]  # content, style, result


def _finite_value_and_gradient(extractor, cfg, part):
    """The loss of `part` (content or style) alone, on relu5_1 of 16 px images: one position."""
    from omegaconf import OmegaConf

    from nstexp.losses.objective import Objective

    content, style, result = _images()
    layers = OmegaConf.create({"content": {}, "style": {}, part: {"relu5_1": 1.0}})
    objective = Objective(extractor, content, [style], layers, cfg.content, cfg.style, cfg.tv, cfg.seed)
    image = result.clone().requires_grad_(True)
    total = objective(image).total
    total.sum().backward()
    assert extractor(image)["relu5_1"].shape[-2:] == (1, 1)
    assert torch.isfinite(total).all(), total
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(registered_losses()["style"]))
def test_every_style_loss_is_finite_on_a_layer_of_one_position_or_refused_first(extractor, tmp_path, name):
    """A loss that needs more (StyleLoss.min_positions: mrf's patches) is refused before anything runs."""
    from nstexp.errors import ConfigError
    from nstexp.loss_catalogue import min_positions
    from nstexp.validation import validate

    extra = ["style.nnst.split_layers=[relu5_1]"] if name == "nnst_split" else []
    cfg = tiny_cfg(f"style.loss={name}", "content.weight=0", "style.weight=1", *extra)
    need = min_positions()["style"].get(name)
    if need is None:
        _finite_value_and_gradient(extractor, cfg, "style")
        return
    Image.new("RGB", (16, 16), (90, 30, 200)).save(tmp_path / "square.png")
    square = f"{tmp_path}/square.png"
    with pytest.raises(ConfigError) as info:
        validate(tiny_cfg(f"style.loss={name}", "size=16", "scales.min=null", f"content.image={square}",
                          f"style.image={square}", "layers.style={relu5_1: 1.0}", *extra))
    assert f"fewer than style.{need}=" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("samples", [0, 64])
def test_mmd_gaussian_is_finite_on_one_position_with_either_estimator(extractor, samples):
    cfg = tiny_cfg("style.loss=mmd_gaussian", "content.weight=0", "style.weight=1",
                   f"style.mmd.samples={samples}")
    _finite_value_and_gradient(extractor, cfg, "style")


@pytest.mark.parametrize("name", sorted(registered_losses()["content"]))
def test_every_content_loss_is_finite_on_a_layer_of_one_position(extractor, name):
    cfg = tiny_cfg(f"content.loss={name}", "style.weight=0", "content.weight=1")
    _finite_value_and_gradient(extractor, cfg, "content")


def _png(tmp_path, name, wh):
    Image.new("RGB", wh, (200, 10, 10)).save(tmp_path / name)
    return str(tmp_path / name)


@pytest.mark.parametrize("overrides,needle", [
    # A style view (mrf's scaled copy) too small for the network: was a traceback from the pooling.
    (["loss=mrf", "style.mrf.scales=[0.1]", "size=32", "scales.min=null"],
     "style.loss=mrf: a view of style.image (style.mrf.rotations, style.mrf.scales) is 3x3 px at size=32, "
     "too small for layer relu5_1 (needs at least 16 px per side"),
    # Laplacian pooling larger than the image (was an overflow), or than the first level only.
    (["laplacian.weight=100", "laplacian.pool=64", "size=32", "scales.min=null"],
     "laplacian.pool=64: the result is 32x16 px at size=32, and the 3x3 Laplacian after its 2^64 pooling "
     "needs at least 3 x 2^64 px per side"),
    (["laplacian.weight=100", "laplacian.pool=4", "size=128", "scales.min=32"],
     "laplacian.pool=4: the result is 32x16 px at the 32 px level of size=128, and the 3x3 Laplacian after "
     "its 2^4 pooling needs at least 48 px per side (lower laplacian.pool or raise size or scales.min)"),
    # mrf's patches at a coarse level, and on the result's deepest layer.
    (["loss=mrf", "size=128", "scales.min=32"], "style.loss=mrf: style layer relu4_1 of the result has 4x2 "
     "positions at the 32 px level of size=128, fewer than style.mrf.patch_size=3 per side"),
    # Where size is null, the device's default.
    (["loss=mrf", "device=cpu", "scales.min=16", "scales.factor=2"], "at the 16 px level of size=256 (the CPU default)"),
])
def test_sizes_too_small_for_a_loss_are_refused_in_one_line_before_anything_runs(tmp_path, overrides, needle):
    r = run_cli([*overrides, "wandb.mode=disabled", "progress=false", "eval.enabled=false"], tmp_path)
    line = refused_in_one_line(r)
    assert needle in line, line
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("key", ["content.image", "style.image", "style.blend_images"])
def test_an_image_smaller_than_one_position_of_the_deepest_layer_is_refused(tmp_path, key):
    one = _png(tmp_path, "one.png", (1, 1))
    value = f"[{one}]" if key == "style.blend_images" else one
    line = refused_in_one_line(run_cli([f"{key}={value}", *TINY], tmp_path))
    shown = "style.blend_images[0]" if key == "style.blend_images" else key
    assert line == (f"error: {shown}: 1x1 px is smaller than the smallest image a run takes, 16 px on the shorter "
                    "side (one position of relu5_1, the deepest layer; use a larger image)")
    # The minimum follows the deepest layer: 8 px for the fourth block's (relu4_1, relu4_2).
    small = _png(tmp_path, "small.png", (12, 7))
    value = f"[{small}]" if key == "style.blend_images" else small
    line = refused_in_one_line(run_cli([f"{key}={value}", "layers.style.relu5_1=0", *TINY], tmp_path))
    assert "12x7 px is smaller than the smallest image a run takes, 8 px on the shorter side (one position " \
           "of relu4_" in line


def test_the_smallest_image_runs(tmp_path, wandb_env):
    """16 px on the shorter side, at size=16: relu5_1 has one position in the content and the style."""
    square = _png(tmp_path, "square.png", (16, 16))
    r = run_cli([f"content.image={square}", f"style.image={square}", "size=16", "scales.min=null", "steps=1",
                 "progress=false", "eval.enabled=false", "wandb.mode=disabled"], tmp_path)
    assert r.returncode == 0, r.stderr


def test_a_sweep_is_refused_for_its_one_job_that_is_too_small(tmp_path):
    line = refused_in_one_line(run_cli(["-m", "laplacian.weight=100", "laplacian.pool=1,4", "size=48",
                                        "scales.min=null", *TINY[1:]], tmp_path))
    assert "laplacian.pool=4: the result is 48x32 px at size=48" in line
    assert line.endswith("(in the sweep's job laplacian.pool=4)"), line
