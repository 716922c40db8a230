"""Tiled evaluation of the objective (nstexp.tiling): the tiles' geometry, features equal to the
whole image's, and the loss and gradient of the whole image for every loss that decomposes."""

import os
import re
import sys

import pytest
import torch

from conftest import refused_in_one_line, run_cli, sections, tiny_cfg
from nstexp.losses.base import CONTENT_LOSSES, STYLE_LOSSES
from nstexp.losses.objective import Objective
from nstexp.network.backbone import FeatureExtractor
from nstexp.tiling import grid
from nstexp.tiling.objective import TiledObjective, stitched

STYLE = {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0, "relu4_1": 1.0, "relu5_1": 1.0}


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor("vgg19", "caffe", [*STYLE, "relu4_2"])


@pytest.mark.parametrize("layer", ["relu1_1", "relu2_1", "relu3_1", "relu4_2", "relu5_1"])
def test_the_reach_is_the_receptive_field_measured_by_a_gradient(layer):
    # The pixels one feature depends on, found by back-propagating from it through a random VGG-19.
    net = FeatureExtractor("vgg19", "random", [layer], padding="zeros")
    x = torch.rand(1, 3, 240, 240, requires_grad=True)
    f = net(x)[layer]
    stride, reach = grid.stride_and_reach("vgg19", layer)
    i = f.shape[-1] // 2
    f[0, :, i, i].sum().backward()
    cols = torch.nonzero(x.grad.abs().sum((0, 1, 2)) > 0).flatten()
    assert (cols.min().item(), cols.max().item()) == (i * stride - reach, i * stride + stride - 1 + reach)


def test_the_interiors_cover_every_pixel_once_and_the_halo_is_aligned():
    h, w = 208, 144
    tiles = grid.tiles(h, w, 50, "vgg19", ["relu5_1"])
    count = torch.zeros(h, w)
    for t in tiles:
        y0, y1, x0, x1 = t.interior
        count[y0:y1, x0:x1] += 1
        assert all(v % 16 == 0 or v in (h, w) for v in (*t.interior, *t.crop))
        assert t.crop[0] == max(0, y0 - 80) and t.crop[3] == min(w, x1 + 80)
    assert (count == 1).all() and len(tiles) == 5 * 3  # 48 px interiors (50 down to a multiple of 16)


@pytest.mark.parametrize("options", [{}, {"padding": "reflect"}, {"pooling": "avg_scaled"}])
def test_stitched_features_are_the_whole_images(options):
    layers = ["relu1_1", "relu3_1", "relu4_2", "relu5_1"]
    net = FeatureExtractor("vgg19", "caffe", layers, **options)
    x = torch.rand(2, 3, 112, 96, generator=torch.Generator().manual_seed(0))
    whole, tiled = net(x), stitched(net, 32)(x, layers)
    for k in layers:
        assert torch.allclose(whole[k], tiled[k], rtol=1e-5, atol=1e-5 * whole[k].abs().max().item()), k


def _decomposing():
    from nstexp import losses  # noqa: F401  (registers every loss)

    cases = [({"loss": name}, {}) for name, cls in sorted(STYLE_LOSSES.items()) if cls.decomposes != "none"]
    cases += [({"loss": "gram", "normalization": n}, {}) for n in ("gatys", "cosine")]
    cases += [({"loss": {"gram": 1.0, "bn": 0.5}}, {}), ({"loss": "gram"}, {"normalization": "gatys"})]
    assert all(cls.decomposes != "none" for cls in CONTENT_LOSSES.values() if cls.name == "squared_error")
    return cases


@pytest.mark.parametrize("style, content", _decomposing(), ids=str)
def test_a_tiled_objective_has_the_whole_images_loss_and_gradient(extractor, style, content):
    gen = torch.Generator().manual_seed(1)
    image, content_image, style_image = (torch.rand(s, generator=gen) for s in
                                         ((2, 3, 96, 128), (1, 3, 96, 128), (1, 3, 96, 112)))
    objective = Objective(extractor, content_image, [style_image], *sections(
        {"relu4_2": 1.0}, STYLE, 1.0, 1e3, 1e-4, style={"normalization": "mean", **style}, content=content))
    x = image.clone().requires_grad_(True)
    whole = objective(x)
    whole.total.sum().backward()
    expected, x.grad = x.grad.clone(), None
    tiled = TiledObjective([objective], 48)
    shown = []
    tiled.on_tile = lambda done, total: shown.append((done, total))
    got = tiled(x)
    got.total.sum().backward()
    assert torch.allclose(got.total, whole.total, rtol=1e-5)
    for k in whole.style_layers:
        assert torch.allclose(got.style_layers[k], whole.style_layers[k], rtol=1e-4), k
    cosine = torch.nn.functional.cosine_similarity(x.grad.flatten(), expected.flatten(), dim=0).item()
    assert cosine >= 0.99999 and tiled.tiles_done == 2 * 6  # 2 x 3 tiles, forward and backward
    assert shown == [(i, 12) for i in range(1, 13)]  # what the progress bar shows of the step


