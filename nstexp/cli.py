"""The `nstexp` command: Hydra composes the config, `runner.run` does the work.

Before Hydra starts, every override (each value of a sweep included) is composed and
validated once, so a typo fails in one line before any job runs.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nstexp import callbacks, resumable
from nstexp import config as config_schema
from nstexp.errors import NstexpError
from nstexp.job import JobSpec
from nstexp.runner import run_batch
from nstexp.sweep_jobs import display_value
from nstexp.tracking import sweep_group
from nstexp.validation import validate


def _data_dir(name: str, marker: str) -> str:
    """`conf/` and `sweeps/` ship inside the installed package; in a checkout they sit beside it."""
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here.parent / name):
        if (candidate / marker).exists():
            return str(candidate)
    raise NstexpError(f"{name} folder not found: reinstall nstexp (pip install .)")


CONFIG_DIR = _data_dir("conf", "config.yaml")
SWEEPS_DIR = _data_dir("sweeps", "seeds.yaml")


def sweep_names() -> list[str]:
    return sorted(p.stem for p in Path(SWEEPS_DIR).glob("*.yaml"))


def register_sweeps() -> None:
    """Make every `sweeps/<name>.yaml` the option `sweep=<name>`, wherever the command runs."""
    cs = ConfigStore.instance()
    for name in sweep_names():
        node = OmegaConf.load(Path(SWEEPS_DIR) / f"{name}.yaml")
        cs.store(group="sweep", name=name, node=node, package="_global_")


config_schema.register()
register_sweeps()
# Outcomes of the jobs this process ran (a single run, or a sweep under the basic launcher).
_statuses: list[str] = []


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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    planned = plan_job(cfg)
    if planned is not None:
        _statuses.append(run_jobs([planned[0]], planned[1])[0])


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
    spec = JobSpec(cfg, str(out_dir), name=_run_name(cfg, hc), group=_group(cfg, hc),
                   record={"overrides": resumable.job_key(hc.overrides.task)})
    return spec, stop_file


def run_jobs(specs: list[JobSpec], stop_file: Path | None) -> list[str]:
    """Jobs that share one batch (one job, except under the batched launcher); never raises, so
    a failure cannot take a sweep's other jobs or its report along. Returns their statuses."""
    try:
        summaries = run_batch(specs, stop_file=stop_file)
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


def _describe(exc: BaseException, override: str, base: DictConfig) -> str:
    """One line for a Hydra/OmegaConf composition error caused by `override`."""
    key = override.lstrip("+~").split("=", 1)[0]
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(base, parent_key) if parent_key else base
    if isinstance(parent, DictConfig) and leaf not in parent and _group_options(key) is None:
        where = parent_key or "the top level"
        return f"{override}: unknown key {key!r} (allowed in {where}: {', '.join(map(str, parent.keys()))})"
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    message = lines[0] if lines else type(cause).__name__
    if message.endswith(":") and len(lines) > 1:  # "In 'experiment/x': ... raised while composing config:"
        message = f"{message} {lines[1]}"
    if "not in struct" in message:
        message += " (prefix the override with + to add a new key)"
    return f"{override}: {message}"


