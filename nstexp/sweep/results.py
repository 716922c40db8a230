"""The jobs of a Hydra multirun sweep, as read back from its folder.

A sweep folder holds Hydra's multirun.yaml and one folder per job (0/, 1/, ... by default,
anywhere below it with a custom hydra.sweep.subdir), each with .hydra/, metrics.jsonl,
summary.json and final.png once the job has written them. Jobs the sweep planned but never
started are recomputed from multirun.yaml and listed as `missing`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import yaml

from nstexp.errors import NstexpError

UNSET = "(default)"  # the value of a swept key in a job that did not override it


def display_value(text: str) -> str:
    """A number as a person writes it: Hydra turns a swept `1e5` into `100000.0`; this gives `1e5`.

    Exact: the result reads back as the same float; anything that is not a float is left as is,
    but for Hydra's escapes: `sample\\:chelsea` is shown as `sample:chelsea`.
    """
    text = re.sub(r"\\(.)", r"\1", text)
    if not any(c in text for c in ".eE"):
        return text  # integers and words
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        return text
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        mantissa, exponent = f"{value:.15e}".split("e")
        short = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    else:
        short = repr(value).removesuffix(".0")
    return short if float(short) == value else text


@dataclass
class Job:
    """One job of a sweep, as read back from its folder (planned ones never started have none)."""

    num: int
    dir: str | None  # None for a job never started whose folder name depends on more than its number
    overrides: dict[str, str]  # all of the job's overrides, key -> value, in command-line order
    swept: dict[str, str]  # only the keys whose values differ between the sweep's jobs
    summary: dict | None  # summary.json; None until the job has finished
    metrics: list[dict]  # metrics.jsonl, one dict per logged step
    final: str | None  # path of final.png, once written
    status: str  # the summary's status, else "running" (metrics but no summary) or "missing"


def collect(sweep_dir: str) -> list[Job]:
    """Read every job of the sweep in `sweep_dir` in job-number order; NstexpError if it is not a sweep folder.

    A sweep folder is one holding Hydra's multirun.yaml; its jobs are the folders found by `job_dirs`.
    """
    if not os.path.isdir(sweep_dir):
        raise NstexpError(f"{sweep_dir}: not a directory")
    multirun_yaml = os.path.join(sweep_dir, "multirun.yaml")
    if not os.path.isfile(multirun_yaml):
        raise NstexpError(f"{sweep_dir}: no multirun.yaml, so not a Hydra multirun sweep folder")
    multirun = read_yaml(multirun_yaml)
    jobs = [_read_job(path, num) for num, path in job_dirs(sweep_dir)]
    # Jobs the sweep planned but never started (cut off, or still queued) are listed too.
    started = {job.num for job in jobs}
    # Their folder is only known when its name is the job number, Hydra's default subdir.
    default_subdir = nested(multirun, "hydra", "sweep", "subdir") in (None, "${hydra.job.num}")
    for num, overrides in enumerate(_planned(multirun)):
        if num not in started:
            path = os.path.join(sweep_dir, str(num)) if default_subdir else None
            jobs.append(Job(num, path, _parse_overrides(overrides), {}, None, [], None, "missing"))
    if not jobs:
        raise NstexpError(f"{sweep_dir}: no job folders (folders holding .hydra/hydra.yaml) and no planned jobs")
    jobs.sort(key=lambda job: job.num)
    keys = dict.fromkeys(k for job in jobs for k in job.overrides)
    swept = [k for k in keys if len({job.overrides.get(k, UNSET) for job in jobs}) > 1]
    for job in jobs:
        job.swept = {k: display_value(job.overrides.get(k, UNSET)) for k in swept}
    return jobs


def job_dirs(sweep_dir: str) -> list[tuple[int, str]]:
    """(job number, folder) of every job folder below `sweep_dir`, sorted.

    A job folder is one holding .hydra/hydra.yaml, at any depth: hydra.sweep.subdir can name
    it anything (`${hydra.job.num}_${hydra.job.override_dirname}`, `a/${hydra.job.num}`), so
    the number is the `hydra.job.num` Hydra recorded there, not the folder name.
    """
    found = []
    for path, subdirs, _ in os.walk(sweep_dir):
        hydra_yaml = os.path.join(path, ".hydra", "hydra.yaml")
        if os.path.isfile(hydra_yaml):
            subdirs.clear()  # what a job writes below its folder is its own, never another job
            num = nested(read_yaml(hydra_yaml), "hydra", "job", "num")
            if type(num) is not int:  # not recorded (a hand-made folder): the name is all there is
                num = int(os.path.basename(path)) if os.path.basename(path).isdecimal() else None
            if num is not None:
                found.append((num, path))
        else:
            subdirs[:] = [d for d in subdirs if d != "wandb"]  # W&B's run folders, possibly large
    return sorted(found)


def nested(cfg, *keys):
    """cfg[k1][k2]...; None where a level is missing or not a mapping (a YAML file can hold anything)."""
    for key in keys:
        if not isinstance(cfg, dict):
            return None
        cfg = cfg.get(key)
    return cfg


def grid(params: dict | None, task: list[str]) -> list[list[str]]:
    """Every job's overrides, in job-number order, as Hydra's basic sweeper enumerates them:
    the sweep file's `hydra.sweeper.params` first, then the command line's overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{k}={v}" for k, v in (params or {}).items()] + [str(t) for t in task]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    return batch


def _planned(multirun) -> list[list[str]]:
    """The overrides of every job of the sweep, recomputed from multirun.yaml the way Hydra's basic sweeper does."""
    if "BasicSweeper" not in str(nested(multirun, "hydra", "sweeper", "_target_")):
        return []  # other sweepers choose their jobs as they go
    try:
        task = list(nested(multirun, "hydra", "overrides", "task") or [])
        return grid(nested(multirun, "hydra", "sweeper", "params"), task)
    except Exception:
        return []


def _parse_overrides(items) -> dict[str, str]:
    overrides = {}
    for item in items or []:
        key, _, value = str(item).partition("=")
        overrides[key] = value
    return overrides


def _read_job(path: str, num: int) -> Job:
    overrides = _parse_overrides(read_yaml(os.path.join(path, ".hydra", "overrides.yaml")))
    metrics_path = os.path.join(path, "metrics.jsonl")
    summary = None
    try:
        with open(os.path.join(path, "summary.json")) as f:
            summary = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        pass  # not finished, or being written right now
    metrics = []
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            for line in f:
                try:
                    metrics.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a running job's last line can be half-written
    if summary is not None:
        status = str(summary.get("status", "unknown"))
    else:
        status = "running" if os.path.exists(metrics_path) else "missing"
    final = os.path.join(path, "final.png")
    return Job(num, path, overrides, {}, summary, metrics, final if os.path.exists(final) else None, status)


def read_yaml(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return yaml.safe_load(f)
