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

BYTES = 4  # float32
# Measured on the Caffe VGG-19 to relu5_1 (CPU, fp32): peak resident memory minus the
# process's baseline was about this many times the bytes of all activations.
AUTOGRAD_FACTOR = 1.5


def activation_bytes(features: nn.Sequential, height: int, width: int, batch: int = 1) -> tuple[int, int]:
    """(all activations, the largest one) in bytes for an input of height x width."""
    total, largest, channels = 0, 0, 3
    for module in features:
        if isinstance(module, nn.Conv2d):
            channels = module.out_channels
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            if isinstance(module, nn.MaxPool2d):
                total += 2 * batch * channels * height * width // 4 * BYTES  # int64 indices
            height, width = height // 2, width // 2
        size = batch * channels * height * width * BYTES
        total, largest = total + size, max(largest, size)
    return total, largest


def estimate_bytes(features: nn.Sequential, height: int, width: int, optimizer_cfg, batch: int = 1) -> int:
    acts, largest = activation_bytes(features, height, width, batch)
    weights = sum(p.numel() * p.element_size() for p in features.parameters())
    image = batch * 3 * height * width * BYTES
    if optimizer_cfg.name == "lbfgs":
        state = (2 * optimizer_cfg.history_size + 4) * image  # curvature pairs, d, grads
    else:
        state = 3 * image  # Adam's two moments and the gradient
    return int(AUTOGRAD_FACTOR * acts + 2 * largest + weights + state)


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
