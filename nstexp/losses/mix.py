"""Weighted mixes of style losses (`style.loss={gram: 1, histogram: 0.5}`), as Risser et al. add
a histogram term to the Gram term: per layer, Σ_k a_k E_k. A single name is the loss itself."""

from __future__ import annotations

from collections.abc import Mapping

from nstexp.losses.base import STYLE_LOSSES, StyleLoss


def components(loss) -> dict[str, float]:
    """{name: weight} of `style.loss`: a name (weight 1) or a mapping name -> weight."""
    if isinstance(loss, str):
        return {loss: 1.0}
    return {str(k): float(v) for k, v in loss.items()}


class Mix(StyleLoss):
    """Σ_k a_k E_k of several registered style losses, each with its own target; a component
    weighted 0 is left out. Guided only if every component is (validation refuses the rest). Its
    components share the style images themselves as views (validation refuses mrf's copies), and
    none is joint (StyleLoss.joint: strotss), which validation refuses too."""

    name = "mix"

    def __init__(self, style, seed: int = 0):
        super().__init__(style, seed)
        # Each component its own seed, so that two random losses draw independently.
        self.parts = [(w, STYLE_LOSSES[k](style, seed + i)) for i, (k, w) in enumerate(components(style.loss).items())
                      if w > 0]
        joint = [loss.name for _, loss in self.parts if loss.joint]
        if joint:  # its target and distance take all layers at once, a mix's one layer at a time
            raise ValueError(f"style.loss={joint[0]} takes all its layers at once and is not for a mix")

    def target(self, feats, shares):
        return [loss.target(feats, shares) for _, loss in self.parts]

    def distance(self, f, target, guide=None):
        return sum(w * loss.distance(f, t, guide) for (w, loss), t in zip(self.parts, target))

    def working_bytes(self, result, styles, batch=1):
        return sum(loss.working_bytes(result, styles, batch) for _, loss in self.parts)


def style_loss_for(style, seed: int = 0) -> StyleLoss:
    """The style loss `style.loss` names: a registered class, or a Mix of several."""
    if isinstance(style.loss, str):
        return STYLE_LOSSES[style.loss](style, seed)
    if isinstance(style.loss, Mapping) or hasattr(style.loss, "items"):
        return Mix(style, seed)
    raise TypeError(f"style.loss={style.loss!r} is neither a name nor a mapping name -> weight")
