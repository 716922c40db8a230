"""A video run: the frames of `content.video` stylized one after the other, each an image run
(`runner.run_frame`), each frame after the first held to the earlier stylized frames by the
temporal loss and started from the previous one warped along the input frames' flow (Ruder,
Dosovitskiy & Brox, GCPR 2016; IJCV 2018).

The run's folder holds `input/` (the frames at the size the run works at), `runs/<frame>/` (each
frame's image run: metrics.jsonl per step, summary.json, final.png), `frames/<frame>.png` (the
stylized frames), `video.mp4` (at the input's frame rate, or video.fps), `metrics.jsonl` (a line
per frame: its steps, losses, yardstick and warping error), `summary.json`, `video.json` (what
`resume=true` recognizes the run by) and, with video.diagnostics=true, `diagnostics/`; and one
W&B run with the per-frame lines (the frame is their step) and the clip. A frame is finished once
its line is in `runs/<frame>/frame.json`: whatever stops the run, finished frames stay, and
`resume=true` goes on from the first unfinished one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from nstexp import images
from nstexp.errors import NstexpError
from nstexp.losses.objective import weighted_layers
from nstexp.losses.temporal import TemporalTargets
from nstexp.network.layout import pools_before
from nstexp.optim.stopping import StopRequest
from nstexp.run import colour
from nstexp.run.job import FrameContext, JobSpec, versions
from nstexp.run.runner import resolved, run_frame
from nstexp.run.tracking import Tracker
from nstexp.validation import validate
from nstexp.video import consistency, flow, io, reliability
from nstexp.video.warp import warp

# Settings that say how a run is watched, not what it computes: a run that differs only in these
# is the same run for resume=true.
WATCHING = ("resume", "progress", "wandb", "log_every", "snapshot_every")


def run_video(specs: list[JobSpec], stop_file: str | os.PathLike | None = None) -> list[dict]:
    """Run the video job of `specs` (one: video runs are not batched); returns its summary, in a list
    as `runner.run_batch` does. Bad input raises NstexpError after the summary is written."""
    if len(specs) > 1:
        raise NstexpError("content.video: video runs are not batched (use hydra/launcher=basic or joblib)")
    stop = StopRequest(stop_file)
    with stop.installed():
        return [VideoRun(specs[0], stop).run()]


def _identity(cfg: DictConfig) -> dict:
    """What a run computes: its resolved config without the WATCHING keys."""
    node = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in node.items() if k not in WATCHING}


def _folder(out_dir: Path, cfg: DictConfig) -> Path:
    """Where the run goes: `out_dir`, or with resume=true the newest earlier folder of the same run
    beside it (Hydra's outputs/<date>/<time>/; `out_dir` itself when it holds one, as a sweep's
    job folder or hydra.run.dir=... does)."""
    if not cfg.resume:
        return out_dir
    def same(d: Path) -> bool:
        return (d / "video.json").exists() and json.loads((d / "video.json").read_text()) == _identity(cfg)

    if same(out_dir):
        return out_dir
    for marker in sorted(out_dir.parent.parent.glob("*/*/video.json"), reverse=True):
        if marker.parent != out_dir and same(marker.parent):
            print(f"resuming {marker.parent}", file=sys.stderr)
            return marker.parent
    print("resume=true: no earlier run of this video with the same settings; starting afresh", file=sys.stderr)
    return out_dir


class VideoRun:
    """One video run into its folder; `run` returns the summary, whatever ends it."""

    def __init__(self, spec: JobSpec, stop: StopRequest):
        self.cfg, self.spec, self.stop = spec.cfg, spec, stop
        self.dir = _folder(Path(spec.out_dir), spec.cfg)
        self.name = spec.name or spec.cfg.wandb.name or "video"
        self.tracker = Tracker(str(self.dir), OmegaConf.to_container(spec.cfg, resolve=True), spec.cfg.wandb,
                               name=self.name, group=spec.group)
        self.summary: dict = {"status": "failed", "frames": 0, "name": self.name, **(spec.record or {})}
        self.lines: list[dict] = []  # the finished frames'
        self.flows: dict[tuple[int, int], torch.Tensor] = {}  # (a, b): the flow from input frame a to b
        self.cache: dict = {}  # what the frames' image runs share (the network)
        self.ran: dict[int, float] = {}  # seconds of each frame run now (not kept from before)

    def path(self, kind: str, k: int, suffix: str = ".png") -> Path:
        return self.dir / kind / f"{k + 1:06d}{suffix}"

    def run(self) -> dict:
        t0 = time.perf_counter()
        try:
            validate(self.cfg)
            self._inputs()
            (self.dir / "video.json").write_text(json.dumps(_identity(self.cfg)))
            self.tracker.start()
            self.summary["status"] = "completed"
            for k in range(len(self.inputs)):
                if self.stop():
                    self.summary["status"] = "interrupted"
                    break
                done = (self.dir / "runs" / f"{k + 1:06d}" / "frame.json").exists()
                status = self._keep(k) if done else self._frame(k)
                if status != "completed":
                    self.summary["status"] = status
                    break
        except NstexpError as exc:
            self.summary.update(status="failed", error=str(exc))
            raise
        except KeyboardInterrupt:
            self.summary["status"] = "interrupted"
        except Exception as exc:
            self.summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._close(t0)
        return self.summary

    def _inputs(self) -> None:
        """The clip's frames chosen, at the size the run works at, in `input/` (and as tensors)."""
        cfg, v = self.cfg, self.cfg.video
        size = resolved(cfg)["size"]
        # The sides are multiples of the deepest layer's pooling, as the image run makes them.
        need = 2 ** max(pools_before(cfg.backbone.arch, k) for part in weighted_layers(cfg.layers) for k in part)
        fit = lambda im: images.resize(im, images.round_to(images.fit_longest(im.size, size), need))  # noqa: E731
        clip = io.read(cfg.content.video, "content.video", v.fps, v.start, v.end, v.frames, fit)
        self.fps, self.inputs = clip.fps, [images.to_tensor(im) for im in clip.frames]
        for k, im in enumerate(clip.frames):
            target = self.path("input", k)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                im.save(target)
        self.summary.update(frames_total=len(self.inputs), fps=self.fps, image_size=list(self.inputs[0].shape[-2:]))

    def _flow(self, a: int, b: int) -> torch.Tensor:
        if (a, b) not in self.flows:
            self.flows[(a, b)] = flow.flow(self.inputs[a], self.inputs[b])
        return self.flows[(a, b)]

    def _stylized(self, k: int, seen: bool = False) -> torch.Tensor:
        """Stylized frame k as written (8-bit: a resumed run goes on exactly as an unbroken one);
        `seen`: in the colours the network works in (grey under color.preserve=luminance)."""
        image = images.to_tensor(images.load_image(str(self.path("frames", k))))
        return colour.grey(colour.luminance(image)) if seen and self.cfg.color.preserve == "luminance" else image

    def _frame_cfg(self, k: int) -> DictConfig:
        """Frame k's image run: its input frame as the content, no W&B run of its own; after the first,
        with a warm start, one level at the run's size and `video.steps` steps."""
        cfg, v = self.cfg.copy(), self.cfg.video
        with open_dict(cfg):
            cfg.content.image, cfg.content.video = str(self.path("input", k)), None
            cfg.size = max(self.inputs[k].shape[-2:])
            cfg.wandb.mode, cfg.resume = "disabled", False
            if k > 0 and v.init == "content":
                cfg.init.kind = "content"
            elif k > 0:
                cfg.scales.min = None
                cfg.steps = cfg.steps if v.steps is None else v.steps
        return cfg

    def _frame(self, k: int) -> str:
        """Run frame k; returns its status."""
        t0 = time.perf_counter()
        v, n = self.cfg.video, len(self.inputs)
        start = temporal = None
        if k > 0:
            back = self._flow(k, k - 1)  # ŵ: from frame k to k − 1, on k's pixels
            previous = self._stylized(k - 1, seen=True)
            start = {"warped": warp(previous, back), "previous": previous}.get(v.init)
            if v.temporal.weight > 0:
                earlier = [j for j in sorted(v.temporal.frames) if k - j >= 0]
                weights = reliability.long_term([reliability.reliability(self._flow(k, k - j), self._flow(k - j, k))
                                                 for j in earlier])
                held = [warp(self._stylized(k - j, seen=True), self._flow(k, k - j)) for j in earlier]  # ω_j
                temporal = TemporalTargets(v.temporal.weight, list(zip(held, weights)))
        run_dir = self.dir / "runs" / f"{k + 1:06d}"
        spec = JobSpec(self._frame_cfg(k), str(run_dir), name=f"{self.name}/frame {k + 1}")
        summary = run_frame(spec, self.stop, FrameContext(start, temporal, f"frame {k + 1}/{n}", self.cache))
        if summary["status"] != "completed":
            return summary["status"]
        self.path("frames", k).parent.mkdir(exist_ok=True)
        shutil.copyfile(run_dir / "final.png", self.path("frames", k))
        line = {"step": k, "frame": k + 1, "time_s": None, "steps": summary["steps"],
                **{key.replace("final/", ""): val for key, val in summary.items() if key.startswith(("final/", "eval/"))}}
        if k > 0:
            forward = self._flow(k - 1, k)
            mask = reliability.reliability(forward, self._flow(k, k - 1))  # on frame k − 1's pixels
            line["eval/warp_error"] = consistency.warp_error(self._stylized(k - 1), self._stylized(k), forward, mask)
            if v.diagnostics:
                self._diagnose(k)
        self.flows = {ab: f for ab, f in self.flows.items() if min(ab) > k - max(v.temporal.frames)}
        line["time_s"] = time.perf_counter() - t0
        self.ran[k] = line["time_s"]
        (run_dir / "frame.json").write_text(json.dumps(line))
        return self._keep(k, line)

    def _keep(self, k: int, line: dict | None = None) -> str:
        """Frame k is finished: its line to metrics.jsonl and W&B (read back when it was finished before)."""
        line = line or json.loads((self.dir / "runs" / f"{k + 1:06d}" / "frame.json").read_text())
        self.lines.append(line)
        self.tracker.stepped()
        self.tracker.log_step(line, None)
        return "completed"

    def _diagnose(self, k: int) -> None:
        """Frame k's flows to and from frame k − 1 (.npy, (2, H, W): u, v) and its weights c (.png, white: 1)."""
        (self.dir / "diagnostics").mkdir(exist_ok=True)
        for name, (a, b) in (("forward", (k - 1, k)), ("backward", (k, k - 1))):
            np.save(self.path("diagnostics", k, f"_{name}.npy"), self._flow(a, b)[0].numpy())
        c = reliability.reliability(self._flow(k, k - 1), self._flow(k - 1, k))
        images.to_pil(c.expand(1, 3, -1, -1)).save(self.path("diagnostics", k, "_reliability.png"))

    def _close(self, t0: float) -> None:
        """The clip of the finished frames, the summary and the end of the W&B run, whatever stopped the run."""
        s, lines = self.summary, self.lines
        s.update(frames=len(lines), steps=sum(line["steps"] for line in lines))
        final = None
        if lines:
            clip = str(self.dir / "video.mp4")
            io.write([images.load_image(str(self.path("frames", k))) for k in range(len(lines))], self.fps, clip)
            self.tracker.log_video(clip, len(lines) - 1)
            final = self._stylized(len(lines) - 1)
            for key in sorted({key for line in lines for key in line if key.startswith("eval/")}):
                values = [line[key] for line in lines if key in line]
                s[key] = sum(values) / len(values)  # the mean over the frames (pairs of frames: warp_error)
        later = [t for k, t in self.ran.items() if k > 0]
        s.update(frames_kept=len(lines) - len(self.ran), time_first_frame_s=self.ran.get(0),
                 time_per_frame_s=sum(later) / len(later) if later else None, total_time_s=time.perf_counter() - t0,
                 out_dir=str(self.dir), versions=versions())
        self.tracker.stepped()
        self.tracker.finish(s, final)
