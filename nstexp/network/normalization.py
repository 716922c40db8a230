"""The means behind `backbone.weights=caffe_normalized`: each filter's mean activation of the raw
Caffe VGG-19 over a fixed set of natural images that ships with the package.

Gatys et al. rescaled the VGG-19 "such that the mean activation of each convolutional filter over
images and positions is equal to one"; they used ImageNet, nstexp uses the bundled set in
`nstexp/samples/normalization/` (see its README for the images and their licences).
Measuring takes a full forward pass of every image (seconds on a CPU), so the means ship as
`network/caffe_normalized_means.pt` and a run only reads them; regenerate the file with

    python -m nstexp.network.normalization

and `tests/test_caffe_normalized.py` checks that the shipped file equals a fresh measurement.
"""

from __future__ import annotations

import importlib.resources
import sys

import torch

from nstexp import images
from nstexp.network.backbone import FeatureExtractor
from nstexp.network.layout import layer_names
from nstexp.network.weights import MEANS_FILE, read_means

# The paper's conv responses are read after Caffe's in-place ReLU: the relu layers.
RELU_LAYERS = tuple(n for n in layer_names("vgg19") if n.startswith("relu"))


def image_set() -> list[str]:
    """Paths of the normalization images, sorted by name (each at most 256 px on its long side)."""
    folder = importlib.resources.files("nstexp") / "samples" / "normalization"
    return sorted(str(p) for p in folder.iterdir() if p.name.endswith(".png"))


def image_means(paths: list[str]) -> list[dict[str, torch.Tensor]]:
    """Per image, {relu layer: its filters' mean activation over the image's positions, (C,)},
    through the raw Caffe VGG-19 with max pooling (the network as it was trained)."""
    extractor = FeatureExtractor("vgg19", "caffe", list(RELU_LAYERS))
    out = []
    with torch.no_grad():
        for path in paths:  # one at a time: the images differ in size
            feats = extractor(images.to_tensor(images.load_image(path)))
            out.append({n: f[0].to(torch.float64).mean(dim=(1, 2)) for n, f in feats.items()})
    return out


def measure_means(paths: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Each filter's mean activation over the images and their positions, {relu layer: (C,)}:
    the mean over images of each image's mean over positions (every image counts alike)."""
    per_image = image_means(image_set() if paths is None else paths)
    return {n: torch.stack([m[n] for m in per_image]).mean(0) for n in RELU_LAYERS}


def halves_change(per_image: list[dict[str, torch.Tensor]]) -> dict[str, tuple[float, float]]:
    """How much the means move between two disjoint halves of the set (even and odd positions
    in name order): per layer, the median and maximum over filters of |m_a - m_b| / m_all (filters
    that fired on the set), and the change of the layer's mean of means, |mean m_a - mean m_b| /
    mean m_all, which is what sets the magnitude of the layer's loss term."""
    a, b = per_image[0::2], per_image[1::2]
    out = {}
    for n in RELU_LAYERS:
        ma, mb, mall = (torch.stack([m[n] for m in half]).mean(0) for half in (a, b, per_image))
        rel = ((ma - mb).abs() / mall)[mall > 0]
        out[n] = (rel.median().item(), rel.max().item(), ((ma.mean() - mb.mean()).abs() / mall.mean()).item())
    return out


def main(argv: list[str]) -> int:
    """Write the means file (or, with --check, say whether the shipped one is up to date) and
    print the halves' change per layer."""
    per_image = image_means(image_set())
    means = {n: torch.stack([m[n] for m in per_image]).mean(0) for n in RELU_LAYERS}
    print("layer | mean of the means | halves: median, max change per filter | change of the layer's mean")
    for n, (median, largest, layer) in halves_change(per_image).items():
        print(f"{n} | {means[n].mean().item():.4g} | {median:.1%}, {largest:.1%} | {layer:.1%}")
    if "--check" in argv:
        shipped = read_means()
        ok = all(torch.allclose(shipped[n], means[n], rtol=1e-5, atol=0) for n in RELU_LAYERS)
        print("the shipped means are up to date" if ok else f"{MEANS_FILE} is out of date")
        return 0 if ok else 1
    torch.save(means, MEANS_FILE)
    print(f"wrote {MEANS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
