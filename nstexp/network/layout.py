"""The VGG layouts (Simonyan & Zisserman, table 1) and the paper's layer names read off them.

Plain Python, no torch: validation checks layer names without loading a network library.
"""

from __future__ import annotations

from functools import lru_cache

POOL = "M"
# Configurations D (VGG-16) and E (VGG-19): each number a 3x3 convolution with that many output
# channels (then a ReLU), POOL a 2x2 max pooling. The same lists as torchvision's `cfgs`.
LAYOUTS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
    "vgg19": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL,
              512, 512, 512, 512, POOL),
}


@lru_cache(maxsize=None)
def layer_names(arch: str) -> tuple[str, ...]:
    """All addressable layer names of an architecture, in forward order: conv1_1, relu1_1, ...,
    pool1, conv2_1, ...; the index of a name is its module's index in the `features` stack."""
    names, block, conv = [], 1, 0
    for item in LAYOUTS[arch]:
        if item == POOL:
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
    return tuple(names)


def pools_before(arch: str, layer: str) -> int:
    """How many 2x poolings an image passes through before reaching `layer`."""
    names = layer_names(arch)
    return sum(1 for n in names[: names.index(layer)] if n.startswith("pool"))
