"""`runner.run` called directly: initializations, reproducibility, blending, objective weighting."""

import json
import os
import threading

import pytest
import torch
from PIL import Image

from conftest import sections, tiny_cfg as _cfg
from nstexp import images
from nstexp.network.backbone import FeatureExtractor
from nstexp.losses.objective import Objective
from nstexp.run.runner import run

def test_same_seed_same_result_on_cpu(tmp_path):
    a = run(_cfg("init=noise", "seed=3"), str(tmp_path / "a"))
    b = run(_cfg("init=noise", "seed=3"), str(tmp_path / "b"))
    c = run(_cfg("init=noise", "seed=4"), str(tmp_path / "c"))
    pa, pb, pc = (Image.open(tmp_path / d / "final.png").tobytes() for d in "abc")
    assert pa == pb and a["final/loss/total"] == b["final/loss/total"]
    assert pa != pc and c["final/loss/total"] != a["final/loss/total"]


@pytest.mark.parametrize("init", ["content", "noise", "style", "image"])
def test_initializations(tmp_path, init):
    extra = []
    if init == "image":
        Image.new("RGB", (30, 20), (0, 255, 0)).save(tmp_path / "green.png")
        extra = [f"init.path={tmp_path}/green.png"]
    cfg = _cfg(f"init={init}", "steps=0", "snapshot_every=1", *extra)
    summary = run(cfg, str(tmp_path / "out"))
    assert summary["status"] == "completed" and summary["steps"] == 0
    start = Image.open(tmp_path / "out" / "snapshots" / "step_000000.png")
    assert max(start.size) == 48
    px = start.getpixel((10, 10))
    if init == "image":
        assert px == (0, 255, 0)
    first = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert (first["loss/content"] == 0.0) == (init == "content")


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("optimizer,extra", [("adam", []), ("lbfgs", []),
                                             ("lbfgs", ["optimizer.line_search=strong_wolfe"])])
def test_optimizers_reduce_the_loss_and_count_evals(tmp_path, optimizer, extra):
    summary = run(_cfg(f"optimizer={optimizer}", "steps=4", *extra), str(tmp_path))
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    losses = [r["loss/total"] for r in rows]
    assert losses[-1] < 0.9 * losses[0], losses
    assert summary["final/loss/total"] == losses[-1]
    # Each row: the evaluations spent to make its image; the summary adds the final measurement.
    if extra:
        assert rows[-1]["evals"] > 4  # the line search evaluates more than once per step
    else:
        assert [r["evals"] for r in rows] == [0, 1, 2, 3, 4]
    # Once more for the final image; twice where L-BFGS takes its last step back, which it counts.
    assert summary["evals"] == rows[-1]["evals"] + 1 or (
        summary["evals"] == rows[-1]["evals"] + 2 and summary["lbfgs/steps_taken_back"] >= 1)
    assert [r["time_s"] for r in rows] == sorted(r["time_s"] for r in rows) and rows[0]["time_s"] == 0.0


def test_style_blending_and_scale(tmp_path):
    base = run(_cfg(), str(tmp_path / "base"))
    # A second style with weight 0 changes nothing; with weight > 0 it does.
    zero = run(_cfg("style.blend_images=[sample:chelsea]", "style.blend_weights=[1,0]"), str(tmp_path / "zero"))
    mixed = run(_cfg("style.blend_images=[sample:chelsea]", "style.blend_weights=[0.7,0.3]"), str(tmp_path / "mix"))
    run(_cfg("style.scale=1.5"), str(tmp_path / "scaled"))
    finals = {d: Image.open(tmp_path / d / "final.png").tobytes() for d in ("base", "zero", "mix", "scaled")}
    assert zero["final/loss/total"] == pytest.approx(base["final/loss/total"], rel=1e-5)
    assert finals["zero"] == finals["base"]
    assert finals["mix"] != finals["base"] and mixed["final/loss/style"] != base["final/loss/style"]
    assert finals["scaled"] != finals["base"]
    # The style target is per position, so a larger style image is not a stronger style: the
    # step-0 style losses (content image vs style) stay within a small factor (4x+ before).
    ratio = _rows(tmp_path / "scaled")[0]["loss/style"] / _rows(tmp_path / "base")[0]["loss/style"]
    assert 0.5 < ratio < 2.0, ratio


