"""What a style or a content loss is, and the registries that name each under its config key.

A loss has a target, computed once from the reference images' features without a graph, and
a distance from a generated image's features to that target, one value per sample. The
objective (nstexp.losses.objective) sums the distances over layers; it knows no loss by name.

Adding a loss: a class in the family's file (or a new file imported by nstexp/losses/__init__.py),
decorated with `@register` under the name `style.loss=<name>` (or `content.loss=<name>`) selects;
the options it reads from its config section documented in conf/ and docs/config.md; its tests.

A joint loss (`joint = True`: strotss, nnst, self_similarity) sees all its layers at once instead of
one at a time: its `target` and `distance` take LayerStacks in place of one layer's features,
and the objective keeps its one term under the name JOINT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch

# The name of a joint loss's one term, in place of a layer's (logged as loss/style/hypercolumn).
JOINT = "hypercolumn"


@dataclass
class LayerStack:
    """What a joint loss sees of one image: its pixels and its features at every layer of the loss."""

    image: torch.Tensor  # (B, 3, H, W), RGB in [0, 1], as the network's input
    feats: dict[str, torch.Tensor]  # layer -> (B, N_l, H_l, W_l), every layer of the loss weighted > 0
    weights: dict[str, float]  # layer -> w_l > 0, the config's layer weights: the loss decides what they mean
    # The stack of the image a matching loss searches its targets with, made on demand (the
    # objective's, for a loss with `query_blend` > 0: nnst); None: this one.
    query: Optional[Callable[[], "LayerStack"]] = None


class StyleLoss:
    """One layer's style loss. Built once per objective from the config section `style` (it
    reads the options it needs, e.g. `style.normalization`) and the run's seed, which seeds
    any randomness of the loss so that runs repeat."""

    name: ClassVar[str]
    # Whether the loss can be restricted to a region (style.masks, Gatys et al. 2017).
    guided: ClassVar[bool] = True
    # Whether the loss takes all its layers at once: then `target` gets one LayerStack per view
    # (batch 1) in place of one layer's features, `distance` the result's LayerStack (batch B) in
    # place of f, and `working_bytes` is called once, with the stack's shape (3 + Σ_l N_l, H, W) at
    # the images' resolution. Not in a mix, not guided (validation refuses both).
    joint: ClassVar[bool] = False
    # A joint loss's: the content's share α of the image (1 − α) x + α c whose features it
    # searches with (nnst), which the objective hands it as the result's LayerStack.query; 0: none.
    query_blend: float = 0.0
    # The fewest positions per side the loss needs at each of its layers, of the result's features
    # and of some view of the style's: a number, or the key of the option in its config section that
    # gives it (mrf: "mrf.patch_size"). Read off the source (nstexp.loss_catalogue), so that the
    # checks before a run (nstexp.input_sizes) refuse smaller sizes at every level without torch.
    # Every loss is finite on a layer of one position otherwise (tests/test_small_inputs.py).
    min_positions: ClassVar[int | str] = 1
    # Whether precision=auto may evaluate the loss in bf16 under L-BFGS, which steps along the
    # differences of gradients (its curvature pairs). False where bf16's rounding was measured to
    # drown them (nnst: noise in place of a result; docs/speed-and-memory.md): auto keeps fp32.
    lbfgs_in_bf16: ClassVar[bool] = True
    # Whether the loss holds state that changes from one evaluation to the next (random draws from
    # its generator, targets refreshed from the result): a stopped run then goes on from the start
    # of its level, not mid-level (nstexp.run.resume).
    stateful: ClassVar[bool] = False

    def __init__(self, style: Any, seed: int = 0):
        self.options = style

    def target(self, feats: list[torch.Tensor], shares: list[float]) -> Any:
        """The target of one layer from each style image's features (1, N, H_i, W_i) and blend
        share (the shares sum to 1). Statistics are taken over each image's own positions, so
        an image's size does not weigh in."""
        raise NotImplementedError

    def distance(self, f: torch.Tensor, target: Any, guide: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of features f (B, N, H, W) against `target`, inside `guide` (1, 1, H, W)
        weights in [0, 1] when given -> (B,)."""
        raise NotImplementedError

    # How the loss of a layer decomposes over the result's positions, which a tiled evaluation of
    # the objective (nstexp.tiling) needs: "positions" (a sum of per-position terms), "statistics"
    # (a function of sums over the positions), or "none" (a global sort, all pairs, positions drawn
    # at random: such a loss is refused for tiled runs). With "positions" or "statistics" the
    # loss implements `partial` and `finish`.
    decomposes: ClassVar[str] = "none"

    def partial(self, f: torch.Tensor, target: Any, box: tuple[int, int, int, int]) -> tuple[torch.Tensor, ...]:
        """Sums over the positions of f (B, N, h, w), the result's features at the layer's
        positions [y0, y1) x [x0, x1) (`box`), that add up over disjoint blocks of positions to
        what `finish` takes; each (B, ...), in fp32. No guide: a tiled run takes no masks."""
        raise NotImplementedError

    def finish(self, sums: tuple[torch.Tensor, ...], target: Any, positions: int) -> torch.Tensor:
        """The loss (B,) from `partial`'s sums over all the layer's `positions` (H x W):
        finish(partial(f, target, (0, H, 0, W)), target, H W) = distance(f, target)."""
        raise NotImplementedError

    def views(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The images (1, 3, H, W) whose features make up one style image's part of the target:
        the image itself, or more (mrf adds rotated and scaled copies). Each view gets an equal
        part of its image's blend share."""
        return [image]

    def working_bytes(self, result: tuple[int, int, int], styles: list[tuple[int, int, int]], batch: int = 1) -> int:
        """Bytes one layer's target and distance hold at their peak beyond the features, for the
        result's features (N, H, W) and each style image's (N, H_i, W_i): 0 for statistics of the
        size of a Gram matrix; the memory estimate adds the rest (nstexp.run.inputs)."""
        return 0


class ContentLoss:
    """One layer's content loss, built once per objective from the config section `content` and
    the run's seed (for the losses that sample)."""

    name: ClassVar[str]
    # Whether the loss takes content.mask (a guide in `distance`).
    guided: ClassVar[bool] = True
    # As StyleLoss.joint: `target` and `distance` take the content's and the result's LayerStack.
    joint: ClassVar[bool] = False
    # As StyleLoss.min_positions, for the result's and the content's features.
    min_positions: ClassVar[int | str] = 1
    # As StyleLoss.stateful.
    stateful: ClassVar[bool] = False

    def __init__(self, content: Any, seed: int = 0):
        self.options = content

    # As StyleLoss.decomposes, with `partial` and `finish` as there (box: where f lies in the target).
    decomposes: ClassVar[str] = "none"

    def target(self, p: torch.Tensor) -> Any:
        """The target of one layer from the content image's features P (1, N, H, W)."""
        return p

    def partial(self, f: torch.Tensor, target: Any, box: tuple[int, int, int, int]) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def finish(self, sums: tuple[torch.Tensor, ...], target: Any, positions: int) -> torch.Tensor:
        raise NotImplementedError

    def distance(self, f: torch.Tensor, target: Any, guide: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of features F (B, N, H, W) against `target`, weighted by `guide` (1, 1, H, W) -> (B,)."""
        raise NotImplementedError

    def working_bytes(self, result: tuple[int, int, int], batch: int = 1) -> int:
        """Bytes one layer's distance holds at its peak beyond the features, for the result's
        features (N, H, W) (a joint loss: its stack's shape, once): 0 for an elementwise loss."""
        return 0


STYLE_LOSSES: dict[str, type[StyleLoss]] = {}
CONTENT_LOSSES: dict[str, type[ContentLoss]] = {}


def register(cls: type) -> type:
    """Class decorator: the loss becomes the option `style.loss=<cls.name>` (or `content.loss`)."""
    table = STYLE_LOSSES if issubclass(cls, StyleLoss) else CONTENT_LOSSES if issubclass(cls, ContentLoss) else None
    if table is None:
        raise TypeError(f"{cls.__name__} is neither a StyleLoss nor a ContentLoss")
    if cls.name in table:
        raise ValueError(f"two losses are named {cls.name!r}: {table[cls.name].__name__} and {cls.__name__}")
    table[cls.name] = cls
    return cls
