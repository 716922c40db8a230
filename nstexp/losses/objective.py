"""The total loss of Gatys et al.: targets computed once, terms returned per sample.

total = content.weight * sum_l c_l L_content,l + style.weight * sum_l w_l E_l + tv.weight * TV
        + laplacian.weight * L_lap (Li et al. 2017, nstexp.losses.laplacian)
        + video.temporal.weight * L_temporal (a video's frame: Ruder et al. 2016, nstexp.losses.temporal)

The last three are terms on the pixels (`Objective.pixel_terms`), which a tiled evaluation
(nstexp.tiling) computes on the whole image as they are.

A joint loss (StyleLoss.joint, ContentLoss.joint: strotss, nnst, self_similarity) is one term over all
its layers, computed from a LayerStack of the image and those layers' features (the loss weighs
the layers itself): its sum above is that one term, under the name JOINT, weighted 1. A joint
style loss with `query_blend` α > 0 (nnst) also gets, on demand, the stack of the image
(1 − α) x + α c, a blend of the result and the content, as LayerStack.query.
"""

from __future__ import annotations

import functools

import torch

from nstexp import losses  # noqa: F401  (registers every loss family)
from nstexp.losses.base import CONTENT_LOSSES, JOINT, LayerStack
from nstexp.losses.guides import to_layer
from nstexp.losses.laplacian import laplacian, laplacian_loss
from nstexp.losses.mix import style_loss_for
from nstexp.losses.temporal import TemporalTargets
from nstexp.losses.terms import LossTerms
from nstexp.losses.tv import tv_loss
from nstexp.network.backbone import FeatureExtractor


class _Lazy:
    """A view's features, layer by layer on demand (`get(layers)` -> {layer: features}), not kept."""

    def __init__(self, get):
        self.get = get

    def __getitem__(self, layer: str) -> torch.Tensor:
        return self.get([layer])[layer]


def weighted_layers(layers) -> tuple[dict[str, float], dict[str, float]]:
    """Content and style layers of the config section `layers` with their weights; a layer
    weighted 0 is left out (dict overrides merge with the preset, so this is how to drop one)."""
    return ({k: v for k, v in layers.content.items() if v > 0},
            {k: v for k, v in layers.style.items() if v > 0})


def term_weights(loss, layers: dict[str, float]) -> dict[str, float]:
    """The terms the objective sums for `loss` on `layers` (name -> weight): the layers, or for a
    joint loss its one term JOINT, weighted 1 (none without a layer)."""
    return ({JOINT: 1.0} if layers else {}) if loss.joint else dict(layers)


