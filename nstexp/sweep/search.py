"""A search: the trials Optuna proposes, run as a sweep's jobs, scored by the `eval/` metrics.

The search space is written in Hydra's Optuna syntax (in a sweep file's `hydra.sweeper.params`
or on the command line): `interval(a,b)` a linear range (whole numbers when both ends are),
`tag(log,interval(a,b))` a log one, `a,b,c` or `choice(a,b,c)` and `range(a,b[,step])` choices.
The keys in `every_trial` (`pair` by default) are not searched: every trial runs each of their
values, one job per value, and scores the mean of each metric over them, so the front is not
tuned to one image. A trial whose jobs did not all complete with finite metrics is told to Optuna
as failed. The study lives in `search.journal` in the sweep folder (Optuna's JournalFileBackend:
no database server; machines sharing the folder work on one study).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from nstexp.errors import NstexpError
from nstexp.eval import rules

JOURNAL = "search.journal"
STUDY = "search"
SAMPLERS = ("tpe", "nsga2", "random")
INTERRUPTED = "interrupted"  # a failed trial's user attribute: stopped, not failed; run again on resume


@dataclass
class Space:
    """What a trial varies (Optuna distributions by key), what it fixes and what it runs all of."""

    distributions: dict = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    every: dict[str, list[str]] = field(default_factory=dict)  # key -> the values each trial runs


def space(arguments: list[str], every_trial: list[str]) -> Space:
    """The search space of these overrides (the sweep file's params first, then the command line's:
    a later value of a key replaces an earlier one, as it does in a grid)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = Space()
    parsed = {o.get_key_element(): o for o in OverridesParser.create().parse_overrides(arguments)}
    for key, override in parsed.items():
        if not override.is_sweep_override():
            out.fixed.append(override.input_line)
            continue
        sweep = override.value()
        if key in every_trial:
            out.every[key] = list(override.sweep_string_iterator())
        elif isinstance(sweep, IntervalSweep):
            log = "log" in sweep.tags
            if log and min(sweep.start, sweep.end) <= 0:
                raise NstexpError(f"{override.input_line}: a log range needs ends above 0")
            ints = isinstance(sweep.start, int) and isinstance(sweep.end, int)
            cls = IntDistribution if ints else FloatDistribution
            out.distributions[key] = cls(sweep.start, sweep.end, log=log)
        elif isinstance(sweep, (ChoiceSweep, RangeSweep)):
            out.distributions[key] = CategoricalDistribution(list(override.sweep_string_iterator()))
        else:
            raise NstexpError(f"{override.input_line}: not a search space "
                              "(allowed: interval(a,b), tag(log,interval(a,b)), a,b,c, choice(...), range(...))")
    if not out.distributions:
        raise NstexpError("a search needs at least one searched key, e.g. style.weight=tag(log,interval(1,1000)) "
                          f"(every trial runs all values of {', '.join(every_trial)})")
    return out


def directions(objectives: list[str]) -> list[str]:
    """Optuna's direction of each objective, from the metric's ranking rule (nstexp.eval.rules)."""
    if not 1 <= len(objectives) <= 2:
        raise NstexpError(f"hydra.sweeper.objectives={list(objectives)}: one or two eval/ metrics")
    out = []
    for key in objectives:
        rule = rules.better(key)
        if rule not in (rules.HIGHER, rules.LOWER):
            allowed = ", ".join(k for k, r in rules.BETTER.items() if r in (rules.HIGHER, rules.LOWER))
            raise NstexpError(f"hydra.sweeper.objectives: {key} cannot be an objective (allowed: {allowed}, "
                              "and the per-layer eval/style_sw/<layer>, eval/style_gram/<layer>)")
        out.append("maximize" if rule == rules.HIGHER else "minimize")
    return out


def sampler(name: str, seed: int | None, objectives: int):
    """TPE (the default) or NSGA-II, both multi-objective, or random. TPE by default: a search of
    style transfer affords tens of trials, and NSGA-II's first generation (50 trials) is random."""
    import optuna

    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=objectives > 1)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise NstexpError(f"hydra.sweeper.sampler={name}: unknown sampler (allowed: {', '.join(SAMPLERS)})")