class _CrashingObjective(Objective):
    """The real objective, failing on its 4th evaluation (a crash in the middle of a run)."""

    calls = 0

    def __call__(self, image):
        _CrashingObjective.calls += 1
        if _CrashingObjective.calls == 4:
            raise RuntimeError("simulated crash")
        return super().__call__(image)


def test_a_crash_keeps_the_newest_image_and_its_step(tmp_path, monkeypatch):
    monkeypatch.setattr("nstexp.run.coarse_to_fine.Objective", _CrashingObjective)
    _CrashingObjective.calls = 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(_cfg("steps=10", "snapshot_every=1", "optimizer=adam"), str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: simulated crash"
    # Evaluations 1-3 measured steps 0-2: step 2's image is the newest good one.
    assert summary["steps"] == 2 and summary["final/loss/total"] == _rows(tmp_path)[-1]["loss/total"]
    final = Image.open(tmp_path / "final.png").tobytes()
    assert final == Image.open(tmp_path / "snapshots" / "step_000002.png").tobytes()
    assert final != Image.open(tmp_path / "snapshots" / "step_000000.png").tobytes()


@pytest.mark.parametrize("override,error", [
    ("device=cuda:7", "device=cuda:7"),  # fails when the device is resolved
    ("style.blend_weights=[0]", "style.blend_weights are all 0"),  # fails validation inside the run
])
def test_errors_before_the_run_starts_leave_a_failed_summary(tmp_path, override, error):
    from nstexp.errors import NstexpError

    if override.startswith("device") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(NstexpError, match=error.replace("[", "\\[")):
        run(_cfg(override), str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and error in summary["error"]


def test_wandb_start_up_failure_leaves_a_failed_summary(tmp_path, monkeypatch):
    from nstexp.errors import NstexpError

    monkeypatch.setenv("WANDB_MODE", "sideways")  # W&B cannot start with it
    with pytest.raises(NstexpError, match="WANDB_MODE"):
        run(_cfg("wandb.mode=auto"), str(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_a_rerun_into_the_same_directory_leaves_nothing_of_the_old_run(tmp_path):
    run(_cfg("snapshot_every=1"), str(tmp_path))
    assert (tmp_path / "final.png").exists() and (tmp_path / "snapshots" / "step_000002.png").exists()
    from nstexp.errors import NstexpError

    with pytest.raises(NstexpError):
        run(_cfg("content.image=missing.png"), str(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    assert not (tmp_path / "final.png").exists()
    assert os.listdir(tmp_path / "snapshots") == []
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_snapshots_do_not_depend_on_log_every(tmp_path):
    run(_cfg("steps=5", "log_every=3", "snapshot_every=2"), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "snapshots")) == [f"step_00000{i}.png" for i in (0, 2, 4)]
    # Metrics every log_every steps, at every snapshot and at the last step.
    assert [r["step"] for r in _rows(tmp_path)] == [0, 2, 3, 4, 5]


def test_peak_memory_is_per_run_in_a_shared_process(tmp_path):
    # Without the metrics, whose reference-size pass would dominate the small run's peak.
    big = run(_cfg("size=256", "scales.min=null", "steps=1", "eval.enabled=false"), str(tmp_path / "big"))
    small = run(_cfg("size=32", "steps=1", "eval.enabled=false"), str(tmp_path / "small"))
    # The second run's peak is its own: below the first one's, not the process's lifetime peak.
    assert small["peak_memory_mb"] < big["peak_memory_mb"] - 100, (small, big)


def test_a_small_image_is_upscaled_with_a_warning(tmp_path, capsys):
    # 16 px on the shorter side: the smallest image a run takes (one position of relu5_1).
    Image.new("RGB", (20, 16), (10, 200, 30)).save(tmp_path / "tiny.png")
    summary = run(_cfg("size=64", f"content.image={tmp_path}/tiny.png", "steps=0"), str(tmp_path / "out"))
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "content.image is 20x16 px: upscaled 3.2x to 64 px" in line
    assert summary["warnings"] == [line.removeprefix("warning: ")]


def test_a_size_that_cannot_fit_in_memory_is_refused_with_an_estimate(tmp_path):
    from nstexp.errors import NstexpError

    with pytest.raises(NstexpError, match=r"size=20000 .*needs about \d+\.\d GiB, \d+\.\d GiB available"):
        run(_cfg("size=20000", "steps=0"), str(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_objective_combines_weighted_terms():
    torch.manual_seed(0)
    ex = FeatureExtractor("vgg19", "random", ["relu1_1", "relu2_1"])
    content, style = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 20, 20)
    obj = Objective(ex, content, [style], *sections({"relu2_1": 1.0}, {"relu1_1": 0.25, "relu2_1": 0.75},
                                                content_weight=2.0, style_weight=10.0, tv_weight=3.0))
    x = torch.rand(2, 3, 16, 16)
    t = obj(x)
    assert t.total.shape == (2,)
    expected_style = 10.0 * (0.25 * t.style_layers["relu1_1"] + 0.75 * t.style_layers["relu2_1"])
    assert torch.allclose(t.style, expected_style)
    assert torch.allclose(t.content, 2.0 * t.content_layers["relu2_1"])
    assert torch.allclose(t.total, t.content + t.style + t.tv)
    assert (t.tv > 0).all()
    # The content image itself has zero content loss; each sample is scored on its own.
    t2 = obj(torch.cat([content, x[:1]]))
    assert t2.content[0].item() < 1e-6 * t2.content[1].item()


@pytest.mark.parametrize("preset", ["w2", "sliced"])
def test_distribution_style_losses_run_lower_the_loss_and_repeat(tmp_path, preset):
    a = run(_cfg(f"loss={preset}", "steps=4", "optimizer=adam", "optimizer.lr=0.05"), str(tmp_path / "a"))
    b = run(_cfg(f"loss={preset}", "steps=4", "optimizer=adam", "optimizer.lr=0.05"), str(tmp_path / "b"))
    rows = _rows(tmp_path / "a")
    assert a["status"] == "completed" and rows[-1]["loss/style"] < rows[0]["loss/style"]
    assert all(r["loss/style/relu1_1"] >= 0 for r in rows)
    # The sliced loss draws random directions at every evaluation, from the seed: runs repeat.
    assert a["final/loss/total"] == b["final/loss/total"]
    assert Image.open(tmp_path / "a" / "final.png").tobytes() == Image.open(tmp_path / "b" / "final.png").tobytes()


def test_new_switches_run_end_to_end(tmp_path):
    summary = run(_cfg("loss=gatys", "style.balance=content", "backbone.padding=replicate",
                       "backbone.pooling=avg_scaled",
                       "tv.weight=1", "tv.exponent=1.25", "optimizer=adam", "optimizer.ema=0.9", "steps=3"),
                  str(tmp_path))
    assert summary["status"] == "completed"
    assert set(summary["style_balance"]) == {f"relu{i}_1" for i in range(1, 6)}
    rows = _rows(tmp_path)
    # Balanced on the content image, which is also the initial one: the weighted style loss at
    # step 0 is the unbalanced one's, sum_l w_l E_l * style.weight.
    unbalanced = 3e5 * sum(0.2 * rows[0][f"loss/style/relu{i}_1"] for i in range(1, 6))
    assert rows[0]["loss/style"] == pytest.approx(unbalanced, rel=1e-4)
    assert rows[0]["loss/tv"] > 0


def test_a_pipe_is_read_once_for_every_level_and_the_metrics(tmp_path):
    """A pipe gives its image once; the levels and the metrics read it again from memory."""
    pipe = tmp_path / "content.png"
    os.mkfifo(pipe)
    with open(images.resolve("sample:chelsea", "content.image"), "rb") as f:
        data = f.read()
    writer = threading.Thread(target=lambda: pipe.write_bytes(data))
    writer.start()
    summary = run(_cfg(f"content.image={pipe}", "scales.min=32", "scales.factor=1.4142135623730951",
                       "eval.enabled=true"),
                  str(tmp_path / "out"))
    writer.join(timeout=30)
    assert summary["status"] == "completed" and len(summary["levels"]) == 2
    assert 0 < summary["eval/ssim"] < 1


def test_reflect_padding_on_a_too_small_image_is_refused_in_one_line(tmp_path):
    # 32 px: the style image's shorter side reaches conv5_1 as 1 px, which reflect padding cannot pad.
    from nstexp.errors import NstexpError

    with pytest.raises(NstexpError, match=r"too small for layer relu5_1 \(needs at least 32 px per side "
                                          r"with backbone.padding=reflect; raise size or style.scale\)$"):
        run(_cfg("size=32", "backbone.padding=reflect", "eval.enabled=false"), str(tmp_path / "small"))
    summary = run(_cfg("size=64", "backbone.padding=reflect", "eval.enabled=false"), str(tmp_path / "fits"))
    assert summary["status"] == "completed"
