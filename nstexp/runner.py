"""One style-transfer run: config in, files and a W&B run out.

`run(cfg, out_dir)` is what the command line calls for every job; tests call it directly.
Whatever happens (success, Ctrl-C, divergence, bad input) the run leaves summary.json,
metrics.jsonl, the last good image as final.png and a finished W&B run.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from nstexp import colour, hardware, inputs, memory, metrics, pyramid, scale_control
from nstexp.backbone import FeatureExtractor, pools_before
from nstexp.validation import validate
from nstexp.engine import StepEvent, optimize
from nstexp.errors import NstexpError
from nstexp.objective import Objective
from nstexp.stopping import StopRequest
from nstexp.tracking import Tracker

# Defaults that depend on the device: a GPU affords larger images and more steps.
DEFAULT_SIZE = {"cpu": 384, "gpu": 512}
DEFAULT_STEPS = {"cpu": 400, "gpu": 500}
DEFAULT_LOG_EVERY = {"cpu": 1, "gpu": 10}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("nstexp", "torch", "torchvision", "hydra-core", "wandb", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _log_step(tracker: Tracker, ev: StepEvent, snapshot: bool, extra: dict | None = None, show=None) -> None:
    """Log a step's metrics, and its image as `show(image)` (what the user sees) when `snapshot`."""
    metrics = {"step": ev.step, "evals": ev.evals, "time_s": ev.time_s, **(extra or {}), **ev.terms.as_floats()}
    tracker.log_step(metrics, show(ev.image) if snapshot else None)


