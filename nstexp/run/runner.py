"""One style-transfer run: config in, files and a W&B run out.

`run(cfg, out_dir)` is what the command line calls for every job; tests call it directly.
Whatever happens (success, Ctrl-C, divergence, bad input) the run leaves summary.json,
metrics.jsonl, the last good image as final.png and a finished W&B run.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from nstexp import input_sizes
from nstexp.errors import NstexpError
from nstexp.losses.objective import Objective, weighted_layers
from nstexp.network import hardware, memory
from nstexp.network.backbone import FeatureExtractor
from nstexp.network.layout import pools_before
from nstexp.optim import parameterization, pyramid
from nstexp.optim.engine import StepEvent, optimize
from nstexp.optim.optimizers import select_state
from nstexp.optim.stopping import StopRequest
from nstexp.run import colour, inputs, scale_control, tiling
from nstexp.run.job import FrameContext, Job, JobSpec, evaluator, shared_config
from nstexp.run.precision import network_precision
from nstexp.tiling.objective import TiledObjective, stitched
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


def build_objective(cfg: DictConfig, extractor: FeatureExtractor, inp: inputs.Inputs, summary: dict,
                    batch: int = 1, tile: int | None = None, on_tile=None, temporal=None) -> Objective:
    """The loss for the inputs at one size (a coarse-to-fine level's), of one of `batch` jobs
    evaluated together, in tiles of `tile` px (None: whole; `on_tile`: see tiling.objective.stitched);
    `temporal`: a video frame's temporal term (nstexp.losses.temporal.TemporalTargets)."""
    objective = Objective(extractor, inp.content, inp.styles, cfg.layers, cfg.content, cfg.style, cfg.tv, cfg.seed,
                          style_masks=inp.style_masks, content_mask=inp.content_mask, laplacian_config=cfg.laplacian,
                          batch=batch, features=stitched(extractor, tile, on_tile) if tile else None, temporal=temporal)
    if cfg.style.balance == "content":
        try:
            shown = on_tile and functools.partial(on_tile, "style balance")
            measure = TiledObjective([objective], tile, shown) if tile else objective
            summary["style_balance"] = measure.balance_style(inp.content)
        except ValueError as exc:
            raise NstexpError(f"style.balance=content: {exc} (the content image has the style's statistics)") from None
    return objective


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
        jobs = [Job(spec) for spec in specs]
        _run(jobs, stop)
        return [job.summary for job in jobs]


def _run(jobs: list[Job], stop: StopRequest, frame: FrameContext | None = None) -> None:
    t_start = time.perf_counter()
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
        _optimize(jobs, cfg, extractor, full, sizes, level_steps, deepest, check, style_image, stop, bar, log_every,
                  frame)
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


def _optimize(jobs: list[Job], cfg: DictConfig, extractor: FeatureExtractor, full: inputs.Inputs, sizes: list[int],
              level_steps: list[int], deepest: dict, check, style_image, stop: StopRequest, bar,
              log_every: int, frame: FrameContext | None = None) -> None:
    """The coarse-to-fine levels of the jobs still running, one batch per level; `cfg` is
    what they have in common; `frame`: a video frame's start image and temporal term."""
    mode = cfg.color.preserve
    t_opt = None
    image = state = None
    running = list(jobs)
    space = parameterization.build(cfg.param, cfg.param_levels)
    n_levels = len(sizes) - (1 if cfg.scales.final_pass else 0)  # the coarse-to-fine levels; then the final pass
    try:
        for level, (level_size, n_steps) in enumerate(zip(sizes, level_steps)):
            inp = full if level_size == sizes[-1] else inputs.prepare(
                cfg, level_size, deepest, full.content.device, [], check, style_image)
            settings = [pyramid.level_settings(job.cfg, level, n_levels) for job in running]
            tile = check.tiles.get(tuple(inp.content.shape[-2:]))
            shown = tiling.announce(tile, cfg, level_size, bar, stop)
            objectives = [build_objective(c, extractor, inp, job.summary, len(running), tile, shown,
                                          frame and frame.temporal)
                          for c, job in zip(settings, running)]
            objective = tiling.level_objective(objectives, tile, shown)
            # What the user sees of an image: in the content's colours, if asked.
            show = lambda x, c=inp.colours, s=inp.styles[0]: colour.present(mode, x, c, s)  # noqa: E731
            if image is None:
                start = frame.start if frame is not None else None  # a video frame's own start
                if start is not None and start.shape[-2:] != inp.content.shape[-2:]:
                    start = pyramid.upsample(start, inp.content.shape[-2:])
                image = start.repeat(len(running), 1, 1, 1) if start is not None else torch.cat(
                    [inputs.initial_image(job.cfg, inp.content, inp.styles) for job in running])
                for job, img in zip(running, image):
                    job.final_image = show(img[None])
                    job.latest["show"] = show
            else:
                if image.shape[-2:] != inp.content.shape[-2:]:  # the final pass goes on at the same size
                    image = pyramid.upsample(image, inp.content.shape[-2:])
                # Adam and RMSprop continue with their moments resized (on the pixels; a pyramid's bands
                # start afresh); L-BFGS's curvature pairs do not carry over.
                state = pyramid.resize_state(state, inp.content.shape[-2:]) if state and space.resizable_state else None
            extra = {"level": level, "level_size": level_size} if len(sizes) > 1 else {}
            # Time runs from the first level's first step; later levels' set-up counts.
            t_level = 0.0 if t_opt is None else time.perf_counter() - t_opt
            t_opt = t_opt or time.perf_counter()

            def on_step(ev: StepEvent, level=level, extra=extra, t_level=t_level, show=show) -> None:
                logged = False
                for b, job in enumerate(running):
                    if ev.active and not ev.active[b]:
                        continue
                    # Steps, evals and time run on across the levels.
                    mine = StepEvent(job.done["steps"] + ev.step, job.done["evals"] + ev.evals, t_level + ev.time_s,
                                     ev.image[b:b + 1], ev.terms.select([b]),
                                     pairs=None if ev.pairs is None else
                                     [[n + d for n, d in zip(ev.pairs[b], job.done["pairs"])]])
                    logged |= job.log(mine, level, extra, sum(level_steps), log_every, show)
                if logged:
                    bar.set_postfix(loss=f"{ev.terms.total[0].item():.4g}", refresh=False)
                bar.update(running[0].done["steps"] + ev.step - bar.n)

            result = optimize(image, objective, [c.optimizer for c in settings], n_steps, cfg.clamp,
                              on_step, stop, state, check_every=log_every, param=space)
            for b, job in enumerate(running):
                job.done["steps"] += result.sample_steps[b]
                job.done["evals"] += result.sample_evals[b]
                job.done["time_s"] = t_level + result.sample_time_s[b]
                if result.sample_pairs is not None:
                    job.done["pairs"] = [a + n for a, n in zip(job.done["pairs"], result.sample_pairs[b])]
                job.status = result.statuses[b]
                job.latest["result"] = (result.image[b:b + 1], result.sample_terms[b])
            for job in running:
                if job.status != "completed" or level == len(sizes) - 1:
                    job.ended(job.status, *job.latest["result"], show)
            keep = [b for b, job in enumerate(running) if job.status == "completed"]
            running = [running[b] for b in keep]
            if not running:
                break
            image, state = result.image[keep], result.optimizer_state
            if state is not None and len(keep) < len(result.statuses):
                state = select_state(state, keep)
    except KeyboardInterrupt:  # a second Ctrl-C: keep what the last step produced
        for job in running:
            job.summary["status"] = "interrupted"
    for job in jobs:
        # Each job's own: until it stopped (one that diverged early does not count the others' steps).
        stopped = job.done.get("time_s") if job.summary["status"] != "interrupted" else None
        job.summary["wall_time_s"] = stopped if stopped is not None else time.perf_counter() - (t_opt or time.perf_counter())
