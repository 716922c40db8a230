"""The values an objective returns: its total and each term, one value per sample of a batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossTerms:
    """Loss values, each of shape (B,)."""

    total: torch.Tensor
    content: torch.Tensor  # weighted
    style: torch.Tensor  # weighted
    tv: torch.Tensor  # weighted
    content_layers: dict[str, torch.Tensor]  # unweighted, per layer
    style_layers: dict[str, torch.Tensor]  # unweighted, per layer
    laplacian: torch.Tensor | None = field(default=None)  # weighted; None: 0 (the term is off)
    temporal: torch.Tensor | None = field(default=None)  # weighted; None: 0 (no earlier frame)

    def __post_init__(self):
        if self.laplacian is None:
            self.laplacian = torch.zeros_like(self.total)
        if self.temporal is None:
            self.temporal = torch.zeros_like(self.total)

    def select(self, samples) -> "LossTerms":
        """The terms of some samples (an index list, a slice or a bool mask), batch dim kept."""
        pick = lambda t: t[samples]  # noqa: E731
        return LossTerms(pick(self.total), pick(self.content), pick(self.style), pick(self.tv),
                         {k: pick(v) for k, v in self.content_layers.items()},
                         {k: pick(v) for k, v in self.style_layers.items()}, pick(self.laplacian), pick(self.temporal))

    @staticmethod
    def cat(parts: list["LossTerms"]) -> "LossTerms":
        """Samples of several LossTerms (with the same layers) side by side."""
        cat = lambda get: torch.cat([get(p) for p in parts])  # noqa: E731
        return LossTerms(cat(lambda p: p.total), cat(lambda p: p.content), cat(lambda p: p.style),
                         cat(lambda p: p.tv),
                         {k: cat(lambda p: p.content_layers[k]) for k in parts[0].content_layers},
                         {k: cat(lambda p: p.style_layers[k]) for k in parts[0].style_layers},
                         cat(lambda p: p.laplacian), cat(lambda p: p.temporal))

    def as_floats(self, sample: int = 0) -> dict[str, float]:
        """Flat metric names -> Python floats for one sample."""
        out = {
            "loss/total": self.total[sample].item(),
            "loss/content": self.content[sample].item(),
            "loss/style": self.style[sample].item(),
            "loss/tv": self.tv[sample].item(),
            "loss/laplacian": self.laplacian[sample].item(),
            "loss/temporal": self.temporal[sample].item(),
        }
        out.update({f"loss/content/{k}": v[sample].item() for k, v in self.content_layers.items()})
        out.update({f"loss/style/{k}": v[sample].item() for k, v in self.style_layers.items()})
        return out
