"""Sweeps whose jobs share one batch: grouping, per-job results equal to running alone, the
batched launcher's files and W&B runs, divergence, resume and interruption."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from conftest import run_cli, tiny_cfg
from wandb_offline import find_runs

from nstexp import batching
from nstexp.job import JobSpec
from nstexp.runner import run, run_batch

GRID = ["style.weight=1e3", "style.weight=1e5"]


def test_jobs_that_differ_in_numbers_share_a_batch_and_the_others_do_not():
    cfgs = [tiny_cfg(*o) for o in (["style.weight=1e3"], ["style.weight=1e5", "seed=3", "init=noise"],
                                   ["content.weight=0", "optimizer.lr=0.5", "layers.style.relu1_1=0.5"],
                                   ["size=64"], ["optimizer.line_search=strong_wolfe"],
                                   ["layers.style.relu1_1=0"], ["optimizer=adam"], ["optimizer=adam", "seed=2"])]
    assert batching.group(cfgs, batch_size=8) == [[0, 1, 2], [3], [4], [5], [6, 7]]
    assert batching.group(cfgs, batch_size=2) == [[0, 1], [2], [3], [4], [5], [6, 7]]
    # By default a CPU runs one job at a time: batches measured slower there.
    assert batching.group(cfgs, batch_size=None) == [[i] for i in range(8)]
    text = batching.describe(cfgs, batching.group(cfgs, 8))
    assert text.startswith("batched launcher: 8 jobs in 5 batches")
    assert "jobs 0 and 3 differ in size" in text
    assert "job 4 runs alone: its optimizer (a line search or max_iter > 1)" in text
    assert "jobs 4 and 5 differ in layer_sets, optimizer.line_search" in text
    assert "jobs 5 and 6 differ in layer_sets, optimizer\n" in text + "\n"


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_each_job_of_a_batch_gets_what_it_would_get_alone(tmp_path, optimizer):
    overrides = [["style.weight=1e3", "seed=0"], ["style.weight=1e5", "seed=1", "init=noise"],
                 ["style.weight=1e3", "seed=1", "init=noise"], ["style.weight=1e5", "seed=0", "optimizer.lr=0.5"]]
    common = [f"optimizer={optimizer}", "steps=4", "size=32", "eval.size=64", "snapshot_every=2"]
    specs = [JobSpec(tiny_cfg(*common, *o), str(tmp_path / f"b{i}"), name=f"job{i}") for i, o in enumerate(overrides)]
    together = run_batch(specs)
    for i, o in enumerate(overrides):
        alone = run(tiny_cfg(*common, *o), str(tmp_path / f"a{i}"), name=f"job{i}")
        mine = together[i]
        assert mine["status"] == alone["status"] == "completed" and mine["batch"] == 4
        assert mine["steps"] == alone["steps"] and mine["evals"] == alone["evals"]
        assert mine["final/loss/total"] == pytest.approx(alone["final/loss/total"], rel=1e-5)
        assert mine["eval/ssim"] == pytest.approx(alone["eval/ssim"], abs=1e-4)
        a, b = (Image.open(tmp_path / d / "final.png") for d in (f"a{i}", f"b{i}"))
        assert max(abs(x - y) for x, y in zip(a.tobytes(), b.tobytes())) <= 1
        rows = [json.loads(line) for line in open(tmp_path / f"b{i}" / "metrics.jsonl")]
        assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
        assert sorted(os.listdir(tmp_path / f"b{i}" / "snapshots")) == sorted(
            os.listdir(tmp_path / f"a{i}" / "snapshots"))
    assert len({s["final/loss/total"] for s in together}) == 4  # four different jobs


def test_a_job_that_diverges_stops_alone(tmp_path, capsys):
    # 1e38 overflows fp32's range in the style term at once: that job diverges, the other goes on
    # through the coarse-to-fine levels alone, with its own Adam state.
    common = ["steps=3", "size=64", "scales.min=32", "optimizer=adam", "eval.size=64"]
    specs = [JobSpec(tiny_cfg(*common, f"style.weight={w}"), str(tmp_path / str(i)), name=f"w{w}")
             for i, w in enumerate(["1e3", "1e38"])]
    good, bad = run_batch(specs)
    assert (good["status"], bad["status"]) == ("completed", "diverged")
    assert good["steps"] == 9 and bad["steps"] == 0 and good["levels"] == [32, 45, 64]
    alone = run(tiny_cfg(*common, "style.weight=1e3"), str(tmp_path / "alone"))
    assert good["final/loss/total"] == pytest.approx(alone["final/loss/total"], rel=1e-5)
    for i in "01":
        assert (tmp_path / i / "final.png").is_file() and (tmp_path / i / "summary.json").is_file()
    assert "w1e38: diverged: non-finite loss after step 0" in capsys.readouterr().err


def test_a_batched_sweep_writes_every_job_as_if_alone(tmp_path, wandb_env):
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", "size=32", "steps=2", "progress=false", "snapshot_every=1", "eval.size=64",
                 "style.weight=1e3,1e5", "seed=0,1", "init=noise", "hydra/launcher=batched",
                 "hydra.launcher.batch_size=4", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "batched launcher: 4 jobs in 1 batch" in r.stderr
    for job in "0123":
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["batch"] == 4
        assert (sweep / job / "final.png").is_file() and (sweep / job / ".hydra" / "overrides.yaml").is_file()
        assert len((sweep / job / "metrics.jsonl").read_text().splitlines()) == 3
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert sorted((row["style.weight"], row["seed"]) for row in rows) == [
        ("1000", "0"), ("1000", "1"), ("1e5", "0"), ("1e5", "1")]
    runs = [run for run in find_runs(str(sweep)) if run.job_type == "run"]
    assert len({run.run_id for run in runs}) == 4 and all(run.finished and run.exit_code == 0 for run in runs)
    assert len({run.group for run in runs}) == 1
    assert sorted(run.name for run in runs) == ["style.weight=1000,seed=0", "style.weight=1000,seed=1",
                                                "style.weight=1e5,seed=0", "style.weight=1e5,seed=1"]

    # Resume after a cut-off: only the jobs without a completed summary run again.
    (sweep / "2" / "summary.json").unlink()
    before = (sweep / "0" / "summary.json").read_text()
    r = run_cli(["-m", "size=32", "steps=2", "progress=false", "snapshot_every=1", "eval.size=64",
                 "style.weight=1e3,1e5", "seed=0,1", "init=noise", "hydra/launcher=batched",
                 "hydra.launcher.batch_size=4", f"hydra.sweep.dir={sweep}", "resume=true"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "batched launcher: 1 job in 1 batch" in r.stderr and "job 0: already completed, skipped" in r.stderr
    assert (sweep / "0" / "summary.json").read_text() == before
    assert json.loads((sweep / "2" / "summary.json").read_text())["status"] == "completed"


def test_ctrl_c_stops_every_job_of_the_batch_and_keeps_their_images(tmp_path, wandb_env):
    sweep = tmp_path / "s"
    cmd = [sys.executable, "-m", "nstexp", "-m", "size=32", "steps=100000", "progress=false", "snapshot_every=0",
           "seed=0,1", "init=noise", "hydra/launcher=batched", "hydra.launcher.batch_size=2",
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ}, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not all(
            (sweep / j / "metrics.jsonl").exists() and len((sweep / j / "metrics.jsonl").read_text().splitlines()) >= 2
            for j in "01"):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    for job in "01":
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["steps"] >= 1
        assert (sweep / job / "final.png").is_file()
    runs = find_runs(str(sweep))
    assert len(runs) == 3 and all(r.finished for r in runs)  # 2 jobs and the summary run


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_batch_size_is_refused_in_one_line(value):
    from nstexp import cli
    from nstexp.errors import NstexpError

    with pytest.raises(NstexpError, match=rf"^hydra.launcher.batch_size={value} must be a whole number >= 1, "
                                          r"or null \(chosen from the memory\)$"):
        cli.preflight(["seed=0,1", "hydra/launcher=batched", f"hydra.launcher.batch_size={value}"])
