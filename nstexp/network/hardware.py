"""The machine a run is on, and the fastest settings it runs correctly with.

`resolve_device` picks the device, `resolve_precision` the network's arithmetic (bf16 where
the hardware computes it natively, fp32 elsewhere), `resolve_channels_last` the memory format,
`configure` the process-wide switches (TF32, cuDNN's algorithm search, determinism), and
`describe` says what the machine is, for summaries and benchmarks.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from functools import lru_cache

import torch

from nstexp.errors import NstexpError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


@lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16() -> list[str]:
    """The CPU's bf16 instructions (AMX, AVX-512 bf16) that it has, sorted."""
    return sorted({"amx_bf16", "avx512_bf16"} & cpu_flags())


@lru_cache(maxsize=None)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 convolutions in hardware: CUDA devices with bf16 tensor
    cores (Ampere and later), CPUs with AMX or AVX-512 bf16 instructions."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return bool(cpu_bf16())
    return False


def resolve_precision(name: str, device: torch.device, keep_fp32: bool = False) -> str:
    """fp32, bf16 or fp16: the network's arithmetic for `precision=name` on `device`.

    `auto` is bf16 where the device computes it natively, but fp32 where `keep_fp32`: where the
    optimizer would not survive bf16's rounding (nstexp.run.precision says where).
    """
    if name == "auto":
        return "bf16" if native_bf16(device) and not keep_fp32 else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise NstexpError(
            f"precision=fp16 needs a CUDA device, not {device.type} (allowed here: auto, fp32, bf16)"
        )
    if name == "bf16" and device.type == "mps":
        raise NstexpError("precision=bf16 is not supported on mps (allowed there: auto, fp32)")
    return name


def resolve_channels_last(setting: bool | None, device: torch.device) -> bool:
    """channels_last=None (auto): on CUDA, where cuDNN's convolutions prefer it. On the CPUs
    measured (see the README's benchmark) it changed nothing, so the plain format stays there."""
    return device.type == "cuda" if setting is None else bool(setting)


# cuBLAS repeats its results bit for bit only with a fixed workspace, set in the environment
# before the process's first cuBLAS call (these are the two settings torch accepts as such).
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def configure(device: torch.device, deterministic: bool = False, record: Iterable[dict] = ()) -> None:
    """The process-wide switches for a run on `device`; every one is set both ways, so a job
    never inherits an earlier job's settings. `record`: summaries to note the settings in.

    CUDA: TF32 in the convolutions only (cuDNN), where it is VGG's arithmetic anyway in bf16
    and barely moves the features; matrix products (the Gram matrices, covariances, sliced
    projections, the metrics) stay IEEE fp32. deterministic=false lets cuDNN time its algorithms
    for the image size and keep the fastest (the pick can differ from run to run, and so can
    the last bits of the result); deterministic=true asks cuDNN and torch for deterministic
    algorithms only (bit-identical reruns on one GPU with the same software). TF32 stays on then:
    it rounds the same way every time, so it costs reproducibility nothing.
    """
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        # Only on a change: the call imports torch._dynamo, seconds on a CPU.
        torch.use_deterministic_algorithms(deterministic)
    if device.type == "cuda":
        if deterministic and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in CUBLAS_DETERMINISTIC:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    for summary in record:
        summary["deterministic"] = deterministic


def describe(device: torch.device) -> dict:
    """What the machine is: device, its model, the flags that decide precision, torch's version."""
    out = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": cpu_model(), "cpu_bf16": cpu_bf16(),
           "native_bf16": native_bf16(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
    return out
