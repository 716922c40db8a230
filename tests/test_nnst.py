"""NNST's style loss (style.loss=nnst) and colour post-process (color.preserve=nnst) against
independent references: numpy's brute-force nearest neighbours, 2 × 2 means for the grid's
bilinear reads, torch.rot90, gradcheck, published OkLab values and a loop over the filter's
window; the objective's blended query, the refresh schedule, seeds, memory, recipe and options."""

import functools
import json

import numpy as np
import pytest
import torch

from conftest import TINY, refused_in_one_line, run_cli, sections
from nstexp.config import StyleConfig
from nstexp.loss_options import NNSTConfig
from nstexp.losses import STYLE_LOSSES, nnst
from nstexp.losses.base import JOINT, LayerStack
from nstexp.losses.nnst import StylePoints, grid_hypercolumns, nearest, nnst_loss, rotated, targets
from nstexp.run import colour

F64 = torch.float64


def _numpy_nearest(q, y):
    """Centred cosine nearest neighbours, one pair at a time: each set centred by its own mean."""
    qc, yc = q - q.mean(0), y - y.mean(0)
    out = np.empty(len(q), dtype=np.int64)
    for i, a in enumerate(qc):
        cos = [a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in yc]
        out[i] = int(np.argmax(cos))
    return out


def test_the_targets_are_the_brute_force_centred_cosine_neighbours(monkeypatch):
    rng = np.random.default_rng(0)
    # A common offset that centring removes: the plain cosine then picks other neighbours.
    y = rng.normal(size=(41, 6)) + 4.0
    q = rng.normal(size=(2, 29, 6)) + np.array([4.0, -3.0, 0, 0, 0, 0])
    style = StylePoints(torch.tensor(y))
    want = np.stack([_numpy_nearest(q[b], y) for b in range(2)])
    whole = nearest(torch.tensor(q), style)
    assert (whole.numpy() == want).all()
    plain = np.stack([np.argmax(q[b] @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T, 1) for b in range(2)])
    assert (plain != want).any()  # the centring matters on this case
    for chunk in (1, 7, 58):
        assert torch.equal(nearest(torch.tensor(q), style, chunk), whole)
    monkeypatch.setattr(nnst, "CHUNK_ELEMENTS", 3 * 41)  # the automatic chunk: 3 rows
    assert torch.equal(nearest(torch.tensor(q), style), whole)
    t = targets(torch.tensor(q), style)
    assert torch.equal(t, torch.tensor(y)[whole])  # the style's own (uncentred) hypercolumns


