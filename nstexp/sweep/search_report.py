"""What a search adds to a sweep's comparison (nstexp.sweep.compare), read from its journal:

- front.png: every completed trial in the plane of the two objectives (a single objective: against
  the trial number), the Pareto front marked and joined, the best trade-off circled;
- front_sheet.png: the contact sheet of the front's jobs;
- search.csv and search.md: one row per trial, its parameters, state, objectives (the mean over
  its jobs) and whether it is on the front;
- best.txt: the best trade-off's command line. The best trade-off is the front's trial nearest
  the ideal point once each objective is scaled to [0, 1] over the front (one objective: the best).
"""

from __future__ import annotations

import csv
import math
import os
import shlex

from nstexp.eval.tables import csv_cell, markdown_table
from nstexp.sweep import search
from nstexp.sweep.contact_sheet import CELL, contact_sheet
from nstexp.sweep.results import Job, read_yaml

OUTPUTS = {"front": "front.png", "front_sheet": "front_sheet.png", "search_csv": "search.csv",
           "search_markdown": "search.md", "best": "best.txt"}


def is_search(sweep_dir: str) -> bool:
    return search.journal(sweep_dir).is_file()


def load(sweep_dir: str):
    """(the study's objectives, its trials, the trials on the Pareto front)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=search.STUDY, storage=search.storage(sweep_dir))
    objectives = study.user_attrs.get("objectives") or [f"objective {i}" for i in range(len(study.directions))]
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    front = study.best_trials if complete else []
    return objectives, trials, front


def stopped_jobs(sweep_dir: str) -> set[str]:
    """The job folders (names) of trials that were stopped, and so queued to run again."""
    _, trials, _ = load(sweep_dir)
    return {j for t in trials if t.user_attrs.get(search.INTERRUPTED) for j in t.user_attrs.get("jobs", []) if j}


def best_tradeoff(front: list, objectives: list[str]):
    """The front's trial nearest the ideal point, each objective scaled to [0, 1] over the front."""
    if not front:
        return None
    signs = [-1 if search.directions([k])[0] == "maximize" else 1 for k in objectives]
    bad = [[s * v for s, v in zip(signs, t.values)] for t in front]  # lower is better on every axis
    lo = [min(col) for col in zip(*bad)]
    hi = [max(col) for col in zip(*bad)]
    scaled = [math.hypot(*((v - a) / (b - a) if b > a else 0.0 for v, a, b in zip(row, lo, hi))) for row in bad]
    return front[scaled.index(min(scaled))]


def table(trials: list, objectives: list[str], front: list) -> tuple[list[str], list[list]]:
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    on_front = {t.number for t in front}
    rows = []
    for t in trials:
        values = list(t.values) if t.values else [None] * len(objectives)
        state = "stopped" if t.user_attrs.get(search.INTERRUPTED) else t.state.name.lower()
        rows.append([t.number, *(t.params.get(k) for k in keys), state, *values,
                     "yes" if t.number in on_front else "", " ".join(str(j) for j in t.user_attrs.get("jobs", []))])
    return ["trial", *keys, "state", *objectives, "front", "jobs"], rows


def wandb_table(sweep_dir: str):
    """search.csv as a W&B table (numbers stay numbers)."""
    import wandb

    objectives, trials, front = load(sweep_dir)
    header, rows = table(trials, objectives, front)
    return wandb.Table(columns=header, data=[[v if isinstance(v, (int, float)) else str(v) for v in row]
                                             for row in rows])


def _sweep_file_values(name: str) -> list[str]:
    """What sweep file `name` sets besides Hydra's settings, as overrides: its group choices
    (`override /loss: gatys` -> loss=gatys) and its values (dotted keys)."""
    from nstexp.config import SWEEPS_DIR

    node = read_yaml(os.path.join(SWEEPS_DIR, f"{name}.yaml")) or {}
    out = []
    for entry in node.get("defaults") or []:
        for key, option in (entry.items() if isinstance(entry, dict) else []):
            group = key.removeprefix("override").strip().lstrip("/")
            if not group.startswith("hydra"):
                out.append(f"{group}={option}")

    def walk(value, prefix):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out.append(f"{prefix}={'null' if value is None else value}")

    walk({k: v for k, v in node.items() if k not in ("defaults", "hydra")}, "")
    return out


