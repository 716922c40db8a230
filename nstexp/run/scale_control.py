"""Scale control (Gatys et al., CVPR 2017): coarse structure from one style image, fine texture from another.

As in the authors' ScaleControl notebook, a new style image is made first: starting from the
coarse image (`style.image`), L-BFGS matches the Gram matrices of the fine image
(`style.scale_control.fine_image`) on the fine layers only (relu1_1 and relu2_1 by default),
with no content term, so the coarse image keeps its large-scale arrangement while its small
scale texture becomes the fine image's. That image is then the run's style image.

The low layers' Gram matrices hold the colours too: unless the two images share a palette,
matching them repaints the whole coarse image in the fine one's colours and its arrangement
is lost. The authors therefore match both images' colours to the content photo first; here
the fine image is given the coarse image's colour mean and covariance (`match_colours`), so
the combined style keeps the coarse image's palette (`color.preserve=histogram` then moves it
to the content's).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from PIL import Image

from nstexp import images
from nstexp.config import ContentConfig, LayersConfig, LBFGSConfig, ScaleControlConfig, StyleConfig, TVConfig
from nstexp.losses.objective import Objective
from nstexp.network.backbone import FeatureExtractor
from nstexp.optim.engine import optimize
from nstexp.run import colour


def fine_onto_coarse(extractor: FeatureExtractor, coarse: torch.Tensor, fine: torch.Tensor, fine_layers: list[str],
                     steps: int, should_stop: Callable[[], bool] = lambda: False) -> torch.Tensor:
    """The coarse image (1, 3, H, W) with the fine image's statistics on `fine_layers`; returns (1, 3, H, W).

    Equal layer weights and the paper's Gram loss; the authors' weights differ by a common
    factor only, to which L-BFGS with a normalized loss is insensitive.
    """
    # The network runs only up to the deepest fine layer.
    shallow = functools.partial(extractor, layers=fine_layers)
    layers = LayersConfig(content={}, style=dict.fromkeys(fine_layers, 1.0))
    objective = Objective(shallow, coarse, [fine], layers, ContentConfig(weight=0.0), StyleConfig(weight=1.0),
                          TVConfig(weight=0.0))
    return optimize(coarse, objective, LBFGSConfig(), steps, "every_step", should_stop=should_stop).image


def style_image(extractor: FeatureExtractor, coarse: torch.Tensor, control: ScaleControlConfig,
                should_stop: Callable[[], bool] = lambda: False) -> Image.Image:
    """The run's style image: `control.fine_image`'s fine texture on `coarse` (1, 3, H, W).

    The fine image is resized to the coarse image's longest side (Gram statistics per
    position do not depend on the image's shape).
    """
    h, w = coarse.shape[-2:]
    pil = images.load_image(control.fine_image, "style.scale_control.fine_image")
    fine = images.to_tensor(images.resize(pil, images.fit_longest(pil.size, max(h, w))), coarse.device)
    if control.match_colours:
        fine = colour.match_colours(fine, coarse).clamp(0.0, 1.0)
    return images.to_pil(fine_onto_coarse(extractor, coarse, fine, list(control.fine_layers), control.steps,
                                          should_stop))
