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
    # bf16 tensor cores from Ampere on; losses read every 10 steps.
    major = torch.cuda.get_device_capability()[0]
    assert summary["precision"] == ("bf16" if major >= 8 else "fp32")


def test_the_loop_never_waits_for_the_gpu_between_reads():
    from nstexp.backbone import FeatureExtractor
    from nstexp.config import AdamConfig, LBFGSConfig
    from nstexp.engine import optimize
    from nstexp.objective import Objective

    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
    extractor = FeatureExtractor("vgg19", "caffe", layers, precision="bf16", channels_last=True).cuda()
    content, style = torch.rand(1, 3, 128, 128, device="cuda"), torch.rand(1, 3, 128, 128, device="cuda")
    objective = Objective(extractor, content, [style], {"relu4_2": 1.0}, {k: 0.2 for k in layers[:4] + ["relu5_1"]},
                          1.0, 1e3, 0.0)
    for cfg in (LBFGSConfig(), AdamConfig()):
        reads = []

        def on_step(ev, reads=reads):
            reads.append(ev.step)

        optimize(content, objective, cfg, steps=1)  # warm-up: cuDNN's search syncs
        torch.cuda.set_sync_debug_mode("warn")
        try:
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                optimize(content, objective, cfg, steps=20, on_step=on_step, check_every=10)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        # Synchronisations: the two reads (steps 10 and 20) and the final measurement's.
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) <= 6, [str(w.message) for w in syncs]
        assert reads == list(range(21))


def test_a_batched_sweep_on_the_gpu(tmp_path):
    from nstexp.job import JobSpec
    from nstexp.runner import run_batch

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=cli.CONFIG_DIR, version_base="1.3"):
        cfgs = [compose(config_name="config", overrides=["steps=20", "size=256", "progress=false",
                                                           "wandb.mode=disabled", f"style.weight={w}"])
                for w in ("1e5", "1e6")]
    summaries = run_batch([JobSpec(c, str(tmp_path / str(i))) for i, c in enumerate(cfgs)])
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert summaries[0]["final/loss/style"] > summaries[1]["final/loss/style"] / 10  # weights differ


def test_bench_on_the_gpu(tmp_path):
    from nstexp import bench

    bench.main(["--sizes", "512", "--steps", "20", "--optimizers", "lbfgs", "--no-peer", "--sweep-jobs", "4",
                "--sweep-steps", "5", "--out", str(tmp_path)])
    report = __import__("json").loads((tmp_path / "bench.json").read_text())
    assert report["machine"]["gpu"] and all(r["time_per_eval_s"] > 0 for r in report["rows"])
