"""Coarse-to-fine: the levels, what carries over between them, and a run across them."""

import os

import pytest
import torch
from PIL import Image

from nstexp import images
from nstexp.optim import pyramid
from nstexp.config import AdamConfig
from nstexp.optim.engine import optimize
from test_engine import _quadratic
from test_runner import _cfg, _rows, run


def test_levels_go_up_by_the_factor_to_the_size():
    assert pyramid.levels(512, 128, 2**0.5) == [128, 181, 256, 362, 512]
    assert pyramid.levels(512, 200, 2.0) == [256, 512]
    assert pyramid.levels(384, None, 2**0.5) == [384]
    assert pyramid.levels(384, 384, 2**0.5) == [384]
    # The default (128, factor 2): two levels at the CPU's 256 px, three at the GPU's 512, one
    # level below 256 and wherever `scales.min` is above `size`.
    assert pyramid.levels(256, 128, 2.0) == [128, 256]
    assert pyramid.levels(512, 128, 2.0) == [128, 256, 512]
    assert pyramid.levels(250, 128, 2.0) == [250]
    assert pyramid.levels(48, 128, 2.0) == [48]


def test_upsampling_keeps_a_flat_image_flat_and_in_range():
    image = torch.full((1, 3, 8, 12), 0.25)
    image[..., 0, 0] = 1.0  # a bright corner: bicubic overshoots, the clamp keeps [0, 1]
    up = pyramid.upsample(image, (16, 24))
    assert up.shape == (1, 3, 16, 24) and up.min() >= 0 and up.max() <= 1
    assert torch.allclose(pyramid.upsample(torch.full((1, 3, 8, 12), 0.25), (16, 24)), torch.tensor(0.25))


def test_adam_continues_where_it_stopped():
    image, objective, cfg = torch.zeros(1, 3, 4, 4), _quadratic(0.7, 10.0), AdamConfig(lr=0.05)
    whole = optimize(image, objective, cfg, steps=5)
    first = optimize(image, objective, cfg, steps=3)
    second = optimize(first.image, objective, cfg, steps=2, optimizer_state=first.optimizer_state)
    assert torch.equal(second.image, whole.image)  # moments and step count carried over exactly
    # Resized for a larger image: shapes follow, the second moment stays >= 0.
    resized = pyramid.resize_state(first.optimizer_state, (8, 8))
    (state,) = resized["state"].values()
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (1, 3, 8, 8)
    assert state["exp_avg_sq"].min() >= 0
    (old,) = first.optimizer_state["state"].values()
    assert old["exp_avg"].shape == (1, 3, 4, 4)  # the original is left alone


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs", "rmsprop"])
def test_a_run_across_levels(tmp_path, optimizer):
    summary = run(_cfg("size=64", "steps=3", "scales.min=32", "scales.factor=1.4142135623730951", "scales.first_steps=4",
                       f"optimizer={optimizer}",
                       "snapshot_every=2"), str(tmp_path))
    assert summary["status"] == "completed" and summary["levels"] == [32, 45, 64]
    assert summary["steps"] == 4 + 3 + 3
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(11))  # one global step count
    assert [r["level_size"] for r in rows] == [32] * 5 + [45] * 3 + [64] * 3
    assert [r["level"] for r in rows] == [0] * 5 + [1] * 3 + [2] * 3
    assert rows == sorted(rows, key=lambda r: (r["evals"], r["time_s"]))
    # Each level measures its last image once more; twice where L-BFGS takes the level's last
    # step back (it more than doubled the loss), which it counts.
    extra = summary["evals"] - (4 + 3 + 3 + 3)
    assert 0 <= extra <= summary.get("lbfgs/steps_taken_back", 0)
    # Each level's sides are rounded to the pooling stride (16), as a single level's are: the
    # photo scaled to each level's size, then each side to the nearest multiple of 16.
    width, height = images.load_image("sample:chelsea").size
    rounded = lambda side: 16 * round(side / 16)  # noqa: E731
    assert Image.open(tmp_path / "final.png").size == tuple(summary["image_size"][::-1]) == (
        rounded(64), rounded(round(64 * height / width)))
    assert max(Image.open(tmp_path / "snapshots" / "step_000002.png").size) == rounded(32)
    assert max(Image.open(tmp_path / "snapshots" / "step_000006.png").size) == rounded(45)
    assert summary["final/loss/total"] == rows[-1]["loss/total"]


