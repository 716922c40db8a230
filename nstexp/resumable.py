"""Resuming a sweep: find the sweep a command started before, skip its completed jobs.

A job is skipped only when its summary.json says `completed` *and* records the same
overrides as the job that would run now; anything else (interrupted, diverged, failed, no
summary because the machine was lost, or another configuration's results) runs again from
scratch in the same job directory. A sweep directory whose grid differs from the command's
is refused before anything runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from nstexp.errors import NstexpError
from nstexp.tracking import clear_outputs

_TRUE = {"true", "True", "yes", "1", "on"}
# Overrides that say how to run a sweep, not what a job computes.
_NOT_A_SETTING = ("resume",)


def requested(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0] == "resume" and o.split("=", 1)[1] in _TRUE for o in overrides if "=" in o)


def job_key(overrides) -> list[str]:
    """What identifies a job: its overrides, sorted, without the ones that do not change the result."""
    return sorted(str(o) for o in overrides if str(o).split("=", 1)[0].lstrip("+~") not in _NOT_A_SETTING)


def grid(params: dict | None, task: list[str]) -> list[list[str]]:
    """Every job's overrides, in job-number order, as Hydra's basic sweeper enumerates them:
    the sweep file's `hydra.sweeper.params` first, then the command line's overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{k}={v}" for k, v in (params or {}).items()] + [str(t) for t in task]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    return batch


def _command_task(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not _is_hydras(o) and o.split("=", 1)[0] != "resume"]


def _is_hydras(override: str) -> bool:
    """hydra.sweep.dir=..., hydra/launcher=...: Hydra's settings, not the jobs'."""
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def _recorded(sweep_dir: Path) -> tuple[list[str], list[list[str]]] | None:
    """(the task overrides, the jobs) a sweep directory was started with; None if it is no sweep."""
    try:
        cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
        task = [str(t) for t in cfg.hydra.overrides.task]
        params = cfg.hydra.sweeper.get("params")
        return task, grid(OmegaConf.to_container(params) if params is not None else {}, task)
    except Exception:
        return None


def _same_jobs(a: list[list[str]], b: list[list[str]]) -> bool:
    return sorted(map(job_key, a)) == sorted(map(job_key, b))


def plan(overrides: list[str], params: dict | None, root: str = "multirun") -> tuple[str, list[str]] | None:
    """The sweep to resume and the overrides to run it with; None when there is nothing to resume.

    The sweep is the one named by `hydra.sweep.dir=...`, else the newest under `root` whose
    jobs are the command's jobs. The returned overrides are the sweep's own, in its own order
    (plus the command's Hydra settings and resume=true), so each job number meets its folder.
    Raises NstexpError when the named sweep holds a different grid, or none matches.
    """
    task = _command_task(overrides)
    jobs = grid(params, task)
    hydra_args = [o for o in overrides if _is_hydras(o) or o.split("=", 1)[0] == "resume"]
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.sweep.dir=")]
    if named:
        recorded = _recorded(Path(named[0]))
        if recorded is None:
            return None  # nothing there yet: every job runs
        if not _same_jobs(recorded[1], jobs):
            raise NstexpError(
                f"resume=true: {named[0]} holds another grid ({len(recorded[1])} jobs: "
                f"{' '.join(recorded[0])}), not this command's ({len(jobs)} jobs); "
                "resume it with its own overrides, or choose another hydra.sweep.dir"
            )
        return named[0], recorded[0] + hydra_args
    for path in sorted(Path(root).glob("*/*/multirun.yaml"), reverse=True):
        recorded = _recorded(path.parent)
        if recorded is not None and _same_jobs(recorded[1], jobs):
            return str(path.parent), recorded[0] + hydra_args + [f"hydra.sweep.dir={path.parent}"]
    raise NstexpError(
        f"resume=true: no earlier sweep with the same jobs under {root}/ "
        "(run the same command without resume=true first, or name the sweep with hydra.sweep.dir=...)"
    )


def completed(job_dir: Path, overrides) -> bool:
    """True when `job_dir` holds a completed run of exactly this job."""
    try:
        summary = json.loads((job_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return summary.get("status") == "completed" and summary.get("overrides") == job_key(overrides)


def clear_attempt(job_dir: Path) -> None:
    """Remove what an unfinished attempt left, its W&B run included, so the rerun stands alone."""
    clear_outputs(str(job_dir))
    shutil.rmtree(job_dir / "wandb", ignore_errors=True)
