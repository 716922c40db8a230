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

TABLE_LOSSES = ("final/loss/total", "final/loss/content", "final/loss/style")


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from nstexp import compare

        sweep_dir = config.hydra.sweep.dir
        try:
            paths = compare.write_report(sweep_dir)
        except Exception as exc:  # a report must never hide the jobs' own results
            print(f"warning: no comparison report for {sweep_dir}: {exc}", file=sys.stderr)
            return
        print(f"comparison: {paths['contact_sheet']}", file=sys.stderr)
        if resolve_wandb_mode(config.wandb.mode) != "disabled":
            group = sweep_group(config.wandb.group, config.hydra.runtime.choices.get("sweep"), sweep_dir)
            log_summary_run(sweep_dir, paths, config.wandb, group)


def log_summary_run(sweep_dir: str, paths: dict[str, str], wandb_cfg, group: str) -> None:
    """One W&B run with a row per job: swept values, final losses, final image, link to its run."""
    import wandb

    from nstexp import compare

    jobs = compare.collect(sweep_dir)
    keys = sorted({k for job in jobs for k in job.swept})
    columns = ["job", *keys, "status", *TABLE_LOSSES, "steps", "evals", "wall_time_s", "final", "run"]
    table = wandb.Table(columns=columns)
    for job in jobs:
        s = job.summary or {}
        link = s.get("wandb_url") or s.get("wandb_id") or ""
        table.add_data(
            job.num,
            *[str(job.swept.get(k, "")) for k in keys],
            job.status,
            *[s.get(k) for k in TABLE_LOSSES],
            s.get("steps"),
            s.get("evals"),
            s.get("wall_time_s"),
            wandb.Image(job.final) if job.final else None,
            link,
        )
    mode = resolve_wandb_mode(wandb_cfg.mode)
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
