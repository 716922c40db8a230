"""CNNMRF's neural-patch style loss (style.loss=mrf) against independent references: a brute-force
numpy search by normalized cross-correlation, losses of 0 where every result patch is one of the
style's, torch's gradcheck, torch.rot90 for the rotated style copies."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY, refused_in_one_line, run_cli, sections
from nstexp.config import MRFConfig, StyleConfig
from nstexp.losses import STYLE_LOSSES, mrf
from nstexp.losses.mrf import Patches, extract, mrf_loss, nearest, rotate


def _feats(seed, n=4, h=7, w=6, dtype=torch.float64):
    return torch.randn(1, n, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _loss(**options):
    return STYLE_LOSSES["mrf"](StyleConfig(loss="mrf", mrf=MRFConfig(**options)), 0)


def _value(f, styles, shares=None, **options):
    loss = _loss(**options)
    return loss.distance(f, loss.target(styles, shares or [1.0 / len(styles)] * len(styles)))


def _numpy_patches(f, k, stride):
    """Every k x k patch on the grid (every `stride`-th start, then the last), (m, N k k), loops."""
    a = f[0].numpy()
    n, h, w = a.shape
    starts = lambda size: sorted(set(range(0, size - k + 1, stride)) | {size - k})  # noqa: E731
    return np.array([a[:, i:i + k, j:j + k].ravel() for i in starts(h) for j in starts(w)])


def _brute_force(x, y, k, stride):
    """For each patch of x the index of y's patch of highest normalized cross-correlation, one
    pair at a time, and the mean squared distance to the matches."""
    px, py = _numpy_patches(x, k, stride), _numpy_patches(y, k, stride)
    best = []
    for a in px:
        ncc = [a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in py]
        best.append(int(np.argmax(ncc)))
    return np.array(best), np.mean((px - py[best]) ** 2)


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (2, 1), (1, 1)])
def test_the_matching_is_a_brute_force_search_by_normalized_cross_correlation(k, stride):
    x, y = _feats(0, h=7, w=6), _feats(1, h=8, w=9)
    best, value = _brute_force(x, y, k, stride)
    idx = nearest(extract(x, k, stride), Patches(extract(y, k, stride)[0]))
    assert idx[0].tolist() == best.tolist()
    assert _value(x, [y], patch_size=k, stride=stride).item() == pytest.approx(value, rel=1e-12)


def test_the_sum_is_the_papers_energy():
    x, y = _feats(0, h=7, w=6), _feats(1, h=8, w=9)
    best, _ = _brute_force(x, y, 3, 2)
    px, py = _numpy_patches(x, 3, 2), _numpy_patches(y, 3, 2)
    energy = np.sum((px - py[best]) ** 2)  # E_s = Σ_i ‖Ψ_i − Ψ^s_NN(i)‖²
    assert _value(x, [y], stride=2, reduction="sum").item() == pytest.approx(energy, rel=1e-12)
    assert _value(x, [y], stride=2).item() == pytest.approx(energy / px.size, rel=1e-12)
    loss = _loss(stride=2, reduction="sum")
    t = loss.target([y], [1.0])
    assert loss.distance(x, t, torch.ones(1, 1, 7, 6)).item() == pytest.approx(energy, rel=1e-12)


def test_the_recipes_weight_gives_cnnmrfs_gradient_on_average():
    """CNNMRF's gradient at a position is 1e-4 (F − T̄), T̄ the mean of the matches of the patches
    covering it (mylib/mrf.lua, by loops here). A flat style makes every match the same patch; the
    recipe's weight times the sum's gradient agrees with it on average over the positions of
    relu3_1 at 384 x 256 px, and by the coverage (4, 2 or 1 patches at stride 2) at each."""
    from nstexp.losses.mrf import grid

    v = torch.randn(4, dtype=torch.float64)
    style = v.view(1, 4, 1, 1).expand(1, 4, 20, 20).contiguous()
    f = _feats(0, h=64, w=96).requires_grad_()
    weight = 2.2222e-5  # conf/experiment/cnnmrf.yaml
    loss = _loss(stride=2, reduction="sum")
    (weight * loss.distance(f, loss.target([style], [1.0]))).sum().backward()
    count = np.zeros((64, 96))
    for i in grid(64, 3, 2):
        for j in grid(96, 3, 2):
            count[i:i + 3, j:j + 3] += 1
    theirs = 1e-4 * (f.detach() - v.view(1, 4, 1, 1)).numpy()  # every position is covered
    ratio = f.grad.numpy() / theirs
    assert ratio.mean() == pytest.approx(1.0, rel=1e-3)
    assert np.allclose(ratio, (count / count.mean())[None, None], rtol=1e-3)
    assert sorted(np.unique(count)) == [1, 2, 4]


def test_the_match_is_by_correlation_not_by_euclidean_distance():
    """1x1 patches: each result position is a positive multiple of one style position; the
    nearest style point by distance is another one, the most correlated is its own."""
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.3, 0.3, 0.3]], dtype=torch.float64)
    style = y.T.reshape(1, 3, 2, 2)  # 4 positions
    x = torch.stack([0.2 * y[0], 0.25 * y[1], 0.4 * y[2]]).T.reshape(1, 3, 1, 3)
    idx = nearest(extract(x, 1, 1), Patches(extract(style, 1, 1)[0]))
    assert idx[0].tolist() == [0, 1, 2]
    assert np.linalg.norm(0.2 * y[0] - y[3]) < np.linalg.norm(0.2 * y[0] - y[0])  # L2 would pick the grey one


def _tiled(tile, reps, shift=(0, 0), crop=None):
    out = tile.repeat(1, 1, reps, reps).roll(shift, dims=(2, 3))
    return out if crop is None else out[..., :crop[0], :crop[1]]


def test_the_loss_is_zero_when_every_result_patch_is_one_of_the_styles():
    y = _feats(1, h=10, w=11)
    assert _value(y, [y]).item() == 0  # the style itself
    assert _value(y[..., 2:9, 1:8], [y]).item() == 0  # a crop of it
    # A periodic texture rearranged: shifted by a fraction of its period, a different size.
    tile = _feats(2, h=4, w=4)
    style, result = _tiled(tile, 3), _tiled(tile, 4, shift=(1, 2), crop=(10, 13))
    assert not torch.equal(result[..., :12, :12], style)
    assert _value(result, [style]).item() == pytest.approx(0, abs=1e-28)
    assert _value(_feats(3, h=10, w=13), [style]).item() > 0.5


def test_blended_styles_pool_their_patches_and_a_zero_share_leaves_an_image_out():
    a, b = _feats(1, h=9, w=8), _feats(2, h=8, w=10)
    crop = b[..., 1:7, 2:9]
    assert _value(crop, [a, b], [0.9, 0.1]).item() == 0  # the shares do not weigh a nearest neighbour
    assert _value(crop, [a, b], [1.0, 0.0]).item() == pytest.approx(_value(crop, [a]).item(), rel=1e-12)


def test_chunked_search_equals_the_unchunked_one(monkeypatch):
    x, y = _feats(0, n=8, h=12, w=11), _feats(1, n=8, h=13, w=10)
    target = Patches(extract(y, 3, 1)[0])
    whole = nearest(extract(x, 3, 1), target, chunk=10**6)
    for chunk in (1, 7, 64):
        assert torch.equal(nearest(extract(x, 3, 1), target, chunk=chunk), whole)
    monkeypatch.setattr(mrf, "CHUNK_ELEMENTS", 5 * len(target))  # the automatic chunk: 5 result patches
    assert torch.equal(nearest(extract(x, 3, 1), target), whole)
    loss = _loss()
    loss.chunk = 3
    t = loss.target([y], [1.0])
    assert loss.distance(x, t).item() == mrf_loss(x, t, 3, 1, chunk=10**6).item()


def test_the_gradient_is_that_of_the_distance_to_the_held_matches():
    x, y = _feats(0, h=6, w=5).requires_grad_(), _feats(1, h=7, w=7)
    target = Patches(extract(y, 3, 1)[0])
    assert torch.autograd.gradcheck(lambda f: mrf_loss(f, target, 3, 2), (x,))


@pytest.mark.parametrize("bf16", [False, True])
def test_finite_gradients_in_fp32_and_bf16(bf16):
    style = torch.rand(1, 8, 12, 12, generator=torch.Generator().manual_seed(0)) * 50
    loss = _loss(stride=2)
    for f, target in ((torch.full((1, 8, 16, 16), 3.0), loss.target([style], [1.0])),
                      (torch.zeros(1, 8, 16, 16), loss.target([style], [1.0])),  # ReLU's zeros: norm 0
                      (style.clone(), loss.target([style], [1.0]))):  # at its minimum
        f.requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            value = loss.distance(f * 1.0, target)
        value.sum().backward()
        assert torch.isfinite(value).all() and torch.isfinite(f.grad).all()


def test_a_guide_weighs_the_patches_inside_it():
    x, y = _feats(0, h=8, w=9), _feats(1, h=8, w=8)
    loss = _loss()
    t = loss.target([y], [1.0])
    assert loss.distance(x, t, torch.ones(1, 1, 8, 9)).item() == pytest.approx(loss.distance(x, t).item(), rel=1e-12)
    guide = torch.zeros(1, 1, 8, 9)
    guide[..., :4] = 1.0
    changed = x.clone()
    changed[..., 6:] = 5.0  # columns no patch touching the guide reaches (their first column is >= 4)
    assert loss.distance(changed, t, guide).item() == pytest.approx(loss.distance(x, t, guide).item(), rel=1e-12)
    assert loss.distance(changed, t).item() != pytest.approx(loss.distance(x, t).item(), rel=1e-3)


def test_a_rotated_copy_is_torchs_rot90_and_its_patches_join_the_target():
    from nstexp.losses.objective import Objective
    from nstexp.network.backbone import FeatureExtractor

    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    turned = torch.rot90(image, 1, (2, 3))
    assert torch.allclose(rotate(image, 90), turned, atol=1e-5)
    assert [tuple(v.shape[-2:]) for v in _loss(rotations=[10], scales=[0.5]).views(image)] == [
        (32, 32), (16, 16), (27, 27), (14, 14)]
    extractor = FeatureExtractor("vgg19", "caffe", ["relu1_1", "relu2_1", "relu4_2"])
    plain, rotated = ({"loss": "mrf", "mrf": MRFConfig(rotations=r)} for r in ([], [90.0]))
    values = [Objective(extractor, turned, [image], *sections({"relu4_2": 1.0}, {"relu1_1": 1.0, "relu2_1": 1.0},
                                                               style=s))(turned).style for s in (plain, rotated)]
    assert values[1].item() < 1e-6 * values[0].item()  # (rot90 and the bilinear rotation agree to 1e-5)


def test_the_same_seed_repeats_exactly():
    from nstexp.losses.objective import Objective
    from nstexp.network.backbone import FeatureExtractor

    extractor = FeatureExtractor("vgg19", "caffe", ["relu3_1", "relu4_1", "relu4_2"])
    gen = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, 48, 32, generator=gen), torch.rand(1, 3, 40, 40, generator=gen)
    args = sections({"relu4_2": 1.0}, {"relu3_1": 2.0, "relu4_1": 1.0},
                    style={"loss": "mrf", "mrf": MRFConfig(stride=2, rotations=[7.5], scales=[1.05])})
    out = []
    for _ in range(2):
        image = content.clone().requires_grad_()
        terms = Objective(extractor, content, [style], *args, seed=3)(image)
        terms.total.sum().backward()
        out.append((terms.total.detach(), image.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_the_memory_estimate_counts_the_patches_and_similarities():
    from conftest import tiny_cfg
    from nstexp.network.backbone import FeatureExtractor
    from nstexp.run.inputs import memory_check

    extractor = FeatureExtractor("vgg19", "random", ["relu3_1", "relu4_1", "relu4_2"])
    estimates = {}
    for name, overrides in {"gram": [], "mrf": ["style.loss=mrf"], "copies": [
            "style.loss=mrf", "style.mrf.rotations=[-7.5,7.5]", "style.mrf.scales=[0.95,1.05]"]}.items():
        summary = {}
        layers = "layers.style={relu1_1: 0, relu2_1: 0, relu3_1: 1, relu4_1: 0, relu5_1: 0}"
        memory_check(extractor, tiny_cfg(layers, *overrides), torch.device("cpu"), summary)((512, 384), [(512, 512)])
        estimates[name] = summary["memory_estimate_mb"]
    # relu3_1, D = 2304: the style's 126 x 126 patches (140 MiB) and the result's 126 x 94 (104 MiB)
    # at the least; 9 copies of the style hold about 9 times its patches.
    assert 140 + 104 < estimates["mrf"] - estimates["gram"] < 4 * (140 + 104)
    assert estimates["copies"] - estimates["mrf"] > 7 * 140


@pytest.mark.parametrize("override,needle", [
    ("style.mrf.stride=0", "style.mrf.stride=0 must be >= 1"),
    ("style.mrf.patch_size=0", "style.mrf.patch_size=0 must be >= 1"),
    ("style.mrf.stride=4", "style.mrf.stride=4 must be <= style.mrf.patch_size=3"),
    ("style.mrf.scales=[0]", "style.mrf.scales: 0"),
    ("style.mrf.rotations=[200]", "style.mrf.rotations: 200"),
    ("style.mrf.reduction=max", "style.mrf.reduction='max' is not allowed (allowed: mean, sum)"),
])
def test_a_bad_option_is_refused_in_one_line(tmp_path, override, needle):
    r = run_cli(["style.loss=mrf", override, *TINY, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and needle in line, line


def test_copies_of_the_style_in_a_mix_are_refused_in_one_line(tmp_path):
    r = run_cli(["style.loss={mrf: 1, gram: 1}", "style.mrf.rotations=[7.5]", *TINY, f"hydra.run.dir={tmp_path}/r"],
                cwd=tmp_path)
    assert r.returncode == 2 and "take style.loss=mrf alone" in r.stderr.strip(), r.stderr


def test_features_smaller_than_a_patch_fail_in_one_line(tmp_path):
    # At 24 px the 3:2 content's relu4_1 is 3 x 2 positions.
    r = run_cli(["experiment=cnnmrf", *TINY, "size=24", "scales.min=null", f"hydra.run.dir={tmp_path}/run"],
                cwd=tmp_path)
    line = refused_in_one_line(r)  # before anything runs (nstexp.input_sizes)
    assert "relu4_1 of the result has 3x2 positions at size=24, fewer than style.mrf.patch_size=3" in line


def test_a_tiny_run_of_the_recipe_completes(tmp_path):
    r = run_cli(["experiment=cnnmrf", *TINY, "scales.min=null", "style.mrf.rotations=[7.5]",
                 f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert set(k for k in rows[0] if k.startswith("loss/style/")) == {"loss/style/relu3_1", "loss/style/relu4_1"}
    assert rows[-1]["loss/total"] < rows[0]["loss/total"]
    assert (tmp_path / "run" / "final.png").is_file()
