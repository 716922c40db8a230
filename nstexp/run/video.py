"""A video run: the frames of `content.video` stylized one after the other, each an image run
(`runner.run_frame`), each frame after the first held to the earlier stylized frames by the
temporal loss and started from the previous one warped along the input frames' flow (Ruder,
Dosovitskiy & Brox, GCPR 2016; IJCV 2018).

With `video.passes` > 1 it is the paper's multi-pass algorithm: passes over the whole clip in
alternating directions, each frame of a later pass started from its previous pass's result
blended with its neighbour's (the one just processed in this pass) warped to it,
x' = δ c ∘ ω + (1 − δ c) ∘ x_old (IJCV 2018, eq. 10, δ = video.blend), the temporal loss toward
that neighbour from pass `video.temporal.from_pass` on.

The run's folder holds `input/` (the frames at the size the run works at), `runs/<frame>/`
(each frame's image run, `runs/pass<p>/<frame>/` with several passes: metrics.jsonl per step,
summary.json, final.png), `frames/<frame>.png` (the newest stylized frames), `video.mp4` (at the
input's frame rate, or video.fps), `metrics.jsonl` (a line per frame run: its steps, losses,
yardstick and warping error to its neighbour), `summary.json` (the last pass's means),
`video.json` (what `resume=true` recognizes the run by) and, with video.diagnostics=true,
`diagnostics/`; and one W&B run with the lines (their step counts the frames run) and the clip.
A frame run is finished once its line is in its folder's `frame.json`: whatever stops the run,
finished frames stay, and `resume=true` goes on from the first unfinished one.
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
from nstexp.run import colour, resume
from nstexp.run.job import FrameContext, JobSpec, versions
from nstexp.run.runner import resolved, run_frame
from nstexp.run.tracking import Tracker
from nstexp.validation import validate
from nstexp.video import consistency, flow, io, reliability
from nstexp.video.warp import blend, warp

def run_video(specs: list[JobSpec], stop_file: str | os.PathLike | None = None) -> list[dict]:
    """Run the video job of `specs` (one: video runs are not batched); returns its summary, in a list
    as `runner.run_batch` does. Bad input raises NstexpError after the summary is written."""
    if len(specs) > 1:
        raise NstexpError("content.video: video runs are not batched (use hydra/launcher=basic or joblib)")
    stop = StopRequest(stop_file)
    with stop.installed():
        return [VideoRun(specs[0], stop).run()]


def _folder(out_dir: Path, cfg: DictConfig) -> Path:
    """Where the run goes: `out_dir`, or with resume=true the newest earlier folder of the same run
    (nstexp.run.resume.earlier). A folder not resumed is cleared of an earlier video run."""
    if not cfg.resume:
        return _cleared(out_dir)
    found = resume.earlier(out_dir, "video.json", lambda marker: marker == resume.identity(cfg))
    if found is not None:
        if found != out_dir:
            print(f"resuming {found}", file=sys.stderr)
        return found
    print("resume=true: no earlier run of this video with the same settings; starting afresh", file=sys.stderr)
    return _cleared(out_dir)


def _cleared(folder: Path) -> Path:
    """`folder` without what a video run left there, so no frame of another run counts as this one's."""
    for name in ("input", "runs", "frames", "diagnostics"):
        shutil.rmtree(folder / name, ignore_errors=True)
    for name in ("video.mp4", "video.json"):
        (folder / name).unlink(missing_ok=True)
    return folder


