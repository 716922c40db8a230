"""The total loss of Gatys et al.: targets computed once, terms returned per sample.

total = content.weight * sum_l c_l L_content,l + style.weight * sum_l w_l E_l + tv.weight * TV
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nstexp import losses
from nstexp.backbone import FeatureExtractor


@dataclass
class LossTerms:
    """Loss values, each of shape (B,)."""

    total: torch.Tensor
    content: torch.Tensor  # weighted
    style: torch.Tensor  # weighted
    tv: torch.Tensor  # weighted
    content_layers: dict[str, torch.Tensor]  # unweighted, per layer
    style_layers: dict[str, torch.Tensor]  # unweighted, per layer

    def as_floats(self, sample: int = 0) -> dict[str, float]:
        """Flat metric names -> Python floats for one sample."""
        out = {
            "loss/total": self.total[sample].item(),
            "loss/content": self.content[sample].item(),
            "loss/style": self.style[sample].item(),
            "loss/tv": self.tv[sample].item(),
        }
        out.update({f"loss/content/{k}": v[sample].item() for k, v in self.content_layers.items()})
        out.update({f"loss/style/{k}": v[sample].item() for k, v in self.style_layers.items()})
        return out


class Objective:
    """Callable image (B, 3, H, W) -> LossTerms, with fixed content and style targets."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        content_image: torch.Tensor,
        style_images: list[torch.Tensor],
        content_layers: dict[str, float],
        style_layers: dict[str, float],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
        content_normalization: str = "gatys",
        style_normalization: str = "gatys",
        blend_weights: list[float] | None = None,
    ):
        self.extractor = extractor
        self.content_layers = dict(content_layers)
        self.style_layers = dict(style_layers)
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight
        self.content_normalization = content_normalization
        self.style_normalization = style_normalization

        # Targets are constants: computed once, without a graph.
        with torch.no_grad():
            feats = extractor(content_image)
            self.content_targets = {k: feats[k].detach() for k in self.content_layers}
            blend = blend_weights or [1.0] * len(style_images)
            total = sum(blend)
            self.style_targets = {k: 0.0 for k in self.style_layers}
            for img, w in zip(style_images, blend):
                feats = extractor(img)
                for k in self.style_layers:
                    # Blending several styles averages their Gram matrices, each normalized
                    # by its own number of positions, so an image's size does not weigh in.
                    gram = losses.gram_matrix(feats[k], style_normalization)
                    self.style_targets[k] = self.style_targets[k] + (w / total) * gram

    def __call__(self, image: torch.Tensor) -> LossTerms:
        feats = self.extractor(image)
        zero = image.new_zeros(image.shape[0])
        content_layers = {
            k: losses.content_loss(feats[k], self.content_targets[k], self.content_normalization)
            for k in self.content_layers
        }
        style_layers = {}
        for k in self.style_layers:
            f = feats[k]
            gram = losses.gram_matrix(f, self.style_normalization)
            style_layers[k] = losses.style_loss(gram, self.style_targets[k], f.shape[1], self.style_normalization)
        content = self.content_weight * sum(
            (w * content_layers[k] for k, w in self.content_layers.items()), zero
        )
        style = self.style_weight * sum((w * style_layers[k] for k, w in self.style_layers.items()), zero)
        tv = self.tv_weight * losses.tv_loss(image) if self.tv_weight else zero
        return LossTerms(content + style + tv, content, style, tv, content_layers, style_layers)
