"""What `hydra/sweeper=optuna` does: ask Optuna for trials, launch their jobs through the
configured launcher (basic, joblib, submitit, batched), tell Optuna how each went, until the
study holds `n_trials` trials.

A stop request (Ctrl-C, SIGTERM: nstexp.sweep.callbacks' stop file) ends the search after the
running jobs have stopped; their trials are failed as stopped and queued again, so that
`resume=true` with the same `hydra.sweep.dir` runs them again and goes on to `n_trials`,
without rerunning a finished trial. Several processes (machines sharing the sweep folder)
can run the same command on one study: each asks for trials until the study has enough.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from omegaconf import OmegaConf

from nstexp.errors import NstexpError
from nstexp.sweep import callbacks, resumable, search


def _changes_results(override: str) -> bool:
    """Whether an override changes what a job computes, not how it is run or watched (resumable.NOT_RESULTS)."""
    key = override.lstrip("+~").split("=", 1)[0]
    return not any(key == k or key.startswith(k + ".") for k in resumable.NOT_RESULTS)


def _settings(sweeper, arguments: list[str]):
    """The search space, objectives, sampler and command; NstexpError for anything a search cannot run."""
    s, cfg = sweeper.settings, sweeper.config
    params = [f"{k}={v}" for k, v in (s.get("params") or {}).items()]
    space = search.space(params + list(arguments), list(s["every_trial"]))
    objectives = list(s["objectives"])
    search.directions(objectives)
    if not cfg.eval.enabled:
        raise NstexpError("eval.enabled=false: a search scores each trial by its eval/ metrics (leave eval enabled)")
    for key in ("n_trials", "n_jobs"):
        if not isinstance(s[key], int) or s[key] < 1:
            raise NstexpError(f"hydra.sweeper.{key}={s[key]} must be a whole number >= 1")
    # What every trial must share with the study's others: its space and fixed values (not how it is run).
    command = [o for o in params + list(arguments) if _changes_results(o)]
    return space, objectives, search.sampler(s["sampler"], s["seed"], len(objectives)), command


def _consecutive(trials: list) -> list[list]:
    """The trials in runs of consecutive numbers: each run's jobs get consecutive job numbers
    (trial number x jobs per trial onwards), whatever other processes on the study asked for."""
    runs: list[list] = []
    for trial in trials:
        if runs and runs[-1][-1].number + 1 == trial.number:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


def _output_dir(ret) -> str | None:
    """A job's folder, from what the launcher returned (the working directory is the command's)."""
    hydra_cfg = getattr(ret, "hydra_cfg", None)
    return str(hydra_cfg.hydra.runtime.output_dir) if hydra_cfg is not None else None


def sweep(sweeper, arguments: list[str]) -> list:
    cfg = sweeper.config
    sweep_dir = str(cfg.hydra.sweep.dir)
    try:
        space, objectives, sampler, command = _settings(sweeper, arguments)
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        study = search.open_study(sweep_dir, objectives, sampler, command)
    except NstexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    OmegaConf.save(cfg, Path(sweep_dir) / "multirun.yaml")
    if cfg.resume and (taken := search.take_over_running(study)):
        print(f"search: {taken} trial(s) a stopped attempt left running queued again", file=sys.stderr)
    stop = callbacks.stop_file(sweep_dir)
    per_trial = math.prod(len(v) for v in space.every.values())
    n_trials, n_jobs = sweeper.settings["n_trials"], sweeper.settings["n_jobs"]
    returns = []
    while not stop.exists():
        left = n_trials - search.counted(study)
        if left <= 0:
            break
        trials = [study.ask(space.distributions) for _ in range(min(n_jobs, left))]
        for run in _consecutive(trials):
            overrides = [job for trial in run for job in search.job_overrides(space, trial.params)]
            rets = list(sweeper.launcher.launch(overrides, initial_job_idx=run[0].number * per_trial))
            returns += rets
            for i, trial in enumerate(run):
                dirs = [_output_dir(r) for r in rets[i * per_trial:(i + 1) * per_trial]]
                status = search.tell(study, trial, dirs, objectives, stopping=stop.exists())
                print(f"search: trial {trial.number} {status}", file=sys.stderr)
    return returns
