"""Each path imports only what it needs: help and refusals no torch, a run no torchvision.

Checked by the modules a fresh process holds afterwards, not by time (the figures are
`nstexp bench --startup`'s)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

HEAVY = ("torch", "torchvision", "wandb", "matplotlib", "torchmetrics", "optuna")
PROBE = """
import json, sys
sys.argv = ["nstexp", *json.loads(sys.argv[1])]
from nstexp.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def _probe(args, tmp_path):
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], cwd=tmp_path, capture_output=True,
                       text=True, env={**__import__("os").environ, "PYTHONPATH": REPO})
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


@pytest.mark.parametrize("args,code", [
    (["--help"], 0),
    (["compare", "--help"], 0),
    (["evaluate", "--help"], 0),
    (["leaderboard", "--help"], 0),
    (["leaderboard", "--methods", "experiment=nope"], 2),
    (["style.weight=-1"], 2),
    (["style.loss=nope"], 2),
    (["layers.style.relu9_1=1"], 2),  # +key on a dict: layer names come from the layout
    (["-m", "seed=0,1", "backbone.arch=vgg11"], 2),
    (["laplacian.weight=1", "laplacian.pool=64"], 2),  # the sizes, read off the image files' headers
    (["compare", "no/such/sweep"], 2),
    (["-m", "hydra/sweeper=optuna", "style.weight=tag(log,interval(1,1000))", "resume=true"], 2),
])
def test_help_and_refusals_import_no_heavy_library(tmp_path, args, code):
    result, stderr = _probe(args, tmp_path)
    assert result == {"code": code, "heavy": []}, stderr
    if code == 2:
        (line,) = stderr.strip().splitlines()
        assert line.startswith("error: ")


def test_help_lists_every_group_option_and_sweep(tmp_path):
    from nstexp import composition

    r = subprocess.run([sys.executable, "-m", "nstexp", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for group in ("backbone", "experiment", "init", "layers", "loss", "optimizer"):
        assert f"  {group}: {', '.join(composition.group_options(group))}\n" in r.stdout
    assert ", ".join(composition.sweep_names()) in r.stdout
    assert "  style:\n" in r.stdout and "    loss: gram\n" in r.stdout  # the default config


def test_a_run_with_caffe_weights_needs_neither_torchvision_nor_matplotlib(tmp_path):
    probe = """
import sys
from conftest import tiny_cfg
from nstexp.run.runner import run
summary = run(tiny_cfg("steps=1"), "out")
print(summary["status"], [m for m in ("torchvision", "matplotlib", "torchmetrics") if m in sys.modules])
"""
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": f"{REPO}/tests:{REPO}"})
    assert r.stdout.strip().splitlines()[-1] == "completed []", r.stderr
