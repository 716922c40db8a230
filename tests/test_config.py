"""Config composition for every group option, and one-line errors for bad values."""

import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import REPO, run_cli
from nstexp import cli
from nstexp.config import validate

GROUPS = ["backbone", "layers", "loss", "optimizer", "init"]


def _options(group):
    return sorted(f[:-5] for f in os.listdir(os.path.join(cli.CONFIG_DIR, group)) if f.endswith(".yaml"))


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=cli.CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if group == "init" and option == "image":
        overrides.append("init.path=start.png")
    if group == "layers" and option == "keras_vgg16":
        overrides.append("backbone=vgg16")
    cfg = _compose(overrides)
    validate(cfg)
    if group == "optimizer":
        assert cfg.optimizer.name == option
    if group == "init":
        assert cfg.init.kind == option
    if group == "layers":
        assert cfg.layers.name == option and cfg.layers.style


def test_defaults_are_the_paper():
    cfg = _compose([])
    assert cfg.backbone.arch == "vgg19" and cfg.backbone.weights == "caffe"
    assert dict(cfg.layers.content) == {"relu4_2": 1.0}
    assert dict(cfg.layers.style) == {f"relu{i}_1": 0.2 for i in range(1, 6)}
    assert cfg.content.normalization == "gatys" and cfg.style.normalization == "gatys"
    assert cfg.optimizer.name == "lbfgs"


def test_command_line_replaces_preset_values():
    cfg = _compose(["loss=gatys", "style.weight=1e6", "layers.style={relu1_1: 1.0}",
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
        ("optimizer=sgd", "optimizer=sgd: unknown option for optimizer (allowed: adam, lbfgs)"),
        ("+layers.style.relu9_1=1", "unknown layer 'relu9_1' for vgg19 (allowed: conv1_1,"),
        ("layers.style={relu9_1: 1.0}", "Key 'relu9_1' is not in struct (prefix the override with + to add"),
        ("layers=picasso", "layers=picasso: unknown option for layers (allowed: hooks_blog, keras_vgg16,"),
        ("backbone.arch=vgg16", "backbone.weights=caffe exists only for vgg19, not vgg16"),
        ("content.weight=-1", "content.weight=-1.0 must be >= 0"),
        ("style.normalization=l2", "style.normalization='l2' is not allowed (allowed: gatys, mean, cosine)"),
        ("device=tpu", "device='tpu' is not allowed"),
        ("style.weight=1,-2", "style.weight=-2.0 must be >= 0"),
    ],
)
def test_bad_values_fail_in_one_line(tmp_path, override, needle):
    r = run_cli([override, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing ran


def test_config_dir_is_the_repository_conf():
    assert os.path.samefile(cli.CONFIG_DIR, os.path.join(REPO, "conf")) or cli.CONFIG_DIR.endswith(
        os.path.join("nstexp", "conf")
    )
