"""One style-transfer run: config in, files and a W&B run out.

`run(cfg, out_dir)` is what the command line calls for every job; tests call it directly.
Whatever happens (success, Ctrl-C, divergence, bad input) the run leaves summary.json,
metrics.jsonl, the last good image as final.png and a finished W&B run.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from nstexp import input_sizes
from nstexp.errors import NstexpError
from nstexp.losses.objective import weighted_layers
from nstexp.network import hardware, memory
from nstexp.network.backbone import FeatureExtractor
from nstexp.network.layout import pools_before
from nstexp.optim import pyramid
from nstexp.optim.stopping import StopRequest
from nstexp.run import inputs, resume, scale_control
from nstexp.run.coarse_to_fine import optimize_levels
from nstexp.run.job import FrameContext, Job, JobSpec, evaluator, shared_config
from nstexp.run.precision import network_precision
from nstexp.validation import validate

# Defaults that depend on the device: a GPU affords larger images and more steps (steps count
# within each coarse-to-fine level; docs/default.md measures the CPU default at under 3 min).
DEFAULT_SIZE = input_sizes.DEFAULT_SIZE  # the checks before a run read it there, without torch
DEFAULT_STEPS = {"cpu": 100, "gpu": 200}
DEFAULT_LOG_EVERY = {"cpu": 1, "gpu": 10}


def resolved(cfg: DictConfig) -> dict:
    """The settings each machine resolves for itself (null or auto in the config) as this one
    does: the device, the size, steps and log interval of its kind (CPU or GPU), the precision
    and the memory format. A run writes them (the device as text) into its summary's `resolved`
    and its W&B config; resuming a sweep compares them (nstexp.sweep.resumable)."""
    device = hardware.resolve_device(cfg.device)
    kind = "cpu" if device.type == "cpu" else "gpu"
    return dict(device=device, size=cfg.size or DEFAULT_SIZE[kind],
                steps=DEFAULT_STEPS[kind] if cfg.steps is None else cfg.steps,
                log_every=cfg.log_every or DEFAULT_LOG_EVERY[kind],
                precision=network_precision(cfg, device),
                channels_last=hardware.resolve_channels_last(cfg.channels_last, device))


def network_spec(cfg: DictConfig) -> dict:
    """What the run's frozen VGG is built from: FeatureExtractor's arguments, but for the
    precision and memory format, which follow from the device. Jobs share a network (and a
    batch) only if these are equal."""
    layers = {k: v for part in weighted_layers(cfg.layers) for k, v in part.items()}
    control = cfg.style.scale_control
    fine_layers = list(control.fine_layers) if control.fine_image else []
    b = cfg.backbone
    return dict(arch=b.arch, weights=b.weights, layers=list(dict.fromkeys([*layers, *fine_layers])),
                pooling=b.pooling, padding=b.padding, preprocessing=b.preprocessing,
                # The seed draws the weights only when they are random; loaded ones ignore it.
                seed=cfg.seed if b.weights == "random" else 0,
                checkpoint=cfg.checkpoint, compile=cfg.compile)


def network(cfg: DictConfig, device: torch.device, precision: str, channels_last: bool) -> FeatureExtractor:
    """The run's frozen VGG: its weighted layers (and scale control's fine layers) as configured."""
    return FeatureExtractor(**network_spec(cfg), precision=precision, channels_last=channels_last).to(device)


def run(cfg: DictConfig, out_dir: str, name: str | None = None, group: str | None = None,
        stop_file: str | os.PathLike | None = None, record: dict | None = None) -> dict:
    """Run one style transfer into `out_dir`; returns the summary (also written to summary.json).

    Whatever happens, `out_dir` ends with summary.json, metrics.jsonl, the last good image as
    final.png (once an image existed) and a finished W&B run (once one started). Bad input
    raises NstexpError and any other error is re-raised, both after the summary is written.
    `record` adds entries to the summary (the command line records a job's overrides).
    """
    return run_batch([JobSpec(cfg, out_dir, name, group, record)], stop_file)[0]


def run_frame(spec: JobSpec, stop: StopRequest, frame: FrameContext) -> dict:
    """One frame of a video (nstexp.run.video) as an image run into `spec.out_dir`, with what the
    frame brings (its start, its temporal term, the network the first frame built); returns the
    summary. `stop` is the video's, installed for the whole clip."""
    job = Job(spec)
    _run([job], stop, frame)
    return job.summary


def run_batch(specs: list[JobSpec], stop_file: str | os.PathLike | None = None) -> list[dict]:
    """Run jobs that share the network, the images and their sizes (see nstexp.sweep.batching) as one
    batch: one forward and backward pass for all of them per step, each job with its own loss
    weights, initial image, seed and optimizer settings, and its own outputs exactly as `run`
    writes them. A job that diverges stops alone; an interruption stops them all. Returns the
    summaries, in order; set-up errors fail every job, and are raised after the summaries exist.
    """
    stop = StopRequest(stop_file)
    # Installed before any output exists, so a signal during set-up is also handled.
    with stop.installed():
        t_start = time.perf_counter()
        saved = _continued(specs)
        if saved is not None:  # the stopped run's folder, its outputs kept up to where it goes on
            specs = [replace(specs[0], out_dir=saved["folder"])]
            saved["t_start"] = t_start
        jobs = [Job(spec, saved and saved["resumes"]) for spec in specs]
        _run(jobs, stop, saved=saved, t_start=t_start)
        return [job.summary for job in jobs]


def _continued(specs: list[JobSpec]) -> dict | None:
    """A single job with resume=true: the stopped run it goes on with (nstexp.run.resume), if any."""
    if len(specs) > 1 or not specs[0].cfg.resume or not specs[0].keeps_state:
        return None
    try:
        validate(specs[0].cfg)
        here = resolved(specs[0].cfg)
    except NstexpError:
        return None  # the run refuses it, with its summary
    return resume.continued(specs[0].out_dir, specs[0].cfg, here)


def _run(jobs: list[Job], stop: StopRequest, frame: FrameContext | None = None, saved: dict | None = None,
         t_start: float | None = None) -> None:
    t_start = t_start or time.perf_counter()
    peak = bar = None
    try:
        for job in jobs:
            validate(job.cfg)
        # What the jobs have in common (nstexp.sweep.batching groups them so): the settings read
        # below come from it, and the per-job ones from each job's own config.
        cfg = shared_config(jobs[0].cfg)
        here = resolved(jobs[0].cfg)  # its precision reads the style loss, the same in a batch's jobs
        device, size, steps, log_every = here["device"], here["size"], here["steps"], here["log_every"]
        precision, channels_last = here["precision"], here["channels_last"]
        hardware.configure(device, cfg.deterministic, record=[job.summary for job in jobs])
        peak = memory.PeakMemory(device)
        for job in jobs:
            job.summary.update(device=str(device), size=size, precision=precision, channels_last=channels_last,
                               resolved={**here, "device": str(device)})
            if len(jobs) > 1:
                job.summary["batch"] = len(jobs)
            # Log the values actually used, not the "device default" placeholders.
            job.config.update(size=size, steps=steps, device=str(device), precision=precision,
                              channels_last=channels_last, log_every=log_every)
            torch.manual_seed(job.cfg.seed)
            job.tracker.start()

        # The sets of layers (not their weights) are the network's, the same in every job.
        layers = {k: v for part in weighted_layers(jobs[0].cfg.layers) for k, v in part.items()}
        deepest = {layer: pools_before(cfg.backbone.arch, layer) for layer in layers}
        control = cfg.style.scale_control
        extractor = frame.cache.get("network") if frame else None
        extractor = extractor or network(jobs[0].cfg, device, precision, channels_last)
        if frame:
            frame.cache["network"] = extractor  # the next frames' (the same network spec: one video run's)
        check = inputs.memory_check(extractor, cfg, device, jobs[0].summary, batch=len(jobs),
                                    job_cfgs=[job.cfg for job in jobs])
        style_image = None  # scale control's, made at the full size and resized for each level
        if control.fine_image:
            t0 = time.perf_counter()
            coarse = inputs.load(cfg, size, deepest, device, [], check)[1][0]
            style_image = scale_control.style_image(extractor, coarse, control, stop)
            for job in jobs:
                job.summary["scale_control_time_s"] = time.perf_counter() - t0
                job.tracker.save_input("style_target", style_image)
        # The full size first: it fails early if the last level cannot fit.
        warnings: list[str] = []
        full = inputs.prepare(cfg, size, deepest, device, warnings, check, style_image)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        sizes, level_steps = pyramid.schedule(size, steps, cfg.scales)
        for job in jobs:
            job.warnings += warnings
            job.summary["memory_estimate_mb"] = jobs[0].summary["memory_estimate_mb"]
            job.summary["image_size"] = list(full.content.shape[-2:])
            if len(sizes) > 1:
                job.summary["levels"] = sizes
            job.tracker.log_inputs(full.content, full.styles)
            if job.cfg.eval.enabled:
                job.evaluate = evaluator(job.cfg, device, job.summary)

        bar = tqdm(total=sum(level_steps), disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True,
                   unit="step", desc=frame.label if frame else None)
        # A single image run keeps its state, so that resume=true can go on with it.
        keeps = len(jobs) == 1 and not frame and jobs[0].keeps_state
        saver = resume.Saver(jobs[0].tracker.out_dir, jobs[0].cfg, here) if keeps else None
        optimize_levels(jobs, cfg, extractor, full, sizes, level_steps, deepest, check, style_image, stop, bar,
                        log_every, frame, saved, saver)
    except NstexpError as exc:
        for job in jobs:
            job.summary["error"] = str(exc)
        raise
    except KeyboardInterrupt:
        for job in jobs:
            job.summary["status"] = "interrupted"
    except Exception as exc:
        for job in jobs:
            job.summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if bar is not None:
            bar.close()
        peak_mb = peak.mb() if peak else None
        for job in jobs:
            job.close(t_start, peak_mb)
            # A state written before the W&B run had started learns its id now.
            resume.note_wandb_run(job.tracker.out_dir, job.tracker.info.get("wandb_id"))