class VideoRun:
    """One video run into its folder; `run` returns the summary, whatever ends it."""

    def __init__(self, spec: JobSpec, stop: StopRequest):
        self.cfg, self.spec, self.stop = spec.cfg, spec, stop
        self.dir = _folder(Path(spec.out_dir), spec.cfg)
        self.name = spec.name or spec.cfg.wandb.name or "video"
        self.tracker = Tracker(str(self.dir), OmegaConf.to_container(spec.cfg, resolve=True), spec.cfg.wandb,
                               name=self.name, group=spec.group)
        self.summary: dict = {"status": "failed", "frames": 0, "name": self.name, **(spec.record or {})}
        self.lines: list[dict] = []  # of the frames finished, in order
        self.flows: dict[tuple[int, int], torch.Tensor] = {}  # (a, b): the flow from input frame a to b
        self.cache: dict = {}  # what the frames' image runs share (the network)
        self.ran: dict[tuple[int, int], float] = {}  # (pass, frame): seconds of each frame run now

    def path(self, kind: str, k: int, suffix: str = ".png") -> Path:
        return self.dir / kind / f"{k + 1:06d}{suffix}"

    def run_dir(self, p: int, k: int) -> Path:
        """Frame k's image run in pass p (from 1)."""
        return self.dir / "runs" / (f"pass{p:02d}" if self.cfg.video.passes > 1 else "") / f"{k + 1:06d}"

    def run(self) -> dict:
        t0 = time.perf_counter()
        try:
            validate(self.cfg)
            self._inputs()
            (self.dir / "video.json").write_text(json.dumps(resume.identity(self.cfg)))
            self.tracker.start()
            self.summary["status"] = "completed"
            n = self.frames
            for p in range(1, self.cfg.video.passes + 1):
                for k in range(n) if p % 2 else reversed(range(n)):  # odd passes forward, even ones back
                    if self.stop():
                        raise KeyboardInterrupt
                    status = self._keep(p, k) if (self.run_dir(p, k) / "frame.json").exists() else self._frame(p, k)
                    if status != "completed":
                        self.summary["status"] = status
                        return self.summary
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
        """The clip's frames chosen, at the size the run works at, into `input/`."""
        cfg, v = self.cfg, self.cfg.video
        size = resolved(cfg)["size"]
        # The sides are multiples of the deepest layer's pooling, as the image run makes them.
        need = 2 ** max(pools_before(cfg.backbone.arch, k) for part in weighted_layers(cfg.layers) for k in part)
        fit = lambda im: images.resize(im, images.round_to(images.fit_longest(im.size, size), need))  # noqa: E731
        clip = io.read(cfg.content.video, "content.video", v.fps, v.start, v.end, v.frames, fit)
        # Kept as files, read where needed: a long clip does not sit in memory.
        self.fps, self.frames, (w, h) = clip.fps, len(clip.frames), clip.frames[0].size
        for k, im in enumerate(clip.frames):
            target = self.path("input", k)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                im.save(target)
        self.summary.update(frames_total=self.frames, fps=self.fps, image_size=[h, w])

    def _input(self, k: int) -> torch.Tensor:
        return images.to_tensor(images.load_image(str(self.path("input", k))))

    def _flow(self, a: int, b: int) -> torch.Tensor:
        if (a, b) not in self.flows:
            self.flows[(a, b)] = flow.flow(self._input(a), self._input(b))
        return self.flows[(a, b)]

    def _weights(self, k: int, m: int) -> torch.Tensor:
        """c of frame k toward frame m, on k's pixels."""
        return reliability.reliability(self._flow(k, m), self._flow(m, k))

    def _stylized(self, p: int, k: int, seen: bool = False) -> torch.Tensor:
        """Frame k as pass p stylized it, as written (8-bit: a resumed run goes on exactly as an unbroken
        one); `seen`: in the colours the network works in (grey under color.preserve=luminance)."""
        image = images.to_tensor(images.load_image(str(self.run_dir(p, k) / "final.png")))
        return colour.grey(colour.luminance(image)) if seen and self.cfg.color.preserve == "luminance" else image

    def _frame_cfg(self, k: int, first: bool) -> DictConfig:
        """Frame k's image run: its input frame as the content, no W&B run of its own; but for the
        clip's `first` frame and frames on their own (video.init=content), with a warm start: one
        level at the run's size and `video.steps` steps (None: `steps`)."""
        cfg, v = self.cfg.copy(), self.cfg.video
        with open_dict(cfg):
            cfg.content.image, cfg.content.video = str(self.path("input", k)), None
            cfg.size = max(self.summary["image_size"])
            cfg.wandb.mode, cfg.resume = "disabled", False
            if not first and v.init == "content" and v.passes == 1:
                cfg.init.kind = "content"
            elif not first:
                cfg.scales.min = None
                cfg.steps = cfg.steps if v.steps is None else v.steps
        return cfg

    def _start(self, p: int, k: int, m: int | None) -> torch.Tensor | None:
        """Where frame k starts in pass p, m the frame processed just before it in this pass (None: none)."""
        v = self.cfg.video
        if m is None:
            return self._stylized(p - 1, k, seen=True) if p > 1 else None
        neighbour = self._stylized(p, m, seen=True)
        warped = warp(neighbour, self._flow(k, m))  # ω: the neighbour seen from frame k
        if p > 1:
            return blend(self._stylized(p - 1, k, seen=True), warped, self._weights(k, m), v.blend)
        return {"warped": warped, "previous": neighbour}.get(v.init)

    def _frame(self, p: int, k: int) -> str:
        """Run frame k in pass p; returns its status."""
        t0 = time.perf_counter()
        v, n = self.cfg.video, self.frames
        d = 1 if p % 2 else -1  # the pass's direction
        m = k - d if 0 <= k - d < n else None
        reach = max(v.temporal.frames)  # the flows kept: between frames this near frame k (a few ms each to redo)
        self.flows = {ab: f for ab, f in self.flows.items() if max(abs(a - k) for a in ab) <= reach}
        temporal = None
        if m is not None and v.temporal.weight > 0 and p >= v.temporal.from_pass:
            # The frames processed before k in this pass, k − d j for j ∈ J: each pixel held to the
            # nearest where the flow is reliable.
            earlier = [k - d * j for j in sorted(v.temporal.frames) if 0 <= k - d * j < n]
            weights = reliability.long_term([self._weights(k, e) for e in earlier])
            held = [warp(self._stylized(p, e, seen=True), self._flow(k, e)) for e in earlier]  # ω_j
            temporal = TemporalTargets(v.temporal.weight, list(zip(held, weights)))
        first = p == 1 and m is None
        label = f"frame {k + 1}/{n}" + (f", pass {p}/{v.passes}" if v.passes > 1 else "")
        spec = JobSpec(self._frame_cfg(k, first), str(self.run_dir(p, k)), name=f"{self.name}/frame {k + 1}")
        summary = run_frame(spec, self.stop, FrameContext(self._start(p, k, m), temporal, label, self.cache))
        if summary["status"] != "completed":
            return summary["status"]
        line = {"step": 0, "frame": k + 1, **({"pass": p} if v.passes > 1 else {}), "time_s": None,
                "steps": summary["steps"],
                **{key.replace("final/", ""): val for key, val in summary.items()
                   if key.startswith(("final/", "eval/"))}}
        if m is not None:
            a, b = min(k, m), max(k, m)  # the pair in the clip's order: a before b
            line["eval/warp_error"] = consistency.warp_error(self._stylized(p, a), self._stylized(p, b),
                                                             self._flow(a, b), self._weights(a, b))
            if v.diagnostics and p == 1:
                self._diagnose(b)
        line["time_s"] = self.ran[(p, k)] = time.perf_counter() - t0
        (self.run_dir(p, k) / "frame.json").write_text(json.dumps(line))
        return self._keep(p, k, line)

    def _keep(self, p: int, k: int, line: dict | None = None) -> str:
        """Frame k of pass p is finished: the newest stylized frame in frames/, its line to metrics.jsonl
        and W&B (its step: the frame runs before it), read back when it was finished before."""
        line = {**(line or json.loads((self.run_dir(p, k) / "frame.json").read_text())), "step": len(self.lines)}
        self.path("frames", k).parent.mkdir(exist_ok=True)
        shutil.copyfile(self.run_dir(p, k) / "final.png", self.path("frames", k))
        self.lines.append(line)
        self.tracker.stepped()
        self.tracker.log_step(line, None)
        return "completed"

    def _diagnose(self, k: int) -> None:
        """Frame k's flows to and from frame k − 1 (.npy, (2, H, W): u, v) and its weights c (.png, white: 1)."""
        (self.dir / "diagnostics").mkdir(exist_ok=True)
        for name, (a, b) in (("forward", (k - 1, k)), ("backward", (k, k - 1))):
            np.save(self.path("diagnostics", k, f"_{name}.npy"), self._flow(a, b)[0].numpy())
        weights = self._weights(k, k - 1).expand(1, 3, -1, -1)
        images.to_pil(weights).save(self.path("diagnostics", k, "_reliability.png"))

    def _close(self, t0: float) -> None:
        """The clip of the newest stylized frames, the summary (the last pass's means) and the end of
        the W&B run, whatever stopped the run."""
        s, v = self.summary, self.cfg.video
        last = [line for line in self.lines if line.get("pass", 1) == v.passes]
        s.update(frames=len(last), frame_runs=len(self.lines), steps=sum(line["steps"] for line in self.lines))
        made = [k for k in range(getattr(self, "frames", 0)) if self.path("frames", k).exists()]
        made = made[:next((i for i, k in enumerate(made) if k != i), len(made))]  # from the first frame on
        final = None
        if made:
            clip = str(self.dir / "video.mp4")
            io.write([images.load_image(str(self.path("frames", k))) for k in made], self.fps, clip)
            self.tracker.log_video(clip, max(len(self.lines) - 1, 0))
            final = images.to_tensor(images.load_image(str(self.path("frames", made[-1]))))
        for key in sorted({key for line in last for key in line if key.startswith("eval/")}):
            values = [line[key] for line in last if key in line]
            s[key] = sum(values) / len(values)  # the mean over the frames (pairs of frames: warp_error)
        later = [t for (p, k), t in self.ran.items() if (p, k) != (1, 0)]
        s.update(frames_kept=len(self.lines) - len(self.ran), time_first_frame_s=self.ran.get((1, 0)),
                 time_per_frame_s=sum(later) / len(later) if later else None, total_time_s=time.perf_counter() - t0,
                 out_dir=str(self.dir), versions=versions())
        s["wall_time_s"] = s["total_time_s"]  # what `nstexp compare` reads of a run's cost
        self.tracker.stepped()
        self.tracker.finish(s, final)
