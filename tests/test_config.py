"""Config composition for every group option, and one-line errors for bad values."""

import os

import pytest

from conftest import REPO, compose_cfg, run_cli
from nstexp import composition
from nstexp.validation import validate

GROUPS = ["backbone", "layers", "loss", "optimizer", "init"]


def _options(group):
    return sorted(f[:-5] for f in os.listdir(os.path.join(composition.CONFIG_DIR, group)) if f.endswith(".yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if group == "init" and option == "image":
        overrides.append("init.path=start.png")
    if group == "layers" and option == "keras_vgg16":
        overrides.append("backbone=vgg16")
    cfg = compose_cfg(overrides)
    validate(cfg)
    if group == "optimizer":
        assert cfg.optimizer.name == option
    if group == "init":
        assert cfg.init.kind == option
    if group == "layers":
        assert cfg.layers.name == option and cfg.layers.style


def test_defaults_are_the_papers_network_and_layers_with_the_chosen_loss():
    cfg = compose_cfg([])
    assert cfg.backbone.arch == "vgg19" and cfg.backbone.weights == "caffe"
    assert dict(cfg.layers.content) == {"relu4_2": 1.0}
    assert dict(cfg.layers.style) == {f"relu{i}_1": 0.2 for i in range(1, 6)}
    # docs/default.md: mean-normalized terms, balanced layers, β = 20, TV 20, coarse to fine from 128 px by 2.
    assert cfg.content.normalization == "mean" and cfg.style.normalization == "mean"
    assert cfg.style.loss == "gram" and cfg.style.balance == "content"
    assert (cfg.content.weight, cfg.style.weight, cfg.tv.weight, cfg.tv.exponent) == (1.0, 20.0, 20.0, 1.0)
    assert (cfg.scales.min, cfg.scales.factor) == (128, 2.0)
    assert cfg.optimizer.name == "lbfgs" and cfg.init.kind == "content"


RECIPES = sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "conf", "experiment")) if f.endswith(".yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_no_recipe_inherits_the_defaults_coarse_to_fine_or_balance(recipe):
    """A recipe is its source's settings: the default's levels and layer balance are not."""
    cfg = compose_cfg([f"experiment={recipe}"])
    with open(os.path.join(REPO, "conf", "experiment", f"{recipe}.yaml")) as f:
        text = f.read()
    assert cfg.scales.min is None or "scales:" in text
    assert cfg.style.balance == "none" or "balance" in text


def test_command_line_replaces_preset_values():
    cfg = compose_cfg(["loss=gatys", "style.weight=1e6", "layers.style={relu1_1: 1.0}",
                    "+layers.style.conv3_1=0.5", "layers.style.relu5_1=0"])
    assert cfg.style.weight == 1e6
    # Dict overrides merge into the preset; weight 0 is how a layer is dropped.
    assert cfg.layers.style.relu1_1 == 1.0 and cfg.layers.style.conv3_1 == 0.5
    assert cfg.layers.style.relu5_1 == 0.0


@pytest.mark.parametrize(
    "override,needle",
    [
        ("style.wieght=3", "unknown key 'style.wieght' (allowed in style: image,"),
        ("style.weight=abc", "style.weight=abc"),
        ("optimizer=sgd", "optimizer=sgd: unknown option for optimizer (allowed: adam, lbfgs, rmsprop)"),
        ("+layers.style.relu9_1=1", "unknown layer 'relu9_1' for vgg19 (allowed: conv1_1,"),
        ("layers.style={relu9_1: 1.0}", "Key 'relu9_1' is not in struct (prefix the override with + to add"),
        ("layers=picasso", "layers=picasso: unknown option for layers (allowed: hooks_blog, keras_vgg16,"),
        ("backbone.arch=vgg16", "backbone.weights=caffe exists only for vgg19, not vgg16"),
        ("content.weight=-1", "content.weight=-1.0 must be >= 0"),
        ("style.normalization=l2", "style.normalization='l2' is not allowed (allowed: gatys, mean, cosine)"),
        ("device=tpu", "device='tpu' is not allowed"),
        ("style.weight=1,-2", "style.weight=-2.0 must be >= 0"),
        ("optimizer.lr=nan", "optimizer.lr=nan must be a finite number"),
        ("style.blend_weights=[0]", "style.blend_weights are all 0"),
    ],
)
def test_bad_values_fail_in_one_line(tmp_path, override, needle):
    r = run_cli([override, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing ran


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["optimizer.lr=nan"], "optimizer.lr=nan must be a finite number"),
        (["optimizer=adam", "optimizer.lr=inf"], "optimizer.lr=inf must be a finite number"),
        (["optimizer.lr=0"], "optimizer.lr=0.0 must be > 0"),
        (["style.weight=inf"], "style.weight=inf must be a finite number"),
        (["content.weight=-inf"], "content.weight=-inf must be a finite number"),
        (["tv.weight=nan"], "tv.weight=nan must be a finite number"),
        (["layers.style.relu1_1=inf"], "layers.style.relu1_1=inf must be a finite number"),
        (["style.scale=nan"], "style.scale=nan must be a finite number"),
        (["style.scale=0"], "style.scale=0.0 must be > 0"),
        (["style.blend_images=[a.png]", "style.blend_weights=[1,nan]"], "style.blend_weights[1]=nan"),
        (["style.blend_images=[a.png]", "style.blend_weights=[0,0]"], "style.blend_weights are all 0"),
        (["optimizer=adam", "optimizer.betas=[0.9,1.0]"], "optimizer.betas=[0.9, 1.0] must be two numbers in [0, 1)"),
        (["optimizer=adam", "optimizer.betas=[0.9]"], "must be two numbers"),
        (["optimizer=adam", "optimizer.eps=0"], "optimizer.eps=0.0 must be > 0"),
        (["optimizer.history_size=0"], "optimizer.history_size=0 must be >= 1"),
        (["size=8"], "size=8 must be >= 16"),
        (["steps=-1"], "steps=-1 must be >= 0"),
        (["seed=-1"], "seed=-1 must be in [0, 2**63)"),
        (["log_every=0"], "log_every=0 must be >= 1"),
        (["style.loss=w3"], "style.loss='w3' is not allowed (allowed: gram, w2, sliced, mmd_linear, mmd_poly, "
                            "mmd_gaussian, bn, cmd, histogram, mrf, strotss, nnst, nnst_split)"),
        (["style.loss={gram:1,hist:0.5}"], "style.loss: unknown loss 'hist' in the mix (allowed: gram, w2, sliced,"),
        (["style.loss={gram:1,histogram:-1}"], "style.loss.histogram=-1 must be a finite number >= 0 (a weight of the mix)"),
        (["style.loss={gram:0}"], "style.loss: every weight of the mix is 0"),
        (["style.mmd.gamma=0"], "style.mmd.gamma=0.0 must be > 0"),
        (["style.mmd.samples=1"], "style.mmd.samples=1 must be 0 (the linear-time estimator) or >= 2"),
        (["style.cmd.order=0"], "style.cmd.order=0 must be >= 1"),
        (["laplacian.weight=-1"], "laplacian.weight=-1.0 must be >= 0"),
        (["laplacian.pool=-1"], "laplacian.pool=-1 must be >= 0"),
        (["laplacian.weight=1", "content.mask=sample:coffee_saucer"], "laplacian.weight > 0 does not take content.mask"),
        (["tv.exponent=0.5"], "tv.exponent=0.5 must be >= 1"),
        (["scales.min=8"], "scales.min=8 must be >= 16"),
        (["scales.min=64", "scales.factor=1"], "scales.factor=1.0 must be > 1"),
        (["scales.min=64", "scales.first_steps=-2"], "scales.first_steps=-2 must be >= 0"),
        (["scales.content_weight_ratio=0"], "scales.content_weight_ratio=0.0 must be > 0"),
        (["scales.last_lr=-1e-3"], "scales.last_lr=-0.001 must be > 0"),
        (["scales.content_weight_at=middle"],
         "scales.content_weight_at='middle' is not allowed (allowed: finest, coarsest)"),
        (["optimizer=adam", "optimizer.ema=1.0"], "optimizer.ema=1.0 must be in [0, 1)"),
        (["style.balance=layers"], "style.balance='layers' is not allowed (allowed: none, content)"),
        (["backbone.padding=wrap"], "backbone.padding='wrap' is not allowed (allowed: zeros, reflect, replicate, circular)"),
        (["backbone.pooling=l2"], "backbone.pooling='l2' is not allowed (allowed: max, avg, avg_scaled)"),
    ],
)
def test_every_number_is_finite_and_in_range(overrides, needle):
    from nstexp.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(overrides))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_config_dir_is_the_repository_conf():
    assert os.path.samefile(composition.CONFIG_DIR, os.path.join(REPO, "conf")) or composition.CONFIG_DIR.endswith(
        os.path.join("nstexp", "conf")
    )