def _run_image(tmp_path, name, *overrides):
    import numpy as np
    from PIL import Image

    from nstexp.run.runner import run

    summary = run(tiny_cfg("size=128", "scales.min=null", "precision=fp32", *overrides), str(tmp_path / name))
    assert summary["status"] == "completed"
    return summary, np.asarray(Image.open(tmp_path / name / "final.png"), dtype=float)



def test_a_tiled_run_makes_the_untiled_runs_image(tmp_path, capsys):
    import numpy as np

    whole, a = _run_image(tmp_path, "whole", "steps=10", "tiles=off")
    capsys.readouterr()
    tiled, b = _run_image(tmp_path, "tiled", "steps=10", "tiles=48", "progress=true")
    shown = capsys.readouterr().err  # the progress bar shows the targets' tiles, then each step's
    assert "targets relu1_1: tile 1/" in shown and re.search(r"step: tile \d+/\d+", shown)
    assert tiled["final/loss/total"] == pytest.approx(whole["final/loss/total"], rel=1e-3)  # L-BFGS carries rounding on
    assert np.abs(a - b).max() <= 2


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_fifty_tiled_steps_differ_from_whole_ones_as_another_memory_layout_does(tmp_path, optimizer):
    # Over 50 steps an optimizer carries rounding on (L-BFGS far: two whole runs that differ only in
    # channels_last differ by up to 83/255 at 128 px); tiling changes the rounding no more than that.
    import numpy as np

    steps = ["steps=50", f"optimizer={optimizer}"]
    _, whole = _run_image(tmp_path, "whole", *steps, "tiles=off")
    _, layout = _run_image(tmp_path, "layout", *steps, "tiles=off", "channels_last=true")
    _, tiled = _run_image(tmp_path, "tiled", *steps, "tiles=48")
    assert np.abs(tiled - whole).mean() <= 3 * np.abs(layout - whole).mean() + 0.25


