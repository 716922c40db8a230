"""One job's side of a run: its tracker, summary, metrics lines, and whatever ends it.

A run optimizes one job, or a batch of jobs that share the network (`runner.run_batch`);
each job keeps its own outputs exactly as if it had run alone.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import torch
from omegaconf import DictConfig, OmegaConf

from nstexp.eval import metrics
from nstexp.losses.temporal import TemporalTargets
from nstexp.losses.terms import LossTerms
from nstexp.optim.events import StepEvent
from nstexp.optim.optimizers import uses_batched_lbfgs
from nstexp.run.tracking import Tracker

# The batched L-BFGS's curvature pairs so far, and its steps taken back after they blew the loss
# up (metrics lines and the summary).
PAIR_KEYS = ("lbfgs/pairs_accepted", "lbfgs/pairs_rejected", "lbfgs/steps_taken_back")


# The settings each job of a batch uses on its own: its objective (loss weights, normalizations,
# the style loss, layer weights), its initial image, its seed, its optimizer's per-sample settings
# and its outputs. Everything else is shared by the batch: the runner reads it through
# `shared_config`, from which these keys are removed, so shared code cannot read one job's value
# for all of them; the network, which is shared but may depend on a per-job key (random weights
# on the seed), enters the batching key through `runner.network_spec`.
PER_JOB = (
    "content.weight", "content.normalization",
    "style.weight", "style.normalization", "style.loss", "style.balance", "style.blend_weights",
    "tv.weight", "tv.exponent",
    "layers.name", "layers.content", "layers.style",
    "init", "seed",
    "optimizer.lr", "optimizer.betas", "optimizer.alpha", "optimizer.eps",
    "snapshot_every", "resume", "eval", "wandb",
)


def shared_config(cfg: DictConfig) -> DictConfig:
    """`cfg` without the PER_JOB keys: what every job of a batch has in common. Reading a
    removed key raises (the config is in struct mode), instead of giving job 0's value."""
    node = OmegaConf.to_container(cfg, resolve=True)
    for dotted in PER_JOB:
        *parents, leaf = dotted.split(".")
        target = node
        for p in parents:
            target = target.get(p, {})
        target.pop(leaf, None)
    shared = OmegaConf.create(node)
    OmegaConf.set_struct(shared, True)
    return shared


@dataclass
class JobSpec:
    """What a job is: its config and where its outputs go."""

    cfg: DictConfig
    out_dir: str
    name: str | None = None
    group: str | None = None
    record: dict | None = None  # entries added to the summary (the command line's overrides)
    # A single run keeps its state for resume=true (nstexp.run.resume); a sweep's job does not: a
    # resumed sweep runs its unfinished jobs again from their start.
    keeps_state: bool = True


