"""Loss scaling for a network that computes in fp16, done inside the feature extractor.

The gradients that reach VGG's features are tiny: L-BFGS differentiates the loss divided by
its first value (about 1e16 for the default recipe), which puts them between 1e-17 and 1e-6,
mostly below fp16's smallest subnormal (6e-8). Back-propagated in fp16 they flush to zero.
`ScaledBackward` receives the gradients of all requested features at once, multiplies each
sample's by a power of two that puts their largest magnitude at 2**TARGET_EXPONENT,
back-propagates through the fp16 network, and divides the input gradient in fp32 (a power of
two: exact). A sample whose input gradient overflowed (inf or nan) is redone at half the scale.
Samples are independent through VGG (no batch statistics), so each gets its own scale: jobs of
a batched sweep with different loss weights do not push each other out of range.
"""

from __future__ import annotations

from typing import Callable

import torch

# On the Caffe VGG-19 the largest gradient anywhere in the backward pass, the input's included,
# was at most 10x the largest feature gradient (64 and 256 px). With the largest feature
# gradient at 2**10, that is about 1.0e4, 6.4x below fp16's largest value (65504 ~ 2**16); an
# overflow all the same halves the scale (below). At the other end, fp16's smallest subnormal
# is 2**-24 (5.96e-8): feature gradients down to 2**-34 (5.8e-11) times the largest survive,
# those down to 2**-24 (6e-8) times it with full precision (fp16's smallest normal, 2**-14);
# smaller ones flush to zero, far below the 2**-11 relative rounding of the sums they join.
TARGET_EXPONENT = 10
# Halvings tried on overflow before giving up (the gradient is then returned as it is, not finite).
MAX_HALVINGS = 8


class ScaledBackward(torch.autograd.Function):
    """features = run(x, wanted) (a tuple, in order) with a loss-scaled backward pass for x."""

    @staticmethod
    def forward(ctx, run: Callable, x: torch.Tensor, wanted) -> tuple[torch.Tensor, ...]:
        # The network's own graph is built here (forward runs without grad) and kept for the
        # backward pass, so activation checkpointing inside `run` keeps working.
        with torch.enable_grad():
            inner = x.detach().requires_grad_(True)
            outs = tuple(run(inner, wanted).values())
        ctx.inner, ctx.outs = inner, outs
        return tuple(o.detach() for o in outs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        inner, outs = ctx.inner, ctx.outs
        del ctx.inner, ctx.outs  # one backward pass; the graph goes with it
        shape = (-1,) + (1,) * (inner.dim() - 1)
        peak = torch.stack([g.detach().abs().flatten(1).amax(1) for g in grads]).amax(0)  # (B,)
        usable = torch.isfinite(peak) & (peak > 0)
        exponent = (TARGET_EXPONENT - torch.ceil(torch.log2(torch.where(usable, peak, 1.0)))).clamp(-120, 120)
        scale = torch.where(usable, torch.exp2(exponent), 1.0)  # (B,), powers of two
        for halving in range(MAX_HALVINGS + 1):
            scaled = [g * scale.view(shape) for g in grads]
            (gx,) = torch.autograd.grad(outs, inner, scaled, retain_graph=halving < MAX_HALVINGS)
            # A sample whose incoming gradients were not finite cannot be helped by a smaller scale.
            overflow = ~torch.isfinite(gx).flatten(1).all(1) & usable
            if halving == MAX_HALVINGS or not overflow.any():
                break
            scale = torch.where(overflow, scale / 2, scale)
        return None, gx.float() / scale.view(shape), None


def features(run: Callable, x: torch.Tensor, names: list[str], wanted) -> dict[str, torch.Tensor]:
    """run(x, wanted) -> {name: feature}, loss-scaled where a gradient for x will be needed."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return run(x, wanted)
    return dict(zip(names, ScaledBackward.apply(run, x, wanted)))
