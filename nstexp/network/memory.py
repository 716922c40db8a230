"""How much memory a run needs, and how much the device has: refuse what cannot fit.

The estimate counts what one evaluation keeps alive at its peak: every activation of
the truncated network (autograd keeps them for the backward pass; max pooling also keeps
int64 indices), a gradient of the largest one during backward, the weights, and the
optimizer's state (L-BFGS keeps 2 * history_size vectors the size of the image). It is
meant to catch requests that cannot possibly fit, not to predict the peak exactly; the
README gives measured peaks.
"""

from __future__ import annotations

import os

import torch
from torch import nn

BYTES = 4  # float32: the image, the optimizer's state, the features handed to the losses
# Autograd keeps fewer than all module outputs (a convolution's output is not saved, only its
# input), so the peak is below their sum. Measured on the Caffe VGG-19 to relu5_1 with L-BFGS
# on the CPU (1536 x 1024 and 2496 x 1664 px; peak resident memory minus the process's
# baseline, less the other terms below): 0.63-0.74 times the activations' bytes without
# checkpointing, about 0.4 with it (counted as activation_bytes counts them). The factors keep
# a margin above those.
AUTOGRAD_FACTOR = 0.8
CHECKPOINT_FACTOR = 0.5


def _outputs(extractor, height: int, width: int, batch: int) -> list[tuple[str, int]]:
    """(layer name, bytes of its output, plus max pooling's int64 indices) for every module."""
    unit = 4 if extractor.precision == "fp32" else 2
    out, channels = [], 3
    for name, module in zip(extractor.names, extractor.features):
        extra = 0
        if isinstance(module, nn.Conv2d):
            channels = module.out_channels
        elif name.startswith("pool"):
            height, width = height // 2, width // 2
            if isinstance(module, nn.MaxPool2d):
                extra = batch * channels * height * width * 8
        out.append((name, batch * channels * height * width * unit + extra))
    return out


def feature_shapes(extractor, height: int, width: int) -> dict[str, tuple[int, int, int]]:
    """(channels, height, width) of each of the extractor's layers for an input height x width."""
    out, channels = {}, 3
    for name, module in zip(extractor.names, extractor.features):
        if isinstance(module, nn.Conv2d):
            channels = module.out_channels
        elif name.startswith("pool"):
            height, width = height // 2, width // 2
        if name in extractor.layers:
            out[name] = (channels, height, width)
    return out


def activation_bytes(extractor, height: int, width: int, batch: int = 1) -> tuple[int, int]:
    """(activations kept for the backward pass, the largest one) in bytes for an input of
    height x width. With checkpointing only each block's input and the requested features are
    kept, plus one block's activations while it is recomputed. In bf16/fp16 the requested
    features are also copied to fp32 for the losses."""
    outs = _outputs(extractor, height, width, batch)
    largest = max(b for _, b in outs)
    fp32_copies = 0 if extractor.precision == "fp32" else sum(
        b * 2 for n, b in outs if n in extractor.layers and not n.startswith("pool"))
    if not extractor.checkpoint:
        return sum(b for _, b in outs) + fp32_copies, largest
    kept = sum(outs[stop - 1][1] for _, stop in extractor.blocks)  # block outputs
    kept += sum(b for n, b in outs if n in extractor.layers)
    recompute = max(sum(b for _, b in outs[start:stop]) for start, stop in extractor.blocks)
    return kept + recompute + fp32_copies, largest


def estimate_bytes(extractor, height: int, width: int, optimizer_cfg, batch: int = 1, extra=None) -> int:
    """Peak bytes of one evaluation of an image height x width with `extractor` (its layers,
    precision and checkpointing), plus the optimizer's state, plus `extra(height, width)` bytes
    when given (the style loss's own: mrf's patches and similarity matrices)."""
    acts, largest = activation_bytes(extractor, height, width, batch)
    weights = sum(p.numel() * p.element_size() for p in extractor.features.parameters())
    factor = CHECKPOINT_FACTOR if extractor.checkpoint else AUTOGRAD_FACTOR
    state = state_bytes(height, width, optimizer_cfg, batch)
    return int(factor * acts + 2 * largest + weights + state + (extra(height, width) if extra else 0))


