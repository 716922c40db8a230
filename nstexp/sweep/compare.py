"""`nstexp compare <sweep dir>`: every job of a Hydra multirun sweep, side by side.

A sweep folder holds Hydra's multirun.yaml and one folder per job (0/, 1/, ... by default,
anywhere below it with a custom hydra.sweep.subdir) with its overrides, metrics.jsonl,
summary.json and final.png. Opening them one at a time is slow and easy to misread, so this
writes files into the sweep folder that put the jobs next to each other:

- contact_sheet.png: the final images in a grid laid out by the swept values, with the
  content and style images along the top;
- loss_curves.png, eval_curves.png and tradeoff.png: see nstexp.sweep.plots (the last two only
  when the jobs logged the image-quality `eval/` metrics);
- comparison.csv and comparison.md: one row per job, its swept values and final numbers
  (the markdown rounded for reading, the CSV in full precision);
- for a search (hydra/sweeper=optuna), its Pareto front, the front's contact sheet, a table of
  its trials and the best trade-off's command line: see nstexp.sweep.search_report.

Jobs that are still running, were cut off or failed are shown as such rather than left out,
so a sweep can be looked at before it has finished.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys

from nstexp.errors import NstexpError
from nstexp.eval import rules
from nstexp.eval.tables import csv_cell, markdown_table
from nstexp.sweep import plots, search_report
from nstexp.sweep.contact_sheet import CELL, contact_sheet
from nstexp.sweep.results import Job, collect

RESULTS = ("status", "steps", "evals", "wall_time_s", *(f"final/{k}" for k in plots.LOSSES))
# The image-quality metrics of the final image that the tables show, when the jobs logged them.
EVALS = ("eval/ssim", "eval/content", "eval/style_gram", "eval/style_sw", "eval/colour_style", "eval/tv",
         "eval/styleeval_cf", "eval/styleeval_ge", "eval/styleeval_lp", "eval/styleeval", "eval/cfsd",
         "eval/colour_hellinger")
# Summary numbers that are no image metric but still rank one way: the costs of a run. The
# final losses (final/loss/...) are what the run minimised; the metrics say for themselves.
COSTS = ("wall_time_s", "time_per_eval_s", "total_time_s", "peak_memory_mb", "eval_time_s")
OUTPUTS = {
    "contact_sheet": "contact_sheet.png",
    "loss_curves": "loss_curves.png",
    "eval_curves": "eval_curves.png",
    "tradeoff": "tradeoff.png",
    "csv": "comparison.csv",
    "markdown": "comparison.md",
}


def result_keys(jobs: list[Job], every_eval: bool = False) -> list[str]:
    """RESULTS, then the EVALS any job's summary has; with `every_eval` also its other `eval/` keys (per layer)."""
    found = dict.fromkeys(k for job in jobs for k in job.summary or {} if k.startswith("eval/"))
    evals = [k for k in EVALS if k in found] + ([k for k in found if k not in EVALS] if every_eval else [])
    return [*RESULTS, *evals]


def columns(keys, results: list[str], tail: tuple[str, ...]) -> list[str]:
    """A comparison table's header: job, the swept `keys`, the `results` (see result_keys), then `tail`.

    Shared by comparison.csv/.md and the W&B table so they name columns alike. A swept key named
    like another column (a swept `steps` next to the steps actually run) gets " (swept)": a
    repeated name would make the two columns impossible to tell apart.
    """
    fixed = ("job", *results, *tail)
    return ["job", *(f"{k} (swept)" if k in fixed else k for k in keys), *results, *tail]


def table(jobs: list[Job], sweep_dir: str, every_eval: bool = False) -> tuple[list[str], list[list]]:
    """Header and one row per job: number, swept values, results (None if missing), final.png relative to `sweep_dir`.

    `every_eval`: all of the summaries' `eval/` keys, not only the EVALS (see result_keys).
    """
    results = result_keys(jobs, every_eval)
    rows = []
    for job in jobs:
        summary = job.summary or {}
        final = os.path.relpath(job.final, sweep_dir) if job.final else ""
        rows.append([job.num, *job.swept.values(), job.status, *(summary.get(k) for k in results[1:]), final])
    return columns(jobs[0].swept, results, ("final_png",)), rows


def ranking_rule(key: str) -> str | None:
    """Which way summary number `key` is better (see rules.BETTER); None where nothing says."""
    if key.startswith("final/loss/") or key in COSTS:
        return rules.LOWER
    return rules.better(key)


def checked_rule(key: str, use: str) -> str:
    """`key`'s ranking rule; NstexpError saying what `use` (`sort by`, `plot`) needs, for a key without one."""
    rule = ranking_rule(key)
    if rule is None:
        raise NstexpError(f"cannot {use} {key}: no rule says which way it is better (allowed: "
                          f"{', '.join(rules.BETTER)}, their per-layer keys, final/loss/..., {', '.join(COSTS)})")
    return rule


