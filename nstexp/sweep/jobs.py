"""A sweep's jobs as the command runs them: planning the job Hydra composes, running a batch
of jobs without letting one failure take the others along, and the outcomes of this process's jobs.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nstexp.errors import NstexpError
from nstexp.run.wandb_mode import sweep_group
from nstexp.sweep import callbacks, resumable
from nstexp.sweep.results import display_value

if TYPE_CHECKING:
    from nstexp.run.job import JobSpec

# Outcomes of the jobs this process ran (a single run, or a sweep under the basic or batched launcher).
statuses: list[str] = []


# Set by `main` for the jobs (also in launcher subprocesses): the keys a sweep varies, and
# the process that launched them.
SWEPT_ENV = "NSTEXP_SWEPT_KEYS"
PARENT_ENV = "NSTEXP_PARENT_PID"


def _run_name(cfg: DictConfig, hc) -> str:
    """A multirun job is named by its swept values, a single run by all its overrides;
    `wandb.name` replaces the name of a single run and prefixes the names of a sweep's jobs."""
    swept = [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k]
    if hc.mode == RunMode.MULTIRUN:
        values = dict(o.lstrip("+~").split("=", 1) for o in hc.overrides.task if "=" in o)
        name = ",".join(f"{k}={display_value(values[k])}" for k in swept if k in values) or "default"
        return f"{cfg.wandb.name}/{name}" if cfg.wandb.name else name
    return cfg.wandb.name or hc.job.override_dirname or "default"


def _group(cfg: DictConfig, hc) -> str | None:
    if hc.mode != RunMode.MULTIRUN:
        return cfg.wandb.group
    return sweep_group(cfg.wandb.group, hc.runtime.choices.get("sweep"), hc.sweep.dir)


def plan_job(cfg: DictConfig) -> tuple[JobSpec, Path | None] | None:
    """The job Hydra is composing now (inside its job context), with the sweep's stop file; None
    for a sweep's job that must not run (the sweep was stopped, or resume found it completed)."""
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    stop_file = None
    if hc.mode == RunMode.MULTIRUN:
        stop_file = callbacks.stop_file(hc.sweep.dir)
        if stop_file.exists():
            print(f"job {hc.job.num}: not started, the sweep was stopped", file=sys.stderr)
            return None
        if cfg.resume:
            if resumable.completed(out_dir, hc.overrides.task):
                print(f"job {hc.job.num}: already completed, skipped", file=sys.stderr)
                return None
            resumable.clear_attempt(out_dir)
    from nstexp.run.job import JobSpec  # here: the command starts, and refuses bad input, without torch

    spec = JobSpec(cfg, str(out_dir), name=_run_name(cfg, hc), group=_group(cfg, hc),
                   record={"overrides": resumable.job_key(hc.overrides.task)}, keeps_state=hc.mode != RunMode.MULTIRUN)
    return spec, stop_file


def run_jobs(specs: list[JobSpec], stop_file: Path | None) -> list[str]:
    """Jobs that share one batch (one job, except under the batched launcher); never raises, so
    a failure cannot take a sweep's other jobs or its report along. Returns their statuses."""
    from nstexp.run.runner import run_batch
    from nstexp.run.video import run_video

    try:
        summaries = (run_video if specs[0].cfg.content.video else run_batch)(specs, stop_file=stop_file)
    except NstexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ["failed"] * len(specs)
    except Exception as exc:  # a bug: one line here, the traceback next to each job's summary
        for spec in specs:
            log = Path(spec.out_dir) / "error.log"
            log.write_text(traceback.format_exc())
        where = log if len(specs) == 1 else "each job's error.log"
        print(f"error: {type(exc).__name__}: {exc} (unexpected; traceback in {where})", file=sys.stderr)
        return ["failed"] * len(specs)
    finally:
        if os.environ.get(PARENT_ENV, str(os.getpid())) != str(os.getpid()):
            # A launcher's worker process between jobs: a Ctrl-C at the terminal reaches it too,
            # and would kill it while idle; the sweep's stop file stops its next job instead.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    statuses = [summary["status"] for summary in summaries]
    if "interrupted" in statuses and stop_file is not None:
        stop_file.touch()  # the sweep's other jobs, in any process, stop too
    for spec, status in zip(specs, statuses):
        print(f"{status}: {spec.out_dir}/final.png", file=sys.stderr)
    return statuses
