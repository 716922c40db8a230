"""What the optimizer moves (param=pixels | laplacian_pyramid) and RMSprop (optimizer=rmsprop): the
pyramid against a numpy reference and hand-computed cases, its gradients and clamp, RMSprop's steps
by hand, batches, levels, the command line and its refusals."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, refused_in_one_line, run_cli, tiny_cfg
from nstexp.config import AdamConfig, LBFGSConfig, RMSpropConfig
from nstexp.optim import pyramid
from nstexp.optim.engine import optimize
from nstexp.optim.parameterization import LaplacianPyramid, Pixels, build
from test_engine import _quadratic, _quadratic_per_sample
from test_runner import _rows, run


def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in): 1-D linear interpolation at the sample positions of align_corners=False,
    (i + 1/2) n_in / n_out - 1/2, held at the edges."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        lo = int(np.floor(src))
        hi = min(lo + 1, n_in - 1)
        m[i, lo] += 1 - (src - lo)
        m[i, hi] += src - lo
    return m


def _numpy_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Bands g_k - U g_{k+1} and the residual, each resize a product of 1-D matrices (H then W)."""
    def resize(x, h, w):
        return np.einsum("ih,chw,jw->cij", _bilinear_matrix(h, x.shape[1]), x, _bilinear_matrix(w, x.shape[2]))

    out, g = [], image
    for _ in range(levels):
        h, w = max(g.shape[1] // 2, 1), max(g.shape[2] // 2, 1)
        smaller = resize(g, h, w)
        out.append(g - resize(smaller, *g.shape[1:]))
        g = smaller
    return out + [g]


@pytest.mark.parametrize("hw,levels", [((16, 16), 3), ((37, 50), 5), ((9, 4), 5)])
def test_the_bands_are_the_numpy_references_and_rebuild_the_image(hw, levels):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, *hw, generator=g)
    space = LaplacianPyramid(levels)
    variable = space.encode(image)
    bands = space.bands(variable, hw)
    assert [b.shape[-2:] for b in bands] == [torch.Size(s) for s in space.sizes(hw)]
    assert variable.shape == (2, sum(3 * h * w for h, w in space.sizes(hw)))
    for b in range(2):
        for ours, ref in zip(bands, _numpy_pyramid(image[b].double().numpy(), levels)):
            assert np.allclose(ours[b].numpy(), ref, atol=1e-6)
    # The reconstruction is the image before any step, to fp32 rounding.
    assert torch.allclose(space.decode(variable, hw), image, rtol=0, atol=1e-6)


def test_a_hand_computed_pyramid():
    # 2 x 2 -> 1 x 1: the residual is the mean, the band what is left.
    image = torch.tensor([[0.1, 0.3], [0.5, 0.9]]).expand(1, 3, 2, 2)
    space = LaplacianPyramid(1)
    band, residual = space.bands(space.encode(image), (2, 2))
    assert torch.allclose(residual, torch.tensor(0.45).expand(1, 3, 1, 1))
    assert torch.allclose(band, image - 0.45, atol=1e-7)
    # 4 px -> 2 (means of pairs) -> 4 again: the ends held, 3/4 and 1/4 between.
    row = torch.tensor([0.0, 0.2, 0.6, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    band, residual = LaplacianPyramid(1).bands(LaplacianPyramid(1).encode(row), (1, 4))
    assert torch.allclose(residual[0, 0, 0], torch.tensor([0.1, 0.8]))
    up = torch.tensor([0.1, 0.75 * 0.1 + 0.25 * 0.8, 0.25 * 0.1 + 0.75 * 0.8, 0.8])
    assert torch.allclose(band[0, 0, 0], torch.tensor([0.0, 0.2, 0.6, 1.0]) - up, atol=1e-7)


def test_a_flat_image_is_all_residual():
    space = LaplacianPyramid(5)
    bands = space.bands(space.encode(torch.full((1, 3, 40, 24), 0.3)), (40, 24))
    assert all(b.abs().max() < 1e-7 for b in bands[:-1])
    assert bands[-1].shape == (1, 3, 1, 1) and torch.allclose(bands[-1], torch.tensor(0.3))


def test_every_band_gets_a_gradient_and_band_0_the_image_gradient():
    space, hw = LaplacianPyramid(4), (20, 28)
    variable = space.encode(torch.rand(1, 3, *hw)).requires_grad_(True)
    weights = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1))
    (weights * space.decode(variable, hw)).sum().backward()
    grads = space.bands(variable.grad, hw)
    assert all(g.abs().sum() > 0 for g in grads)
    assert torch.allclose(grads[0], weights)  # the image is band 0 plus the rest upsampled


