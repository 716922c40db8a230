"""Runs only where CUDA is available: `pytest -m gpu`."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from nstexp import cli
from nstexp.runner import run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_auto_device_uses_the_gpu_with_its_defaults(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=cli.CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["steps=5", "progress=false", "wandb.mode=disabled"])
    summary = run(cfg, str(tmp_path))
    assert summary["status"] == "completed"
    assert summary["device"].startswith("cuda")
    assert summary["size"] == 512
    assert summary["peak_memory_mb"] > 0
