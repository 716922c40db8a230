"""Going on with a stopped run: its state on disk, and finding the run to continue.

A single image run keeps `state.pt` in its folder while it runs: written every
`save_state_every_min` minutes (at least ten times as long as the last write took, so writing
costs under a tenth of the run) and when a stop request (Ctrl-C, SIGTERM, the stop file) ends
it; removed when the run completes or diverges. `resume=true` finds the newest earlier folder of
the same run (`state.json`: what the run computes, as `identity` gives it) and goes on from it.

What the state holds decides how exactly the run goes on:
- Mid-level, exactly: the engine's state (nstexp.optim.events.EngineState: the variable, the
  optimizer's whole state, its counts and the last good image) and the levels done. The run
  then goes on as if it had not stopped: the same steps, images and losses.
- From the start of the level: for a run whose losses hold state that changes from one
  evaluation to the next (random draws, NNST's refreshed targets: `stateful` losses), the
  level's start image and the optimizer state it was given. The level is then run again, as
  an unbroken run would run it.
Time goes on from the saved time; a restart's set-up is recorded in the summary's `resumed`.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from nstexp.losses.base import CONTENT_LOSSES, STYLE_LOSSES
from nstexp.run.precision import style_losses

STATE, MARKER = "state.pt", "state.json"
# Settings that say how a run is watched or kept, not what it computes: a run that differs only
# in these is the same run for resume=true.
WATCHING = ("resume", "progress", "wandb", "log_every", "snapshot_every", "save_state_every_min")
# The settings a machine resolves for itself (nstexp.run.runner.resolved) that change the result.
RESOLVED = ("size", "steps", "precision")


def identity(cfg: DictConfig, resolved: dict | None = None) -> dict:
    """What a run computes: its resolved config without the WATCHING keys, and, for an image run,
    what this machine resolves the open settings to (`resolved`)."""
    node = OmegaConf.to_container(cfg, resolve=True)
    out = {k: v for k, v in node.items() if k not in WATCHING}
    if resolved is not None:
        out["resolved"] = {k: resolved[k] for k in RESOLVED}
    return out


def earlier(out_dir: Path, marker: str, same) -> Path | None:
    """The folder to go on in: `out_dir` itself when its `marker` file says `same` (a sweep's job
    folder, hydra.run.dir=...), else the newest folder beside it (Hydra's outputs/<date>/<time>/)
    whose marker does; None when there is none."""
    def matches(d: Path) -> bool:
        try:
            return same(json.loads((d / marker).read_text()))
        except (OSError, ValueError):
            return False

    if matches(out_dir):
        return out_dir
    for found in sorted(out_dir.parent.parent.glob(f"*/*/{marker}"), reverse=True):
        if found.parent != out_dir and matches(found.parent):
            return found.parent
    return None


def stateful(cfg: DictConfig) -> bool:
    """Whether a loss of the run (its style losses, the final pass's, its content loss) holds state
    that changes between evaluations: its state is then the start of a level."""
    return any(STYLE_LOSSES[n].stateful for n in style_losses(cfg)) or CONTENT_LOSSES[cfg.content.loss].stateful


def continued(out_dir: str, cfg: DictConfig, resolved: dict) -> dict | None:
    """With resume=true: the state of the stopped run to go on with (tensors on
    `resolved["device"]`), the step it goes on from (counted over the levels), its folder, its
    marker and what its outputs keep (`resumes`: the
    metrics lines before step `before`, the W&B run `wandb_id`); None (said in one line) when
    there is none."""
    if not cfg.resume:
        return None
    me = identity(cfg, resolved)
    folder = earlier(Path(out_dir), MARKER, lambda marker: marker.get("identity") == me)
    if folder is None or not (folder / STATE).exists():
        print("resume=true: no stopped run with the same settings and a saved state; starting afresh", file=sys.stderr)
        return None
    marker = json.loads((folder / MARKER).read_text())
    # Written by this run itself; weights_only cannot hold its dataclasses. Memory-mapped: an
    # optimizer's history is copied once, into the optimizer.
    state = torch.load(folder / STATE, map_location=resolved["device"], mmap=resolved["device"].type == "cpu",
                       weights_only=False)
    if state.get("engine") is not None:
        # All but the optimizer's state (the large part, which the optimizer copies into its own
        # buffers and the engine then drops) is copied out of the mapping: once the optimizer has
        # loaded, nothing holds the file, and its space is freed when the next state replaces it.
        engine, state["engine"] = state["engine"], None
        optimizer, engine.optimizer = engine.optimizer, {}
        engine = copy.deepcopy(engine)
        engine.optimizer = optimizer
        state = {**copy.deepcopy(state), "engine": engine}
    else:
        state = copy.deepcopy(state)
    done, taken = state["done"]["steps"], state["engine"].pending[0] if state.get("engine") else 0
    print(f"resuming {folder} from step {done + taken}", file=sys.stderr)
    # The first step whose metrics line the resumed run writes: the step the state was taken at
    # waits for its losses (the next step's first evaluation); a level's start was logged by the
    # level before it.
    first = done + taken if taken else done + (1 if state["level"] > 0 else 0)
    return {**state, "step": done + taken, "folder": str(folder), "marker": marker,
            "resumes": {"before": first, "wandb_id": marker.get("wandb_id")}}


def note_wandb_run(folder: str, wandb_id: str | None) -> None:
    """Record the W&B run's id in the marker of a state in `folder` (if there is one), for the run
    that goes on to continue that W&B run."""
    path = Path(folder) / MARKER
    if wandb_id and path.exists():
        path.write_text(json.dumps({**json.loads(path.read_text()), "wandb_id": wandb_id}))


class Saver:
    """Writes a run's state into its folder when it is due or the run stops."""

    def __init__(self, folder: str, cfg: DictConfig, resolved: dict):
        self.folder = Path(folder)
        self.identity = identity(cfg, resolved)
        self.every_s = 60.0 * float(cfg.save_state_every_min)
        self.last, self.took = time.perf_counter(), 0.0
        self.written: tuple | None = None  # (level, step) of what the file holds

    def due(self) -> bool:
        return bool(self.every_s) and time.perf_counter() - self.last >= max(self.every_s, 10 * self.took)

    def write(self, state: dict, level: int, step: int, extra: dict) -> None:
        """`state` as the run's state, at `step` (counted over the levels) of `level`; `extra`
        goes to the marker (the W&B run's id)."""
        if self.written == (level, step):
            return
        t = time.perf_counter()
        tmp = self.folder / (STATE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.folder / STATE)  # a run killed while writing keeps the previous state
        marker = {"identity": self.identity, "level": level, "step": step, "bytes": os.path.getsize(self.folder / STATE),
                  **extra}
        (self.folder / MARKER).write_text(json.dumps(marker))
        self.last, self.took, self.written = time.perf_counter(), time.perf_counter() - t, (level, step)

    def clear(self) -> None:
        """The run completed or diverged: nothing to go on with."""
        for name in (STATE, STATE + ".tmp", MARKER):
            (self.folder / name).unlink(missing_ok=True)