def _weighted_layers(cfg: DictConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Content and style layers with their weights; a layer weighted 0 is left out (dict
    overrides merge with the preset, so this is how to drop one)."""
    return ({k: v for k, v in cfg.layers.content.items() if v > 0},
            {k: v for k, v in cfg.layers.style.items() if v > 0})


def network(cfg: DictConfig, device: torch.device, precision: str, channels_last: bool) -> FeatureExtractor:
    """The run's frozen VGG: its weighted layers (and scale control's fine layers) as configured."""
    layers = {k: v for part in _weighted_layers(cfg) for k, v in part.items()}
    control = cfg.style.scale_control
    fine_layers = list(control.fine_layers) if control.fine_image else []
    return FeatureExtractor(
        cfg.backbone.arch,
        cfg.backbone.weights,
        list(dict.fromkeys([*layers, *fine_layers])),
        pooling=cfg.backbone.pooling,
        padding=cfg.backbone.padding,
        preprocessing=cfg.backbone.preprocessing,
        seed=cfg.seed,
        precision=precision,
        channels_last=channels_last,
        checkpoint=cfg.checkpoint,
        compile=cfg.compile,
    ).to(device)


def build_objective(cfg: DictConfig, extractor: FeatureExtractor, inp: inputs.Inputs, summary: dict) -> Objective:
    """The loss for the inputs at one size (a coarse-to-fine level's)."""
    content_layers, style_layers = _weighted_layers(cfg)
    objective = Objective(
        extractor,
        inp.content,
        inp.styles,
        content_layers,
        style_layers,
        cfg.content.weight,
        cfg.style.weight,
        cfg.tv.weight,
        cfg.content.normalization,
        cfg.style.normalization,
        list(cfg.style.blend_weights) or None,
        style_loss=cfg.style.loss,
        seed=cfg.seed,
        tv_exponent=cfg.tv.exponent,
        style_masks=inp.style_masks,
        content_mask=inp.content_mask,
    )
    if cfg.style.balance == "content":
        try:
            summary["style_balance"] = objective.balance_style(inp.content)
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
    stop = StopRequest(stop_file)
    # Installed before any output exists, so a signal during set-up is also handled.
    with stop.installed():
        return _run(cfg, out_dir, name or cfg.wandb.name or "run", group, stop, record or {})


def _run(cfg: DictConfig, out_dir: str, name: str, group: str | None, stop: StopRequest, record: dict) -> dict:
    t_start = time.perf_counter()
    config = OmegaConf.to_container(cfg, resolve=True)
    tracker = Tracker(out_dir, config, cfg.wandb, name=name, group=group)
    summary: dict = {"status": "failed", "steps": 0, "evals": 0, "seed": cfg.seed, "name": name, **record}
    final_image = None
    latest: dict = {}  # the newest step event: the last good image, whatever stops the run
    warnings: list[str] = []
    peak = bar = evaluate = None
    try:
        validate(cfg)
        device = hardware.resolve_device(cfg.device)
        line_search = cfg.optimizer.name == "lbfgs" and cfg.optimizer.line_search != "none"
        precision = hardware.resolve_precision(cfg.precision, device, line_search)
        channels_last = hardware.resolve_channels_last(cfg.channels_last, device)
        hardware.configure(device)
        peak = memory.PeakMemory(device)
        kind = "cpu" if device.type == "cpu" else "gpu"
        size = cfg.size or DEFAULT_SIZE[kind]
        steps = DEFAULT_STEPS[kind] if cfg.steps is None else cfg.steps
        log_every = cfg.log_every or DEFAULT_LOG_EVERY[kind]
        summary.update(device=str(device), size=size, precision=precision, channels_last=channels_last)
        # Log the values actually used, not the "device default" placeholders.
        config.update(size=size, steps=steps, device=str(device), precision=precision, channels_last=channels_last,
                      log_every=log_every)
        torch.manual_seed(cfg.seed)
        tracker.start()

        layers = {k: v for part in _weighted_layers(cfg) for k, v in part.items()}
        deepest = {layer: pools_before(cfg.backbone.arch, layer) for layer in layers}
        control = cfg.style.scale_control
        extractor = network(cfg, device, precision, channels_last)
        check = inputs.memory_check(extractor, cfg, device, summary)
        style_image = None  # scale control's, made at the full size and resized for each level
        if control.fine_image:
            t0 = time.perf_counter()
            coarse = inputs.load(cfg, size, deepest, device, [], check)[1][0]
            style_image = scale_control.style_image(extractor, coarse, control, stop)
            summary["scale_control_time_s"] = time.perf_counter() - t0
            tracker.save_input("style_target", style_image)
        # The full size first: it fails early if the last level cannot fit.
        full = inputs.prepare(cfg, size, deepest, device, warnings, check, style_image)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        summary["image_size"] = list(full.content.shape[-2:])
        sizes = pyramid.levels(size, cfg.scales.min, cfg.scales.factor)
        first = cfg.scales.first_steps if cfg.scales.first_steps is not None and len(sizes) > 1 else steps
        level_steps = [first] + [steps] * (len(sizes) - 1)
        if len(sizes) > 1:
            summary["levels"] = sizes
        tracker.log_inputs(full.content, full.styles)
        mode = cfg.color.preserve
        every = cfg.snapshot_every if cfg.eval.every is None else cfg.eval.every
        if cfg.eval.enabled:
            evaluate = _evaluator(cfg, device, summary)

        bar = tqdm(total=sum(level_steps), disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True,
                   unit="step")
        t_opt = None
        image = state = result = None
        done = {"steps": 0, "evals": 0}  # over the levels finished so far
        try:
            for level, (level_size, n_steps) in enumerate(zip(sizes, level_steps)):
                inp = full if level_size == size else inputs.prepare(
                    cfg, level_size, deepest, device, [], check, style_image)
                objective = build_objective(cfg, extractor, inp, summary)
                # What the user sees of an image: in the content's colours, if asked.
                latest["show"] = show = lambda x, c=inp.colours: colour.present(mode, x, c)  # noqa: E731
                if image is None:
                    image = inputs.initial_image(cfg, inp.content, inp.styles)
                    final_image = show(image)
                else:
                    image = pyramid.upsample(image, inp.content.shape[-2:])
                    # Adam continues with its moments resized; L-BFGS's curvature pairs do not carry over.
                    state = pyramid.resize_adam_state(state, inp.content.shape[-2:]) if state else None
                extra = {"level": level, "level_size": level_size} if len(sizes) > 1 else {}
                # Time runs from the first level's first step; later levels' set-up counts.
                t_level = 0.0 if t_opt is None else time.perf_counter() - t_opt
                t_opt = t_opt or time.perf_counter()

                def on_step(ev: StepEvent, level=level, extra=extra, t_level=t_level, show=show) -> None:
                    # Steps, evals and time run on across the levels.
                    ev = StepEvent(done["steps"] + ev.step, done["evals"] + ev.evals, t_level + ev.time_s,
                                   ev.image, ev.terms)
                    latest["event"], latest["extra"] = ev, extra
                    if level > 0 and ev.step == done["steps"]:
                        return  # the upsampled image: the previous level logged this step
                    snapshot = bool(cfg.snapshot_every) and ev.step % cfg.snapshot_every == 0
                    last = ev.step == sum(level_steps)
                    scored = evaluate is not None and ((bool(every) and ev.step % every == 0) or last)
                    if snapshot or scored or ev.step % log_every == 0 or last:
                        extra = {**extra, **evaluate(show(ev.image))} if scored else extra
                        _log_step(tracker, ev, snapshot, extra, show)
                        latest["logged"] = ev.step
                        bar.set_postfix(loss=f"{ev.terms.total[0].item():.4g}", refresh=False)
                    bar.update(ev.step - bar.n)

                result = optimize(image, objective, cfg.optimizer, n_steps, cfg.clamp, on_step, stop, state,
                                  check_every=log_every)
                image, state = result.image, result.optimizer_state
                done["steps"] += result.steps
                done["evals"] += result.evals
                if result.status != "completed":
                    break
            status, final_image = result.status, show(result.image)
            summary.update(steps=done["steps"], evals=done["evals"])
            if result.terms is not None:
                summary.update({f"final/{k}": v for k, v in result.terms.as_floats().items()})
        except KeyboardInterrupt:  # a second Ctrl-C: keep what the last step produced
            status = "interrupted"
        summary["status"] = status
        summary["wall_time_s"] = time.perf_counter() - (t_opt or time.perf_counter())
        if status == "interrupted":
            print(f"interrupted after step {summary['steps']}; final.png is the last good image", file=sys.stderr)
        elif status == "diverged":
            print(f"diverged: non-finite loss after step {summary['steps']}; kept the last good image",
                  file=sys.stderr)
    except NstexpError as exc:
        summary["error"] = str(exc)
        raise
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
    except Exception as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if bar is not None:
            bar.close()
        if "event" in latest and latest.get("logged") != latest["event"].step:
            # The last step always has its metrics line.
            _log_step(tracker, latest["event"], snapshot=False, extra=latest.get("extra"), show=latest.get("show"))
        if summary["status"] != "completed" and "event" in latest and "final/loss/total" not in summary:
            # Stopped by an exception or a second Ctrl-C inside a step: the newest image the
            # optimizer produced, with the losses measured on it, is the last good one.
            ev = latest["event"]
            final_image = latest["show"](ev.image.clamp(0.0, 1.0))
            summary.update(steps=ev.step, evals=ev.evals)
            if torch.equal(ev.image.clamp(0.0, 1.0), ev.image):  # else its losses are not final.png's
                summary.update({f"final/{k}": v for k, v in ev.terms.as_floats().items()})
        if evaluate is not None and final_image is not None:
            try:  # the yardstick of the image final.png holds, whatever stopped the run
                summary.update(evaluate(final_image))
            except Exception as exc:  # never hides what stopped the run
                warnings.append(f"the metrics could not be computed: {type(exc).__name__}: {exc}")
        summary.setdefault("wall_time_s", time.perf_counter() - t_start)
        summary["time_per_eval_s"] = summary["wall_time_s"] / summary["evals"] if summary["evals"] else None
        summary.update(
            peak_memory_mb=peak.mb() if peak else None,
            total_time_s=time.perf_counter() - t_start,
            warnings=warnings,
            versions=_versions(),
        )
        tracker.finish(summary, final_image)
    return summary


def _evaluator(cfg: DictConfig, device: torch.device, summary: dict):
    """The run's yardstick (nstexp.metrics) against its content and first style image, as the
    user gave them; its cost goes to the summary's `eval_time_s`."""
    t0 = time.perf_counter()
    content = metrics.load(cfg.content.image, "content.image", device)
    style = metrics.load(cfg.style.image, "style.image", device)
    evaluator = metrics.Evaluator(content, style, cfg.eval.size)
    summary["eval_time_s"] = time.perf_counter() - t0

    last: dict = {}  # the final image is usually the last step's: scored once

    def evaluate(image: torch.Tensor) -> dict[str, float]:
        if "image" in last and last["image"].shape == image.shape and torch.equal(last["image"], image):
            return dict(last["out"])
        t = time.perf_counter()
        last.update(image=image.detach().clone(), out=evaluator(image))
        summary["eval_time_s"] += time.perf_counter() - t
        return dict(last["out"])

    return evaluate
