"""One style-transfer run: config in, files and a W&B run out.

`run(cfg, out_dir)` is what the command line calls for every job; tests call it directly.
Whatever happens (success, Ctrl-C, divergence, bad input) the run leaves summary.json,
metrics.jsonl, the last good image as final.png and a finished W&B run.
"""

from __future__ import annotations

import platform
import resource
import signal
import sys
import threading
import time
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from nstexp import images
from nstexp.backbone import FeatureExtractor, pools_before
from nstexp.config import validate
from nstexp.engine import StepEvent, optimize
from nstexp.errors import NstexpError
from nstexp.objective import Objective
from nstexp.tracking import Tracker

# Defaults that depend on the device: a GPU affords larger images and more steps.
DEFAULT_SIZE = {"cpu": 384, "gpu": 512}
DEFAULT_STEPS = {"cpu": 400, "gpu": 500}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NstexpError(f"device={name}: CUDA is not available here (allowed: auto, cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise NstexpError("device=mps: MPS is not available here (allowed: auto, cpu)")
    return torch.device(name)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("nstexp", "torch", "torchvision", "hydra-core", "wandb", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Peak resident memory of the whole process (kilobytes on Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps; a second signal aborts."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled in the main thread
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _load_inputs(cfg: DictConfig, size: int, deepest: dict[str, int], device: torch.device):
    content_pil = images.resize_longest(images.load_image(cfg.content.image, "content.image"), size)
    style_size = max(1, round(max(content_pil.size) * cfg.style.scale))
    specs = [("style.image", cfg.style.image)] + [
        (f"style.blend_images[{i}]", s) for i, s in enumerate(cfg.style.blend_images)
    ]
    style_pils = [images.resize_longest(images.load_image(s, key), style_size) for key, s in specs]
    layer, pools = max(deepest.items(), key=lambda kv: kv[1])
    need = 2**pools
    for key, img in [("content.image", content_pil)] + [(k, p) for (k, _), p in zip(specs, style_pils)]:
        if min(img.size) < need:
            raise NstexpError(
                f"{key}: {img.width}x{img.height} px after resizing is too small for layer {layer} "
                f"(needs at least {need} px per side; raise size or style.scale)"
            )
    # The generated image's sides are multiples of the deepest layer's total pooling: otherwise
    # its last rows and columns, dropped by the poolings, reach only the first layers and come
    # out as noise. This changes the aspect ratio by a few pixels at most.
    content_pil = images.round_sides(content_pil, need)
    content = images.to_tensor(content_pil, device)
    styles = [images.to_tensor(p, device) for p in style_pils]
    return content, styles


def _initial_image(cfg: DictConfig, content: torch.Tensor, styles: list[torch.Tensor]) -> torch.Tensor:
    kind = cfg.init.kind
    h, w = content.shape[-2:]
    if kind == "content":
        return content.clone()
    if kind == "noise":
        # Drawn on the CPU so the same seed gives the same start on every device.
        gen = torch.Generator().manual_seed(cfg.seed)
        return torch.rand(content.shape, generator=gen).to(content.device)
    if kind == "style":
        pil = images.to_pil(styles[0]).resize((w, h), images.Image.Resampling.LANCZOS)
    else:  # image
        pil = images.load_image(cfg.init.path, "init.path").resize((w, h), images.Image.Resampling.LANCZOS)
    return images.to_tensor(pil, content.device)


def run(cfg: DictConfig, out_dir: str, name: str = "run", group: str | None = None) -> dict:
    """Run one style transfer into `out_dir`; returns the summary (also written to summary.json).

    Raises NstexpError for bad input, after writing a `failed` summary and ending the W&B run.
    """
    validate(cfg)
    stop = StopRequest()
    # Installed before any output exists, so a signal during set-up is also handled.
    with stop.installed():
        return _run(cfg, out_dir, name, group, stop)


def _run(cfg: DictConfig, out_dir: str, name: str, group: str | None, stop: StopRequest) -> dict:
    device = resolve_device(cfg.device)
    kind = "cpu" if device.type == "cpu" else "gpu"
    size = cfg.size or DEFAULT_SIZE[kind]
    steps = DEFAULT_STEPS[kind] if cfg.steps is None else cfg.steps
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    config = OmegaConf.to_container(cfg, resolve=True)
    # Log the values actually used, not the "device default" placeholders.
    config.update(size=size, steps=steps, device=str(device))
    tracker = Tracker(out_dir, config, cfg.wandb, name=name, group=group)

    summary = {"status": "failed", "steps": 0, "evals": 0, "device": str(device), "size": size, **tracker.info}
    final_image = None
    latest: dict = {}
    t_start = time.perf_counter()
    try:
        # A layer weighted 0 is left out (dict overrides merge, so this is how to drop one).
        content_layers = {k: v for k, v in cfg.layers.content.items() if v > 0}
        style_layers = {k: v for k, v in cfg.layers.style.items() if v > 0}
        layers = {**content_layers, **style_layers}
        deepest = {layer: pools_before(cfg.backbone.arch, layer) for layer in layers}
        content, styles = _load_inputs(cfg, size, deepest, device)
        summary["image_size"] = list(content.shape[-2:])
        extractor = FeatureExtractor(
            cfg.backbone.arch,
            cfg.backbone.weights,
            list(layers),
            pooling=cfg.backbone.pooling,
            preprocessing=cfg.backbone.preprocessing,
            seed=cfg.seed,
        ).to(device)
        objective = Objective(
            extractor,
            content,
            styles,
            content_layers,
            style_layers,
            cfg.content.weight,
            cfg.style.weight,
            cfg.tv.weight,
            cfg.content.normalization,
            cfg.style.normalization,
            list(cfg.style.blend_weights) or None,
        )
        init = _initial_image(cfg, content, styles)
        final_image = init
        tracker.log_inputs(content, styles)

        bar = tqdm(total=steps, disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True, unit="step")
        t_opt = time.perf_counter()

        def on_step(ev: StepEvent) -> None:
            latest.update(image=ev.image, step=ev.step, evals=ev.evals)
            if ev.step % cfg.log_every == 0 or ev.step == steps:
                metrics = {"step": ev.step, "evals": ev.evals, "time_s": time.perf_counter() - t_opt}
                metrics.update(ev.terms.as_floats())
                snap = cfg.snapshot_every and ev.step % cfg.snapshot_every == 0
                tracker.log_step(metrics, ev.image if snap else None)
                bar.set_postfix(loss=f"{metrics['loss/total']:.4g}", refresh=False)
            bar.update(ev.step - bar.n)

        try:
            result = optimize(init, objective, cfg.optimizer, steps, cfg.clamp, on_step, stop)
            status, final_image = result.status, result.image
            summary.update(steps=result.steps, evals=result.evals)
            if result.terms is not None:
                summary.update({f"final/{k}": v for k, v in result.terms.as_floats().items()})
        except KeyboardInterrupt:  # a second Ctrl-C: keep what the last step produced
            status = "interrupted"
            final_image = latest.get("image", final_image)
            summary.update(steps=latest.get("step", 0), evals=latest.get("evals", 0))
        bar.close()
        opt_time = time.perf_counter() - t_opt
        summary.update(
            status=status,
            wall_time_s=opt_time,
            time_per_eval_s=opt_time / summary["evals"] if summary["evals"] else None,
        )
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
        summary.setdefault("wall_time_s", time.perf_counter() - t_start)
        summary.update(
            peak_memory_mb=_peak_memory_mb(device),
            total_time_s=time.perf_counter() - t_start,
            seed=cfg.seed,
            name=name,
            versions=_versions(),
        )
        tracker.finish(summary, final_image)
    return summary
