"""The command line end to end: outputs on disk and what the offline W&B run recorded."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from conftest import REPO, TINY, refused_in_one_line, run_cli
from wandb_offline import find_runs

from nstexp.network.hardware import resolve_precision


def _jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_two_step_run_writes_outputs_and_offline_wandb_run(tmp_path, wandb_env):
    out = tmp_path / "run"
    # The yardstick metrics on, as in a user's run.
    r = run_cli([*TINY, "eval.enabled=true", "loss=gatys", "optimizer=lbfgs", "style.weight=1e6", f"hydra.run.dir={out}"],
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wandb sync" in r.stderr  # the offline hint

    final = Image.open(out / "final.png")
    assert max(final.size) == 48
    assert sorted(os.listdir(out / "snapshots")) == ["step_000000.png", "step_000001.png", "step_000002.png"]
    assert (out / ".hydra" / "config.yaml").is_file()

    metrics = _jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert metrics[0]["evals"] == 0 and metrics[-1]["evals"] == 2
    keys = {"step", "evals", "time_s", "loss/total", "loss/content", "loss/style", "loss/tv",
            "loss/content/relu4_2", "loss/style/relu1_1", "loss/style/relu5_1"}
    assert keys <= set(metrics[0])
    assert metrics[0]["loss/content"] == 0.0  # starts from the content image
    assert all(0 < m["loss/total"] < float("inf") for m in metrics)
    assert metrics[1]["loss/content"] > 0  # the image moved away from the content image
    for m in metrics:
        weighted = m["loss/content"] + m["loss/style"] + m["loss/tv"]
        assert m["loss/total"] == pytest.approx(weighted, rel=1e-5)
        per_layer = 1e6 * sum(0.2 * m[f"loss/style/relu{i}_1"] for i in range(1, 6))
        assert m["loss/style"] == pytest.approx(per_layer, rel=1e-4)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    # The last image is measured once more; twice when L-BFGS takes its last step back (that step
    # more than doubled the loss), which it counts.
    assert summary["steps"] == 2 and summary["evals"] - 2 in (1, 2)
    assert summary["evals"] == 3 or summary["lbfgs/steps_taken_back"] >= 1
    assert summary["final/loss/total"] == pytest.approx(metrics[-1]["loss/total"])
    for key in ("wall_time_s", "time_per_eval_s", "peak_memory_mb", "device", "image_size", "versions"):
        assert summary[key] is not None, key
    assert summary["device"] == "cpu"
    assert 0 < summary["eval/ssim"] <= 1 and [m["step"] for m in metrics if "eval/style_sw" in m] == [0, 1, 2]

    (run,) = find_runs(str(out))
    assert run.finished and run.exit_code == 0
    assert run.config["style"]["weight"] == 1e6 and run.config["optimizer"]["name"] == "lbfgs"
    assert run.config["size"] == 48
    # The precision actually used, not "auto", in the W&B config and the summary.
    assert run.config["precision"] == run.summary["precision"] == resolve_precision("auto", torch.device("cpu"))
    assert "style.weight=1e6" in run.name
    logged = [h for h in run.history if "loss/total" in h]
    assert [h["step"] for h in logged] == [0, 1, 2]
    assert [h["loss/total"] for h in logged] == pytest.approx([m["loss/total"] for m in metrics])
    images = {k: v for h in run.history for k, v in h.items() if isinstance(v, dict) and v.get("_type") == "image-file"}
    assert {"inputs/content", "inputs/style", "snapshot", "final"} <= set(images)
    assert os.path.isfile(run.media(images["final"]["path"]))
    assert run.summary["status"] == "completed"
    assert run.summary["eval/ssim"] == pytest.approx(summary["eval/ssim"])


def test_console_script_from_another_directory(tmp_path, wandb_env):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli([*TINY, "wandb.mode=disabled", "optimizer=lbfgs", "style.weight=1e6", "hydra.run.dir=out"],
                cwd=elsewhere, module=False)
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "out" / "final.png").is_file()


def test_bad_image_fails_in_one_line_and_leaves_a_failed_summary(tmp_path, wandb_env):
    out = tmp_path / "run"
    r = run_cli([*TINY, f"content.image={tmp_path}/nope.jpg", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: content.image={tmp_path}/nope.jpg: file not found"]
    assert "Traceback" not in r.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"
    (run,) = find_runs(str(out))
    assert run.finished and run.exit_code == 1


def test_image_too_small_for_the_deepest_layer(tmp_path, wandb_env):
    # Refused before the run (nstexp.input_sizes), from the file's header: 200x10 px at size=200.
    Image.new("RGB", (400, 20), (50, 60, 70)).save(tmp_path / "thin.png")
    r = run_cli([*TINY, "size=200", f"content.image={tmp_path}/thin.png", "wandb.mode=disabled",
                 f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    line = refused_in_one_line(r)
    assert "200x10 px after resizing at size=200 is too small for layer relu5_1 (needs at least 16 px" in line


def test_divergence_keeps_the_last_good_image(tmp_path, wandb_env):
    out = tmp_path / "run"
    # An absurd learning rate without clamping sends pixels to ~1e30: the features overflow.
    r = run_cli([*TINY, "steps=5", "optimizer=adam", "optimizer.lr=1e30", "clamp=at_end",
                 f"hydra.run.dir={out}"], cwd=tmp_path)
    assert r.returncode == 1
    assert "diverged: non-finite loss after step 0" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 0
    assert summary["final/loss/total"] < float("inf")
    # The last good image is the initial one, snapshotted at step 0.
    final = Image.open(out / "final.png")
    assert final.tobytes() == Image.open(out / "snapshots" / "step_000000.png").tobytes()
    (run,) = find_runs(str(out))
    assert run.finished and run.summary["status"] == "diverged"


def _start_long_run(tmp_path, *extra):
    """Start a run that would take hours; return it and its output dir once it has logged 3 steps."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nstexp", "size=48", "steps=100000", "progress=false", "snapshot_every=0",
           "eval.size=64", f"hydra.run.dir={out}", *extra]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ}, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    # No deadline: a slower machine only takes longer to get there.
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 3:
        assert proc.poll() is None, f"the run ended before logging 3 steps: {proc.communicate()[1]}"
        time.sleep(0.2)
    return proc, out


