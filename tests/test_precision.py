"""Every precision `precision=auto` can pick, on every machine.

bf16 computes on any CPU (slowly where it is not native), so every backbone option, style loss,
control and recipe runs a few steps in bf16 here. fp16 is CUDA-only for runs, but the extractor
builds in fp16 on a CPU too: its loss-scaled gradient is checked against fp32's here. And the
process-wide CUDA switches `hardware.configure` sets (TF32, cuDNN, determinism)."""

import functools
import json
import math
import os

import pytest
import torch

from conftest import run_cli, sections, tiny_cfg
from wandb_offline import find_runs
from nstexp.network import backbone, hardware, loss_scaling
from nstexp import composition, images
from nstexp.network.backbone import FeatureExtractor
from nstexp.errors import NstexpError
from nstexp.losses.objective import Objective
from nstexp.run.runner import run

# 24 px: bf16 convolutions are emulated, slowly, on CPUs without bf16 instructions, and their
# cost grows with the pixels; relu5_1 keeps one position, the fewest a loss must take.
BF16 = ["precision=bf16", "eval.enabled=false", "size=24"]
# Recipes whose losses need more positions at their deepest layer (CNNMRF's 3x3 patches).
RECIPE_SIZE = {"cnnmrf": 32}

# Every backbone option, style loss and control at least once here or in a recipe below (the
# recipes bring avg_scaled pooling, the mean and cosine normalizations, w2, Adam, iterate
# averaging): few runs, as bf16 is slow on a CPU without it.
CASES = {
    # reflect needs 2 px per side before the last convolutions: 48 px.
    "avg_reflect_luminance": ["backbone.pooling=avg", "backbone.padding=reflect", "size=48",
                              "color.preserve=luminance"],
    "replicate_channels_last_checkpoint_histogram": ["backbone.padding=replicate", "channels_last=true",
                                                     "checkpoint=true", "color.preserve=histogram"],
    "vgg16_random_levels_swap": ["backbone=vgg16", "backbone.weights=random", "size=48", "scales.min=32",
                                 "scales.factor=1.4142135623730951", "color.preserve=swap"],
    "vgg19_random_avg_scaled_blend": ["backbone.weights=random", "backbone.pooling=avg_scaled",
                                      "channels_last=true", "style.blend_images=[sample:mosaic]"],
    "sliced_balance": ["loss=sliced", "init=noise", "style.balance=content"],
    "masks": ["content.image=sample:coffee", "style.blend_images=[sample:mosaic]",
              "style.masks=[sample:coffee_saucer,sample:coffee_table]", "content.mask=sample:coffee_saucer"],
    "scale_control": ["style.scale_control.fine_image=sample:mosaic", "style.scale_control.steps=2"],
}


OFFLINE_WEIGHTS = ("caffe", "caffe_normalized", "random")


@functools.lru_cache(maxsize=None)
def _offline(name: str) -> bool:
    """Whether recipe `name`'s weights ship with the package (seed000's VGG-16 ImageNet weights do not)."""
    return tiny_cfg(f"experiment={name}").backbone.weights in OFFLINE_WEIGHTS


def _recipes_offline() -> list[str]:
    return [n for n in RECIPES if _offline(n)]


# Every shipped recipe; the test skips one whose weights are not offline (composed when it runs,
# not while the suite is collected).
RECIPES = sorted(f[:-5] for f in os.listdir(os.path.join(composition.CONFIG_DIR, "experiment")) if f.endswith(".yaml"))


def skip_unless_offline(name: str) -> None:
    if not _offline(name):
        pytest.skip(f"{name}'s weights are downloaded on first use: not offline")


def _assert_bf16_run(summary, steps=2):
    assert summary["status"] == "completed" and summary["precision"] == "bf16"
    assert summary["steps"] == steps * len(summary.get("levels", [0]))  # `steps` per coarse-to-fine level
    finals = {k: v for k, v in summary.items() if k.startswith("final/loss/")}
    assert finals and all(math.isfinite(v) for v in finals.values()), finals
    assert summary["final/loss/total"] > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_option_runs_in_bf16(tmp_path, case):
    _assert_bf16_run(run(tiny_cfg(*BF16, *CASES[case]), str(tmp_path)))


