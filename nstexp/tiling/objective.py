"""The objective evaluated tile by tile, with the exact loss and gradient of the whole image.

Each style and content loss states how its value on a layer decomposes over positions
(StyleLoss.decomposes: per position, or through statistics summed over positions) with
`partial` (the sums over a block of positions) and `finish` (the value from the sums over all
of them). Then, for a batch of images x (B, 3, H, W) and the tiles of nstexp.tiling.grid:

- pass 1, without a graph: each tile's features; each layer's sums S_l = Σ_tiles partial_l(tile's
  interior); the values E_l = finish_l(S_l) and the total L = Σ_l a_l E_l (a_l: the layer's
  weight times its term's weight, as nstexp.losses.objective.Objective sums them);
- the gradient, in the backward pass: G_l = ∂L/∂S_l once (from the sums, a small graph), then
  for each tile again its features with a graph and the backward pass of Σ_l ⟨partial_l(tile), G_l⟩
  into the tile's pixels, added into ∂L/∂x. By the chain rule over the sums this is ∂L/∂x.

Memory is set by a tile plus its halo, and the sums (a Gram matrix a layer at most); the terms
on pixels (TV, the Laplacian term, a video frame's temporal term: Objective.pixel_terms) are
computed on the whole image, as untiled. The targets (the content's features, the style's
statistics) come from the objective as it was built.
"""

from __future__ import annotations

import torch

from nstexp.losses.objective import Objective
from nstexp.losses.terms import LossTerms
from nstexp.tiling import grid


