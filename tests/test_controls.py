"""Colour, spatial and scale control from the command line and through `runner.run`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY as CLI_TINY, sections
from conftest import run_cli
from conftest import tiny_cfg as _cfg
from nstexp.run import colour, inputs, scale_control
from nstexp import images
from nstexp.network.backbone import FeatureExtractor
from nstexp.losses.objective import Objective
from nstexp.run.runner import run

def _content_at(summary, spec="sample:chelsea"):
    """The content image as the run resized it."""
    h, w = summary["image_size"]
    return images.to_tensor(images.resize(images.load_image(spec), (w, h)))


@pytest.mark.parametrize("mode", ["none", "luminance", "histogram", "swap"])
def test_every_colour_mode_runs_with_blended_styles_and_scales(tmp_path, mode):
    summary = run(_cfg(f"color.preserve={mode}", "style.blend_images=[sample:mosaic]", "scales.min=32",
                       "scales.factor=1.4142135623730951",
                       "snapshot_every=1", "optimizer=adam"), str(tmp_path))
    assert summary["status"] == "completed" and len(summary["levels"]) == 2
    final = images.to_tensor(Image.open(tmp_path / "final.png"))
    assert final.shape[-2:] == tuple(summary["image_size"])
    if mode in ("luminance", "swap"):
        # The result's chrominance is the content's (up to 8-bit rounding; clamped pixels aside).
        yiq_final, yiq_content = colour.rgb_to_yiq(final), colour.rgb_to_yiq(_content_at(summary))
        inside = ((final > 1 / 255) & (final < 254 / 255)).all(1, keepdim=True).expand(-1, 2, -1, -1)
        assert inside.float().mean() > 0.5
        assert (yiq_final[:, 1:] - yiq_content[:, 1:])[inside].abs().max() < 0.01
        # So are the snapshots, at every level.
        first = images.to_tensor(Image.open(tmp_path / "snapshots" / "step_000001.png"))
        assert first.shape[-1] < final.shape[-1]
        yiq_first = colour.rgb_to_yiq(first)
        small = images.resize(images.load_image("sample:chelsea"), (first.shape[-1], first.shape[-2]))
        assert (yiq_first[:, 1:] - colour.rgb_to_yiq(images.to_tensor(small))[:, 1:]).abs().median() < 0.01


def test_luminance_mode_optimizes_a_grey_image_from_noise():
    """The image the optimizer starts from (what `runner` hands the engine): the seed's uniform
    noise made grey by its Rec. 601 luma, computed here from the noise itself."""
    cfg = _cfg("color.preserve=luminance", "init=noise", "seed=3")
    inp = inputs.prepare(cfg, 48, {"relu5_1": 4}, torch.device("cpu"), [], lambda *sizes: None)
    start = inputs.initial_image(cfg, inp.content, inp.styles)
    noise = torch.rand(start.shape, generator=torch.Generator().manual_seed(3))
    luma = (0.299 * noise[:, 0] + 0.587 * noise[:, 1] + 0.114 * noise[:, 2])[:, None].expand_as(start)
    assert torch.allclose(start, luma, atol=1e-6)
    assert start.std() > 0.1  # noise, not a flat grey
    # The same seed without colour control starts from colour noise, which the check above refuses.
    coloured = inputs.initial_image(_cfg("init=noise", "seed=3"), inp.content, inp.styles)
    assert torch.equal(coloured, noise) and not torch.allclose(coloured, luma, atol=0.05)


@pytest.mark.slow  # 100 steps: a long end-to-end run
def test_two_masks_put_each_style_on_its_side(tmp_path):
    """Swirls (blue over red) left, mosaic (red over blue) right, on a flat grey photo."""
    Image.new("RGB", (64, 48), (128, 128, 128)).save(tmp_path / "grey.png")
    left = Image.new("L", (64, 48), 0)
    left.paste(255, (0, 0, 32, 48))
    left.save(tmp_path / "left.png")
    Image.eval(left, lambda v: 255 - v).save(tmp_path / "right.png")
    run(_cfg(f"content.image={tmp_path}/grey.png", "style.image=sample:swirls", "style.blend_images=[sample:mosaic]",
             f"style.masks=[{tmp_path}/left.png,{tmp_path}/right.png]", "size=64", "steps=100", "content.weight=0",
             "optimizer=adam", "optimizer.lr=0.05"), str(tmp_path / "out"))
    out = np.asarray(Image.open(tmp_path / "out" / "final.png"), dtype=np.float64) / 255
    swirls = np.asarray(images.load_image("sample:swirls"), dtype=np.float64).reshape(-1, 3).mean(0) / 255
    mosaic = np.asarray(images.load_image("sample:mosaic"), dtype=np.float64).reshape(-1, 3).mean(0) / 255
    assert swirls[2] - swirls[0] > 0.1 and mosaic[2] - mosaic[0] < -0.1
    half = out.shape[1] // 2
    left_part, right_part = out[:, : half - 4], out[:, half + 4 :]  # the receptive fields blur the seam
    assert (left_part[..., 2] - left_part[..., 0]).mean() > 0.05  # bluer than red, as swirls
    assert (right_part[..., 2] - right_part[..., 0]).mean() < -0.05  # redder than blue, as mosaic
    for part, own, other in [(left_part, swirls, mosaic), (right_part, mosaic, swirls)]:
        colour_of_part = part.reshape(-1, 3).mean(0)
        assert np.linalg.norm(colour_of_part - own) < np.linalg.norm(colour_of_part - other)


def test_one_white_mask_is_the_unmasked_run(tmp_path):
    Image.new("L", (10, 10), 255).save(tmp_path / "white.png")
    plain = run(_cfg("steps=3"), str(tmp_path / "plain"))
    masked = run(_cfg("steps=3", f"style.masks=[{tmp_path}/white.png]", f"content.mask={tmp_path}/white.png"),
                 str(tmp_path / "masked"))
    assert masked["final/loss/total"] == pytest.approx(plain["final/loss/total"], rel=1e-4)
    a, b = (np.asarray(Image.open(tmp_path / d / "final.png"), dtype=int) for d in ("plain", "masked"))
    assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize("overrides,message", [
    (["style.masks=[a.png,b.png]"], "style.masks has 2 images for 1 style images"),
    (["style.masks=[nope.png]"], "style.masks[0]=nope.png: file not found"),
    (["style.masks=[black.png]"], "style.masks[0]=black.png: the mask is all black"),
    (["content.mask=black.png"], "content.mask=black.png: the mask is all black"),
    (["style.masks=[black.png]", "style.loss=sliced"], "style.masks works with style.loss=gram or w2"),
    (["color.preserve=sepia"], "color.preserve='sepia' is not allowed (allowed: none, luminance, histogram, swap, nnst)"),
    (["style.scale_control.fine_image=sample:mosaic", "style.scale_control.fine_layers=[relu9_9]"],
     "style.scale_control.fine_layers: unknown layer 'relu9_9'"),
])
def test_bad_controls_fail_in_one_line(tmp_path, overrides, message):
    Image.new("L", (10, 10), 0).save(tmp_path / "black.png")
    r = run_cli([*CLI_TINY, "wandb.mode=disabled", *overrides, "hydra.run.dir=out"], cwd=tmp_path)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def _layout(image):
    """The large-scale arrangement: luminance averaged over an 8 x 8 grid."""
    return torch.nn.functional.adaptive_avg_pool2d(colour.luminance(image), 8).flatten()


def _correlation(a, b):
    return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])


@pytest.mark.slow  # hundreds of L-BFGS steps at the fine layers: a long end-to-end run
@pytest.mark.parametrize("coarse_name,fine_name", [("swirls", "mosaic"), ("mosaic", "swirls")])
def test_scale_control_keeps_the_coarse_layout_and_takes_the_fine_texture(coarse_name, fine_name):
    extractor = FeatureExtractor("vgg19", "caffe", ["relu1_1", "relu2_1"])
    coarse = images.to_tensor(images.load_image(f"sample:{coarse_name}").resize((128, 128)))
    fine = images.to_tensor(images.load_image(f"sample:{fine_name}").resize((128, 128)))
    fine = colour.match_colours(fine, coarse).clamp(0, 1)  # as style_image does
    made = scale_control.fine_onto_coarse(extractor, coarse, fine, ["relu1_1", "relu2_1"], steps=60)

    def distance(layer, image, target):
        obj = Objective(extractor, image, [target], *sections({}, {layer: 1.0}, 0.0, 1.0, 0.0))
        with torch.no_grad():
            return obj(image).style.item()

    for layer in ("relu1_1", "relu2_1"):  # the fine texture: far closer to the fine image than before
        assert distance(layer, made, fine) < 0.05 * distance(layer, coarse, fine)
    # The coarse arrangement stays: the 8 x 8 luminance layout follows the coarse image's.
    assert _correlation(_layout(made), _layout(coarse)) > 0.8
    assert abs(_correlation(_layout(made), _layout(fine))) < 0.3


def test_scale_control_run_writes_its_style_image(tmp_path):
    summary = run(_cfg("style.scale_control.fine_image=sample:mosaic", "style.scale_control.steps=3",
                       "style.image=sample:coffee", "style.scale=1.5"), str(tmp_path))
    assert summary["status"] == "completed" and summary["scale_control_time_s"] > 0
    made = Image.open(tmp_path / "style_target.png")
    # Made at the style image's size in the run: its longest side the content's (48 px, size=48)
    # times style.scale, its aspect ratio its own.
    w, h = images.load_image("sample:coffee").size
    longest = round(48 * 1.5)
    assert made.size == ((longest, round(longest * h / w)) if w >= h else (round(longest * w / h), longest))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
