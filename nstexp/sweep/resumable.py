"""Resuming a sweep: find the sweep a command started before, skip its completed jobs.

A job is skipped only when its summary.json says `completed` *and* records the same
overrides as the job that would run now; anything else (interrupted, diverged, failed, no
summary because the machine was lost, or another configuration's results) runs again from
scratch in the same job directory. A sweep directory whose grid differs from the command's
is refused before anything runs, and so is one where a completed job ran another config
than it would now (a sweep file's fixed values or a preset changed since: `check_configs`), or
where this machine resolves a setting the config leaves open (size=null, steps=null,
precision=auto) otherwise than the machine that ran a completed job (`PER_MACHINE`).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Callable

import yaml
from omegaconf import DictConfig, OmegaConf

from nstexp.errors import NstexpError
from nstexp.run.tracking import clear_outputs
from nstexp.sweep.results import grid, job_dirs

_TRUE = {"true", "True", "yes", "1", "on"}
# Overrides that say how to run a sweep, not what a job computes.
_NOT_A_SETTING = ("resume",)
# Config keys that say how a job is run or watched, not what it computes: how often it logs,
# snapshots or scores its image along the way, its progress bar and W&B. A completed job whose
# config differs only in these still holds this job's results.
NOT_RESULTS = ("resume", "progress", "wandb", "log_every", "snapshot_every", "eval.every")
# Settings each machine resolves for itself when the config leaves them open (nstexp.run.runner's
# `resolved`: 256 px and 100 steps on a CPU, 512 px and 200 steps on a GPU, bf16 where the device
# computes it natively), with their open values. Each changes a job's result, so a completed job
# counts only if this machine resolves them as the job's did (its summary's `resolved`). Not
# compared: the device itself (the same settings elsewhere give the same result up to rounding),
# channels_last (a memory layout) and log_every (how a job is watched).
PER_MACHINE = {"size": None, "steps": None, "precision": "auto"}


def requested(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0] == "resume" and o.split("=", 1)[1] in _TRUE for o in overrides if "=" in o)


def job_key(overrides) -> list[str]:
    """What identifies a job: its overrides, sorted, without the ones that do not change the result."""
    return sorted(str(o) for o in overrides if str(o).split("=", 1)[0].lstrip("+~") not in _NOT_A_SETTING)


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


def _summary(job_dir: Path) -> dict:
    try:
        summary = json.loads((job_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def completed(job_dir: Path, overrides) -> bool:
    """True when `job_dir` holds a completed run of exactly this job."""
    summary = _summary(job_dir)
    return summary.get("status") == "completed" and summary.get("overrides") == job_key(overrides)


def _check_resolved(num: int, path: str, cfg: DictConfig) -> None:
    """Refuse when this machine resolves a PER_MACHINE setting the job left open otherwise than the
    machine that ran it. A summary from before `resolved` existed holds the size and precision used."""
    open_keys = [k for k, v in PER_MACHINE.items() if OmegaConf.select(cfg, k) == v]
    summary = _summary(Path(path))
    ran = summary.get("resolved") or {k: summary[k] for k in ("size", "precision", "device") if k in summary}
    open_keys = [k for k in open_keys if k in ran]
    if not open_keys:
        return
    # torch (to ask which device this is) only here: a job left a setting to the machine.
    from nstexp.run.runner import resolved

    here = resolved(cfg)
    for key in open_keys:
        if ran[key] != here[key]:
            was = "null" if PER_MACHINE[key] is None else PER_MACHINE[key]
            raise NstexpError(
                f"resume=true: job {num} ({path}) ran with {key}={ran[key]} (resolved from {key}={was} on "
                f"{ran.get('device', 'another machine')}); this machine resolves {key}={here[key]} (on {here['device']}); "
                f"resume on a machine like that one, or run without resume=true to start a new sweep "
                f"(with {key}={ran[key]} to match the old jobs)"
            )


def clear_attempt(job_dir: Path) -> None:
    """Remove what an unfinished attempt left, its W&B run included, so the rerun stands alone."""
    clear_outputs(str(job_dir))
    shutil.rmtree(job_dir / "wandb", ignore_errors=True)


def _without(config: dict, keys=NOT_RESULTS) -> dict:
    """A copy of `config` (plain data) without the dotted `keys`."""
    config = copy.deepcopy(config)
    for dotted in keys:
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config


_ABSENT = "(absent)"  # a key one of two configs lacks


def differences(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) wherever two configs (plain data) differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in dict.fromkeys([*old, *new]):
            out += differences(old.get(k, _ABSENT), new.get(k, _ABSENT), f"{prefix}{k}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _at(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
    return node


def check_configs(sweep_dir: str, compose: Callable[[list[str]], DictConfig]) -> None:
    """Refuse to resume when a completed job's folder ran another config than the job would now.

    What a job ran is its folder's .hydra/config.yaml (Hydra writes it as the job starts, so
    it is read here, before any job of this attempt starts); what it would run is its
    overrides composed now (`compose`), which a changed sweep file or preset makes different
    even when the overrides are the same. NOT_RESULTS do not count, nor a key the job's config
    lacks that is now at its default (an option added since). The PER_MACHINE settings a job
    left open count as its summary says they were resolved. Raises NstexpError.
    """
    recorded = _recorded(Path(sweep_dir))
    if recorded is None:
        return
    jobs = recorded[1]
    for num, path in job_dirs(sweep_dir):
        if not 0 <= num < len(jobs) or not completed(Path(path), jobs[num]):
            continue  # rerun from scratch anyway
        try:
            old = yaml.safe_load((Path(path) / ".hydra" / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            old = None
        if not isinstance(old, dict):
            raise NstexpError(f"resume=true: job {num} ({path}) completed, but its .hydra/config.yaml cannot be read, "
                              "so what it ran is unknown; run without resume=true to start a new sweep")
        cfg = compose(jobs[num])
        new = yaml.safe_load(OmegaConf.to_yaml(cfg))
        changed = differences(_without(old), _without(new))
        if any(was == _ABSENT for _, was, _ in changed):
            # A key added to nstexp since the job ran, at its default: the default keeps what
            # older versions did, so the job ran this config.
            defaults = _without(yaml.safe_load(OmegaConf.to_yaml(compose([]))))
            changed = [(k, was, now) for k, was, now in changed
                       if not (was == _ABSENT and now == _at(defaults, k))]
        if changed:
            key, was, now = changed[0]
            more = f"; {len(changed) - 1} more keys differ" if len(changed) > 1 else ""
            raise NstexpError(
                f"resume=true: job {num} ({path}) completed with {key}={json.dumps(was, default=str)}, this command "
                f"would run {key}={json.dumps(now, default=str)} (a sweep file or preset changed since{more}); "
                "run without resume=true to start a new sweep, or restore the old values"
            )
        _check_resolved(num, path, cfg)