def test_the_offline_recipes_are_the_ones_that_ship():
    offline = _recipes_offline()
    # Every recipe but seed000's, whose VGG-16 ImageNet weights must be downloaded.
    assert set(offline) == set(RECIPES) - {"seed000_keras_vgg16"} and "gatys2016" in offline and "cmd" in offline


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_runs_in_bf16(tmp_path, name):
    skip_unless_offline(name)
    # One level (a case above runs two) and one step (the cases run two: the optimizers' state
    # is fp32 in every precision): crowsonkb's coarse-to-fine w2 would cost most of the file.
    size = [f"size={RECIPE_SIZE[name]}"] if name in RECIPE_SIZE else []
    overrides = [f"experiment={name}", *BF16, *size, "steps=1", "scales.min=null", "scales.first_steps=null"]
    _assert_bf16_run(run(tiny_cfg(*overrides), str(tmp_path)), steps=1)


def test_average_pooling_is_calibrated_in_fp32_whatever_the_precision():
    """The factors are the weights' own (measured before the convolutions change type), so
    bf16 and fp16 scale their poolings exactly as fp32 does; the features stay close."""
    layers = ["relu3_1", "relu5_1"]
    nets = {p: FeatureExtractor("vgg19", "caffe", layers, pooling="avg_scaled", precision=p)
            for p in ("fp32", "bf16", "fp16")}
    factors = {p: [m.scale.item() for m in net.features if isinstance(m, backbone.ScaledAvgPool2d)]
               for p, net in nets.items()}
    assert len(factors["fp32"]) == 4 and factors["bf16"] == factors["fp32"] == factors["fp16"]
    x = images.to_tensor(images.resize(images.load_image("sample:mosaic"), (48, 48)))
    with torch.no_grad():
        ref = nets["fp32"](x)
        for p in ("bf16", "fp16"):
            out = nets[p](x)
            for k in layers:
                assert out[k].dtype == torch.float32
                rel = (out[k] - ref[k]).norm() / ref[k].norm()
                assert rel < (0.05 if p == "bf16" else 0.01), (p, k, rel.item())


# fp16: a real objective (content + style on the Caffe VGG-19 at 64 px, the default config's
# weights) differentiated as L-BFGS does, divided by its first value: feature gradients of
# 1e-17 to 1e-6, mostly below fp16's smallest subnormal without loss scaling.
LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
CONTENT_WEIGHT, STYLE_WEIGHT = 3e4, 3e5  # conf/loss/gatys.yaml, the default


