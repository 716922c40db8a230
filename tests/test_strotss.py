"""STROTSS's style loss (style.loss=strotss) and content loss (content.loss=self_similarity) against
independent references: POT's exact earth mover's distance, numpy's brute-force matrices, torch's
bilinear upsampling and gradcheck; the objective's joint terms, seeds, memory, recipe and options."""

import functools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, refused_in_one_line, run_cli, sections
from nstexp.config import ContentConfig, SelfSimilarityConfig, StyleConfig, STROTSSConfig
from nstexp.losses import CONTENT_LOSSES, STYLE_LOSSES, self_similarity, strotss
from nstexp.losses.base import JOINT, LayerStack
from nstexp.losses.hypercolumn import hypercolumns, sample_positions
from nstexp.losses.self_similarity import self_similarity_loss
from nstexp.losses.strotss import COSINE, PALETTE, nearest, relaxed_emd

F64 = torch.float64


def _points(seed, m, d, low=10.0, high=30.0):
    """m points in R^d with norms in [low, high] (numpy): ‖a‖_ε = (‖a‖² + 1e-6)^½ is ‖a‖ to 1e-9."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(m, d))
    return p / np.linalg.norm(p, axis=1, keepdims=True) * rng.uniform(low, high, size=(m, 1))


def _numpy_cost(x, y, kind):
    """The cost matrix, one pair at a time: 1 − cos, plus the RMS distance for the palette."""
    c = np.empty((len(x), len(y)))
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            c[i, j] = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            if kind == "palette":
                c[i, j] += np.sqrt(max(np.mean((a - b) ** 2), 1e-5))
    return c


def _remd(x, y, kind):
    return relaxed_emd(torch.tensor(x)[None], torch.tensor(y), COSINE if kind == "cosine" else PALETTE)[0].item()


def _emd(c):
    import ot  # here: slow to import, and only this test needs it

    n, k = c.shape
    return ot.emd2(np.full(n, 1 / n), np.full(k, 1 / k), c)


@pytest.mark.parametrize("kind,d", [("cosine", 5), ("palette", 3)])
def test_the_relaxed_emd_is_at_most_the_exact_emd(kind, d):
    gaps = []
    for seed, (n, k) in enumerate([(6, 6), (5, 9), (11, 4), (8, 8), (3, 12)]):
        x, y = _points(2 * seed, n, d), _points(2 * seed + 1, k, d)
        c = _numpy_cost(x, y, kind)
        relaxed, exact = _remd(x, y, kind), _emd(c)
        assert relaxed == pytest.approx(max(c.min(1).mean(), c.min(0).mean()), rel=1e-7)
        assert 0 < relaxed <= exact * (1 + 1e-7)
        gaps.append(exact - relaxed)
    assert max(gaps) > 1e-2  # a relaxation: on random clouds it is below the EMD


@pytest.mark.parametrize("kind,d", [("cosine", 6), ("palette", 3)])
def test_the_relaxed_emd_is_the_emd_where_the_nearest_neighbours_are_a_bijection(kind, d):
    """Points near those of a permuted copy: x_i's cheapest y is y_σ(i) and y_σ(i)'s cheapest x is
    x_i, so the permutation is an optimal plan and both relaxed means are its cost."""
    rng = np.random.default_rng(7)
    n = 6
    # Norms of 100 and more, so that ‖a‖_ε is ‖a‖ to 1e-10 (the cosine does not see the scale).
    sigma = rng.permutation(n)
    if kind == "cosine":
        y = 100 * (np.eye(d)[:n] + 0.1 * rng.normal(size=(n, d)))
        x = y[sigma] * rng.uniform(1.0, 3.0, size=(n, 1)) + 15 * rng.normal(size=(n, d))
    else:  # points far apart from each other, each x a slight change of its y
        y = 10 * rng.uniform(0.1, 1.0, size=(n, d)) * np.linspace(1.0, 10.0, n)[:, None]
        x = y[sigma] + 0.1 * rng.normal(size=(n, d))
    c = _numpy_cost(x, y, kind)
    assert (c.argmin(1) == sigma).all() and (c.argmin(0) == np.argsort(sigma)).all()
    exact = _emd(c)
    assert exact > 1e-3
    assert _remd(x, y, kind) == pytest.approx(exact, rel=1e-6)
    assert c[np.arange(n), sigma].mean() == pytest.approx(exact, rel=1e-9)


def test_chunked_search_equals_the_unchunked_one(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 37, 8, generator=g, dtype=F64), torch.randn(53, 8, generator=g, dtype=F64)
    whole = nearest(x, y, chunk=10**6)
    for chunk in (1, 5, 36):
        got = nearest(x, y, chunk=chunk)
        assert torch.equal(got[0], whole[0]) and torch.equal(got[1], whole[1])
    monkeypatch.setattr(strotss, "CHUNK_ELEMENTS", 2 * 3 * 53)  # the automatic chunk: 3 rows
    assert all(torch.equal(a, b) for a, b in zip(nearest(x, y), whole))
    # Both ways against numpy's brute force.
    ux, uy = (x / x.norm(dim=2, keepdim=True)).numpy(), (y / y.norm(dim=1, keepdim=True)).numpy()
    c = 1 - np.einsum("bnd,kd->bnk", ux, uy)
    assert (whole[0].numpy() == c.argmin(2)).all() and (whole[1].numpy() == c.argmin(1)).all()
    for cost in (COSINE, PALETTE):
        values = [relaxed_emd(x, y, cost, chunk) for chunk in (None, 1, 7)]
        assert torch.equal(values[0], values[1]) and torch.equal(values[0], values[2])


def test_chunked_self_similarity_equals_the_unchunked_one_with_its_gradient():
    g = torch.Generator().manual_seed(1)
    c = torch.randn(1, 23, 6, generator=g, dtype=F64)
    values, grads = [], []
    for chunk in (None, 1, 5):
        x = torch.randn(2, 23, 6, generator=torch.Generator().manual_seed(2), dtype=F64).requires_grad_()
        v = self_similarity_loss(x, c, chunk)
        v.sum().backward()
        values.append(v.detach())
        grads.append(x.grad)
    for v, gr in zip(values[1:], grads[1:]):
        assert torch.allclose(v, values[0], rtol=1e-12) and torch.allclose(gr, grads[0], rtol=1e-10, atol=1e-14)


def _numpy_self_similarity(x, c, kink=self_similarity.KINK):
    """L = 1/n Σ_ij |D^X_ij / Σ_k D^X_kj − D^C_ij / Σ_k D^C_kj|, D = 1 − cos, one entry at a time,
    |d| smoothed below β = kink / n: d² / (2β) there, |d| − β/2 above."""
    def normalized(p):
        d = np.array([[1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in p] for a in p])
        return d / d.sum(0, keepdims=True)
    d, beta = np.abs(normalized(x) - normalized(c)), kink / len(x)
    return np.where(d < beta, d * d / (2 * beta), d - beta / 2).sum() / len(x)


def test_self_similarity_is_the_papers_column_normalized_l1_distance():
    x, c = _points(0, 9, 5), _points(1, 9, 5)
    got = self_similarity_loss(torch.tensor(x)[None], torch.tensor(c)[None])[0].item()
    assert got == pytest.approx(_numpy_self_similarity(x, c), rel=1e-6)
    assert 0 < got <= 2
    # The smoothing lowers L by at most kink / 2 from the paper's |d| (β/2 for each of n² entries, / n).
    paper = _numpy_self_similarity(x, c, kink=0.0)
    assert paper - self_similarity.KINK / 2 <= got < paper


def test_self_similarity_near_the_content_has_a_slope_of_the_differences_size():
    # On the content up to rounding, |d|'s slope ±1 would take its sign from the last bits; the
    # smoothed loss's gradient there is as small as the difference (0 on the content itself).
    c = torch.tensor(_points(1, 9, 5))[None]
    x = (c * (1 + 1e-9 * torch.randn(c.shape, generator=torch.Generator().manual_seed(0), dtype=F64))).requires_grad_()
    self_similarity_loss(x, c).sum().backward()
    assert x.grad.abs().max().item() < 1e-3
    y = c.clone().requires_grad_()
    self_similarity_loss(y, c).sum().backward()
    assert y.grad.abs().max().item() == 0


def test_self_similarity_is_zero_on_the_content_and_blind_to_scaling_the_features():
    x, c = (torch.tensor(_points(s, 12, 7))[None] for s in (2, 3))
    value = self_similarity_loss(x, c)
    assert value.item() > 0.05
    assert self_similarity_loss(c, c).item() == 0
    assert self_similarity_loss(10 * x, c).item() == pytest.approx(value.item(), rel=1e-6)
    each = torch.tensor(np.random.default_rng(4).uniform(1.0, 5.0, size=(1, 12, 1)))
    assert self_similarity_loss(x * each, c / 3).item() == pytest.approx(value.item(), rel=1e-6)
    # The loss class on a content stack: 0 on the content itself, and on its features all scaled.
    loss = _self_similarity(samples=40)
    stack = _stack(5)
    assert loss.distance(stack, loss.target(stack)).item() == 0
    assert loss.distance(_stack(6), loss.target(stack)).item() > 0.01


def _stack(seed, b=1, h=16, w=12, dtype=F64, weights=(1.0, 0.5)):
    """A LayerStack of random [0, 1] pixels and features of two layers at 1/2 and 1/4 of the image's sides."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, h, w, generator=g, dtype=dtype)
    feats = {"a": 50 * torch.rand(b, 4, h // 2, w // 2, generator=g, dtype=dtype),
             "b": 50 * torch.rand(b, 6, h // 4, w // 4, generator=g, dtype=dtype)}
    return LayerStack(image, feats, dict(zip(feats, weights)))


def _strotss(seed=0, **options):
    return STYLE_LOSSES["strotss"](StyleConfig(loss="strotss", strotss=STROTSSConfig(**options)), seed)


def _self_similarity(seed=0, **options):
    return CONTENT_LOSSES["self_similarity"](
        ContentConfig(loss="self_similarity", self_similarity=SelfSimilarityConfig(**options)), seed)


def test_a_hypercolumn_is_each_layer_upsampled_bilinearly_and_stacked_with_the_rgb():
    stack = _stack(0, b=2)
    positions = torch.tensor([0, 5, 17, 100, 150, 191])
    got = hypercolumns(stack, positions, scale=4.0)  # (2, 6, 3 + 4 + 6)
    up = [stack.image] + [F.interpolate(f, size=(16, 12), mode="bilinear", align_corners=False) * w / 4.0
                          for f, w in zip(stack.feats.values(), (1.0, 0.5))]  # ω_l = w_l / max w
    expected = torch.cat(up, 1).flatten(2)[:, :, positions].transpose(1, 2)
    assert got.shape == (2, 6, 13) and torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_equal_layer_weights_whatever_their_value_are_strotss_hypercolumn():
    positions = torch.arange(0, 192, 7)
    a, b = _stack(0, weights=(0.2, 0.2)), _stack(0, weights=(1.0, 1.0))
    assert torch.equal(hypercolumns(a, positions), hypercolumns(b, positions))


def test_blended_styles_share_the_style_points_by_their_blend_shares():
    loss = _strotss(style_samples=40)
    one, two, three = _stack(1), _stack(2), _stack(3)
    cloud = loss.target([one, two, three], [0.75, 0.25, 0.0])
    assert len(cloud) == 30 + 10  # round(40 × share) each, none from a share of 0
    rgb = lambda stack: {tuple(p) for p in stack.image[0].flatten(1).T.tolist()}  # noqa: E731
    points = {tuple(p) for p in cloud.points[:, :3].tolist()}
    assert len(points & rgb(one)) == 30 and len(points & rgb(two)) == 10 and not points & rgb(three)
    assert len(loss.target([one], [1.0])) == 40 and len(_strotss(style_samples=10**4).target([one], [1.0])) == 192


def test_the_gradient_is_that_of_the_matched_costs():
    g = torch.Generator().manual_seed(3)
    y = torch.randn(9, 5, generator=g, dtype=F64)
    x = torch.randn(2, 7, 5, generator=g, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: relaxed_emd(a, y), (x,))
    assert torch.autograd.gradcheck(lambda a: relaxed_emd(a[..., :3], y[:, :3], PALETTE), (x,))
    c = torch.randn(1, 7, 5, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda a: self_similarity_loss(a, c), (x,))
    assert torch.autograd.gradcheck(lambda a: strotss.moment_loss(a, y.mean(0), torch.cov(y.T, correction=0)), (x,))


def test_the_moment_term_is_the_mean_absolute_gaps_of_mean_and_covariance():
    x, y = _points(0, 30, 4), _points(1, 40, 4)
    expected = np.abs(x.mean(0) - y.mean(0)).mean() + np.abs(np.cov(x.T, bias=True) - np.cov(y.T, bias=True)).mean()
    cloud = strotss.Cloud(torch.tensor(y))
    assert strotss.moment_loss(torch.tensor(x)[None], cloud.mean, cloud.cov).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("bf16", [False, True])
def test_finite_gradients_in_fp32_and_bf16(bf16):
    style = _strotss(samples=64, style_samples=80)
    content = _self_similarity(samples=64)
    target = style.target([_stack(1, dtype=torch.float32)], [1.0])
    reference = _stack(2, dtype=torch.float32)
    content_target = content.target(reference)
    cases = [_stack(3, b=2, dtype=torch.float32),
             LayerStack(torch.zeros(1, 3, 16, 12), {k: torch.zeros_like(v) for k, v in reference.feats.items()},
                        reference.weights),  # a black image, ReLU's zeros everywhere
             reference]  # the content itself, at the content term's minimum
    for stack in cases:
        image = stack.image.clone().requires_grad_()
        feats = {k: v.clone().requires_grad_() for k, v in stack.feats.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            s = LayerStack(image * 1.0, {k: v * 1.0 for k, v in feats.items()}, stack.weights)
            value = style.distance(s, target) + content.distance(s, content_target)
        value.sum().backward()
        assert torch.isfinite(value).all() and torch.isfinite(image.grad).all()
        assert all(torch.isfinite(f.grad).all() for f in feats.values())


def test_the_same_seed_repeats_exactly_and_another_draws_other_positions():
    assert torch.equal(sample_positions(20, 30, 50, torch.Generator().manual_seed(5)),
                       sample_positions(20, 30, 50, torch.Generator().manual_seed(5)))
    assert not torch.equal(sample_positions(20, 30, 50, torch.Generator().manual_seed(5)),
                           sample_positions(20, 30, 50, torch.Generator().manual_seed(6)))
    assert len(set(sample_positions(20, 30, 600, torch.Generator()).tolist())) == 600  # all, each once
    style, result = _stack(0), _stack(1, b=2)
    runs = {}
    for seed in (3, 3, 4):
        loss = _strotss(seed, samples=20, style_samples=30)
        target = loss.target([style], [1.0])
        runs.setdefault(seed, []).append((target.points, loss.distance(result, target), loss.distance(result, target)))
    (p0, a0, b0), (p1, a1, b1) = runs[3]
    assert torch.equal(p0, p1) and torch.equal(a0, a1) and torch.equal(b0, b1)
    assert not torch.equal(a0, b0)  # positions drawn anew at each evaluation
    assert not torch.equal(runs[4][0][0], p0)  # another seed, other style positions


LAYERS = {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 0.5}


@functools.lru_cache(maxsize=None)
def _extractor():
    from nstexp.network.backbone import FeatureExtractor

    return FeatureExtractor("vgg19", "caffe", list(LAYERS))


def _recipe_objective(seed=0, **extra):
    from nstexp.losses.objective import Objective

    layers, extractor = LAYERS, _extractor()
    gen = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, 32, 48, generator=gen), torch.rand(1, 3, 40, 40, generator=gen)
    args = sections(layers, layers, content_weight=2.0, style_weight=1.0,
                    content={"loss": "self_similarity", "self_similarity": SelfSimilarityConfig(samples=200)},
                    style={"loss": "strotss", "strotss": STROTSSConfig(samples=200, style_samples=300), **extra})
    return Objective(extractor, content, [style], *args, seed=seed), content


def test_the_objective_keeps_one_joint_term_and_the_same_seed_repeats_exactly():
    out = []
    for seed in (3, 3, 4):
        objective, content = _recipe_objective(seed)
        image = (content * 0.8 + 0.1).requires_grad_()
        terms = objective(image)
        terms.total.sum().backward()
        out.append((terms, image.grad))
    terms = out[0][0]
    assert set(terms.style_layers) == {JOINT} == set(terms.content_layers)
    assert torch.equal(terms.style, terms.style_layers[JOINT]) and terms.style.item() > 0
    assert torch.equal(terms.content, 2.0 * terms.content_layers[JOINT]) and terms.content.item() > 0
    assert torch.equal(out[0][0].total, out[1][0].total) and torch.equal(out[0][1], out[1][1])
    assert not torch.equal(out[0][0].total, out[2][0].total)


def test_balance_and_batches_take_the_joint_term_as_it_is():
    from nstexp.losses.objective import BatchObjective

    objective, content = _recipe_objective(0)
    assert objective.balance_style(content) == {JOINT: 1.0}  # one term: nothing to balance
    images = torch.stack([content[0] * 0.9, content[0].flip(2)])
    alone = [_recipe_objective(seed)[0](images[b:b + 1]) for b, seed in enumerate((1, 2))]
    batched = BatchObjective([_recipe_objective(1)[0], _recipe_objective(2)[0]])(images)
    assert torch.allclose(batched.total, torch.cat([t.total for t in alone]), rtol=1e-6)
    with pytest.raises(ValueError, match="takes no style.masks"):
        from nstexp.losses.objective import Objective

        Objective(objective.extractor, content, [content], *sections({}, {"relu1_1": 1.0}, style={"loss": "strotss"}),
                  style_masks=[torch.ones(1, 1, 32, 48)])


def test_the_memory_estimate_counts_the_points_and_the_similarity_matrices():
    from conftest import tiny_cfg
    from nstexp.network.backbone import FeatureExtractor
    from nstexp.run.inputs import memory_check

    layers = ["relu1_1", "relu3_1", "relu4_1", "relu4_2"]
    extractor = FeatureExtractor("vgg19", "random", layers)
    style_layers = "layers.style={relu1_1: 1, relu2_1: 0, relu3_1: 1, relu4_1: 1, relu5_1: 0}"
    estimates = {}
    for name, overrides in {"gram": [], "strotss": ["style.loss=strotss"],
                            "more": ["style.loss=strotss", "style.strotss.style_samples=20000"],
                            "self_similarity": ["content.loss=self_similarity", "content.self_similarity.samples=4096"]
                            }.items():
        summary = {}
        memory_check(extractor, tiny_cfg(style_layers, *overrides), torch.device("cpu"), summary)((512, 384), [(512, 512)])
        estimates[name] = summary["memory_estimate_mb"]
    d = 3 + 64 + 256 + 512  # the stack: RGB, relu1_1, relu3_1, relu4_1
    mib = 2**20
    # The style's 5000 points, its covariance, the covariances per evaluation: at least these.
    assert estimates["strotss"] - estimates["gram"] > 4 * (5000 * d + 4 * d * d) / mib
    assert estimates["more"] - estimates["strotss"] > 4 * 3 * 15000 * d / mib  # points, matches, units
    # 4096² distances of the result and the content, normalized, their difference: 6 matrices.
    assert estimates["self_similarity"] - estimates["gram"] > 4 * 6 * 4096**2 / mib


@pytest.mark.parametrize("overrides,needle", [
    (["style.loss=strotss", "style.strotss.samples=1"], "style.strotss.samples=1 must be >= 2"),
    (["style.loss=strotss", "style.strotss.style_samples=0"], "style.strotss.style_samples=0 must be >= 2"),
    (["style.strotss.moment_weight=-1"], "style.strotss.moment_weight=-1.0 must be >= 0"),
    (["style.strotss.palette_weight=-0.5"], "style.strotss.palette_weight=-0.5 must be >= 0"),
    (["style.strotss.scale=0"], "style.strotss.scale=0.0 must be > 0"),
    (["content.loss=self_similarity", "content.self_similarity.samples=1"],
     "content.self_similarity.samples=1 must be >= 2"),
    (["content.self_similarity.scale=-2"], "content.self_similarity.scale=-2.0 must be > 0"),
    (["style.loss={strotss: 1, gram: 1}"], "style.loss=strotss takes all its style layers at once and is not for a mix"),
    (["style.loss=strotss", "style.masks=[sample:coffee_saucer]"], "not strotss"),
    (["content.loss=self_similarity", "content.mask=sample:coffee_saucer"],
     "content.mask works with content.loss=squared_error, not self_similarity"),
    (["content.loss=similarity"], "content.loss='similarity' is not allowed (allowed: squared_error, self_similarity)"),
])
def test_a_bad_option_is_refused_in_one_line(tmp_path, overrides, needle):
    r = run_cli([*overrides, *TINY, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    line = refused_in_one_line(r)
    assert needle in line, line


def test_validation_reads_the_joint_losses_off_their_source():
    from nstexp.loss_catalogue import classes_in_source, joint_losses

    assert joint_losses() == {"style": {"strotss", "nnst", "nnst_split"}, "content": {"self_similarity"}}
    declared = classes_in_source()
    for kind, table in (("style", STYLE_LOSSES), ("content", CONTENT_LOSSES)):
        assert {n for n, v in declared[kind].items() if v.get("joint")} == {n for n, c in table.items() if c.joint}
    assert self_similarity.SelfSimilarity.guided is False and strotss.STROTSS.guided is False


def test_a_tiny_run_of_the_recipe_completes(tmp_path):
    # Levels 34 and 48 px: the targets rebuilt at each level, every recipe layer down to relu5_3
    # (fewer samples than the recipe's, for the CPU's sake).
    r = run_cli(["experiment=strotss", *TINY, "scales.min=32", "scales.factor=1.4142135623730951",
                 "style.strotss.samples=256",
                 "style.strotss.style_samples=500", "content.self_similarity.samples=256",
                 f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert {k for k in rows[0] if k.startswith("loss/style/")} == {"loss/style/hypercolumn"}
    assert {k for k in rows[0] if k.startswith("loss/content/")} == {"loss/content/hypercolumn"}
    assert all(np.isfinite(row["loss/total"]) and row["loss/style"] > 0 for row in rows)
    assert (tmp_path / "run" / "final.png").is_file()


def test_the_recipe_lowers_its_loss_over_a_few_steps(tmp_path):
    """One level at 48 px, 8 steps from the content image: the style term (fresh random positions at
    every step, so it wobbles) ends well below where it started, and the total below its value
    after the first step (at step 0 the content term is 0: the image is the content)."""
    r = run_cli(["experiment=strotss", *TINY, "steps=8", "scales.min=null", "style.strotss.samples=256",
                 "style.strotss.style_samples=500", "content.self_similarity.samples=256",
                 f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [row["step"] for row in rows] == list(range(9))
    style = [row["loss/style"] for row in rows]
    assert rows[0]["loss/content"] == 0.0
    assert np.mean(style[-3:]) < 0.9 * style[0], style
    assert rows[-1]["loss/total"] < 0.9 * rows[1]["loss/total"], [row["loss/total"] for row in rows]
