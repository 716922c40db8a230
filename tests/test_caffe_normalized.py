"""backbone.weights=caffe_normalized, Gatys et al.'s rescaled VGG-19, against closed forms: on the
bundled set every filter's mean activation is 1, and every response is the raw network's divided
by its filter's mean, whatever the pooling."""

import os
import re

import pytest
import torch
from PIL import Image

from conftest import run_cli
from nstexp import config, images
from nstexp.network import normalization, weights
from nstexp.network.backbone import FeatureExtractor
from nstexp.network.layout import layer_names

NAMES = list(layer_names("vgg19"))  # conv1_1 .. pool5: every module's output
RELUS = [n for n in NAMES if n.startswith("relu")]
SET_DIR = os.path.join(os.path.dirname(images.__file__), "samples", "normalization")


def _set_means(weights_name):
    """Each relu filter's activation averaged over positions, then over the bundled images,
    computed here from the network's responses: {relu: (C,) float64}."""
    net = FeatureExtractor("vgg19", weights_name, RELUS)
    sums = {n: 0.0 for n in RELUS}
    paths = normalization.image_set()
    with torch.no_grad():
        for path in paths:
            feats = net(images.to_tensor(images.load_image(path)))
            for n in RELUS:
                sums[n] = sums[n] + feats[n].double().mean(dim=(0, 2, 3))
    return {n: s / len(paths) for n, s in sums.items()}


@pytest.fixture(scope="module")
def raw_means():
    return _set_means("caffe")


def _scale(means, name):
    """The factor a layer's response is divided by: its filters' means (a pooling takes its
    input's), 1 for a filter that never fired on the set."""
    i = NAMES.index(name)
    relu = name.replace("conv", "relu") if name.startswith("conv") else name
    if name.startswith("pool"):
        relu = NAMES[i - 1]
    m = means[relu]
    return torch.where(m > 0, m, torch.ones_like(m)).view(1, -1, 1, 1)


def test_the_set_is_small_licensed_natural_images():
    paths = normalization.image_set()
    assert 8 <= len(paths) <= 16
    readme = open(os.path.join(SET_DIR, "README.md")).read()
    for path in paths:
        with Image.open(path) as img:
            assert max(img.size) <= 256
        name = os.path.basename(path)
        row = re.search(rf"^\| `{re.escape(name)}` \|.*$", readme, re.M)
        assert row and re.search(r"CC0|public domain", row[0], re.I), f"{name}: no licence in the README"


def test_the_shipped_means_equal_a_fresh_measurement(raw_means):
    shipped = weights.read_means()
    assert set(shipped) == set(RELUS)
    for n in RELUS:
        # rtol 1e-4: the fp32 network's sums differ with the CPU's vector width (AVX2 against
        # AVX-512: up to 1.1e-5 relative, on relu5_4's filter of mean 0.005); a wrong mean is off by far more.
        torch.testing.assert_close(shipped[n].double(), raw_means[n], rtol=1e-4, atol=1e-9, msg=n)


def test_on_the_set_every_filter_has_mean_activation_one(raw_means):
    normalized = _set_means("caffe_normalized")
    for n in RELUS:
        fired = raw_means[n] > 0
        torch.testing.assert_close(normalized[n][fired], torch.ones(int(fired.sum()), dtype=torch.float64),
                                   rtol=0, atol=1e-4, msg=n)
        assert (normalized[n][~fired] == 0).all()  # a filter silent on the set stays silent there
    assert int(sum((raw_means[n] == 0).sum() for n in RELUS)) <= 1  # one of relu2_1's


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_every_response_is_the_raw_one_over_its_filters_mean(raw_means, pooling):
    # Max and average pooling commute with positive per-channel scales: the same means hold
    # for both, and for every conv (before its ReLU), relu and pool layer of a random image.
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    raw = FeatureExtractor("vgg19", "caffe", NAMES, pooling=pooling)(image)
    ours = FeatureExtractor("vgg19", "caffe_normalized", NAMES, pooling=pooling)(image)
    for n in NAMES:
        expected = (raw[n].double() / _scale(raw_means, n)).float()
        torch.testing.assert_close(ours[n], expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item(), msg=n)


def test_the_names_agree_and_take_caffe_preprocessing():
    assert config.WEIGHTS == weights.SOURCES and config.CAFFE_WEIGHTS == weights.CAFFE_SOURCES
    assert FeatureExtractor("vgg19", "caffe_normalized", ["relu1_1"]).preprocessing == "caffe"


def test_the_average_pooling_calibration_is_the_normalized_networks_own():
    # avg_scaled factors are max pooling's mean over average pooling's, measured per weights:
    # the normalized network weighs its channels differently, so its factors differ from caffe's.
    layers = ["relu3_1"]
    raw, ours = (FeatureExtractor("vgg19", w, layers, pooling="avg_scaled") for w in ("caffe", "caffe_normalized"))
    scales = [[m.scale.item() for m in net.features if hasattr(m, "scale")] for net in (raw, ours)]
    assert len(scales[1]) == 2 and all(s > 1 for s in scales[1])
    assert scales[0] != pytest.approx(scales[1], rel=1e-3)


def test_vgg16_is_refused_in_one_line(tmp_path):
    r = run_cli(["backbone.weights=caffe_normalized", "backbone.arch=vgg16", f"hydra.run.dir={tmp_path}/run"],
                cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == ["error: backbone.weights=caffe_normalized exists only for vgg19, not vgg16 "
                     "(use backbone.weights=imagenet|random|<path>)"]


def test_a_tiny_run_with_the_paper_recipe_completes(tmp_path):
    import nstexp

    image, summary = nstexp.stylize(
        "sample:chelsea", "sample:swirls", out_dir=str(tmp_path / "run"),
        **{"experiment": "gatys2016", "size": 32, "steps": 3, "eval.size": 64, "device": "cpu",
           "precision": "fp32", "snapshot_every": 0})
    assert summary["status"] == "completed" and summary["steps"] == 3 and image is not None
    assert all(torch.isfinite(torch.tensor(v)) for k, v in summary.items() if k.startswith("final/"))