def sort_jobs(jobs: list[Job], key: str) -> list[Job]:
    """`jobs` best first by their summary's number `key`, by its ranking rule; jobs without it last.

    NstexpError for a key without a ranking rule, or that no job has a number for.
    """
    rule = checked_rule(key, "sort by")

    def rank(job: Job) -> tuple[int, float]:
        value = (job.summary or {}).get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            return (1, 0.0)
        return (0, rules.badness(rule, value))

    if all(rank(job)[0] for job in jobs):
        raise NstexpError(f"cannot sort by {key}: no job's summary.json has a number for it")
    return sorted(jobs, key=rank)


def write_report(sweep_dir: str, cell: int = CELL, jobs: list[Job] | None = None, sort: str | None = None,
                 tables_only: bool = False, tradeoff: tuple[str, str] = plots.TRADEOFF) -> dict[str, str]:
    """Write the comparison files into `sweep_dir`; returns the paths written, keyed as in OUTPUTS.

    eval_curves.png and tradeoff.png are written only when some job has the `eval/` metrics.
    `jobs` is what `collect(sweep_dir)` returns, for callers that already have it; `sort` a
    summary key that orders the tables' rows (see sort_jobs), else they are in job order;
    `tables_only`: comparison.csv and comparison.md alone (the images do not depend on `sort`);
    `tradeoff`: the metrics on the trade-off plot's x (content) and y (style) axes.
    """
    jobs = collect(sweep_dir) if jobs is None else jobs
    for key in tradeoff:  # first, as the sort key: a wrong key must not leave half a report
        checked_rule(key, "plot")
    rows_order = sort_jobs(jobs, sort) if sort else jobs
    paths = {kind: os.path.join(sweep_dir, name) for kind, name in OUTPUTS.items()}
    if tables_only:
        paths = {kind: paths[kind] for kind in ("csv", "markdown")}
    else:
        contact_sheet(jobs, paths["contact_sheet"], cell)
        title = os.path.abspath(sweep_dir)
        plots.loss_curves(jobs, paths["loss_curves"], title)
        if not plots.eval_curves(jobs, paths["eval_curves"], title):
            del paths["eval_curves"]
        if not plots.tradeoff(jobs, paths["tradeoff"], title, *tradeoff):
            del paths["tradeoff"]
    header, rows = table(rows_order, sweep_dir, every_eval=True)
    with open(paths["csv"], "w", newline="") as f:
        csv.writer(f).writerows([header, *([csv_cell(v) for v in row] for row in rows)])
    with open(paths["markdown"], "w") as f:
        f.write(markdown_table(*table(rows_order, sweep_dir)))
    if search_report.is_search(sweep_dir):
        paths.update(search_report.write(sweep_dir, jobs, cell, tables_only))
    return paths


def _positive_int(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    """`nstexp compare`: a path that is not a sweep folder is one `error:` line and exit status 2."""
    parser = argparse.ArgumentParser(
        prog="nstexp compare",
        description="Compare the jobs of a Hydra multirun sweep: writes contact_sheet.png, loss_curves.png, "
        "comparison.csv and comparison.md into the sweep folder, and eval_curves.png and tradeoff.png when "
        "the jobs logged the eval/ image-quality metrics.",
    )
    parser.add_argument("sweep_dir", help="the sweep folder, the one holding Hydra's multirun.yaml")
    parser.add_argument("--cell", type=_positive_int, default=CELL,
                        help="longest side of each image in the contact sheet, in pixels (default: %(default)s)")
    parser.add_argument("--sort", metavar="KEY",
                        help="order the tables' rows best first by this summary.json number, e.g. eval/style_sw "
                        "(each metric's own rule: lowest first, highest first for eval/ssim, closest to 1 first "
                        "for eval/tv)")
    parser.add_argument("--tradeoff", nargs=2, metavar=("X", "Y"), default=plots.TRADEOFF,
                        help="the metrics of tradeoff.png: content fidelity on x, style fidelity on y, e.g. "
                        f"eval/styleeval_cf eval/styleeval_lp (default: {' '.join(plots.TRADEOFF)})")
    parser.add_argument("--tables-only", action="store_true",
                        help="write only comparison.csv and comparison.md (to re-sort a sweep's tables in a moment; "
                        "the images do not change with --sort)")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.sweep_dir, args.cell, sort=args.sort, tables_only=args.tables_only,
                             tradeoff=tuple(args.tradeoff))
    except NstexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # e.g. a read-only sweep folder
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    main()