def _stack(seed, b=1, h=16, w=12, dtype=F64, weights=(1.0, 0.5)):
    """Random [0, 1] pixels and two layers at the grid's size (1/4) and twice it (1/2)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, h, w, generator=g, dtype=dtype)
    feats = {"a": 50 * torch.rand(b, 4, h // 2, w // 2, generator=g, dtype=dtype),
             "b": 50 * torch.rand(b, 6, h // 4, w // 4, generator=g, dtype=dtype)}
    return LayerStack(image, feats, dict(zip(feats, weights)))


def _nnst(**options):
    return STYLE_LOSSES["nnst"](StyleConfig(loss="nnst", nnst=NNSTConfig(**options)), 0)


def test_a_hypercolumn_is_each_layer_at_the_cells_centre_over_its_channel_count():
    stack = _stack(0, b=2)
    x = grid_hypercolumns(stack)  # (2, 4 * 3, 4 + 6)
    a, b = stack.feats["a"], stack.feats["b"]
    # Halving with bilinear reads at the cells' centres is the mean of each 2 × 2 block.
    blocks = a.reshape(2, 4, 4, 2, 3, 2).mean((3, 5))
    want = torch.cat([blocks / 4, b * 0.5 / 6], 1).flatten(2).transpose(1, 2)  # ω_b = 0.5 / 1
    assert x.shape == (2, 12, 10) and torch.allclose(x, want.float(), rtol=1e-6)
    assert grid_hypercolumns(stack, stride=2).shape == (2, 8 * 6, 10)


def test_the_views_are_the_rotations_and_their_mirrors():
    image = torch.arange(24.0).reshape(1, 1, 4, 6)
    assert len(rotated(image, "none")) == 1
    four, eight = rotated(image, "rotations"), rotated(image, "rotations_mirrored")
    assert len(four) == 4 and len(eight) == 8
    assert torch.equal(four[1][0, 0], torch.tensor(np.rot90(image[0, 0].numpy()).copy()))
    assert torch.equal(four[2][0, 0], image[0, 0].flip(0).flip(1))
    assert torch.equal(eight[4 + 1][0, 0], four[1][0, 0].flip(-1))
    assert len({tuple(v.flatten().tolist()) for v in eight}) == 8
    assert _nnst(augment="rotations").views(image)[3].shape == (1, 1, 6, 4)


def test_the_loss_is_zero_at_its_targets_and_its_gradient_that_of_the_cosines():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(2, 9, 5, generator=g, dtype=F64)
    assert nnst_loss(t, t).abs().max().item() < 1e-15
    assert nnst_loss(3 * t, t).abs().max().item() < 1e-15  # a cosine: blind to the columns' lengths
    assert (nnst_loss(torch.randn(2, 9, 5, generator=g, dtype=F64), t) > 0.1).all()
    x = torch.randn(2, 9, 5, generator=g, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: nnst_loss(a, t), (x,))
    # The class: the style itself as the result (alpha 0, no rotations) is matched to itself.
    loss, style = _nnst(alpha=0.0, augment="none"), _stack(3)
    target = loss.target([style], [1.0])
    assert loss.distance(style, target).item() < 1e-6 and loss.distance(_stack(4), target).item() > 1e-3


def test_the_refresh_schedule():
    style, a, b = _stack(0), _stack(1), _stack(2)
    for refresh, fresh in ((0, [True, False, False, False]), (1, [True] * 4), (2, [True, False, True, False])):
        loss = _nnst(alpha=0.0, augment="none", refresh=refresh)
        target = loss.target([style], [1.0])
        seen = []
        for step, stack in enumerate([a, b, a, b]):
            before = loss.cached
            value = loss.distance(stack, target)
            seen.append(before is None or loss.cached[2] is not before[2])
            # The value is the cosine distance to the targets of the last refresh.
            assert value.item() == pytest.approx(nnst_loss(grid_hypercolumns(stack), loss.cached[2]).item(), rel=1e-6)
        assert seen == fresh, refresh
        if refresh == 0:  # once: the first evaluation's, whatever comes after
            assert torch.equal(loss.cached[2], targets(grid_hypercolumns(a), target))
    loss = _nnst(alpha=0.5, augment="none")
    with pytest.raises(ValueError, match="needs a query"):
        loss.distance(a, loss.target([style], [1.0]))


@pytest.mark.parametrize("bf16", [False, True])
def test_finite_gradients_in_fp32_and_bf16(bf16):
    loss = _nnst(alpha=0.0, refresh=1)
    target = loss.target([_stack(1, dtype=torch.float32)], [1.0])
    reference = _stack(2, dtype=torch.float32)
    black = LayerStack(torch.zeros(1, 3, 16, 12), {k: torch.zeros_like(v) for k, v in reference.feats.items()},
                       reference.weights)  # ReLU's zeros everywhere
    for stack in (_stack(3, b=2, dtype=torch.float32), black, reference):
        image = stack.image.clone().requires_grad_()
        feats = {k: v.clone().requires_grad_() for k, v in stack.feats.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            value = loss.distance(LayerStack(image * 1.0, {k: v * 1.0 for k, v in feats.items()}, stack.weights),
                                  target)
        value.sum().backward()
        assert value.dtype == torch.float32 and torch.isfinite(value).all()
        assert all(torch.isfinite(f.grad).all() for f in feats.values())


LAYERS = {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 0.5}


@functools.lru_cache(maxsize=None)
def _extractor():
    from nstexp.network.backbone import FeatureExtractor

    return FeatureExtractor("vgg19", "caffe", list(LAYERS))


def _objective(seed=0, **options):
    from nstexp.losses.objective import Objective

    gen = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, 32, 48, generator=gen), torch.rand(1, 3, 40, 40, generator=gen)
    args = sections({"relu2_1": 1.0}, LAYERS, content_weight=0.0, style_weight=1.0,
                    style={"loss": "nnst", "nnst": NNSTConfig(**options)})
    return Objective(_extractor(), content, [style], *args, seed=seed), content, style


def test_the_query_is_the_blend_of_the_result_and_the_content_in_pixels():
    objective, content, style = _objective(alpha=0.25)
    image = (content.flip(3) * 0.7 + 0.1).requires_grad_()
    terms = objective(image)
    assert set(terms.style_layers) == {JOINT} and terms.style.item() > 0
    # An independent search: the hypercolumns of 3/4 result + 1/4 content, against the style's views.
    with torch.no_grad():
        ex = _extractor()
        mixed = 0.75 * image + 0.25 * content
        q = grid_hypercolumns(LayerStack(mixed, {k: v for k, v in ex(mixed).items() if k in LAYERS}, LAYERS))
        views = [torch.rot90(style, k, dims=(-2, -1)) for k in range(4)]
        y = torch.cat([grid_hypercolumns(LayerStack(v, {k: f for k, f in ex(v).items() if k in LAYERS}, LAYERS))[0]
                       for v in views])
    want = y[torch.tensor(_numpy_nearest(q[0].double().numpy(), y.double().numpy()))]
    assert torch.allclose(objective.style_loss.cached[2][0], want)
    terms.total.sum().backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_the_same_seed_repeats_exactly():
    out = []
    for seed in (3, 3, 4):
        objective, content, _ = _objective(seed, alpha=0.75, refresh=1)
        image = (content * 0.8 + 0.1).requires_grad_()
        terms = objective(image)
        terms.total.sum().backward()
        out.append((terms.total, image.grad))
    assert all(torch.equal(a, b) for a, b in zip(out[0], out[1]))
    assert torch.equal(out[0][0], out[2][0])  # an exact search: the seed draws nothing


def test_the_memory_estimate_counts_the_hypercolumns_and_the_similarity_matrices():
    from conftest import tiny_cfg
    from nstexp.network.backbone import FeatureExtractor
    from nstexp.run.inputs import memory_check

    extractor = FeatureExtractor("vgg19", "random", ["relu1_1", "relu3_1", "relu4_1", "relu4_2"])
    style_layers = "layers.style={relu1_1: 1, relu2_1: 0, relu3_1: 1, relu4_1: 1, relu5_1: 0}"
    estimates = {}
    for name, overrides in {"gram": [], "nnst": ["style.loss=nnst"],
                            "mirrored": ["style.loss=nnst", "style.nnst.augment=rotations_mirrored"]}.items():
        summary = {}
        memory_check(extractor, tiny_cfg(style_layers, *overrides), torch.device("cpu"), summary)((512, 384), [(512, 512)])
        estimates[name] = summary["memory_estimate_mb"]
    d, k, mib = 64 + 256 + 512, 4 * 128 * 128, 2**20
    # The style's K hypercolumns twice (points, centred units) and one chunk of 2^24 similarities.
    assert estimates["nnst"] - estimates["gram"] > 4 * (2 * k * d + 2**24) / mib
    # Twice the views: K more hypercolumns, twice; the chunk stays 2^24 similarities.
    assert estimates["mirrored"] - estimates["nnst"] == pytest.approx(4 * 2 * k * d / mib)


@pytest.mark.parametrize("overrides,needle", [
    (["style.loss=nnst", "style.nnst.stride=0"], "style.nnst.stride=0 must be >= 1"),
    (["style.nnst.alpha=1.5"], "style.nnst.alpha=1.5 must be in [0, 1]"),
    (["style.nnst.refresh=-1"], "style.nnst.refresh=-1 must be >= 0 (0: once per level)"),
    (["style.nnst.augment=flips"], "style.nnst.augment='flips' is not allowed (allowed: none, rotations, "
                                   "rotations_mirrored)"),
    (["style.loss={nnst: 1, gram: 1}"], "style.loss=nnst takes all its style layers at once and is not for a mix"),
    (["style.loss=nnst", "style.masks=[sample:coffee_saucer]"], "not nnst"),
    (["color.preserve=nnts"], "color.preserve='nnts' is not allowed"),
])
def test_a_bad_option_is_refused_in_one_line(tmp_path, overrides, needle):
    r = run_cli([*overrides, *TINY, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    line = refused_in_one_line(r)
    assert needle in line, line


def test_oklab_is_ottossons():
    rgb = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=F64).T.reshape(1, 3, 4, 1)
    lab = colour.to_oklab(rgb)[0, :, :, 0].T
    want = torch.tensor([[0.627955, 0.224863, 0.125846], [0.866440, -0.233888, 0.179498],
                         [0.452014, -0.032457, -0.311528], [1.0, 0.0, 0.0]], dtype=F64)
    assert torch.allclose(lab, want, atol=2e-6)
    x = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(colour.from_oklab(colour.to_oklab(x)), x, atol=1e-12)


def test_the_filter_is_the_lightness_weighted_window_mean_iterated():
    g = torch.Generator().manual_seed(0)
    ab, light = torch.rand(1, 2, 5, 6, generator=g, dtype=F64), torch.rand(1, 1, 5, 6, generator=g, dtype=F64)
    want = ab[0].numpy().copy()
    lum = light[0, 0].numpy()
    for _ in range(2):
        new = np.zeros_like(want)
        for y in range(5):
            for x in range(6):
                taps = [(min(max(y + dy, 0), 4), min(max(x + dx, 0), 5)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
                w = np.array([np.exp(-10 * abs(lum[y, x] - lum[p])) for p in taps])
                new[:, y, x] = sum(wi * want[:, p[0], p[1]] for wi, p in zip(w, taps)) / w.sum()
        want = new
    assert np.allclose(colour.guided_filter(ab, light, iterations=2)[0].numpy(), want, atol=1e-12)


def test_nnst_colours_keep_the_lightness_and_take_the_style_chroma():
    g = torch.Generator().manual_seed(0)
    # Low saturation, lightness inside the style's range: nothing leaves the gamut or gets clamped.
    content = 0.4 + 0.2 * torch.rand(1, 3, 12, 10, generator=g, dtype=F64)
    style = (0.2 + 0.6 * torch.rand(1, 1, 12, 10, generator=g, dtype=F64)
             + 0.2 * torch.rand(1, 3, 12, 10, generator=g, dtype=F64))
    result = 0.35 + 0.3 * torch.rand(1, 3, 12, 10, generator=g, dtype=F64)
    out = colour.to_oklab(colour.nnst_colours(result, content, style))
    lab_r, lab_c, lab_s = (colour.to_oklab(x) for x in (result, content, style))
    assert torch.allclose(out[:, :1], lab_r[:, :1], atol=1e-9)
    ab = colour.match_colours(lab_c[:, 1:], lab_s[:, 1:], colour.NNST_COVARIANCE_EPS)
    assert torch.allclose(ab.mean((2, 3)), lab_s[:, 1:].mean((2, 3)), atol=1e-12)
    low, high = lab_s[:, 1:].amin((2, 3), keepdim=True), lab_s[:, 1:].amax((2, 3), keepdim=True)
    want = torch.maximum(torch.minimum(colour.guided_filter(ab, lab_r[:, :1]), high), low)
    assert torch.allclose(out[:, 1:], want, atol=1e-9)
    # A grey style: the result's own colours, moved to the style's mean and covariance.
    grey = style.mean(1, keepdim=True).expand(1, 3, 12, 10)
    shown = colour.present("nnst", result, content, grey)
    assert torch.allclose(colour.to_oklab(shown).mean((2, 3)), colour.to_oklab(grey).mean((2, 3)), atol=1e-3)


def test_a_tiny_run_of_the_recipe_completes(tmp_path):
    # Levels 34 and 48 px and the final pass at 48: the targets rebuilt at each level, NNST's ten
    # layers down to relu4_3.
    r = run_cli(["experiment=nnst", *TINY, "scales.min=32", "scales.factor=1.4142135623730951",
                 f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert {k for k in rows[0] if k.startswith("loss/style/")} == {"loss/style/hypercolumn"}
    # nnst's cosine distance is at most 2; the final pass sums ten layers' distances.
    assert all(np.isfinite(row["loss/total"]) and 0 < row["loss/style"] < (2 if row["level"] < 2 else 20)
               for row in rows)
    assert (tmp_path / "run" / "final.png").is_file()
