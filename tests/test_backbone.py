import os
import time

import pytest
import torch
from torchvision import models

from nstexp import backbone
from nstexp.backbone import FeatureExtractor, layer_names
from nstexp.errors import NstexpError

# torchvision VGG-19 `features` indices, from the architecture's published layout.
VGG19_INDEX = {
    "conv1_1": 0, "relu1_1": 1, "conv1_2": 2, "pool1": 4, "conv2_1": 5, "relu2_1": 6,
    "conv3_1": 10, "relu3_1": 11, "conv4_1": 19, "relu4_1": 20, "conv4_2": 21,
    "relu4_2": 22, "conv5_1": 28, "relu5_1": 29, "conv5_4": 34, "pool5": 36,
}
VGG16_INDEX = {"conv1_1": 0, "relu3_1": 11, "conv4_2": 19, "relu4_2": 20, "conv5_1": 24, "pool5": 30}


@pytest.mark.parametrize("arch,expected", [("vgg19", VGG19_INDEX), ("vgg16", VGG16_INDEX)])
def test_layer_names_match_torchvision_indices(arch, expected):
    names = layer_names(arch)
    features = getattr(models, arch)().features
    assert len(names) == len(features)
    for name, idx in expected.items():
        assert names.index(name) == idx, name
    for name, module in zip(names, features):
        kind = {"conv": torch.nn.Conv2d, "relu": torch.nn.ReLU, "pool": torch.nn.MaxPool2d}
        assert isinstance(module, kind[name[:4]]), name


def test_pools_before():
    assert backbone.pools_before("vgg19", "relu1_1") == 0
    assert backbone.pools_before("vgg19", "conv4_2") == 3
    assert backbone.pools_before("vgg19", "relu5_1") == 4


def test_caffe_weights_are_dequantized():
    raw = torch.load(backbone.caffe_weights_path(), map_location="cpu", weights_only=True)
    features = models.vgg19().features
    state = backbone.load_caffe_state_dict(features)
    # conv3_2 is features[12]: block3, second conv.
    expected = raw["block3_conv2_W_table"][raw["block3_conv2_W_q"].long()]
    assert torch.equal(state["12.weight"], expected)
    assert torch.equal(state["12.bias"], raw["block3_conv2_b"])
    assert state["34.weight"].shape == (512, 512, 3, 3)
    assert len(state) == 32  # 16 convolutions, weight and bias each
    # Real weights, not noise: the dequantized kernels take few distinct values.
    assert state["0.weight"].unique().numel() <= 256


def test_caffe_preprocessing_is_bgr_0_255_minus_mean():
    ex = FeatureExtractor("vgg19", "caffe", ["relu1_1"])
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0  # pure red in RGB [0, 1]
    x = ex.preprocess(red)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-103.939, -116.779, 255 - 123.68])


def test_imagenet_preprocessing_is_mean_std():
    ex = FeatureExtractor("vgg19", "random", ["relu1_1"])
    x = ex.preprocess(torch.full((1, 3, 1, 1), 0.5))
    assert x[0, :, 0, 0].tolist() == pytest.approx(
        [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225], rel=1e-5
    )


def test_extractor_is_truncated_frozen_and_reads_pre_relu_convs():
    ex = FeatureExtractor("vgg19", "caffe", ["conv4_2", "relu4_2"])
    assert len(ex.features) == VGG19_INDEX["relu4_2"] + 1
    assert not any(p.requires_grad for p in ex.parameters())
    out = ex(torch.rand(1, 3, 64, 64))
    assert set(out) == {"conv4_2", "relu4_2"}
    assert out["conv4_2"].min() < 0  # not overwritten by an in-place ReLU
    assert torch.equal(out["relu4_2"], out["conv4_2"].clamp(min=0))
    assert out["relu4_2"].shape == (1, 512, 8, 8)


def test_avg_pooling_option():
    ex = FeatureExtractor("vgg19", "random", ["relu2_1"], pooling="avg")
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in ex.features)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in ex.features)


def test_random_weights_are_seeded():
    a = FeatureExtractor("vgg16", "random", ["conv1_1"], seed=1).features[0].weight
    b = FeatureExtractor("vgg16", "random", ["conv1_1"], seed=1).features[0].weight
    c = FeatureExtractor("vgg16", "random", ["conv1_1"], seed=2).features[0].weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_state_dict_path(tmp_path):
    src = models.vgg16()
    path = tmp_path / "vgg16.pt"
    torch.save(src.state_dict(), path)
    ex = FeatureExtractor("vgg16", str(path), ["relu1_1"])
    assert torch.equal(ex.features[0].weight, src.features[0].weight)
    with pytest.raises(NstexpError, match="does not fit vgg19"):
        FeatureExtractor("vgg19", str(path), ["relu5_4"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(NstexpError, match="not a loadable state dict"):
        FeatureExtractor("vgg16", str(bad), ["relu1_1"])


def test_imagenet_weights_fail_fast_when_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    # Make sure no download can succeed, whatever the network.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    t = time.time()
    try:
        with pytest.raises(NstexpError, match="backbone.weights=imagenet.*put the file at"):
            FeatureExtractor("vgg19", "imagenet", ["relu1_1"])
    finally:
        torch.hub.set_dir(os.path.join(os.path.expanduser("~"), ".cache", "torch", "hub"))
    assert time.time() - t < 30
