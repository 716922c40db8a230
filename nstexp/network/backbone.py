"""A frozen VGG feature extractor addressed by the paper's layer names.

Images enter as RGB in [0, 1]; the preprocessing the weights were trained with
happens inside the extractor, so no other code needs to know about it.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nstexp.network import loss_scaling
from nstexp.network import weights as weights_module
from nstexp.network.hardware import DTYPES
from nstexp.network.layout import LAYOUTS, POOL, layer_names

# Caffe's VGG was trained on BGR images in 0..255 with this mean pixel (B, G, R) subtracted.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The images the average pooling scale is measured on (fixed, so that adding a sample changes nothing).
CALIBRATION_SAMPLES = ("chelsea", "swirls")

# Average pooling factors by (arch, weights, padding, preprocessing, seed): see FeatureExtractor.
_CALIBRATIONS: dict[tuple, list[float]] = {}

def vgg_features(arch: str, initialize: bool = True) -> nn.Sequential:
    """VGG's `features` stack for `arch`, module for module as torchvision builds it (so state
    dicts and seeded random weights carry over), initialized with torchvision's scheme, or
    with `initialize=False` left uninitialized for a state dict to fill (drawing the random
    weights twice over, as torchvision does, takes longer than loading the real ones).

    Built without the classifier, which holds 85% of VGG's parameters (about 0.5 GB and a
    second of random initialization that style transfer never uses).
    """
    modules, channels = [], 3
    for item in LAYOUTS[arch]:
        if item == POOL:
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(channels, item, kernel_size=3, padding=1) if initialize else _empty_conv(channels, item)
            modules += [conv, nn.ReLU(inplace=True)]
            channels = item
    features = nn.Sequential(*modules)
    if not initialize:
        return features
    for m in features.modules():
        if isinstance(m, nn.Conv2d):  # as in torchvision.models.VGG.__init__
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return features


class _EmptyConv2d(nn.Conv2d):
    """nn.Conv2d whose tensors are allocated and left as they are (torch.empty)."""

    def reset_parameters(self) -> None:
        pass


def _empty_conv(channels: int, out: int) -> nn.Conv2d:
    conv = _EmptyConv2d(channels, out, kernel_size=3, padding=1)
    conv.__class__ = nn.Conv2d  # a plain convolution from here on
    return conv


class ScaledAvgPool2d(nn.Module):
    """2x2 average pooling times a constant (1 for the paper's plain average pooling)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=2, stride=2) * self.scale


def reflect_pad(x: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """F.pad(x, (pw, pw, ph, ph), mode="reflect") made of slices, flips and concatenations,
    whose backward pass adds whole tensors in a fixed order. torch's reflection-padding
    backward on CUDA adds with atomics, so torch.use_deterministic_algorithms refuses it."""
    ph, pw = padding
    x = torch.cat([x[..., 1:ph + 1, :].flip(-2), x, x[..., -ph - 1:-1, :].flip(-2)], dim=-2)
    return torch.cat([x[..., 1:pw + 1].flip(-1), x, x[..., -pw - 1:-1].flip(-1)], dim=-1)


class ReflectConv2d(nn.Conv2d):
    """A convolution with reflect padding that stays usable under deterministic=true."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not torch.are_deterministic_algorithms_enabled():
            return super()._conv_forward(input, weight, bias)  # torch's single padding kernel
        return F.conv2d(reflect_pad(input, self.padding), weight, bias, self.stride, 0, self.dilation, self.groups)


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
        precision: str = "fp32",
        channels_last: bool = False,
        checkpoint: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # makes weights=random reproducible
            features = vgg_features(arch, initialize=weights == "random")
        state = weights_module.state_dict_for(arch, weights, features)  # checked against the whole network
        names = layer_names(arch)
        depth = max(names.index(n) for n in layers) + 1
        features = nn.Sequential(*list(features)[:depth])
        if state is not None:  # copied in for the modules kept only (a full VGG-19 is 80 MB)
            features.load_state_dict({k: v for k, v in state.items() if int(k.split(".", 1)[0]) < depth})

        modules = []
        for module in features:
            if isinstance(module, nn.ReLU):
                # In-place ReLUs would overwrite the conv outputs we read.
                module = nn.ReLU(inplace=False)
            elif isinstance(module, nn.Conv2d):
                module.padding_mode = padding  # zeros (VGG's), reflect or replicate
                if padding == "reflect":
                    module.__class__ = ReflectConv2d  # the same module, another padding path
            elif isinstance(module, nn.MaxPool2d) and pooling != "max":
                module = ScaledAvgPool2d()
            modules.append(module)
        self.features = nn.Sequential(*modules).eval().requires_grad_(False)
        self.arch, self.padding = arch, padding
        self.names = names[:depth]
        self.layers = set(layers)
        # The blocks of the network, (start, stop) module indices, each ending at a pooling:
        # the units of activation checkpointing.
        pools = [i + 1 for i, n in enumerate(self.names) if n.startswith("pool")]
        self.blocks = list(zip([0, *pools], [*pools, depth]))
        self.blocks = [(a, b) for a, b in self.blocks if b > a]

        if preprocessing == "auto":
            preprocessing = "caffe" if weights in weights_module.CAFFE_SOURCES else "imagenet"
        self.preprocessing = preprocessing
        if preprocessing == "caffe":
            mean, scale = torch.tensor(CAFFE_MEAN_BGR), torch.ones(3)
        else:
            mean, scale = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("scale", scale.view(1, 3, 1, 1))
        if pooling == "avg_scaled":
            # Before the weights change type: the factors are the weights' own, the same in
            # every precision, and nothing but `forward` runs the network at its precision.
            # Named weights give the same factors every time: measured once per process (a
            # sweep's jobs, the suite's runs), the cost of a full forward pass at 256 px.
            key = (arch, weights, padding, preprocessing, seed) if weights in weights_module.SOURCES else None
            factors = _CALIBRATIONS.get(key, [])
            pools = [m for m in self.features if isinstance(m, ScaledAvgPool2d)]
            if key is None or len(factors) < len(pools):
                factors = self._calibrate_average_pooling()
                if key is not None:
                    _CALIBRATIONS[key] = factors
            for module, factor in zip(pools, factors):
                module.scale.fill_(factor)

        # bf16/fp16: the convolutions hold their weights in that type once (autocast would cast
        # them at every call) and the network hands its features back in fp32, so the Gram
        # matrices, the losses and everything downstream stay fp32.
        self.precision = precision
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                module.to(DTYPES[precision])
        self.channels_last = channels_last
        self.checkpoint = checkpoint
        if channels_last:
            self.features.to(memory_format=torch.channels_last)
        self._features = torch.compile(self._features_eager, dynamic=False) if compile else self._features_eager

    @torch.no_grad()
    def _calibrate_average_pooling(self) -> list[float]:
        """Scale each average pooling so its mean output equals max pooling's on the same input;
        returns the factors, in order.

        Measured on the bundled samples chelsea and swirls at 256 px, pooling by pooling through this network,
        so every later layer sees activations of about the magnitude it was trained on. (Gatys et
        al. swap in average pooling without rescaling; crowsonkb multiplies by 2, a value for
        torchvision's weights: on the Caffe VGG-19 the factors come out 1.37, 1.90, 1.52 and 2.13.)
        """
        from nstexp import images  # the images module knows the bundled samples

        batch = [images.to_tensor(images.load_image(f"sample:{name}").resize((256, 256)))
                 for name in CALIBRATION_SAMPLES]
        x = self.preprocess(torch.cat(batch))
        factors = []
        for module in self.features:
            if isinstance(module, ScaledAvgPool2d):
                factors.append((F.max_pool2d(x, 2).mean() / F.avg_pool2d(x, 2).mean()).item())
                module.scale.fill_(factors[-1])
            x = module(x)
        return factors

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if self.preprocessing == "caffe":
            image = image.flip(1) * 255.0  # RGB -> BGR, 0..255
        return (image - self.mean) / self.scale

    def forward(self, image: torch.Tensor, layers=None) -> dict[str, torch.Tensor]:
        """Features of the extractor's layers, or of `layers` among them only (the network then
        stops at the deepest of those), in fp32 whatever the precision."""
        wanted = frozenset(self.layers if layers is None else layers)
        x = self.preprocess(image)
        if self.precision == "fp16":  # its range needs the gradients scaled (see nstexp.network.loss_scaling)
            return loss_scaling.features(self._features, x, [n for n in self.names if n in wanted], wanted)
        return self._features(x, wanted)

    def _features_eager(self, x: torch.Tensor, wanted: frozenset) -> dict[str, torch.Tensor]:
        x = x.to(DTYPES[self.precision], memory_format=torch.channels_last if self.channels_last
                 else torch.contiguous_format)
        out: dict[str, torch.Tensor] = {}
        for start, stop in self.blocks:
            names = [n for n in self.names[start:stop] if n in wanted]
            block = partial(self._block, start, stop, frozenset(names))
            if self.checkpoint and x.requires_grad:
                # Keep only the block's input and the requested features; recompute the rest
                # during the backward pass.
                x, *feats = checkpoint(block, x, use_reentrant=False)
            else:
                x, *feats = block(x)
            out.update(zip(names, feats))
            if len(out) == len(wanted):
                break
        return {k: v.float() for k, v in out.items()}

    def _block(self, start: int, stop: int, wanted: frozenset, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Modules start..stop-1 on x: (the block's output, the wanted features in order)."""
        feats = []
        for name, module in zip(self.names[start:stop], self.features[start:stop]):
            x = module(x)
            if name in wanted:
                feats.append(x)
        return (x, *feats)