def command(sweep_dir: str, trial) -> str:
    """The command line that runs `trial` again: its first job's overrides, each key that varies
    between its jobs (the pairs) given all of its values; a sweep file (its search) gives way to
    what it sets."""
    per_job = [read_yaml(os.path.join(sweep_dir, j, ".hydra", "overrides.yaml")) or [] for j in trial.user_attrs["jobs"]]
    values: dict[str, list[str]] = {}
    for overrides in per_job:
        expanded = [x for o in overrides
                    for x in (_sweep_file_values(str(o).split("=", 1)[1]) if str(o).startswith("sweep=") else [str(o)])]
        job = dict(o.partition("=")[::2] for o in expanded)  # a later value of a key replaces an earlier one
        for key, value in job.items():
            values.setdefault(key, [])
            if value not in values[key]:
                values[key].append(value)
    args = [f"{k}={','.join(vals)}" for k, vals in values.items()]
    multirun = any(len(vals) > 1 for vals in values.values())
    return " ".join(["nstexp", *(["-m"] if multirun else []), *map(shlex.quote, args)])


def front_plot(trials: list, front: list, best, objectives: list[str], path: str, title: str) -> None:
    # Imported here: matplotlib takes a while to import, and only drawing needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nstexp.sweep.plots import axis_label

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    failed = sum(1 for t in trials if t.state.name == "FAIL" and not t.user_attrs.get(search.INTERRUPTED))
    if len(objectives) == 2:
        def xy(ts):
            return [t.values[0] for t in ts], [t.values[1] for t in ts]
        ax.set_xlabel(axis_label("content fidelity", objectives[0]) + ", mean over the pairs")
        ax.set_ylabel(axis_label("style distance", objectives[1]) + ", mean over the pairs")
        ordered = sorted(front, key=lambda t: t.values[0])
    else:
        def xy(ts):
            return [t.number for t in ts], [t.values[0] for t in ts]
        ax.set_xlabel("trial")
        ax.set_ylabel(axis_label("objective", objectives[0]) + ", mean over the pairs")
        ordered = front
    ax.scatter(*xy(complete), s=18, color="0.6", label=f"trials ({len(complete)} completed, {failed} failed)")
    ax.plot(*xy(ordered), "o-", color="C3", label=f"Pareto front ({len(front)})")
    if best is not None:
        ax.scatter(*xy([best]), s=160, facecolors="none", edgecolors="C0", linewidths=2,
                   label=f"best trade-off (trial {best.number})")
    for t in front:
        ax.annotate(str(t.number), tuple(c[0] for c in xy([t])), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.savefig(path, dpi=100)


def write(sweep_dir: str, jobs: list[Job], cell: int = CELL, tables_only: bool = False) -> dict[str, str]:
    """Write the search's files (OUTPUTS) into `sweep_dir`; returns the paths written."""
    objectives, trials, front = load(sweep_dir)
    best = best_tradeoff(front, objectives)
    paths = {kind: os.path.join(sweep_dir, name) for kind, name in OUTPUTS.items()}
    header, rows = table(trials, objectives, front)
    with open(paths["search_csv"], "w", newline="") as f:
        csv.writer(f).writerows([header, *([csv_cell(v) for v in row] for row in rows)])
    with open(paths["search_markdown"], "w") as f:
        f.write(markdown_table(header, rows))
    if best is None:
        del paths["best"]
    else:
        with open(paths["best"], "w") as f:
            values = ", ".join(f"{k} = {v:.6g}" for k, v in zip(objectives, best.values))
            f.write(f"# the best trade-off: trial {best.number} ({values})\n{command(sweep_dir, best)}\n")
    if tables_only:
        return {k: v for k, v in paths.items() if k not in ("front", "front_sheet")}
    front_plot(trials, front, best, objectives, paths["front"], os.path.abspath(sweep_dir))
    names = {j for t in front for j in t.user_attrs.get("jobs", [])}
    on_front = [job for job in jobs if job.dir and os.path.basename(job.dir) in names]
    if on_front:
        contact_sheet(on_front, paths["front_sheet"], cell)
    else:
        del paths["front_sheet"]
    return paths