def is_search(hydra_node) -> bool:
    """Whether Hydra's node (composition.hydra_node) has a search for its sweeper."""
    return "nstexp_optuna_sweeper" in str(hydra_node.sweeper.get("_target_", ""))


def check_resume(overrides: list[str]) -> None:
    """`resume=true` on a search: its journal is in the folder the command names."""
    if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
        raise NstexpError("resume=true: name the search's folder with hydra.sweep.dir=... "
                          f"(its {JOURNAL} holds the trials it has run)")


def journal(sweep_dir: str) -> Path:
    return Path(sweep_dir) / JOURNAL


def storage(sweep_dir: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(journal(sweep_dir))))


def open_study(sweep_dir: str, objectives: list[str], sampler_obj=None, command: list[str] | None = None):
    """The study in the sweep folder, created if new; refused when it was made for other objectives
    or another `command` (the search space and the fixed overrides: every trial must run alike)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage(sweep_dir), study_name=STUDY, sampler=sampler_obj,
                                directions=directions(objectives), load_if_exists=True)
    for attr, now in (("objectives", list(objectives)), ("command", sorted(command or []))):
        recorded = study.user_attrs.get(attr)
        if recorded is None:
            study.set_user_attr(attr, now)
        elif recorded != now:
            raise NstexpError(f"{journal(sweep_dir)} holds a search of {attr} {' '.join(recorded)}, not "
                              f"{' '.join(now)}; use the same, or another hydra.sweep.dir")
    return study


def counted(study) -> int:
    """Trials that count towards n_trials: completed, failed (not stopped), and running elsewhere."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.RUNNING)
               or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED)))


def take_over_running(study) -> int:
    """On resume: trials a killed attempt left running are failed as stopped and queued again
    with their parameters. Returns how many."""
    import optuna
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for frozen in stale:
        stopped(study, optuna.trial.Trial(study, frozen._trial_id))
    return len(stale)


def stopped(study, trial) -> None:
    """A trial that was stopped: failed, marked so (it does not count), and queued to run again."""
    from optuna.trial import TrialState

    trial.set_user_attr(INTERRUPTED, True)
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(trial.params, skip_if_exists=False)


def job_overrides(space_: Space, params: dict) -> list[list[str]]:
    """The jobs of a trial: the fixed overrides, the trial's values, and one of each every-trial combination."""
    values = [f"{k}={v}" for k, v in params.items()]
    combos = itertools.product(*([f"{k}={v}" for v in vals] for k, vals in space_.every.items()))
    return [[*space_.fixed, *values, *combo] for combo in combos]


def _summary(job_dir: str | None) -> dict:
    try:
        return json.loads((Path(job_dir) / "summary.json").read_text())
    except (OSError, TypeError, ValueError):
        return {}


def score(job_dirs: list[str | None], objectives: list[str], stopping: bool = False) -> tuple[str, list[float] | str]:
    """("completed", the mean of each objective over the trial's jobs), else (status, why not).
    `stopping`: the sweep is being stopped, so a job without a summary was never started."""
    summaries = [_summary(d) for d in job_dirs]
    statuses = [s.get("status", "missing") for s in summaries]
    if INTERRUPTED in statuses or (stopping and "missing" in statuses):
        return INTERRUPTED, "a job was stopped"
    bad = [st for st in statuses if st != "completed"]
    if bad:
        return "failed", f"{len(bad)} of {len(statuses)} jobs {bad[0]}"
    values = []
    for key in objectives:
        numbers = [s.get(key) for s in summaries]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
            return "failed", f"{key} missing or not finite"
        values.append(sum(numbers) / len(numbers))
    return "completed", values


def tell(study, trial, job_dirs: list[str | None], objectives: list[str], stopping: bool = False) -> str:
    """Tell Optuna how `trial` went; returns its status (completed, failed or interrupted)."""
    from optuna.trial import TrialState

    status, result = score(job_dirs, objectives, stopping)
    trial.set_user_attr("jobs", [os.path.basename(d) if d else None for d in job_dirs])
    if status == "completed":
        study.tell(trial, result)
    elif status == INTERRUPTED:
        stopped(study, trial)
    else:
        trial.set_user_attr("failure", result)
        study.tell(trial, state=TrialState.FAIL)
    return status
