"""Weighted mixes of style losses (`style.loss={gram: 1, histogram: 0.5}`), as Risser et al. add
a histogram term to the Gram term: per layer, Σ_k a_k E_k. A single name is the loss itself, and
so is a mix of one component (times its weight): `{strotss: 1}` and `{strotss: 1, gram: 0}` run
strotss, `{mrf: 1}` keeps mrf's rotated and scaled copies of the style."""

from __future__ import annotations

from nstexp.loss_options import style_mix
from nstexp.losses.base import STYLE_LOSSES, StyleLoss


class Mix(StyleLoss):
    """Σ_k a_k E_k of several registered style losses, each with its own target (components
    weighted 0 are left out by `style_mix`). Guided only if every component is (validation refuses
    the rest). Components of a mix of several share the style images themselves as views
    (validation refuses mrf's copies there) and none is joint (StyleLoss.joint: strotss), which
    validation refuses too; a mix of one component is that component, weighted: its views, its
    joint and its query_blend are the component's."""

    name = "mix"

    def __init__(self, style, seed: int = 0):
        super().__init__(style, seed)
        # Each component its own seed, so that two random losses draw independently.
        self.parts = [(w, STYLE_LOSSES[k](style, seed + i)) for i, (k, w) in enumerate(style_mix(style.loss).items())]
        joint = [loss.name for _, loss in self.parts if loss.joint]
        if joint and len(self.parts) > 1:  # its target and distance take all layers at once, a mix's one layer
            raise ValueError(f"style.loss={joint[0]} takes all its layers at once and is not for a mix")
        if len(self.parts) == 1:
            only = self.parts[0][1]
            self.joint, self.guided, self.query_blend = only.joint, only.guided, only.query_blend
        # Σ_k a_k E_k decomposes when every E_k does: over positions if each is a sum over them,
        # else as statistics (sums of both kinds, handed on); a mix of one is its component's.
        kinds = {loss.decomposes for _, loss in self.parts}
        self.decomposes = "none" if "none" in kinds else kinds.pop() if len(kinds) == 1 else "statistics"
        self.counts: list[int] | None = None  # how many of `partial`'s sums each component gave

    def views(self, image):
        return self.parts[0][1].views(image) if len(self.parts) == 1 else [image]

    def target(self, feats, shares):
        return [loss.target(feats, shares) for _, loss in self.parts]

    def distance(self, f, target, guide=None):
        return sum(w * (loss.distance(f, t) if guide is None else loss.distance(f, t, guide))
                   for (w, loss), t in zip(self.parts, target))

    def partial(self, f, target, box):
        """Each component's sums, one after the other."""
        parts = [loss.partial(f, t, box) for (_, loss), t in zip(self.parts, target)]
        self.counts = [len(p) for p in parts]
        return tuple(s for p in parts for s in p)

    def finish(self, sums, target, positions):
        """Σ_k a_k E_k, each E_k finished from its own sums."""
        if self.counts is None:
            raise RuntimeError("Mix.finish takes the sums of Mix.partial, which has not run")
        total, start = 0, 0
        for (w, loss), t, count in zip(self.parts, target, self.counts):
            total = total + w * loss.finish(tuple(sums[start:start + count]), t, positions)
            start += count
        return total

    def working_bytes(self, result, styles, batch=1):
        return sum(loss.working_bytes(result, styles, batch) for _, loss in self.parts)


def style_loss_for(style, seed: int = 0) -> StyleLoss:
    """The style loss `style.loss` names, read as validation reads it (`style_mix`): a registered
    class for one loss weighted 1 (a name, or a mix of that one), else a Mix."""
    parts = style_mix(style.loss)
    if len(parts) == 1 and next(iter(parts.values())) == 1.0:
        return STYLE_LOSSES[next(iter(parts))](style, seed)
    return Mix(style, seed)