def test_clamping_moves_band_0_only_and_puts_the_image_in_range():
    space, hw = LaplacianPyramid(3), (16, 12)
    variable = space.encode(torch.rand(2, 3, *hw) * 1.6 - 0.3)  # outside [0, 1] here and there
    before = [b.clone() for b in space.bands(variable, hw)]
    space.clamp_(variable, hw)
    image = space.decode(variable, hw)
    assert image.min() > -1e-6 and image.max() < 1 + 1e-6
    assert all(torch.equal(a, b) for a, b in zip(space.bands(variable, hw)[1:], before[1:]))
    pixels = torch.rand(1, 3, 2, 2) * 3 - 1
    Pixels().clamp_(pixels, (2, 2))
    assert pixels.min() >= 0 and pixels.max() <= 1


def test_build_names_the_parameterizations():
    assert isinstance(build("pixels"), Pixels) and build("laplacian_pyramid", 3).levels == 3
    with pytest.raises(ValueError, match="allowed: pixels, laplacian_pyramid"):
        build("wavelets")


def test_rmsprop_steps_by_hand():
    # Loss sum (x - 0.5)^2 from x = 0: g = 2 (x - 0.5); torch's RMSprop, no momentum, not centred:
    # v = alpha v + (1 - alpha) g^2, x -= lr g / (sqrt(v) + eps).
    lr, alpha, eps = 0.01, 0.9, 1e-8
    events = []
    optimize(torch.zeros(1, 3, 2, 2), _quadratic(0.5, 10.0), RMSpropConfig(lr=lr, alpha=alpha, eps=eps), steps=2,
             on_step=events.append)
    x, v = 0.0, 0.0
    for event in events[1:]:
        g = 2 * (x - 0.5)
        v = alpha * v + (1 - alpha) * g * g
        x -= lr * g / (v ** 0.5 + eps)
        assert torch.allclose(event.image, torch.tensor(x), rtol=1e-6, atol=0)
    assert events[1].image[0, 0, 0, 0].item() == pytest.approx(lr / (1 - alpha) ** 0.5, rel=1e-6)  # about 3.2 lr


@pytest.mark.parametrize("param", ["pixels", "laplacian_pyramid"])
def test_rmsprop_continues_where_it_stopped(param):
    space = build(param, 2)
    image, objective, cfg = torch.rand(1, 3, 4, 4) * 0.2, _quadratic(0.7, 10.0), RMSpropConfig(lr=0.02)
    whole = optimize(image, objective, cfg, steps=5, param=space)
    first = optimize(image, objective, cfg, steps=3, param=space)
    second = optimize(first.image, objective, cfg, steps=2, optimizer_state=first.optimizer_state, param=space)
    assert torch.allclose(second.image, whole.image, atol=1e-6)
    if param == "pixels":  # resized for the next level as Adam's second moment is
        (state,) = pyramid.resize_state(first.optimizer_state, (8, 8))["state"].values()
        assert state["square_avg"].shape == (1, 3, 8, 8) and state["square_avg"].min() >= 0


@pytest.mark.parametrize("cfg", [AdamConfig(lr=0.05), RMSpropConfig(lr=0.01), LBFGSConfig(),
                                 LBFGSConfig(line_search="strong_wolfe", normalize_loss=False)],
                         ids=["adam", "rmsprop", "lbfgs", "lbfgs_line_search"])
@pytest.mark.parametrize("clamp", ["every_step", "at_end"])
def test_every_optimizer_works_on_the_pyramid(cfg, clamp):
    image = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(2))
    events = []
    result = optimize(image, _quadratic(0.9, 10.0), cfg, steps=6, clamp=clamp, on_step=events.append,
                      param=LaplacianPyramid(3))
    assert torch.allclose(events[0].image, image, atol=1e-6)  # step 0: the initial image itself
    assert result.status == "completed" and result.image.min() >= 0 and result.image.max() <= 1
    assert events[-1].terms.total.item() < 0.5 * events[0].terms.total.item()
    if clamp == "every_step":
        assert all(e.image.min() > -1e-6 and e.image.max() < 1 + 1e-6 for e in events)


@pytest.mark.parametrize("kind", ["rmsprop", "lbfgs"])
def test_samples_of_a_batch_on_the_pyramid_follow_their_own_runs(kind):
    targets = [0.8, 0.3]
    objective = _quadratic_per_sample(targets, [10.0, 10.0])
    starts = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    cfgs = ([RMSpropConfig(lr=0.01), RMSpropConfig(lr=0.03, alpha=0.9)] if kind == "rmsprop"
            else [LBFGSConfig(lr=1.0), LBFGSConfig(lr=0.5)])
    space = LaplacianPyramid(2)
    together = optimize(starts, objective, cfgs, steps=4, param=space)
    for b in range(2):
        alone = optimize(starts[b:b + 1], _quadratic_per_sample(targets[b:b + 1], [10.0]), cfgs[b], steps=4,
                         param=space)
        assert torch.allclose(together.image[b], alone.image[0], atol=1e-6)


