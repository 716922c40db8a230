"""NNST's final pass (style.loss=nnst_split, scales.final_pass): the per-layer centred-cosine
nearest distances against scipy's, the sub-grid rule, and the pass in a run."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY, refused_in_one_line, run_cli, tiny_cfg
from nstexp.config import StyleConfig
from nstexp.loss_options import NNSTConfig
from nstexp.losses import STYLE_LOSSES, nnst
from nstexp.losses.base import LayerStack
from nstexp.losses.nnst_split import sample, split_distance, subgrid_stride
from nstexp.optim import pyramid

F64 = torch.float64


def test_the_distance_is_each_points_nearest_centred_cosine_distance_by_scipy(monkeypatch):
    from scipy.spatial.distance import cdist  # here: slow to import, and only this test needs it

    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 13, 5)) + np.array([3.0, -2.0, 0, 0, 0])  # an offset that centring removes
    y = rng.normal(size=(31, 5)) + 1.5
    want = [cdist(a[b] - a[b].mean(0), y - y.mean(0), "cosine").min(1).mean() for b in range(2)]
    got = split_distance(torch.tensor(a), torch.tensor(y))
    assert got.dtype == F64 and np.allclose(got.numpy(), want, rtol=1e-12)
    plain = [cdist(a[b], y, "cosine").min(1).mean() for b in range(2)]
    assert not np.allclose(plain, want, rtol=1e-3)  # the centring matters on this case
    for chunk in (1, 5, 26):
        assert torch.equal(split_distance(torch.tensor(a), torch.tensor(y), chunk), got)
    monkeypatch.setattr(nnst, "CHUNK_ELEMENTS", 2 * 31)  # the automatic chunk of the search: 2 rows
    assert torch.equal(split_distance(torch.tensor(a), torch.tensor(y)), got)


def test_the_gradient_is_the_matched_pairs_through_the_centring():
    # Away from ties the min is smooth: torch's gradcheck against finite differences, in float64.
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.normal(size=(1, 7, 4)), requires_grad=True)
    y = torch.tensor(rng.normal(size=(11, 4)))
    assert torch.autograd.gradcheck(lambda x: split_distance(x, y), (a,))


@pytest.mark.parametrize("hw,stride", [((512, 384), 8), ((256, 256), 4), ((130, 100), 2), ((65, 10), 1),
                                       ((64, 64), 1), ((32, 48), 1)])
def test_the_subgrid_keeps_about_64_a_side(hw, stride):
    # NNST: max side // 64 where the layer is larger than 64 a side, every position otherwise.
    assert subgrid_stride(*hw, 64) == stride


def test_sample_reads_every_strideth_position_from_the_offset_row_major():
    f = torch.arange(2 * 3 * 7 * 5, dtype=F64).reshape(2, 3, 7, 5)
    got = sample(f, 3, (1, 2))
    want = torch.stack([torch.stack([f[b, :, y, x] for y in (1, 4) for x in (2,)]) for b in range(2)])
    assert torch.equal(got, want)


def _stack(seed, b=1, h=24, w=20, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    feats = {"a": 10 * torch.rand(b, 4, h, w, generator=g, dtype=dtype),
             "b": 10 * torch.rand(b, 6, h // 2, w // 2, generator=g, dtype=dtype)}
    return LayerStack(torch.rand(b, 3, h, w, generator=g, dtype=dtype), feats, {"a": 1.0, "b": 1.0})


def _loss(seed=0, **options):
    return STYLE_LOSSES["nnst_split"](StyleConfig(loss="nnst_split", nnst=NNSTConfig(**options)), seed)


def test_the_loss_is_zero_on_the_styles_own_features_and_sums_the_layers():
    # With split_side 8 the 24 x 20 layer is sampled every 3rd position, the 12 x 10 one every
    # position: the result's samples are the style's own, each its own nearest neighbour.
    loss = _loss(split_side=8, augment="none")
    style = _stack(1)
    assert float(loss.distance(style, loss.target([style], [1.0]))) == pytest.approx(0, abs=1e-6)
    other = _stack(2)
    value = float(loss.distance(other, loss.target([style], [1.0])))
    # Each layer's term is at most 2 (cosine distances), and here neither is 0.
    assert 0 < value < 4


def test_split_layers_restrict_the_sum_to_those_layers():
    style, other = _stack(1), _stack(2)
    both = _loss(split_side=8, augment="none")
    only_b = _loss(split_side=8, augment="none", split_layers=["b"])
    # split_layers=[b] on the two-layer stack is the loss of a stack of layer b alone.
    alone = _loss(split_side=8, augment="none")
    stack_b = lambda s: LayerStack(s.image, {"b": s.feats["b"]}, {"b": 1.0})  # noqa: E731
    want = alone.distance(stack_b(other), alone.target([stack_b(style)], [1.0]))
    assert torch.allclose(only_b.distance(other, only_b.target([style], [1.0])), want)
    assert float(both.distance(other, both.target([style], [1.0]))) > float(want)


@pytest.mark.parametrize("bf16", [False, True])
def test_finite_gradients_in_fp32_and_bf16_and_the_seed_repeats(bf16):
    out = []
    for seed in (3, 3, 4):
        loss = _loss(seed, split_side=8)
        target = loss.target([_stack(1)], [1.0])
        stack = _stack(5, b=2)
        feats = {k: v.clone().requires_grad_() for k, v in stack.feats.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            value = loss.distance(LayerStack(stack.image, {k: v * 1.0 for k, v in feats.items()}, stack.weights),
                                  target)
        value.sum().backward()
        assert value.dtype == torch.float32 and value.shape == (2,) and torch.isfinite(value).all()
        assert all(torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0 for f in feats.values())
        out.append((value, feats["a"].grad))
    assert all(torch.equal(x, y) for x, y in zip(out[0], out[1]))
    assert not torch.equal(out[0][0], out[2][0])  # another seed, other sub-grid offsets


def test_the_final_pass_has_the_finest_levels_settings_and_its_own_loss():
    cfg = tiny_cfg("experiment=nnst", "size=256", "steps=200", "optimizer.lr=2e-3")
    sizes, steps = pyramid.schedule(cfg.size, cfg.steps, cfg.scales)
    assert sizes == [64, 128, 256, 256] and steps == [200, 200, 200, 200]  # NNST: max_iter for the final pass too
    finest, final = pyramid.level_settings(cfg, 2, 3), pyramid.level_settings(cfg, 3, 3)
    assert finest.style.loss == "nnst" and final.style.loss == "nnst_split"
    assert final.optimizer.lr == finest.optimizer.lr and final.content.weight == finest.content.weight
    assert pyramid.schedule(256, 200, tiny_cfg("scales.final_pass=true", "scales.final_steps=7",
                                               "scales.min=128").scales) == ([128, 256, 256], [200, 200, 7])


def test_a_run_with_the_final_pass_logs_it_as_the_last_level(tmp_path):
    r = run_cli(["experiment=nnst", *TINY, "scales.min=32", "scales.factor=1.4142135623730951",
                 "scales.final_steps=3", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["levels"] == [34, 48, 48] and summary["steps"] == 2 + 2 + 3
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [row["level"] for row in rows if row["step"] > 0] == [0, 0, 1, 1, 2, 2, 2]
    assert all(np.isfinite(row["loss/total"]) and row["loss/style"] > 0 for row in rows)


def test_the_memory_estimate_counts_the_final_pass():
    from nstexp.network.backbone import FeatureExtractor
    from nstexp.run.inputs import memory_check

    extractor = FeatureExtractor("vgg19", "random", ["relu1_1", "relu2_1", "relu3_1"])
    layers = "layers.style={relu1_1: 1, relu2_1: 1, relu3_1: 1, relu4_1: 0, relu5_1: 0}"
    estimates = {}
    for name, overrides in {"gram": [], "final": ["scales.final_pass=true", "scales.final_loss=nnst_split"],
                            "plain_final": ["scales.final_pass=true"]}.items():
        summary = {}
        memory_check(extractor, tiny_cfg(layers, *overrides), torch.device("cpu"), summary)((512, 512), [(512, 512)])
        estimates[name] = summary["memory_estimate_mb"]
    assert estimates["plain_final"] == estimates["gram"]  # the same loss again: no more memory
    # nnst_split at 512 px: 64 x 64 result points of the stack's 3 + 64 + 128 + 256 values, 4 views' of the style.
    assert estimates["final"] - estimates["gram"] >= 4 * (4 * 64 * 64 * 451 + 3 * 4 * 64 * 64 * 451) / 2**20


@pytest.mark.parametrize("overrides,needle", [
    (["scales.final_pass=true", "scales.final_loss=nearest"], "scales.final_loss='nearest' is not allowed"),
    (["scales.final_steps=-1"], "scales.final_steps=-1 must be >= 0"),
    (["scales.final_pass=true", "scales.final_loss=nnst_split", "style.masks=[sample:coffee_saucer]"],
     "scales.final_loss=nnst_split: style.masks works with"),
    (["style.loss=nnst_split", "style.nnst.split_side=0"], "style.nnst.split_side=0 must be >= 1"),
    (["style.loss=nnst_split", "style.nnst.split_layers=[relu4_2]"],
     "style.nnst.split_layers: 'relu4_2' is not a style layer weighted > 0"),
])
def test_a_bad_final_pass_is_refused_in_one_line(tmp_path, overrides, needle):
    line = refused_in_one_line(run_cli([*overrides, *TINY, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path))
    assert needle in line, line