@dataclass
class FrameContext:
    """What a video's frame brings to its image run (nstexp.run.video): the image it starts from
    (1, 3, H, W) at the run's size (None: `init` as configured), its temporal term (None: none),
    the progress bar's label, and what the video's frames share (`cache`: the network)."""

    start: torch.Tensor | None
    temporal: TemporalTargets | None
    label: str
    cache: dict


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("nstexp", "torch", "torchvision", "hydra-core", "wandb", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


class Job:
    """A job's tracker, summary and last events. `log` takes its step events; `close` writes
    what the job ends with, whatever ended it."""

    def __init__(self, spec: JobSpec, resumes: dict | None = None):
        self.cfg = spec.cfg
        self.keeps_state = spec.keeps_state
        self.name = spec.name or spec.cfg.wandb.name or "run"
        self.config = OmegaConf.to_container(spec.cfg, resolve=True)
        # resumes: going on with a stopped run in its folder (nstexp.run.resume.continued)
        self.tracker = Tracker(spec.out_dir, self.config, spec.cfg.wandb, name=self.name, group=spec.group,
                               resumes=resumes)
        self.summary: dict = {"status": "failed", "steps": 0, "evals": 0, "seed": spec.cfg.seed, "name": self.name,
                              **(spec.record or {})}
        self.final_image: torch.Tensor | None = None
        self.latest: dict = {}  # the newest step event: the last good image, whatever stops the run
        self.warnings: list[str] = []
        self.evaluate = None  # the yardstick, once set up
        # Over the coarse-to-fine levels finished so far; pairs: L-BFGS's [accepted, rejected, taken back].
        self.done = {"steps": 0, "evals": 0, "pairs": [0, 0, 0]}
        self.status = "completed"  # while it runs

    def log(self, ev: StepEvent, level: int, extra: dict, total_steps: int, log_every: int, show) -> bool:
        """Take one of this job's step events (steps, evals and time already run on across the
        levels); returns whether it wrote a metrics line."""
        cfg = self.cfg
        self.latest["event"], self.latest["extra"], self.latest["show"] = ev, extra, show
        if ev.step > 0:
            self.tracker.stepped()
        if level > 0 and ev.step == self.done["steps"]:
            return False  # the upsampled image: the previous level logged this step
        every = cfg.snapshot_every if cfg.eval.every is None else cfg.eval.every
        snapshot = bool(cfg.snapshot_every) and ev.step % cfg.snapshot_every == 0
        last = ev.step == total_steps
        scored = self.evaluate is not None and ((bool(every) and ev.step % every == 0) or last)
        if not (snapshot or scored or ev.step % log_every == 0 or last):
            return False
        self._write(ev, snapshot, extra, show, scored)
        self.latest["logged"] = ev.step
        return True

    def _write(self, ev: StepEvent, snapshot: bool, extra: dict | None, show, scored: bool = False) -> None:
        """A step's metrics line, and its image as `show(image)` (what the user sees) when
        `snapshot`; `scored` adds the yardstick's values of that image (on the writer thread)."""
        metrics = {"step": ev.step, "evals": ev.evals, "time_s": ev.time_s, **(extra or {}), **ev.terms.as_floats()}
        if ev.pairs is not None:
            metrics.update(zip(PAIR_KEYS, ev.pairs[0]))
        image = show(ev.image) if snapshot or scored else None
        self.tracker.log_step(metrics, image if snapshot else None, self.evaluate if scored else None,
                              image if scored else None)

    def ended(self, status: str, image: torch.Tensor, terms: LossTerms | None, show) -> None:
        """The optimization is over for this job: its status, final image and its losses."""
        self.summary["status"] = self.status = status
        self.final_image = show(image)
        self.summary.update(steps=self.done["steps"], evals=self.done["evals"])
        if terms is not None:
            self.summary.update({f"final/{k}": v for k, v in terms.as_floats().items()})
        prefix = f"{self.name}: " if self.summary.get("batch") else ""
        if uses_batched_lbfgs(self.cfg.optimizer):
            accepted, rejected, _ = self.done["pairs"]
            self.summary.update(zip(PAIR_KEYS, self.done["pairs"]))
            if rejected > accepted:
                warning = (f"L-BFGS rejected {rejected} of its {accepted + rejected} curvature pairs (y.s <= 1e-10, "
                           "negative curvature): it ran mostly as scaled gradient descent")
                self.warnings.append(warning)
                print(f"{prefix}warning: {warning}", file=sys.stderr)
        if status == "interrupted":
            print(f"{prefix}interrupted after step {self.summary['steps']}; final.png is the last good image",
                  file=sys.stderr)
        elif status == "diverged":
            print(f"{prefix}diverged: non-finite loss after step {self.summary['steps']}; kept the last good image",
                  file=sys.stderr)

    def close(self, t_start: float, peak_mb: float | None) -> None:
        """Write the summary, final.png and the end of the W&B run, whatever stopped the job."""
        summary, latest = self.summary, self.latest
        if "event" in latest and latest.get("logged") != latest["event"].step:
            # The last step always has its metrics line.
            self._write(latest["event"], snapshot=False, extra=latest.get("extra"), show=latest.get("show"))
        try:  # the metrics lines, snapshots and W&B logs still on the writer
            self.tracker.drain()
        except KeyboardInterrupt:
            summary["status"] = "interrupted"
        except Exception as exc:
            summary.setdefault("error", f"{type(exc).__name__}: {exc}")
            summary["status"] = "failed"
            print(f"error: {summary['error']}", file=sys.stderr)
        if summary["status"] != "completed" and "event" in latest and "final/loss/total" not in summary:
            # Stopped by an exception or a second Ctrl-C inside a step: the newest image the
            # optimizer produced, with the losses measured on it, is the last good one.
            ev = latest["event"]
            self.final_image = latest["show"](ev.image.clamp(0.0, 1.0))
            summary.update(steps=ev.step, evals=ev.evals)
            if torch.equal(ev.image.clamp(0.0, 1.0), ev.image):  # else its losses are not final.png's
                summary.update({f"final/{k}": v for k, v in ev.terms.as_floats().items()})
        if self.evaluate is not None and self.final_image is not None:
            try:  # the yardstick of the image final.png holds, whatever stopped the run
                summary.update(self.evaluate(self.final_image))
            except Exception as exc:  # never hides what stopped the run
                self.warnings.append(f"the metrics could not be computed: {type(exc).__name__}: {exc}")
        summary.setdefault("wall_time_s", time.perf_counter() - t_start)
        summary["time_per_eval_s"] = summary["wall_time_s"] / summary["evals"] if summary["evals"] else None
        summary.update(peak_memory_mb=peak_mb, total_time_s=time.perf_counter() - t_start,
                       warnings=self.warnings, versions=versions())
        self.tracker.finish(summary, self.final_image)


def evaluator(cfg: DictConfig, device: torch.device, summary: dict):
    """The run's yardstick (nstexp.eval.metrics) against its content and first style image, as the
    user gave them; its cost goes to the summary's `eval_time_s`."""
    content = metrics.load(cfg.content.image, "content.image", device)
    style = metrics.load(cfg.style.image, "style.image", device)
    summary["eval_time_s"] = 0.0
    last: dict = {}  # the final image is usually the last step's: scored once

    def evaluate(image: torch.Tensor) -> dict[str, float]:
        if "image" in last and last["image"].shape == image.shape and torch.equal(last["image"], image):
            return dict(last["out"])
        t = time.perf_counter()
        if "evaluator" not in last:  # built where it is first needed: on the writer thread, usually
            last["evaluator"] = metrics.Evaluator(content, style, cfg.eval.size)
        last.update(image=image.detach().clone(), out=last["evaluator"](image))
        summary["eval_time_s"] += time.perf_counter() - t
        return dict(last["out"])

    return evaluate
