"""Whether a run evaluates its objective in tiles (nstexp.tiling), and in tiles of which size.

`tiles=<px>` tiles every level; `tiles=auto` (the default) tiles a level whose untiled estimate
does not fit the device's memory, in the largest tiles that do (on a CPU, at most CPU_TILE px),
when every loss of every job decomposes over positions and no masks are used; `tiles=off` never
tiles. Tiling bounds the
network's activations; the image, its gradient and the optimizer's state stay at the image's
size, which is what no tile size can lift (nstexp.network.memory.image_bytes).
"""

from __future__ import annotations

import functools
import sys

from omegaconf import DictConfig

from nstexp.losses.base import CONTENT_LOSSES
from nstexp.losses.objective import batch_objective
from nstexp.losses.mix import style_loss_for
from nstexp.network import memory
from nstexp.tiling import grid
from nstexp.tiling.objective import TiledObjective


def tileable(cfgs: list[DictConfig]) -> bool:
    """Every job's losses decompose over positions, and no job has masks or wraps around (circular
    padding: its tiles at the borders would need the other side's pixels)."""
    return all(style_loss_for(c.style).decomposes != "none" and CONTENT_LOSSES[c.content.loss].decomposes != "none"
               and not c.style.masks and not c.content.mask and c.backbone.padding != "circular" for c in cfgs)


# On a CPU, tiles=auto takes tiles of at most this side. Measured on the 2-core Xeon (2026-12-07,
# the default recipe at 4096 × 3072 px, bf16, L-BFGS with 10 pairs): a step took 128 s in tiles of
# 512 px, 136 s in tiles of 1024 px and 180 s in the largest that fit (2592 px), whose peak was
# 19.3 GB against 7.8 GB: larger tiles leave the caches, smaller ones spend more on their halos.
CPU_TILE = 512


def plan(cfg: DictConfig, extractor, h: int, w: int, batch: int, need: int, have: int | None, extra,
         can_tile: bool, kept: int = 0, largest: int | None = None) -> int | None:
    """The side of the tiles' interiors for a level of h × w px (None: whole), given the untiled
    estimate `need`, the memory `have` (None: unknown), `kept` bytes a tiled run holds besides
    (a style layer's maps) and the `largest` side tiles=auto takes (None: the largest that fits)."""
    if isinstance(cfg.tiles, int) and not isinstance(cfg.tiles, bool):
        return cfg.tiles
    if cfg.tiles == "off" or have is None or need <= have or not can_tile:
        return None
    step, halo = grid.halo(extractor.arch, extractor.layers)
    fits = [t for t in range(step, max(h, w), step)
            if memory.tiled_estimate_bytes(extractor, h, w, t, halo, cfg.optimizer, batch, extra, kept) <= have]
    return min(max(fits), largest or max(fits)) if fits else None


def estimate(cfg: DictConfig, extractor, h: int, w: int, tile: int, batch: int, extra, kept: int = 0) -> int:
    """Peak bytes of an evaluation in tiles of `tile` px (nstexp.network.memory.tiled_estimate_bytes)."""
    _, halo = grid.halo(extractor.arch, extractor.layers)
    return memory.tiled_estimate_bytes(extractor, h, w, tile, halo, cfg.optimizer, batch, extra, kept)


def announce(tile: int | None, cfg: DictConfig, level_size: int, bar, stop):
    """Says in one line, where the memory chose tiles, that a level is evaluated in them (before its
    targets, which are made in tiles too); returns `on_tile(what, done, total)`, which shows the
    tiles of the level's set-up (targets, style balance) on `bar` (None: whole). At 8K px on a CPU
    the set-up takes many minutes: a stop request (`stop()`) ends it between two tiles."""
    if not tile:
        return None
    if not isinstance(cfg.tiles, int):
        print(f"{level_size} px does not fit the memory whole: evaluated in tiles of {tile} px (exact; "
              "tiles=off to refuse instead)", file=sys.stderr)

    def on_tile(what: str, done: int, total: int) -> None:
        bar.set_postfix_str(f"{what}: tile {done}/{total}")
        if stop():
            raise KeyboardInterrupt  # as a second Ctrl-C: the run keeps what it has made

    return on_tile


def level_objective(objectives: list, tile: int | None, on_tile):
    """A level's objective for its jobs: whole (one forward pass for the batch), or in tiles of
    `tile` px, each evaluation's tiles shown (and a stop request taken) by `announce`'s `on_tile`."""
    if not tile:
        return batch_objective(objectives)
    return TiledObjective(objectives, tile, functools.partial(on_tile, "step"))
