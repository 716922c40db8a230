"""Hydra callback that reports on a sweep when its last job has ended.

It writes the comparison files (see nstexp.compare) into the sweep directory and logs one
W&B run of job type `compare`, in the sweep's group, with a table of all jobs.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nstexp.tracking import resolve_wandb_mode, sweep_group


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from nstexp import compare

        sweep_dir = config.hydra.sweep.dir
        try:
            jobs = compare.collect(sweep_dir)
            paths = compare.write_report(sweep_dir, jobs=jobs)
        except Exception as exc:  # a report must never hide the jobs' own results
            print(f"warning: no comparison report for {sweep_dir}: {exc}", file=sys.stderr)
            return
        print(f"comparison: {paths['contact_sheet']}", file=sys.stderr)
        mode = resolve_wandb_mode(config.wandb.mode)
        if mode != "disabled":
            group = sweep_group(config.wandb.group, config.hydra.runtime.choices.get("sweep"), sweep_dir)
            log_summary_run(sweep_dir, jobs, paths, config.wandb, mode, group)


def comparison_table(jobs: list):
    """The W&B table of the sweep: comparison.csv's columns, but the final image itself and a link to the job's run."""
    import wandb

    from nstexp.compare import RESULTS, columns

    table = wandb.Table(columns=columns(jobs[0].swept, ("final", "run")))
    for job in jobs:
        s = job.summary or {}
        table.add_data(
            job.num,
            *[str(v) for v in job.swept.values()],
            job.status,
            *[s.get(k) for k in RESULTS[1:]],  # numbers stay numbers, for sorting and plots
            wandb.Image(job.final) if job.final else None,
            s.get("wandb_url") or s.get("wandb_id") or "",
        )
    return table


def log_summary_run(sweep_dir: str, jobs: list, paths: dict[str, str], wandb_cfg, mode: str, group: str) -> None:
    """One W&B run with a row per job (see `comparison_table`), the contact sheet and the loss curves."""
    import wandb

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
        run.log({
            "comparison": table,
            "contact_sheet": wandb.Image(paths["contact_sheet"]),
            "loss_curves": wandb.Image(paths["loss_curves"]),
        })
