"""Coarse-to-fine: the levels, what carries over between them, and a run across them."""

import json
import threading
import time

import pytest
import torch
from PIL import Image

from nstexp import pyramid
from nstexp.config import AdamConfig
from nstexp.engine import optimize
from test_engine import _quadratic
from test_runner import _cfg, _rows, run


def test_levels_go_up_by_the_factor_to_the_size():
    assert pyramid.levels(512, 128, 2**0.5) == [128, 181, 256, 362, 512]
    assert pyramid.levels(512, 200, 2.0) == [256, 512]
    assert pyramid.levels(384, None, 2**0.5) == [384]
    assert pyramid.levels(384, 384, 2**0.5) == [384]


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
    resized = pyramid.resize_adam_state(first.optimizer_state, (8, 8))
    (state,) = resized["state"].values()
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (1, 3, 8, 8)
    assert state["exp_avg_sq"].min() >= 0
    (old,) = first.optimizer_state["state"].values()
    assert old["exp_avg"].shape == (1, 3, 4, 4)  # the original is left alone


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_a_run_across_levels(tmp_path, optimizer):
    summary = run(_cfg("size=64", "steps=3", "scales.min=32", "scales.first_steps=4", f"optimizer={optimizer}",
                       "snapshot_every=2"), str(tmp_path))
    assert summary["status"] == "completed" and summary["levels"] == [32, 45, 64]
    assert summary["steps"] == 4 + 3 + 3
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(11))  # one global step count
    assert [r["level_size"] for r in rows] == [32] * 5 + [45] * 3 + [64] * 3
    assert [r["level"] for r in rows] == [0] * 5 + [1] * 3 + [2] * 3
    assert rows == sorted(rows, key=lambda r: (r["evals"], r["time_s"]))
    assert summary["evals"] == 4 + 3 + 3 + 3  # each level measures its last image once more
    # Each level's sides are rounded to the pooling stride (16), as a single level's are.
    assert Image.open(tmp_path / "final.png").size == tuple(summary["image_size"][::-1]) == (64, 48)
    assert max(Image.open(tmp_path / "snapshots" / "step_000002.png").size) == 32
    assert max(Image.open(tmp_path / "snapshots" / "step_000006.png").size) == 48  # 45, rounded
    assert summary["final/loss/total"] == rows[-1]["loss/total"]


def test_interrupting_a_later_level_keeps_its_image(tmp_path):
    stop = tmp_path / "stop"
    out = tmp_path / "out"

    def stop_in_level_1():  # as a sweep's stop file would, once level 1 has logged a step
        deadline = time.time() + 60
        while time.time() < deadline and not stop.exists():
            try:
                if any(json.loads(line).get("level") == 1 for line in open(out / "metrics.jsonl")):
                    stop.touch()
            except (OSError, ValueError):
                pass
            time.sleep(0.01)

    watcher = threading.Thread(target=stop_in_level_1)
    watcher.start()
    summary = run(_cfg("size=64", "steps=200", "scales.min=32", "optimizer=adam"), str(out), stop_file=stop)
    watcher.join()
    assert summary["status"] == "interrupted"
    assert 200 < summary["steps"] < 400
    assert max(Image.open(out / "final.png").size) == 48  # the level it was working at (45, rounded)
    assert _rows(out)[-1]["step"] == summary["steps"]