def test_iterate_averaging_averages_the_images():
    image, space = torch.zeros(1, 3, 4, 4), LaplacianPyramid(2)
    plain, averaged = [], []
    optimize(image, _quadratic(0.8, 10.0), RMSpropConfig(lr=0.05), steps=4, on_step=plain.append, param=space)
    optimize(image, _quadratic(0.8, 10.0), RMSpropConfig(lr=0.05, ema=0.5), steps=4, on_step=averaged.append,
             param=space)
    for k, event in enumerate(averaged):
        weights = [0.5 * 0.5 ** (k - i) for i in range(k + 1)]
        expected = sum(w * e.image for w, e in zip(weights, plain)) / sum(weights)
        assert torch.allclose(event.image, expected, atol=1e-6), k


def test_the_command_runs_rmsprop_on_the_pyramid(tmp_path, wandb_env):
    out = tmp_path / "run"
    r = run_cli(["optimizer=rmsprop", "param=laplacian_pyramid", *TINY, "wandb.mode=disabled", "precision=fp32",
                 f"hydra.run.dir={out}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert (out / "final.png").is_file() and (out / "snapshots" / "step_000002.png").is_file()
    rows = _rows(out)
    assert [row["step"] for row in rows] == [0, 1, 2] and rows[-1]["loss/total"] < rows[0]["loss/total"]
    config = OmegaConf.load(out / ".hydra" / "config.yaml")
    assert config.param == "laplacian_pyramid" and config.param_levels == 5 and config.optimizer.alpha == 0.99
    # Step 0 is the content image itself, as on the pixels (the pyramid rebuilds it to rounding).
    pixels = run(tiny_cfg("optimizer=rmsprop", "steps=0"), str(tmp_path / "pixels"))
    assert rows[0]["loss/total"] == pytest.approx(pixels["final/loss/total"], rel=1e-4)


@pytest.mark.parametrize("optimizer,clamp", [("rmsprop", "at_end"), ("adam", "every_step"), ("lbfgs", "every_step")])
def test_a_coarse_to_fine_run_on_the_pyramid(tmp_path, optimizer, clamp):
    summary = run(tiny_cfg("size=64", "steps=3", "scales.min=32", f"optimizer={optimizer}", "param=laplacian_pyramid",
                           "param_levels=3", f"clamp={clamp}"), str(tmp_path))
    assert summary["status"] == "completed" and summary["levels"] == [32, 64] and summary["steps"] == 6
    rows = _rows(tmp_path)
    assert [r["level"] for r in rows] == [0] * 4 + [1] * 3
    for level in (0, 1):  # each level's pyramid, rebuilt from the upsampled image, makes progress
        losses = [r["loss/total"] for r in rows if r["level"] == level]
        assert losses[-1] < losses[0], (level, losses)


def test_jobs_on_pixels_and_on_a_pyramid_go_into_separate_batches():
    from nstexp.sweep import batching

    cfgs = [tiny_cfg("optimizer=rmsprop", f"optimizer.lr={lr}", *extra) for lr in (0.01, 0.02)
            for extra in ([], ["param=laplacian_pyramid"])]
    assert all(batching.batchable_optimizer(c) for c in cfgs)
    assert batching.group(cfgs, 4) == [[0, 2], [1, 3]]  # each lr-pair shares a batch, per param
    assert batching.difference(cfgs[0], cfgs[1]) == ["param"]


@pytest.mark.parametrize("overrides,needle", [
    (["param=wavelets"], "param='wavelets' is not allowed (allowed: pixels, laplacian_pyramid)"),
    (["param=laplacian_pyramid", "param_levels=0"], "param_levels (the Laplacian pyramid's bands)=0 must be >= 1"),
    (["optimizer=rmsprop", "optimizer.alpha=1"], "optimizer.alpha=1.0 must be in [0, 1)"),
    (["optimizer=rmsprop", "optimizer.eps=0"], "optimizer.eps=0.0 must be > 0"),
    (["optimizer=rmsprop", "optimizer.ema=1"], "optimizer.ema=1.0 must be in [0, 1)"),
])
def test_a_bad_setting_is_refused_in_one_line(tmp_path, overrides, needle):
    r = run_cli([*overrides, *TINY, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    line = refused_in_one_line(r)
    assert needle in line, line
