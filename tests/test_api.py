"""nstexp.stylize: where its files go, and what it returns."""

import json
import os

import nstexp
from wandb_offline import find_runs

RUN = dict(size=32, steps=1, **{"eval.enabled": False, "device": "cpu", "precision": "fp32"})


def test_stylize_without_out_dir_keeps_an_offline_wandb_run_and_returns_its_id(tmp_path, wandb_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, summary = nstexp.stylize("sample:chelsea", "sample:swirls", **RUN, **{"wandb.mode": "offline"})
    assert summary["status"] == "completed"
    assert summary["wandb_mode"] == "offline" and summary["wandb_id"]
    # The run is kept under outputs/ of the current directory, with its W&B run to upload.
    out = summary["out_dir"]
    assert os.path.dirname(out) == "outputs" and os.path.isdir(tmp_path / out)
    written = json.loads((tmp_path / out / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k != "out_dir"} == written
    (run,) = find_runs(str(tmp_path / out))
    assert run.run_id == summary["wandb_id"] and run.finished


def test_stylize_without_wandb_leaves_nothing_behind(tmp_path, wandb_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image, summary = nstexp.stylize("sample:chelsea", "sample:swirls", **RUN)
    assert image.size[0] == 32 or image.size[1] == 32
    assert summary["status"] == "completed" and summary["wandb_mode"] == "disabled"
    assert "out_dir" not in summary and "wandb_id" not in summary
    assert os.listdir(tmp_path) == []
