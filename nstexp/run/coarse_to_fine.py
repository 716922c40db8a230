"""A run's coarse-to-fine levels: each level's inputs, objective and start image, the optimizer
over them, and the state a stopped run goes on from (nstexp.run.resume)."""

from __future__ import annotations

import copy
import functools
import sys
import time

import torch
from omegaconf import DictConfig

from nstexp.errors import NstexpError
from nstexp.losses.objective import Objective
from nstexp.network.backbone import FeatureExtractor
from nstexp.optim import parameterization, pyramid
from nstexp.optim.engine import optimize
from nstexp.optim.events import StepEvent
from nstexp.optim.optimizers import select_state
from nstexp.optim.stopping import StopRequest
from nstexp.run import colour, inputs, resume, tiling
from nstexp.run.job import FrameContext, Job
from nstexp.tiling.objective import TiledObjective, stitched


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



def optimize_levels(jobs: list[Job], cfg: DictConfig, extractor: FeatureExtractor, full: inputs.Inputs,
                    sizes: list[int], level_steps: list[int], deepest: dict, check, style_image, stop: StopRequest,
                    bar, log_every: int, frame: FrameContext | None = None, saved: dict | None = None,
                    saver: resume.Saver | None = None) -> None:
    """The coarse-to-fine levels of the jobs still running, one batch per level; `cfg` is
    what they have in common; `frame`: a video frame's start image and temporal term. A single
    job keeps its state with `saver` and goes on from `saved` (nstexp.run.resume.continued)."""
    mode = cfg.color.preserve
    t_opt = None
    image = state = None
    running = list(jobs)
    space = parameterization.build(cfg.param, cfg.param_levels)
    n_levels = len(sizes) - (1 if cfg.scales.final_pass else 0)  # the coarse-to-fine levels; then the final pass
    first = saved["level"] if saved else 0
    mid_level = saver is not None and not resume.stateful(jobs[0].cfg)  # else the state is a level's start
    try:
        for level, (level_size, n_steps) in enumerate(zip(sizes, level_steps)):
            if level < first:  # done before the run stopped
                continue
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
            if saved is not None and level == first:  # where the stopped run left off
                job = running[0]
                job.done = copy.deepcopy(saved["done"])
                went = saved.get("engine")
                image, state = (went.pending[3], None) if went else (saved["start"], saved["carried"])
                job.final_image = show(went.good[0] if went else image)
                # The clock goes on from the stop: the levels before, and the level's own time.
                t_opt = time.perf_counter() - saved["t_level"] - (went.time_s if went else 0.0)
                del went  # the engine holds the state alone (it drops its optimizer part once loaded)
                job.latest["show"] = show
                job.summary["resumed"] = [*saved["marker"].get("resumed", []), {
                    "step": saved["step"], "setup_s": time.perf_counter() - saved["t_start"]}]
            elif image is None:
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
            t_level = saved["t_level"] if saved is not None and level == first else (
                0.0 if t_opt is None else time.perf_counter() - t_opt)
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

            record = {"level": level, "done": copy.deepcopy(running[0].done), "t_level": t_level}

            def checkpoint(capture, stopping: bool, record=record, start=image, carried=state) -> None:
                if not (stopping or saver.due()):
                    return
                job = running[0]
                extra = {"wandb_id": job.tracker.info.get("wandb_id"), "resumed": job.summary.get("resumed", [])}
                if mid_level:
                    now = capture()
                    saver.write({**record, "engine": now}, record["level"], record["done"]["steps"] + now.step, extra)
                else:
                    saver.write({**record, "start": start, "carried": carried}, record["level"],
                                record["done"]["steps"], extra)

            result = optimize(image, objective, [c.optimizer for c in settings], n_steps, cfg.clamp,
                              on_step, stop, state, check_every=log_every, param=space,
                              resume=saved.pop("engine", None) if saved is not None and level == first else None,
                              checkpoint=checkpoint if saver is not None else None)
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
    if saver is not None:
        if jobs[0].summary["status"] in ("completed", "diverged"):
            saver.clear()
        elif saver.written:
            print(f"resume=true goes on from step {saver.written[1]} (its state: {saver.folder / resume.STATE})",
                  file=sys.stderr)
    for job in jobs:
        # Each job's own: until it stopped (one that diverged early does not count the others' steps).
        stopped = job.done.get("time_s") if job.summary["status"] != "interrupted" else None
        job.summary["wall_time_s"] = stopped if stopped is not None else time.perf_counter() - (t_opt or time.perf_counter())