def state_bytes(height: int, width: int, optimizer_cfg, batch: int = 1) -> int:
    """The optimizer's state: L-BFGS's curvature pairs, its direction and gradients; Adam's (or
    RMSprop's) moments and the gradient."""
    image = batch * 3 * height * width * BYTES
    return (2 * optimizer_cfg.history_size + 4) * image if optimizer_cfg.name == "lbfgs" else 3 * image


def tiled_estimate_bytes(extractor, height: int, width: int, tile: int, halo: int, optimizer_cfg, batch: int = 1,
                         extra=None, kept: int = 0) -> int:
    """Peak bytes of one evaluation in tiles of `tile` px interiors with a `halo` (nstexp.tiling):
    one tile's evaluation (its crop, tile + 2 halo per side at most) plus what stays at the
    image's size: the optimizer's state and the image with its gradient and its pixel terms
    (`image_bytes`), and `kept` bytes (the content's target features)."""
    side = tile + 2 * halo
    h, w = min(height, side), min(width, side)
    return estimate_bytes(extractor, h, w, optimizer_cfg, batch, extra) + image_bytes(height, width, optimizer_cfg,
                                                                                       batch) + kept


def image_bytes(height: int, width: int, optimizer_cfg, batch: int = 1) -> int:
    """What a run holds at the image's size whatever its tiles: the optimizer's state (see
    `estimate_bytes`) and about 8 more images (the image, its gradient, the TV and Laplacian terms)."""
    return state_bytes(height, width, optimizer_cfg, batch) + 8 * batch * 3 * height * width * BYTES


def largest_history(need: int, have: int, height: int, width: int, optimizer_cfg, batch: int = 1) -> int:
    """The largest L-BFGS `history_size` with which an estimate of `need` bytes (made with
    `optimizer_cfg`'s) fits in `have`: each pair holds two images. 0 when none does, or not L-BFGS."""
    if optimizer_cfg.name != "lbfgs":
        return 0
    image = batch * 3 * height * width * BYTES
    rest = need - state_bytes(height, width, optimizer_cfg, batch)
    return max(0, (have - rest) // image - 4) // 2


def largest_fitting(extractor, height: int, width: int, optimizer_cfg, have: int, batch: int = 1, extra=None) -> int:
    """The largest longest side, a multiple of 16 with height:width kept, whose estimate fits in
    `have` bytes (0 when not even 16 px fits). Sides are rounded to multiples of 16 as a run
    rounds them, so the size named is one that runs."""
    longest = max(height, width)

    def fits(side: int) -> bool:
        h, w = (max(16, round(x * side / longest / 16) * 16) for x in (height, width))
        return estimate_bytes(extractor, h, w, optimizer_cfg, batch, extra) <= have

    lo, hi = 0, longest // 16
    while lo < hi:  # the estimate grows with the size
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(16 * mid) else (lo, mid - 1)
    return 16 * lo


def available_bytes(device: torch.device) -> int | None:
    """Memory the run can still take on `device`; None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:  # other Unix systems
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _release_freed_memory() -> None:
    """Give memory that earlier runs freed back to the system (glibc keeps it otherwise),
    so that the resident set, and the peak measured from it, is this run's own."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """The peak memory of one run, even when several runs share a process (a sweep's jobs).

    CUDA: the allocator's peak, reset at the start. CPU: the process's peak resident set
    (VmHWM), reset through /proc/self/clear_refs on Linux after freed memory is returned to
    the system; it includes what the process holds besides the run (Python, torch, W&B). Where it cannot be reset, the
    process's lifetime peak is only this run's for the first run of the process; later
    runs report None rather than an earlier run's peak.
    """

    _runs_in_process = 0

    def __init__(self, device: torch.device):
        self.device = device
        PeakMemory._runs_in_process += 1
        self.exact = True
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            return
        try:
            _release_freed_memory()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
        except OSError:
            self.exact = PeakMemory._runs_in_process == 1

    def mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if not self.exact:
            return None
        try:
            with open("/proc/self/status") as f:
                hwm = next(line for line in f if line.startswith("VmHWM:"))
            return int(hwm.split()[1]) / 1024
        except (OSError, StopIteration, ValueError):
            import resource  # macOS and BSD: ru_maxrss in bytes; Linux: kilobytes

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return rss / 2**20 if os.uname().sysname == "Darwin" else rss / 1024