def stitched(extractor, tile: int, on_tile=None):
    """features(image, layers) -> {layer: (B, N, H_l, W_l)}, the whole image's features computed
    tile by tile without a graph: memory of a tile plus the layers' maps (an Objective's targets).
    `on_tile(what, done, total)` after each tile: at 8K px the targets take minutes on a CPU."""

    def features(image: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        layers = list(dict.fromkeys(layers))
        if not layers:
            return {}
        strides = {k: grid.stride_and_reach(extractor.arch, k)[0] for k in layers}
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            tiles = grid.tiles(*image.shape[-2:], tile, extractor.arch, layers)
            for i, t in enumerate(tiles):
                y0, y1, x0, x1 = t.crop
                feats = extractor(image[..., y0:y1, x0:x1], layers)
                for k, f in feats.items():
                    s = strides[k]
                    if k not in out:
                        out[k] = f.new_empty(*f.shape[:2], image.shape[-2] // s, image.shape[-1] // s)
                    by0, by1, bx0, bx1 = t.box(s)
                    out[k][..., by0:by1, bx0:bx1] = f[(..., *t.local(s))]
                if on_tile is not None:
                    on_tile(f"targets {','.join(layers)}", i + 1, len(tiles))
        return out

    return features


def refusal(objective: Objective) -> str | None:
    """Why `objective` cannot be evaluated in tiles, or None."""
    for kind, loss in (("content", objective.content_loss), ("style", objective.style_loss)):
        if loss.decomposes == "none":
            return (f"{kind}.loss={getattr(loss, 'name', loss)} does not decompose over positions "
                    "(a global sort, all pairs or positions drawn at random): it cannot be tiled")
    if objective.regions is not None or objective.content_guides:
        return "masks (style.masks, content.mask) are not tiled"
    return None


class TiledObjective:
    """Callable image (B, 3, H, W) -> LossTerms, sample b scored by `objectives[b]` (one
    objective: every sample), evaluated in tiles of `tile` px interiors."""

    def __init__(self, objectives: list[Objective], tile: int, on_tile=None):
        for objective in objectives:
            why = refusal(objective)
            if why is not None:
                raise ValueError(why)
        self.objectives = objectives
        self.extractor = objectives[0].extractor
        self.tile = tile
        first = objectives[0]
        # The layers each term reads: the same in every job of a batch (their network's).
        self.content_layers, self.style_layers = list(first.content_terms), list(first.style_terms)
        self.layers = list(dict.fromkeys([*self.content_layers, *self.style_layers]))
        self.arch = self.extractor.arch
        self.strides = {k: grid.stride_and_reach(self.arch, k)[0] for k in self.layers}
        self.tiles_done = 0  # tiles evaluated so far (forward or backward): progress for long steps
        # Called with (tiles done in this evaluation, tiles it takes) after each tile: a step at
        # 8K px takes minutes on a CPU, and the runner shows its tiles.
        self.on_tile = on_tile
        self._evaluation = 0

    def _objective(self, b: int) -> Objective:
        return self.objectives[b if len(self.objectives) > 1 else 0]

    def _parts(self, b: int):
        """(key, loss, target, weight) of each term of sample b's objective; weight: what the
        objective multiplies the layer's value by in its total."""
        o = self._objective(b)
        out = [(("content", k), o.content_loss, o.content_targets[k], o.content_weight * w)
               for k, w in o.content_terms.items()]
        out += [(("style", k), o.style_loss, o.style_targets[k], o.style_weight * w * o.style_balance[k])
                for k, w in o.style_terms.items()]
        return out

    def _tile_partials(self, crop: torch.Tensor, tile: grid.Tile) -> list[dict]:
        """For each sample, {term key: partial sums} of the tile's interior."""
        feats = self.extractor(crop, self.layers)
        out = []
        for b in range(crop.shape[0]):
            sums = {}
            for key, loss, target, _ in self._parts(b):
                k = key[1]
                ys, xs = tile.local(self.strides[k])
                sums[key] = loss.partial(feats[k][b:b + 1, :, ys, xs], target, tile.box(self.strides[k]))
            out.append(sums)
        return out

    def sums(self, image: torch.Tensor) -> list[dict]:
        """Pass 1: for each sample, {term key: sums over every position}, without a graph."""
        total: list[dict] = [{} for _ in range(image.shape[0])]
        tiles = grid.tiles(*image.shape[-2:], self.tile, self.arch, self.layers)
        self._evaluation = 0  # tiles of this evaluation: its pass 1, then (with a gradient) pass 2
        with torch.no_grad():
            for tile in tiles:
                y0, y1, x0, x1 = tile.crop
                for b, sums in enumerate(self._tile_partials(image[..., y0:y1, x0:x1], tile)):
                    for key, part in sums.items():
                        total[b][key] = part if key not in total[b] else tuple(a + p for a, p in zip(total[b][key], part))
                self._done(tiles)
        return total

    def _values(self, b: int, sums: dict, hw) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
        """Sample b's per-layer values (content, style; unweighted) and its weighted content and
        style terms, (1,) each, as the objective sums them."""
        values: dict = {"content": {}, "style": {}}
        weighted = {"content": torch.zeros(1), "style": torch.zeros(1)}
        for (kind, k), loss, target, weight in self._parts(b):
            s = self.strides[k]
            values[kind][k] = loss.finish(sums[(kind, k)], target, (hw[0] // s) * (hw[1] // s))
            weighted[kind] = weighted[kind] + weight * values[kind][k]
        return values["content"], values["style"], weighted["content"], weighted["style"]

    def gradient(self, image: torch.Tensor, sums: list[dict], grad: torch.Tensor) -> torch.Tensor:
        """Pass 2: ∂(Σ_b grad_b L_b)/∂image from pass 1's sums, tile by tile."""
        hw = image.shape[-2:]
        weights: list[dict] = []
        with torch.enable_grad():
            for b in range(image.shape[0]):
                leaves = {key: tuple(t.detach().requires_grad_(True) for t in part) for key, part in sums[b].items()}
                flat = [t for part in leaves.values() for t in part]
                total = sum(self._values(b, leaves, hw)[2:])
                gs = torch.autograd.grad((total * grad[b]).sum(), flat, allow_unused=True)
                it = iter(gs)
                weights.append({key: tuple(next(it) for _ in part) for key, part in leaves.items()})
        out = torch.zeros_like(image)
        tiles = grid.tiles(*hw, self.tile, self.arch, self.layers)
        for tile in tiles:
            y0, y1, x0, x1 = tile.crop
            crop = image[..., y0:y1, x0:x1].detach().requires_grad_(True)
            with torch.enable_grad():
                partials = self._tile_partials(crop, tile)
                inner = sum((p * g).sum() for b, sums_b in enumerate(partials) for key, part in sums_b.items()
                            for p, g in zip(part, weights[b][key]) if g is not None)
                (g_crop,) = torch.autograd.grad(inner, crop)
            out[..., y0:y1, x0:x1] += g_crop
            self._done(tiles)
        return out

    def _done(self, tiles: list) -> None:
        """One more tile of an evaluation (a pass over the tiles, then one back over them) is done."""
        self.tiles_done += 1
        self._evaluation += 1
        if self.on_tile is not None:
            self.on_tile(self._evaluation, 2 * len(tiles))

    def __call__(self, image: torch.Tensor) -> LossTerms:
        features = _FeatureTerms.apply(image, self)  # (B,): the weighted content and style terms
        content_layers, style_layers, content, style = self._last
        # Sample b's terms on the pixels, by its own objective: (TV, Laplacian, temporal), (B,) each.
        tv, lap, temporal = (torch.cat(t) for t in zip(*(self._objective(b).pixel_terms(image[b:b + 1])
                                                        for b in range(image.shape[0]))))
        return LossTerms(features + tv + lap + temporal, content, style, tv.detach(), content_layers, style_layers,
                         lap.detach(), temporal.detach())

    def balance_style(self, image: torch.Tensor) -> dict[str, float]:
        """Objective.balance_style, with the style terms of `image` (1, 3, H, W) measured in tiles."""
        o = self.objectives[0]
        values = self._values(0, self.sums(image)[0], image.shape[-2:])[1]
        return o.balance_style(image, {k: v[0].item() for k, v in values.items()})


class _FeatureTerms(torch.autograd.Function):
    """The weighted content and style terms (B,) of the image, with pass 2 as the backward pass;
    the per-layer values it measured on the way are left on the tiled objective (`_last`)."""

    @staticmethod
    def forward(ctx, image: torch.Tensor, tiled: TiledObjective) -> torch.Tensor:
        sums = tiled.sums(image)
        hw = image.shape[-2:]
        per = [tiled._values(b, sums[b], hw) for b in range(image.shape[0])]
        content_layers, style_layers, content, style = (
            {k: torch.cat([p[i][k] for p in per]) for k in per[0][i]} if i < 2 else torch.cat([p[i] for p in per])
            for i in range(4))
        tiled._last = (content_layers, style_layers, content, style)
        ctx.tiled, ctx.sums = tiled, sums
        ctx.save_for_backward(image)
        return content + style

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (image,) = ctx.saved_tensors
        return ctx.tiled.gradient(image, ctx.sums, grad), None