def test_sigint_stops_within_a_step_and_keeps_everything(tmp_path, wandb_env):
    proc, out = _start_long_run(tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()  # "within a step" is checked by the steps it ran, not by a clock
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert 2 <= summary["steps"] < 100000
    assert (out / "final.png").is_file()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == summary["steps"]
    (run,) = find_runs(str(out))
    assert run.finished and run.summary["status"] == "interrupted"


def test_sigterm_is_handled_like_ctrl_c(tmp_path, wandb_env):
    proc, out = _start_long_run(tmp_path, "wandb.mode=disabled", "eval.enabled=false")
    proc.send_signal(signal.SIGTERM)
    proc.communicate()
    assert proc.returncode == 130
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert (out / "final.png").is_file()


def test_signal_during_set_up_still_leaves_a_summary(tmp_path, wandb_env):
    """The content image is a pipe: set-up (W&B started, network loaded) blocks reading it until
    the test has sent the signal, so the signal lands in set-up, every time."""
    out, pipe = tmp_path / "run", tmp_path / "content.png"
    os.mkfifo(pipe)
    cmd = [sys.executable, "-m", "nstexp", "size=48", "steps=100000", "progress=false", f"content.image={pipe}",
           "eval.size=64", f"hydra.run.dir={out}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ}, stderr=subprocess.PIPE, text=True)
    while True:  # opening the write end succeeds once the run has opened the pipe to read it
        try:
            fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert proc.poll() is None, "the run ended without reading its content image"
            time.sleep(0.05)
    # No need to wait for the handler: the signal is delivered before the run returns from the
    # system call that gives it the image, so the handler runs before the image is read.
    proc.send_signal(signal.SIGTERM)
    with open(Image.open(os.path.join(REPO, "nstexp", "samples", "chelsea.png")).filename, "rb") as f:
        data = f.read()
    os.set_blocking(fd, True)
    os.write(fd, data)
    os.close(fd)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 0
    assert (out / "final.png").is_file()  # the initial image: the last good one
    (run,) = find_runs(str(out))
    assert run.finished and run.summary["status"] == "interrupted"


def test_wandb_name_names_the_run(tmp_path, wandb_env):
    out = tmp_path / "run"
    r = run_cli([*TINY, "wandb.name=my-baseline", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run,) = find_runs(str(out))
    assert run.name == "my-baseline"
    assert json.loads((out / "summary.json").read_text())["name"] == "my-baseline"
