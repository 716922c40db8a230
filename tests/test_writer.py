"""What a run writes while it optimizes goes through the writer thread (nstexp.run.tracking):
the optimizer runs ahead of it, its lines keep their order, and its errors still fail the run
with everything kept."""

import json
import threading

import pytest

from conftest import tiny_cfg


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_the_optimizer_runs_ahead_of_a_busy_writer_and_every_line_follows_in_order(tmp_path, monkeypatch):
    from nstexp.run import coarse_to_fine, runner, tracking

    release = threading.Event()
    tracking.writer().submit(release.wait, 120)  # the writer is busy until the optimization is over
    seen = {}
    real = coarse_to_fine.optimize

    def observed(*args, **kwargs):
        try:
            result = real(*args, **kwargs)
            seen["lines"] = len((tmp_path / "metrics.jsonl").read_text().splitlines())
            seen["steps"] = result.sample_steps[0]
            return result
        finally:
            release.set()

    monkeypatch.setattr(coarse_to_fine, "optimize", observed)
    summary = runner.run(tiny_cfg("steps=3", "snapshot_every=1", "eval.enabled=true"), str(tmp_path))
    assert seen == {"lines": 0, "steps": 3}  # all three steps done, none written yet
    assert summary["status"] == "completed"
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(0 < r["eval/ssim"] <= 1 for r in rows)  # scored on the writer, each in its own line
    assert rows[-1]["eval/ssim"] == pytest.approx(summary["eval/ssim"], rel=1e-6)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [f"step_{i:06d}.png" for i in range(4)]


def test_an_error_on_the_writer_fails_the_run_and_keeps_its_summary_and_image(tmp_path, monkeypatch):
    from nstexp.run import runner, tracking

    real = tracking.save_image

    def full_disk(image, path):
        if "snapshots" in str(path):
            raise OSError(28, "No space left on device")
        real(image, path)

    monkeypatch.setattr(tracking, "save_image", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        runner.run(tiny_cfg("steps=4", "snapshot_every=1"), str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    assert (tmp_path / "final.png").exists()
    assert summary["steps"] < 4  # the run stopped at the step after the writer failed


def test_the_wandb_run_starts_after_the_first_step_and_gets_every_step(tmp_path, wandb_env, monkeypatch):
    """W&B's start-up waits for the optimizer's first step (it would slow the set-up and that
    step); the steps logged before it started are in its history all the same."""
    import wandb

    from nstexp.run import coarse_to_fine, runner
    from wandb_offline import find_runs

    order = []
    real_init, real_optimize = wandb.init, coarse_to_fine.optimize

    def init(*args, **kwargs):
        order.append("wandb.init")
        return real_init(*args, **kwargs)

    def optimize(image, objective, optimizers, steps, clamp, on_step, *args, **kwargs):
        def observed(ev):
            if ev.step == 1:
                order.append("step 1")
            on_step(ev)
        return real_optimize(image, objective, optimizers, steps, clamp, observed, *args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(coarse_to_fine, "optimize", optimize)
    summary = runner.run(tiny_cfg("steps=2", "wandb.mode=offline"), str(tmp_path))
    assert summary["status"] == "completed" and order == ["step 1", "wandb.init"]
    (run,) = find_runs(str(tmp_path))
    assert run.finished and [row["step"] for row in run.history if "loss/total" in row] == [0, 1, 2]