class _StopAtLook(os.PathLike):
    """The path of a sweep's stop file that appears at the run's `look`-th look for it.

    The run looks for its stop file before every step (`os.path.exists`, which asks this path),
    so the file appears before step `look`, on any machine: counting the run's own looks, not
    reading metrics.jsonl, which the writer thread fills a little later (under load, after the
    level was over).
    """

    def __init__(self, path, look):
        self.path, self.look, self.looks = path, look, 0

    def __fspath__(self):
        self.looks += 1
        if self.looks == self.look:
            self.path.touch()
        return str(self.path)


def test_interrupting_a_later_level_keeps_its_image(tmp_path):
    out = tmp_path / "out"
    stop = _StopAtLook(tmp_path / "stop", 5)  # level 0 has steps 1-3: before step 5, inside level 1
    summary = run(_cfg("size=64", "steps=3", "scales.min=32", "optimizer=adam"), str(out), stop_file=stop)
    assert summary["status"] == "interrupted" and (tmp_path / "stop").exists()
    rows = _rows(out)
    first_of_level_1 = next(r["step"] for r in rows if r["level"] == 1)
    assert 3 < first_of_level_1 <= summary["steps"] < 3 + 3  # stopped inside level 1, before its end
    assert rows[-1]["step"] == summary["steps"]
    # The image of the level it was working at: its size, rounded to the stride (16).
    assert max(Image.open(out / "final.png").size) == 16 * round(summary["levels"][1] / 16)


def test_level_settings_weigh_the_content_more_at_each_coarser_level():
    cfg = _cfg("content.weight=2", "optimizer=rmsprop", "optimizer.lr=2e-3", "scales.content_weight_ratio=2",
               "scales.last_lr=1e-3")
    settings = [pyramid.level_settings(cfg, level, 4) for level in range(4)]
    # STROTSS's schedule from 64 to 512 px: 16, 8, 4, 2; its learning rate halved at the last level.
    assert [c.content.weight for c in settings] == [16.0, 8.0, 4.0, 2.0]
    assert [c.optimizer.lr for c in settings] == [2e-3, 2e-3, 2e-3, 1e-3]
    assert cfg.content.weight == 2.0 and cfg.optimizer.lr == 2e-3  # the run's own config is left alone
    plain = _cfg()
    assert all(pyramid.level_settings(plain, level, 3) is plain for level in range(3))


def test_level_settings_anchored_at_the_coarsest_level_keep_its_weight_at_every_size():
    # STROTSS starts at 16 whatever its number of scales: 16, 8, 4 to 256 px, 16, 8, 4, 2 to 512 px.
    cfg = _cfg("content.weight=16", "scales.content_weight_ratio=2", "scales.content_weight_at=coarsest")
    assert [pyramid.level_settings(cfg, level, 3).content.weight for level in range(3)] == [16.0, 8.0, 4.0]
    assert [pyramid.level_settings(cfg, level, 4).content.weight for level in range(4)] == [16.0, 8.0, 4.0, 2.0]
    single = pyramid.level_settings(cfg, 0, 1)
    assert single.content.weight == 16.0


def test_strotss_recipe_weighs_the_content_as_the_source_at_256_and_512_px():
    # nkolkin13/STROTSS styleTransfer.py: content_weight = 16 x its argument (1) at the first scale,
    # halved at each of the next; max_scl 4 runs 64, 128, 256 px, max_scl 5 up to 512 px.
    for size, expected in ((256, [16.0, 8.0, 4.0]), (512, [16.0, 8.0, 4.0, 2.0])):
        cfg = _cfg("experiment=strotss", f"size={size}")
        sizes = pyramid.levels(cfg.size, cfg.scales.min, cfg.scales.factor)
        assert sizes == [64 * 2**k for k in range(len(expected))]
        assert [pyramid.level_settings(cfg, k, len(sizes)).content.weight for k in range(len(sizes))] == expected


def test_a_run_weighs_each_levels_content_by_the_ratio(tmp_path):
    # From the same noise, the first level's content term is the content weight times the ratio
    # to the power of the levels still to come: 4x at the first of three.
    common = ["size=96", "steps=1", "scales.min=24", "init=noise", "snapshot_every=0"]
    plain = run(_cfg(*common), str(tmp_path / "plain"))
    ratio = run(_cfg(*common, "scales.content_weight_ratio=2"), str(tmp_path / "ratio"))
    assert plain["levels"] == ratio["levels"] == [24, 48, 96]
    first = lambda out: _rows(out)[0]  # noqa: E731
    assert first(tmp_path / "plain")["level"] == 0 and first(tmp_path / "plain")["loss/content"] > 0
    assert first(tmp_path / "ratio")["loss/content"] == pytest.approx(4 * first(tmp_path / "plain")["loss/content"],
                                                                      rel=1e-5)
