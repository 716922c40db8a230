"""The life of a sweep in the launching process: stopping it, reporting on it, its outcome.

- Ctrl-C or SIGTERM while a sweep runs writes a stop file into the sweep directory. Every
  job checks it between steps, in whatever process or machine the launcher put it, ends
  after its current step (keeping its last good image and an `interrupted` summary), and
  jobs not yet started do not start. The launcher is left to return normally. A second
  signal aborts at once.
- When the last job has ended: the comparison files (see nstexp.sweep.compare) in the sweep
  directory, one W&B run of job type `compare` in the sweep's group with a table of all
  jobs, the plots and an interactive trade-off scatter, and the exit status, decided by the
  jobs' summaries, so that every launcher agrees.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nstexp.run.wandb_mode import resolve_wandb_mode, sweep_group

STOP_FILE = ".nstexp_stop"
# The exit status of the sweep this process launched, once it has ended.
sweep_outcome: dict[str, int] = {}


def stop_file(sweep_dir: str) -> Path:
    return Path(sweep_dir) / STOP_FILE


def exit_code(statuses: list[str], interrupted: bool) -> int:
    if interrupted or "interrupted" in statuses:
        return 130
    return 0 if all(s == "completed" for s in statuses) else 1


class SweepReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._stop = stop_file(config.hydra.sweep.dir)
        self._stop.unlink(missing_ok=True)  # left by an interrupted attempt that is now resumed
        self._handlers = {}
        if threading.current_thread() is threading.main_thread():
            self._handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum, frame) -> None:
        if self._stop.exists():
            raise KeyboardInterrupt  # a second signal: abort
        self._stop.parent.mkdir(parents=True, exist_ok=True)
        self._stop.touch()
        print("stopping the sweep: running jobs end after their current step (again to abort)", file=sys.stderr)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from nstexp.sweep import compare, results, search_report

        for s, handler in self._handlers.items():
            signal.signal(s, handler)
        interrupted = self._stop.exists()
        self._stop.unlink(missing_ok=True)
        sweep_dir = config.hydra.sweep.dir
        try:
            jobs = results.collect(sweep_dir)
            # A search's trials stopped by an earlier attempt ran again since: their jobs do not count.
            stale = search_report.stopped_jobs(sweep_dir) if search_report.is_search(sweep_dir) else set()
            counted = [job for job in jobs if not (job.dir and os.path.basename(job.dir) in stale)]
            sweep_outcome["exit_code"] = exit_code([job.status for job in counted], interrupted)
            paths = compare.write_report(sweep_dir, jobs=jobs)
        except Exception as exc:  # a report must never hide the jobs' own results
            sweep_outcome.setdefault("exit_code", 130 if interrupted else 1)
            print(f"warning: no comparison report for {sweep_dir}: {exc}", file=sys.stderr)
            return
        print(f"comparison: {paths['contact_sheet']}", file=sys.stderr)
        mode = resolve_wandb_mode(config.wandb.mode)
        if mode != "disabled":
            group = sweep_group(config.wandb.group, config.hydra.runtime.choices.get("sweep"), sweep_dir)
            try:
                log_summary_run(sweep_dir, jobs, paths, config.wandb, mode, group)
            except Exception as exc:  # the files are written; W&B's copy is a convenience
                print(f"warning: no W&B summary run for {sweep_dir}: {type(exc).__name__}: {exc}", file=sys.stderr)


def comparison_table(jobs: list):
    """The W&B table of the sweep: comparison.csv's columns, but the final image itself and a link to the job's run."""
    import wandb

    from nstexp.sweep.compare import columns, result_keys

    results = result_keys(jobs)
    table = wandb.Table(columns=columns(jobs[0].swept, results, ("final", "run")))
    for job in jobs:
        s = job.summary or {}
        table.add_data(
            job.num,
            *[str(v) for v in job.swept.values()],
            job.status,
            *[s.get(k) for k in results[1:]],  # numbers stay numbers, for sorting and plots
            wandb.Image(job.final) if job.final else None,
            s.get("wandb_url") or s.get("wandb_id") or "",
        )
    return table


def tradeoff_chart(jobs: list):
    """tradeoff.png as an interactive W&B scatter: a row per job with both metrics, named by its swept values."""
    import wandb

    from nstexp.sweep.plots import TRADEOFF, swept_label, tradeoff_labels, tradeoff_points, tradeoff_title

    # The columns are named by the axis labels, which say which way is better.
    x, y = tradeoff_labels(*TRADEOFF)
    table = wandb.Table(columns=["job", x, y], data=[[swept_label(j), cx, sy] for j, cx, sy in tradeoff_points(jobs)])
    return wandb.plot.scatter(table, x, y, title=tradeoff_title(*TRADEOFF))


def log_summary_run(sweep_dir: str, jobs: list, paths: dict[str, str], wandb_cfg, mode: str, group: str) -> None:
    """One W&B run with a row per job (see `comparison_table`), the plots `paths` has (see compare.OUTPUTS)
    and, for a search, a row per trial."""
    import wandb

    from nstexp.sweep import search_report

    keys = list(jobs[0].swept)
    table = comparison_table(jobs)
    with wandb.init(
        project=wandb_cfg.project,
        entity=wandb_cfg.entity,
        group=group,
        name=f"{group}/compare",
        job_type="compare",
        tags=list(wandb_cfg.tags),
        config={"sweep_dir": sweep_dir, "swept_keys": keys, "jobs": len(jobs)},
        dir=sweep_dir,
        mode=mode,
        reinit="create_new",
    ) as run:
        images = {k: wandb.Image(v) for k, v in paths.items() if v.endswith(".png")}
        charts = {"tradeoff_chart": tradeoff_chart(jobs)} if "tradeoff" in paths else {}
        # A search's trials, one row each (search.csv's columns).
        trials = {"search": search_report.wandb_table(sweep_dir)} if "search_csv" in paths else {}
        run.log({"comparison": table, **images, **charts, **trials})