def test_auto_tiles_a_level_only_when_it_does_not_fit_and_every_loss_decomposes(extractor):
    from nstexp.network import memory
    from nstexp.run import tiling

    cfg = tiny_cfg("tiles=auto", "optimizer=adam")  # a small state: the network's activations dominate
    need = memory.estimate_bytes(extractor, 1024, 1024, cfg.optimizer)
    assert tiling.plan(cfg, extractor, 1024, 1024, 1, need, 2 * need, None, True) is None
    tile = tiling.plan(cfg, extractor, 1024, 1024, 1, need, need // 2, None, True)
    assert tile and tile % 16 == 0 and tiling.estimate(cfg, extractor, 1024, 1024, tile, 1, None) <= need // 2
    assert tiling.estimate(cfg, extractor, 1024, 1024, tile + 16, 1, None) > need // 2  # the largest that fits
    # On a CPU, at most CPU_TILE px (faster there than larger ones); never larger than what fits.
    assert tiling.plan(cfg, extractor, 1024, 1024, 1, need, need // 2, None, True, largest=64) == 64
    assert tiling.plan(cfg, extractor, 1024, 1024, 1, need, need // 2, None, True, largest=tile + 16) == tile
    assert tiling.plan(tiny_cfg("tiles=96"), extractor, 1024, 1024, 1, need, need // 2, None, True, largest=64) == 96
    assert tiling.plan(cfg, extractor, 1024, 1024, 1, need, need // 2, None, False) is None
    assert tiling.plan(tiny_cfg("tiles=off"), extractor, 1024, 1024, 1, need, need // 2, None, True) is None
    assert tiling.tileable([cfg]) and not tiling.tileable([tiny_cfg("style.loss=sliced")])
    # What no tile lifts: the optimizer's state and the image at the image's size.
    assert tiling.plan(cfg, extractor, 1024, 1024, 1, need, memory.image_bytes(1024, 1024, cfg.optimizer), None,
                       True) is None


@pytest.mark.parametrize("args, message", [
    (["tiles=64", "style.loss=sliced"], "error: tiles=64: style.loss=sliced does not decompose over positions"),
    (["tiles=64", "experiment=strotss"], "error: tiles=64: content.loss=self_similarity does not decompose"),
    (["tiles=8"], "error: tiles=8 is not allowed (allowed: auto, off, or a tile's side in px >= 16)"),
    (["tiles=64", "backbone.padding=circular"], "error: tiles=64: masks and backbone.padding=circular are not tiled"),
])
def test_what_cannot_be_tiled_is_refused_in_one_line(tmp_path, args, message):
    assert refused_in_one_line(run_cli(args, cwd=tmp_path)).startswith(message)


def _seam(path) -> tuple[float, float]:
    """The texture as if tiled 2 x 2: (the correlation of neighbouring rows and columns across the
    wrap lines, its last column with its first and its last row with its first, minus that of
    neighbours inside; the mean luminance step across the wrap lines over the mean step inside)."""
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(path), dtype=float).mean(2)

    def corr(a, b):
        return float(np.corrcoef(a, b)[0, 1])

    inside = np.mean([corr(x[:, j], x[:, j + 1]) for j in range(x.shape[1] - 1)] +
                     [corr(x[i], x[i + 1]) for i in range(x.shape[0] - 1)])
    across = (corr(x[:, -1], x[:, 0]) + corr(x[-1], x[0])) / 2
    step_inside = (np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()) / 2
    step_across = (np.abs(x[-1] - x[0]).mean() + np.abs(x[:, -1] - x[:, 0]).mean()) / 2
    return across - inside, step_across / step_inside


def test_tv_wraps_around_by_hand():
    from nstexp.losses.tv import tv_loss

    dot = torch.zeros(1, 1, 3, 3)
    dot[0, 0, 0, 0] = 1.0  # Δx and Δy of 1 at the dot; wrapped, also from its left and upper neighbours
    assert tv_loss(dot).item() == 2.0 and tv_loss(dot, wrap=True).item() == 4.0


@pytest.mark.slow
def test_a_texture_made_with_circular_padding_tiles_seamlessly(tmp_path):
    # Texture synthesis from noise (the default loss, no content term): with every convolution and
    # TV wrapping around, neighbours across a tile's edge are like neighbours inside; with reflect
    # padding the edges are unrelated (a seam).
    from nstexp.run.runner import run

    common = ["content.weight=0", "init=noise", "size=96", "steps=100", "scales.min=null"]
    seams = {}
    for padding in ("circular", "reflect"):
        summary = run(tiny_cfg(*common, f"backbone.padding={padding}"), str(tmp_path / padding))
        assert summary["status"] == "completed"
        seams[padding] = _seam(tmp_path / padding / "final.png")
    assert abs(seams["circular"][0]) < 0.15 and seams["circular"][1] < 1.15, seams
    assert seams["reflect"][0] < -0.3 and seams["reflect"][1] > 1.3, seams


@pytest.mark.parametrize("loss", ["gram", "w2", "cmd"])
def test_style_targets_from_tiles_are_the_whole_images(extractor, loss):
    # Tiled, the style image passes one layer at a time in tiles: the targets are the whole pass's.
    gen = torch.Generator().manual_seed(3)
    content_image, style_image = torch.rand(1, 3, 64, 96, generator=gen), torch.rand(1, 3, 112, 96, generator=gen)
    args = (extractor, content_image, [style_image], *sections({"relu4_2": 1.0}, STYLE, 1.0, 1e3, 0.0,
                                                               style={"loss": loss, "normalization": "mean"}))
    whole, tiled = Objective(*args), Objective(*args, features=stitched(extractor, 32))
    for k in STYLE:
        a, b = whole.style_targets[k], tiled.style_targets[k]
        for x, y in zip(a if isinstance(a, (tuple, list)) else [a], b if isinstance(b, (tuple, list)) else [b]):
            if torch.is_tensor(x):
                assert torch.allclose(x, y, rtol=1e-4, atol=1e-6 * x.abs().max().item()), (loss, k)
    a, b = whole.content_targets["relu4_2"], tiled.content_targets["relu4_2"]
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * a.abs().max().item())


class _StopInStep(os.PathLike):
    """A stop file that appears at the `tile`-th tile of the evaluation that follows the engine's
    `look`-th look for it (the engine looks before each step, a tiled run after each tile of its
    set-up's passes and of each evaluation)."""

    def __init__(self, path, look, tile):
        self.path, self.look, self.tile = path, look, tile
        self.looks = {"optimize": 0, "on_tile": 0}  # the engine's, and those after a tile

    def __fspath__(self):
        caller = sys._getframe(3).f_code.co_name  # os.path.exists <- StopRequest.__call__ <- the caller
        if caller == "on_tile" and self.looks["optimize"] < self.look:
            caller = "set-up"  # tiles before the `look`-th step: not counted
        self.looks[caller] = self.looks.get(caller, 0) + 1
        if self.looks["optimize"] == self.look and self.looks["on_tile"] == self.tile:
            self.path.touch()
        return str(self.path)


def test_a_stop_request_ends_a_tiled_step_between_two_tiles_and_keeps_the_last_whole_step(tmp_path):
    import json

    from nstexp.run.runner import run

    out = tmp_path / "out"
    # 128 x 80 px in tiles of 48: 3 x 2 tiles, 12 an evaluation (both passes). The request comes
    # at the 6th tile after the engine's third look: in the evaluation of the image of step 2,
    # which ends there unmeasured, so the image of step 1 is the last good one.
    stop = _StopInStep(tmp_path / "stop", 3, 6)
    summary = run(tiny_cfg("size=128", "scales.min=null", "steps=1000", "optimizer=adam", "tiles=48"),
                  str(out), stop_file=stop)
    assert summary["status"] == "interrupted"
    assert stop.looks["on_tile"] == 6 and stop.looks["optimize"] == 3  # nothing after the request
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == summary["steps"] == 1 and (out / "final.png").is_file()


def test_a_stop_request_ends_a_tiled_runs_set_up_between_two_tiles(tmp_path):
    from nstexp.run.runner import run

    stop = _StopInStep(tmp_path / "stop", 0, 3)  # the 3rd tile of the targets' passes
    summary = run(tiny_cfg("size=128", "scales.min=null", "steps=1000", "tiles=48"), str(tmp_path / "out"),
                  stop_file=stop)
    assert summary["status"] == "interrupted" and summary["steps"] == 0
    assert stop.looks["on_tile"] == 3 and stop.looks["optimize"] == 0


def test_the_largest_history_is_the_most_pairs_whose_estimate_fits():
    from nstexp.config import LBFGSConfig
    from nstexp.network import memory

    ex = FeatureExtractor("vgg19", "random", ["relu1_1", "relu4_2"])
    at = lambda m: memory.estimate_bytes(ex, 400, 600, LBFGSConfig(history_size=m))  # noqa: E731
    for have in (at(37), at(37) + 1, at(38) - 1):
        assert memory.largest_history(at(100), have, 400, 600, LBFGSConfig()) == 37
    assert memory.largest_history(at(100), at(1) - 1, 400, 600, LBFGSConfig()) == 0
    from nstexp.config import AdamConfig
    assert memory.largest_history(at(100), 2 * at(100), 400, 600, AdamConfig()) == 0


def test_a_refusal_for_the_optimizers_state_names_the_history_that_fits(tmp_path, monkeypatch):
    from nstexp.network import memory
    from nstexp.errors import NstexpError
    from nstexp.run.runner import run

    # A machine with 12 GiB free: at 4096 px L-BFGS's 100 pairs alone take about 25 GiB, tiles or not.
    monkeypatch.setattr(memory, "available_bytes", lambda device: 12 * 2**30)
    with pytest.raises(NstexpError) as info:
        run(tiny_cfg("size=4096", "steps=0"), str(tmp_path))
    message = str(info.value)
    found = re.search(r"optimizer\.history_size=(\d+) would fit in tiles of 512 px", message)
    assert found and 0 < int(found[1]) < 100 and "\n" not in message
    with pytest.raises(NstexpError) as info:  # in the tiles asked for
        run(tiny_cfg("size=4096", "steps=0", "tiles=512"), str(tmp_path / "tiles"))
    assert f"optimizer.history_size={found[1]} would fit;" in str(info.value)
    with pytest.raises(NstexpError) as info:  # whole, the network's activations alone are over 12 GiB
        run(tiny_cfg("size=4096", "steps=0", "tiles=off"), str(tmp_path / "off"))
    assert "history_size=" not in str(info.value)
    with pytest.raises(NstexpError) as info:  # Adam's state is three images: no history to name
        run(tiny_cfg("size=30000", "steps=0", "optimizer=adam"), str(tmp_path / "adam"))
    assert "history_size=" not in str(info.value).split("(", 1)[1].split("lower")[0]