def _group_options(group: str) -> list[str] | None:
    if group == "sweep":
        return sweep_names()
    if group.startswith("hydra"):
        return None  # launchers and sweepers come from plugins too; Hydra checks them
    folder = Path(CONFIG_DIR) / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _expand(overrides: list[str]) -> list[tuple[str, list[str]]]:
    """Each override with the concrete values it stands for (several for a sweep)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    out = []
    for text, o in zip(overrides, parsed):
        key = o.get_key_element()
        if o.is_sweep_override():
            values = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            values = [text]
        out.append((text, values))
    return out


def _check_group_options(expanded: list[tuple[str, list[str]]]) -> None:
    for _, values in expanded:
        for v in values:
            key, _, option = v.lstrip("+~").partition("=")
            options = _group_options(key)
            if options is not None and option not in options and option != "null":
                raise NstexpError(f"{v}: unknown option for {key} (allowed: {', '.join(options)})")


def preflight(overrides: list[str]) -> tuple[list[str], dict]:
    """Compose and validate the config of every job a command would run; raise NstexpError.

    Every combination of the swept values is checked, not each value alone: a value can be
    valid with one value of another key and invalid with another (random weights exist for
    vgg16, Caffe weights do not). Returns the keys that take several values (what a sweep
    varies) and the sweep file's grid (`hydra.sweeper.params`).
    """
    try:
        expanded = _expand(overrides)
    except Exception as exc:  # the override grammar itself
        raise NstexpError(f"cannot parse overrides: {str(exc).strip().splitlines()[0]}") from None
    _check_group_options(expanded)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        base_cfg = compose(config_name="config")
        # A sweep file's grid counts like command-line values, except for keys the command
        # line sets itself (Hydra lets those replace the swept values).
        sweep = [vals[0].split("=", 1)[1] for _, vals in expanded if vals[0].startswith("sweep=")]
        params: dict = {}
        if sweep:
            hydra_cfg = compose(config_name="config", overrides=[f"sweep={sweep[0]}"], return_hydra_config=True)
            given = {v.split("=", 1)[0].lstrip("+~") for _, vals in expanded for v in vals}
            swept_params = hydra_cfg.hydra.sweeper.params
            params = OmegaConf.to_container(swept_params) if swept_params is not None else {}
            grid = _expand([f"{k}={v}" for k, v in params.items() if k not in given])
            _check_group_options(grid)
            expanded += grid
        _check_batch_size(expanded)
        # Hydra's own settings (launcher, run and sweep dirs) are Hydra's to check.
        expanded = [(t, vals) for t, vals in expanded if not vals[0].lstrip("+~").startswith("hydra")]
        swept = [vals for _, vals in expanded if len(vals) > 1]
        for ovs in itertools.product(*(vals for _, vals in expanded)):
            ovs = list(ovs)
            try:
                cfg = compose(config_name="config", overrides=ovs)
            except Exception as exc:
                bad = next((o for o in ovs if o.split("=")[0].lstrip("+~") in str(exc)), " ".join(ovs))
                raise NstexpError(_describe(exc, bad, base_cfg)) from None
            try:
                validate(cfg)
            except NstexpError as exc:
                if not swept:
                    raise
                combination = " ".join(o for o in ovs if any(o in vals for vals in swept))
                raise NstexpError(f"{exc} (in the sweep's job {combination})") from None
    GlobalHydra.instance().clear()
    return [vals[0].lstrip("+~").split("=", 1)[0] for _, vals in expanded if len(vals) > 1], params


def compose_job(overrides: list[str]) -> DictConfig:
    """The config a job with these overrides runs, as Hydra composes it (without Hydra's own node)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def _check_batch_size(expanded: list[tuple[str, list[str]]]) -> None:
    """The batched launcher's own setting, in one line rather than Hydra's instantiation error."""
    for _, vals in expanded:
        for v in vals:
            key, _, value = v.lstrip("+~").partition("=")
            if key == "hydra.launcher.batch_size" and value != "null" and not (value.isdigit() and int(value) >= 1):
                raise NstexpError(f"hydra.launcher.batch_size={value} must be a whole number >= 1, "
                                  "or null (chosen from the memory)")


_INFO_FLAGS = {"-h", "--help", "--hydra-help", "--info", "-i", "-c", "--cfg", "--shell-completion", "-sc"}


def main() -> None:
    """Exit status: 0 every run completed; 1 a run failed or diverged (or a sweep's job never
    ran); 2 bad input, refused before anything ran; 130 interrupted (Ctrl-C, SIGTERM)."""
    args = sys.argv[1:]
    if args[:1] == ["compare"]:  # `nstexp compare <sweep dir>`
        from nstexp.compare import main as compare_main

        compare_main(args[1:])
        return
    if args[:1] == ["bench"]:  # `nstexp bench [--sizes ...]`
        from nstexp.bench import main as bench_main

        bench_main(args[1:])
        return
    if args[:1] == ["evaluate"]:  # `nstexp evaluate RESULT... --content C --style S`
        from nstexp.evaluation import main as evaluate_main

        evaluate_main(args[1:])
        return
    os.environ[PARENT_ENV] = str(os.getpid())
    if not any(a.split("=")[0] in _INFO_FLAGS for a in args):
        from hydra._internal.utils import get_args_parser

        parsed, _ = get_args_parser().parse_known_args(args)
        if parsed.config_name is None and parsed.config_path is None and parsed.config_dir is None:
            try:
                swept, params = preflight(parsed.overrides)
                os.environ[SWEPT_ENV] = ",".join(swept)
                if resumable.requested(parsed.overrides):
                    planned = resumable.plan(parsed.overrides, params)
                    if planned is not None:
                        sweep_dir, overrides = planned
                        resumable.check_configs(sweep_dir, compose_job)
                        print(f"resuming {sweep_dir}", file=sys.stderr)
                        # The sweep's own overrides, in its order: job numbers meet their folders.
                        flags = [a for a in args if a not in parsed.overrides]
                        sys.argv = [sys.argv[0], *flags, *overrides]
            except NstexpError as exc:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(2)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    _hydra_main()
    code = callbacks.sweep_outcome.get("exit_code")  # a sweep: decided by its jobs' summaries
    if code is None:
        code = 130 if "interrupted" in _statuses else 1 if any(s != "completed" for s in _statuses) else 0
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
