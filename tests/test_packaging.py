"""The wheel carries the configs, sweeps and samples, and the CLI finds them when installed from it."""

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


# A wheel built, installed and run from another directory: a long end-to-end run.
@pytest.mark.slow
def test_wheel_ships_configs_and_runs_from_another_directory(tmp_path, wandb_env):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), REPO],
        check=True, capture_output=True, cwd=tmp_path,
    )
    (wheel,) = dist.glob("nstexp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("nstexp/conf/config.yaml", "nstexp/conf/layers/paper.yaml", "nstexp/conf/hydra/launcher/slurm.yaml",
                 "nstexp/sweeps/seeds.yaml", "nstexp/sweeps/wandb/seeds.yaml", "nstexp/samples/chelsea.png",
                 "nstexp/samples/swirls.png"):
        assert path in names, path

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}  # the wheel's copy shadows the development one
    probe = subprocess.run([sys.executable, "-c", "import nstexp.config as c; print(c.CONFIG_DIR); print(c.SWEEPS_DIR)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.split() == [str(target / "nstexp" / "conf"), str(target / "nstexp" / "sweeps")]
    r = subprocess.run([sys.executable, "-m", "nstexp", "size=32", "steps=1", "progress=false",
                        "wandb.mode=disabled", "eval.enabled=false", "eval.size=64", "layers=pytorch_blog",
                        "hydra.run.dir=out"],
                       cwd=elsewhere, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "out" / "final.png").is_file()