class Objective:
    """Callable image (B, 3, H, W) -> LossTerms, with fixed content and style targets.

    Built from the config sections `layers`, `content`, `style`, `tv` and `laplacian` (a composed
    config's, or the schema's dataclasses in nstexp.config): the style and content losses are the
    registered classes that `style.loss` (or a weighted mix of them, nstexp.losses.mix) and
    `content.loss` name (nstexp.losses.base). `batch`: how many images the run evaluates at once,
    which the content's features are computed with (see the targets below); `features(image,
    layers)`: how they are computed (the extractor, or tile by tile: nstexp.tiling).
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        content_image: torch.Tensor,
        style_images: list[torch.Tensor],
        layers,
        content,
        style,
        tv,
        seed: int = 0,
        style_masks: list[torch.Tensor] | None = None,
        content_mask: torch.Tensor | None = None,
        laplacian_config=None,
        batch: int = 1,
        features=None,
        temporal: TemporalTargets | None = None,
    ):
        self.extractor = extractor
        self.content_image = content_image  # nnst's query blends the result with it (`_query`)
        self.content_layers, self.style_layers = weighted_layers(layers)
        self.content_weight, self.style_weight, self.tv_weight = content.weight, style.weight, tv.weight
        self.tv_exponent = tv.exponent
        self.tv_wrap = getattr(extractor, "padding", None) == "circular"  # the network sees a torus: so does TV
        self.content_loss = CONTENT_LOSSES[content.loss](content, seed)
        self.style_loss = style_loss_for(style, seed)
        # The terms summed, with their weights: one per layer, or a joint loss's one (weight 1).
        self.content_terms = term_weights(self.content_loss, self.content_layers)
        self.style_terms = term_weights(self.style_loss, self.style_layers)
        lap = laplacian_config
        self.laplacian_weight, self.laplacian_pool = (lap.weight, lap.pool) if lap is not None else (0.0, 0)
        # The content image's Laplacian, a constant (its pixels, not its features).
        self.laplacian_target = laplacian(content_image, self.laplacian_pool) if self.laplacian_weight else None
        # A video frame's earlier stylized frames, warped to it, at this size.
        self.temporal = temporal.at(content_image.shape[-2:]) if temporal and temporal.weight else None
        self.style_balance = {k: 1.0 for k in self.style_terms}  # see `balance_style`

        # Targets are constants: computed once, without a graph. The content's features come from a
        # batch of `batch` copies, the size of the batch the run evaluates (a batched sweep's jobs):
        # a convolution over a batch adds in another order than over one image, and so an image
        # equal to the content (init=content) has its features bit for bit in a batch as alone,
        # where a content term starts at exactly 0 with a gradient of exactly 0.
        with torch.no_grad():
            # The layers read off the content: its terms', and the style layers' sizes for masks.
            wanted = [*self.content_layers, *(self.style_layers if style_masks is not None else [])]
            batch_of_content = content_image.repeat(batch, 1, 1, 1)
            feats = features(batch_of_content, wanted) if features else extractor(batch_of_content)
            feats = {k: v[:1] for k, v in feats.items()}
            if self.content_loss.joint:
                if content_mask is not None:
                    raise ValueError(f"content.loss={content.loss} takes no content.mask")
                stack = self._stack(content_image, feats, self.content_layers)
                self.content_targets = {k: self.content_loss.target(stack) for k in self.content_terms}
            else:
                self.content_targets = {k: self.content_loss.target(feats[k].detach()) for k in self.content_layers}
            blend = list(style.blend_weights) or [1.0] * len(style_images)
            shares = [w / sum(blend) for w in blend]
            # Each style image's views (itself, or with copies: mrf), an equal part of its share each.
            style_views = [self.style_loss.views(img) for img in style_images]
            # Tiled (`features` given: no joint loss, no masks), one layer's maps at a time: the memory
            # of a tile and of one layer's features, not of the whole network's activations.
            style_feats = [[extractor(view) if features is None else
                            _Lazy(functools.partial(features, view)) for view in views] for views in style_views]
            # Masks at each layer's resolution (the generated image has the content's size).
            self.content_guides = {k: to_layer(content_mask, feats[k].shape[-2:])
                                   for k in self.content_layers} if content_mask is not None else {}
            target = self.style_loss.target
            if self.style_loss.joint:
                if style_masks is not None:
                    raise ValueError(f"style.loss={style.loss} takes no style.masks")
                self.regions = None
                parts = [share / len(views) for views, share in zip(style_views, shares) for _ in views]
                stacks = [self._stack(view, f, self.style_layers)
                          for views, fs in zip(style_views, style_feats) for view, f in zip(views, fs)]
                self.style_targets = {k: target(stacks, parts) for k in self.style_terms}
            elif style_masks is None:
                self.regions = None
                parts = [share / len(views) for views, share in zip(style_feats, shares) for _ in views]
                self.style_targets = {k: target([f[k] for views in style_feats for f in views], parts)
                                      for k in self.style_layers}
            else:
                # Spatial control: style i is matched inside its mask only, its term weighted by
                # its blend share; a region that vanishes at a layer's resolution is left out there.
                self.regions = {k: [(share, target([f[k] for f in views], [1.0 / len(views)] * len(views)), guide)
                                    for views, share, mask in zip(style_feats, shares, style_masks)
                                    if (guide := to_layer(mask, feats[k].shape[-2:])).sum() > 0]
                                for k in self.style_layers}

    def balance_style(self, image: torch.Tensor, values: dict[str, float] | None = None) -> dict[str, float]:
        """Rescale each layer's style term so that on `image` (1, 3, H, W) every layer contributes
        in proportion to its weight w_l, and the weighted style loss there is what it was.

        With the raw Caffe VGG-19 the relu4_1 Gram term is 1e4 to 1e6 times the relu1_1 term,
        so the paper's equal w_l do not make the layers count equally (the paper's rescaled VGG
        did). Factor of layer l: (Σ_j w_j E_j / Σ_j w_j) / E_l, all on `image`; keeping the total
        keeps `style.weight`'s scale. Returns the factors; logged per-layer values stay unscaled.
        A layer whose term is 0 on `image` (it has the style's statistics there, e.g. a photo
        stylized with itself) has nothing to balance and keeps factor 1, and so does a joint loss's
        one term (strotss), which is the whole style term: the balance changes nothing there.
        `values`: the unweighted style terms of `image` where measured already (in tiles).
        """
        if values is None:
            with torch.no_grad():
                values = {k: v[0].item() for k, v in self._style_terms(self.extractor(image), image).items()}
        for k, v in values.items():
            if not v >= 0:
                raise ValueError(f"layer {k}: the style term of the balancing image is {v}, so it cannot be balanced")
        weights = {k: w for k, w in self.style_terms.items() if values[k] > 0}
        total = sum(w * values[k] for k, w in weights.items()) / sum(weights.values()) if weights else 0.0
        self.style_balance = {k: total / v if v > 0 else 1.0 for k, v in values.items()}
        return dict(self.style_balance)

    @staticmethod
    def _stack(image: torch.Tensor, feats: dict[str, torch.Tensor], layers: dict[str, float]) -> LayerStack:
        return LayerStack(image, {k: feats[k] for k in layers}, dict(layers))

    def _style_terms(self, feats: dict[str, torch.Tensor], image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each style term, unweighted (B,): one per layer, or a joint loss's one."""
        if self.style_loss.joint:
            stack = self._stack(image, feats, self.style_layers)
            if self.style_loss.query_blend:
                stack.query = lambda: self._query(image)
            return {k: self.style_loss.distance(stack, self.style_targets[k]) for k in self.style_terms}
        return {k: self._style_term(k, feats[k]) for k in self.style_layers}

    def _query(self, image: torch.Tensor) -> LayerStack:
        """The stack of (1 − α) x + α c, α = the style loss's query_blend (nnst), without a graph."""
        blend = self.style_loss.query_blend
        with torch.no_grad():
            mixed = (1 - blend) * image.detach() + blend * self.content_image.to(image.dtype)
            return self._stack(mixed, self.extractor(mixed), self.style_layers)

    def _content_terms(self, feats: dict[str, torch.Tensor], image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each content term, unweighted (B,): one per layer, or a joint loss's one."""
        if self.content_loss.joint:
            stack = self._stack(image, feats, self.content_layers)
            return {k: self.content_loss.distance(stack, self.content_targets[k]) for k in self.content_terms}
        return {k: self.content_loss.distance(feats[k], self.content_targets[k], self.content_guides.get(k))
                for k in self.content_layers}

    def _style_term(self, layer: str, f: torch.Tensor) -> torch.Tensor:
        if self.regions is None:
            return self.style_loss.distance(f, self.style_targets[layer])
        return sum((share * self.style_loss.distance(f, target, guide) for share, target, guide in self.regions[layer]),
                   f.new_zeros(f.shape[0]))

    def __call__(self, image: torch.Tensor) -> LossTerms:
        return self.terms(self.extractor(image), image)

    def terms(self, feats: dict[str, torch.Tensor], image: torch.Tensor) -> LossTerms:
        """The loss terms of `image` (B, 3, H, W) whose features the extractor gave as `feats`."""
        zero = image.new_zeros(image.shape[0])
        content_layers = self._content_terms(feats, image)
        style_layers = self._style_terms(feats, image)
        balanced = {k: v * self.style_balance[k] for k, v in style_layers.items()}
        content = self.content_weight * sum(
            (w * content_layers[k] for k, w in self.content_terms.items()), zero
        )
        style = self.style_weight * sum((w * balanced[k] for k, w in self.style_terms.items()), zero)
        tv, lap, temporal = self.pixel_terms(image)
        return LossTerms(content + style + tv + lap + temporal, content, style, tv, content_layers, style_layers,
                         lap, temporal)

    def pixel_terms(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weighted terms on the pixels of `image` (B, 3, H, W): TV, the Laplacian term and the
        temporal term, (B,) each (0 where off)."""
        zero = image.new_zeros(image.shape[0])
        tv = self.tv_weight * tv_loss(image, self.tv_exponent, self.tv_wrap) if self.tv_weight else zero
        lap = (self.laplacian_weight * laplacian_loss(image, self.laplacian_target, self.laplacian_pool)
               if self.laplacian_weight else zero)
        return tv, lap, self.temporal(image) if self.temporal is not None else zero


class BatchObjective:
    """Several jobs' objectives over one batch, sample b for objective b: the network runs once
    for all of them, each computes its own terms on its own sample's features."""

    def __init__(self, objectives: list[Objective]):
        self.objectives = objectives
        self.extractor = objectives[0].extractor

    def __call__(self, image: torch.Tensor) -> LossTerms:
        feats = self.extractor(image)
        return LossTerms.cat([obj.terms({k: v[b:b + 1] for k, v in feats.items()}, image[b:b + 1])
                              for b, obj in enumerate(self.objectives)])


def batch_objective(objectives: list[Objective]):
    """The objective of a batch of jobs: a single job's own, or one forward pass for all."""
    return objectives[0] if len(objectives) == 1 else BatchObjective(objectives)
