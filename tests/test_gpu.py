"""Runs only where CUDA is available: `pytest -m gpu`."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import sections
from nstexp import composition
from nstexp.run.runner import run
from test_precision import RECIPES, skip_unless_offline

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_auto_device_uses_the_gpu_with_its_defaults(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=composition.CONFIG_DIR, version_base="1.3"):
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
    from nstexp.network.backbone import FeatureExtractor
    from nstexp.config import AdamConfig, LBFGSConfig
    from nstexp.optim.engine import optimize
    from nstexp.losses.objective import Objective

    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
    extractor = FeatureExtractor("vgg19", "caffe", layers, precision="bf16", channels_last=True).cuda()
    content, style = torch.rand(1, 3, 128, 128, device="cuda"), torch.rand(1, 3, 128, 128, device="cuda")
    objective = Objective(extractor, content, [style], *sections({"relu4_2": 1.0}, {k: 0.2 for k in layers[:4] + ["relu5_1"]},
                                                              1.0, 1e3, 0.0))
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


def _cfg(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=composition.CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=["progress=false", "wandb.mode=disabled", *overrides])


def test_a_batched_sweep_on_the_gpu(tmp_path):
    """Each job of a batch ends where it ends when run alone, with its own style weight."""
    from nstexp.run.job import JobSpec
    from nstexp.run.runner import run_batch

    # fp32 and few steps: the batch's convolution algorithms differ from a lone job's, and
    # L-BFGS amplifies the difference in the last bits over many steps.
    cfgs = [_cfg("steps=5", "size=256", "precision=fp32", "eval.enabled=false", f"style.weight={w}")
            for w in ("1e5", "1e6")]
    summaries = run_batch([JobSpec(c, str(tmp_path / str(i))) for i, c in enumerate(cfgs)])
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    alone = [run(c, str(tmp_path / f"alone{i}")) for i, c in enumerate(cfgs)]
    for b in range(2):
        for key in ("final/loss/style", "final/loss/total"):
            mine, own, other = summaries[b][key], alone[b][key], alone[1 - b][key]
            assert mine == pytest.approx(own, rel=0.02), (b, key)
            assert abs(mine - own) < abs(mine - other), (b, key)


@pytest.mark.parametrize("extra", [[], ["backbone.padding=reflect", "backbone.pooling=avg_scaled", "loss=sliced"]],
                         ids=["default", "reflect_avg_scaled_sliced"])
def test_deterministic_reruns_are_bit_identical(tmp_path, extra):
    runs = [run(_cfg("deterministic=true", "steps=10", "size=256", "eval.enabled=false", *extra), str(tmp_path / d))
            for d in "ab"]
    assert all(s["status"] == "completed" and s["deterministic"] is True for s in runs)
    assert (tmp_path / "a" / "final.png").read_bytes() == (tmp_path / "b" / "final.png").read_bytes()
    assert runs[0]["final/loss/total"] == runs[1]["final/loss/total"]
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    run(_cfg("steps=0", "size=64", "eval.enabled=false"), str(tmp_path / "c"))  # deterministic=false undoes it all
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()


def test_matrix_products_stay_fp32_after_configure():
    """TF32 in the convolutions only: a Gram matrix on the GPU is as exact as fp32 (TF32 would
    be off by about 1e-3)."""
    from nstexp.network import hardware
    from nstexp import losses

    hardware.configure(torch.device("cuda"))
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    f = torch.rand(2, 256, 32, 32, generator=torch.Generator().manual_seed(0))
    gram = losses.gram_matrix(f.cuda()).cpu().double()
    exact = losses.gram_matrix(f.double())
    assert ((gram - exact).abs().max() / exact.abs().max()).item() < 1e-5


def test_fp16_gradient_follows_fp32_on_the_gpu():
    """The CPU test's check (tests/test_precision.py) on cuDNN's fp16 kernels."""
    from nstexp import images
    from nstexp.network.backbone import FeatureExtractor
    from nstexp.losses.objective import Objective

    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
    content, style = (images.to_tensor(images.resize(images.load_image(f"sample:{name}"), (256, 192)), "cuda")
                      for name in ("chelsea", "swirls"))
    torch.manual_seed(0)
    start = (content + 0.1 * torch.randn(content.shape, device="cuda")).clamp(0, 1)
    grads, norm = {}, {}
    for name, network in [("fp32", {}), ("fp16", {"precision": "fp16"}),
                          ("fp16_ckpt_cl", {"precision": "fp16", "checkpoint": True, "channels_last": True})]:
        extractor = FeatureExtractor("vgg19", "caffe", layers, **network).cuda()
        objective = Objective(extractor, content, [style], *sections({"relu4_2": 1.0}, {k: 0.2 for k in layers if k != "relu4_2"},
                                                                  3e4, 3e5, 0.0))
        x = start.clone().requires_grad_(True)
        total = objective(x).total
        norm.setdefault("value", total.detach())  # L-BFGS's normalized loss, as in the engine
        (total / norm["value"]).sum().backward()
        grads[name] = x.grad.double().flatten()
    ref = grads["fp32"]
    for name in ("fp16", "fp16_ckpt_cl"):
        g = grads[name]
        assert torch.isfinite(g).all(), name
        assert (g @ ref / (g.norm() * ref.norm())).item() > 0.99, name
        assert (g == 0).double().mean().item() < 0.01, name


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_runs_in_bf16_on_the_gpu(tmp_path, name):
    skip_unless_offline(name)
    summary = run(_cfg(f"experiment={name}", "precision=bf16", "size=64", "steps=3", "eval.enabled=false",
                       "scales.min=null", "scales.first_steps=null"), str(tmp_path))
    assert summary["status"] == "completed" and summary["precision"] == "bf16" and summary["device"].startswith("cuda")
    finals = [v for k, v in summary.items() if k.startswith("final/loss/")]
    assert finals and all(math.isfinite(v) for v in finals)


def test_bench_on_the_gpu(tmp_path):
    from nstexp.bench import speed

    speed.main(["--sizes", "512", "--steps", "20", "--optimizers", "lbfgs", "--no-peer", "--sweep-jobs", "4",
                "--sweep-steps", "5", "--out", str(tmp_path)])
    report = __import__("json").loads((tmp_path / "bench.json").read_text())
    assert report["machine"]["gpu"] and all(r["time_per_eval_s"] > 0 for r in report["rows"])
