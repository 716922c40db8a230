"""Resuming a sweep: find the sweep a command started before, skip its completed jobs.

A job counts as done only when its summary.json says `completed`; anything else
(interrupted, diverged, failed, or no summary because the machine was lost) runs again
from scratch in the same job directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from nstexp.errors import NstexpError

_TRUE = {"true", "True", "yes", "1", "on"}
# What one attempt of a job writes; cleared before the job runs again.
_ATTEMPT_FILES = ("metrics.jsonl", "summary.json", "final.png")
_ATTEMPT_DIRS = ("snapshots", "wandb")


def requested(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0] == "resume" and o.split("=", 1)[1] in _TRUE for o in overrides if "=" in o)


def _task(overrides) -> list[str]:
    return sorted(o for o in overrides if o.split("=", 1)[0] not in ("resume", "hydra.sweep.dir"))


def sweep_dir_to_resume(overrides: list[str], root: str = "multirun") -> str | None:
    """The newest sweep under `root` started with the same overrides (None if the command names its dir)."""
    if any(o.startswith("hydra.sweep.dir=") for o in overrides):
        return None
    want = _task(overrides)
    candidates = sorted(Path(root).glob("*/*/multirun.yaml"), reverse=True)
    for path in candidates:
        try:
            task = OmegaConf.load(path).hydra.overrides.task
        except Exception:
            continue
        if _task(task) == want:
            return str(path.parent)
    raise NstexpError(
        f"resume=true: no earlier sweep with the same overrides under {root}/ "
        "(run the same command without resume=true first, or name the sweep with hydra.sweep.dir=...)"
    )


def completed(job_dir: Path) -> bool:
    try:
        return json.loads((job_dir / "summary.json").read_text())["status"] == "completed"
    except (OSError, ValueError, KeyError):
        return False


def clear_attempt(job_dir: Path) -> None:
    """Remove what an unfinished attempt left, so the rerun's outputs and W&B run stand alone."""
    for name in _ATTEMPT_FILES:
        (job_dir / name).unlink(missing_ok=True)
    for name in _ATTEMPT_DIRS:
        shutil.rmtree(job_dir / name, ignore_errors=True)