def _photo(name, size=64):
    return images.to_tensor(images.resize(images.load_image(f"sample:{name}"), (size, size * 3 // 4)))


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    content, style = _photo("chelsea"), _photo("swirls")
    start = (content + 0.1 * torch.randn(content.shape)).clamp(0, 1)  # every term non-zero
    return content, style, start


def _gradient(problem, content_weight=CONTENT_WEIGHT, normalizer=None, **network):
    """The input gradient of the normalized loss; the normalizer is the loss itself unless given."""
    content, style, start = problem
    extractor = FeatureExtractor("vgg19", "caffe", LAYERS, **network)
    objective = Objective(extractor, content, [style], *sections({"relu4_2": 1.0}, {k: 0.2 for k in LAYERS if k != "relu4_2"},
                                                              content_weight, STYLE_WEIGHT, 0.0))
    x = start.clone().requires_grad_(True)
    total = objective(x).total
    (total / (total.detach() if normalizer is None else normalizer)).sum().backward()
    return x.grad, total.detach()


@pytest.fixture(scope="module")
def fp32(problem):
    grad, total = _gradient(problem)
    no_content, _ = _gradient(problem, content_weight=0.0, normalizer=total)
    return grad, total, grad - no_content


def _cosine(a, b):
    # Not F.cosine_similarity: its eps (1e-8) under the product of the norms swamps tiny gradients.
    a, b = a.flatten().double(), b.flatten().double()
    return (a @ b / (a.norm() * b.norm())).item()


@pytest.mark.parametrize("network", [{}, {"checkpoint": True, "channels_last": True}], ids=["plain", "ckpt_cl"])
def test_fp16_gradient_follows_fp32(problem, fp32, network):
    ref, total, content_part = fp32
    grad, low_total = _gradient(problem, normalizer=total, precision="fp16", **network)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    assert low_total.item() == pytest.approx(total.item(), rel=0.01)
    assert _cosine(grad, ref) > 0.99
    assert (grad == 0).float().mean().item() < 0.01  # fp32 has none
    if not network:
        # The content term's share of the gradient survives the fp16 backward pass.
        no_content, _ = _gradient(problem, content_weight=0.0, normalizer=total, precision="fp16")
        assert _cosine(grad - no_content, content_part) > 0.99


def test_fp16_scaling_keeps_gradients_down_to_2_to_the_minus_34_of_the_largest():
    """The largest feature gradient goes to 2**10 (TARGET_EXPONENT), and fp16's smallest subnormal
    is 2**-24: 2**-32 times the largest (2**-22 in fp16) comes back exactly, 2**-36 times it (2**-26,
    under half the smallest subnormal) and 1e-11 times it (1.0e-8 < 2**-24 = 5.96e-8) flush to zero."""
    assert loss_scaling.TARGET_EXPONENT == 10

    def run(x, wanted):  # an fp16 "network": the gradient crosses it in fp16
        return {"f": (x.half() * 1).float()}

    x = torch.zeros(1, 4, requires_grad=True)
    (f,) = loss_scaling.features(run, x, ["f"], None).values()
    upstream = torch.tensor([[1.0, 2.0**-32, 2.0**-36, 1e-11]])
    (f * upstream).sum().backward()
    assert x.grad.tolist() == [[1.0, 2.0**-32, 0.0, 0.0]]


def test_fp16_overflow_halves_the_scale_until_the_gradient_is_finite(monkeypatch):
    """Scaled to 2**16, beyond fp16's largest value (65504): the first backward pass overflows."""
    extractor = FeatureExtractor("vgg19", "caffe", ["relu1_1", "relu2_1"], precision="fp16")
    reference = FeatureExtractor("vgg19", "caffe", ["relu1_1", "relu2_1"])
    x = _photo("mosaic", 32)
    weights = {k: torch.rand(f.shape, generator=torch.Generator().manual_seed(1)) * 1e-9
               for k, f in reference(x).items()}

    def gradient(net):
        image = x.clone().requires_grad_(True)
        sum((f * weights[k]).sum() for k, f in net(image).items()).backward()
        return image.grad

    ref = gradient(reference)
    monkeypatch.setattr(loss_scaling, "TARGET_EXPONENT", 16)
    monkeypatch.setattr(loss_scaling, "MAX_HALVINGS", 0)
    assert not torch.isfinite(gradient(extractor)).all()  # without halving
    monkeypatch.setattr(loss_scaling, "MAX_HALVINGS", 8)
    grad = gradient(extractor)
    assert torch.isfinite(grad).all() and _cosine(grad, ref) > 0.99


def test_fp16_scales_each_sample_of_a_batch_for_itself():
    """Two jobs of a batch whose gradients differ by 1e12 (their loss weights): the small one
    keeps its gradient too (one scale for both would put it below fp16's subnormals)."""
    layers = ["relu1_1", "relu3_1"]
    extractor = FeatureExtractor("vgg19", "caffe", layers, precision="fp16")
    reference = FeatureExtractor("vgg19", "caffe", layers)
    x = torch.cat([_photo("mosaic", 32), _photo("swirls", 32)])
    gen = torch.Generator().manual_seed(2)
    weights = {k: torch.rand(f.shape, generator=gen) * torch.tensor([1e-4, 1e-16]).view(2, 1, 1, 1)
               for k, f in reference(x).items()}

    def gradient(net):
        image = x.clone().requires_grad_(True)
        sum((f * weights[k]).sum() for k, f in net(image).items()).backward()
        return image.grad

    ref, grad = gradient(reference), gradient(extractor)
    for b in range(2):
        assert _cosine(grad[b], ref[b]) > 0.99, b


def test_fp16_without_a_gradient_builds_no_graph():
    extractor = FeatureExtractor("vgg19", "caffe", ["relu1_1"], precision="fp16")
    out = extractor(_photo("mosaic", 32))["relu1_1"]
    assert out.dtype == torch.float32 and out.grad_fn is None


# The process-wide switches. They outlive a test: every one is put back.
SWITCHES = {
    "cudnn.benchmark": (torch.backends.cudnn, "benchmark"),
    "cudnn.deterministic": (torch.backends.cudnn, "deterministic"),
    "cudnn.allow_tf32": (torch.backends.cudnn, "allow_tf32"),
    "matmul.allow_tf32": (torch.backends.cuda.matmul, "allow_tf32"),
}


@pytest.fixture
def switches(monkeypatch):
    saved = {k: getattr(obj, attr) for k, (obj, attr) in SWITCHES.items()}
    precision, algorithms = torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield lambda: {k: getattr(obj, attr) for k, (obj, attr) in SWITCHES.items()}
    for k, (obj, attr) in SWITCHES.items():
        setattr(obj, attr, saved[k])
    torch.set_float32_matmul_precision(precision)
    torch.use_deterministic_algorithms(algorithms)


def test_cuda_uses_tf32_in_the_convolutions_only(switches):
    torch.backends.cuda.matmul.allow_tf32 = True  # as a previous job or the user may have left it
    hardware.configure(torch.device("cuda"))
    assert switches() == {"cudnn.benchmark": True, "cudnn.deterministic": False, "cudnn.allow_tf32": True,
                          "matmul.allow_tf32": False}
    assert torch.get_float32_matmul_precision() == "highest"
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_deterministic_cuda_switches_and_their_undoing(switches):
    summary = {}
    hardware.configure(torch.device("cuda"), deterministic=True, record=[summary])
    assert switches() == {"cudnn.benchmark": False, "cudnn.deterministic": True, "cudnn.allow_tf32": True,
                          "matmul.allow_tf32": False}
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert summary == {"deterministic": True}
    # The next job of the process, deterministic=false: nothing of the previous one remains.
    hardware.configure(torch.device("cuda"), deterministic=False)
    assert switches()["cudnn.benchmark"] and not switches()["cudnn.deterministic"]
    assert not torch.are_deterministic_algorithms_enabled()


def test_an_existing_deterministic_cublas_setting_is_kept(switches, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    hardware.configure(torch.device("cuda"), deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_a_deterministic_cpu_run_repeats_and_records_it(tmp_path, switches, wandb_env):
    runs = [run(tiny_cfg("deterministic=true", "loss=sliced", "init=noise", "eval.enabled=false", "size=32",
                         f"wandb.mode={mode}"), str(tmp_path / d)) for d, mode in (("a", "offline"), ("b", "disabled"))]
    assert all(s["status"] == "completed" and s["deterministic"] is True for s in runs)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["deterministic"] is True
    (logged,) = find_runs(str(tmp_path / "a"))
    assert logged.config["deterministic"] is True and logged.summary["deterministic"] is True
    assert (tmp_path / "a" / "final.png").read_bytes() == (tmp_path / "b" / "final.png").read_bytes()
    plain = run(tiny_cfg("eval.enabled=false", "size=32", "steps=0"), str(tmp_path / "c"))
    assert plain["deterministic"] is False and not torch.are_deterministic_algorithms_enabled()


def test_deterministic_composes_and_a_bad_value_fails_in_one_line(tmp_path):
    assert tiny_cfg("deterministic=true").deterministic is True
    assert tiny_cfg().deterministic is False
    with pytest.raises(NstexpError) as info:
        composition.preflight(["deterministic=abc"])
    assert str(info.value) == "deterministic=abc: Value 'abc' is not a valid bool (type str)"
    r = run_cli(["deterministic=abc", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert [x for x in r.stderr.splitlines() if x.startswith("error:")] == [
        "error: deterministic=abc: Value 'abc' is not a valid bool (type str)"]
