"""The `nstexp` command: Hydra composes the config, `runner.run` does the work.

Before Hydra starts, every override (each value of a sweep included) is composed and
validated once, so a typo fails in one line before any job runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nstexp import config as config_schema
from nstexp import resumable
from nstexp.errors import NstexpError
from nstexp.runner import run
from nstexp.tracking import sweep_group


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
_failures: list[str] = []
_interrupted: list[bool] = []


# Set by `main` for the jobs (also in launcher subprocesses): the keys a sweep varies.
SWEPT_ENV = "NSTEXP_SWEPT_KEYS"


def _run_name(hc) -> str:
    """A multirun job is named by its swept values, a single run by all its overrides."""
    swept = [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k]
    if hc.mode == RunMode.MULTIRUN and swept:
        values = dict(o.lstrip("+~").split("=", 1) for o in hc.overrides.task if "=" in o)
        return ",".join(f"{k}={values[k]}" for k in swept if k in values) or "default"
    return hc.job.override_dirname or "default"


def _group(cfg: DictConfig, hc) -> str | None:
    if hc.mode != RunMode.MULTIRUN:
        return cfg.wandb.group
    return sweep_group(cfg.wandb.group, hc.runtime.choices.get("sweep"), hc.sweep.dir)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    if cfg.resume and hc.mode == RunMode.MULTIRUN:
        if resumable.completed(out_dir):
            print(f"job {hc.job.num}: already completed, skipped", file=sys.stderr)
            return
        resumable.clear_attempt(out_dir)
    try:
        summary = run(cfg, hc.runtime.output_dir, name=_run_name(hc), group=_group(cfg, hc))
    except NstexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _failures.append(str(exc))
        return
    if summary["status"] == "interrupted":
        _interrupted.append(True)
        # Stop the whole sweep, not just this job.
        raise SystemExit(130)
    if summary["status"] != "completed":
        _failures.append(summary["status"])
    print(f"{summary['status']}: {hc.runtime.output_dir}/final.png", file=sys.stderr)


def _describe(exc: BaseException, override: str, base: DictConfig) -> str:
    """One line for a Hydra/OmegaConf composition error caused by `override`."""
    key = override.lstrip("+~").split("=", 1)[0]
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(base, parent_key) if parent_key else base
    if isinstance(parent, DictConfig) and leaf not in parent:
        where = parent_key or "the top level"
        return f"{override}: unknown key {key!r} (allowed in {where}: {', '.join(map(str, parent.keys()))})"
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    message = lines[0] if lines else type(cause).__name__
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


def preflight(overrides: list[str]) -> list[str]:
    """Compose and validate the config for every value of every override; raise NstexpError.

    Returns the keys that take several values (what a sweep varies).
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
        if sweep:
            hydra_cfg = compose(config_name="config", overrides=[f"sweep={sweep[0]}"], return_hydra_config=True)
            given = {v.split("=", 1)[0].lstrip("+~") for _, vals in expanded for v in vals}
            params = hydra_cfg.hydra.sweeper.params or {}
            grid = _expand([f"{k}={v}" for k, v in params.items() if k not in given])
            _check_group_options(grid)
            expanded += grid
        # Hydra's own settings (launcher, run and sweep dirs) are Hydra's to check.
        expanded = [(t, vals) for t, vals in expanded if not vals[0].lstrip("+~").startswith("hydra")]
        base = [vals[0] for _, vals in expanded]
        checks = [(base, "the command line")]
        for i, (_, values) in enumerate(expanded):
            for v in values[1:]:
                checks.append((base[:i] + [v] + base[i + 1 :], v))
        for ovs, label in checks:
            try:
                cfg = compose(config_name="config", overrides=ovs)
            except Exception as exc:
                bad = next((o for o in ovs if o.split("=")[0].lstrip("+~") in str(exc)), label)
                raise NstexpError(_describe(exc, bad, base_cfg)) from None
            config_schema.validate(cfg)
    GlobalHydra.instance().clear()
    return [vals[0].lstrip("+~").split("=", 1)[0] for _, vals in expanded if len(vals) > 1]


_INFO_FLAGS = {"-h", "--help", "--hydra-help", "--info", "-i", "-c", "--cfg", "--shell-completion", "-sc"}


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["compare"]:  # `nstexp compare <sweep dir>`
        from nstexp.compare import main as compare_main

        compare_main(args[1:])
        return
    if not any(a.split("=")[0] in _INFO_FLAGS for a in args):
        from hydra._internal.utils import get_args_parser

        parsed, _ = get_args_parser().parse_known_args(args)
        if parsed.config_name is None and parsed.config_path is None and parsed.config_dir is None:
            try:
                os.environ[SWEPT_ENV] = ",".join(preflight(parsed.overrides))
                if resumable.requested(parsed.overrides):
                    sweep_dir = resumable.sweep_dir_to_resume(parsed.overrides)
                    if sweep_dir is not None:
                        print(f"resuming {sweep_dir}", file=sys.stderr)
                        sys.argv.append(f"hydra.sweep.dir={sweep_dir}")
            except NstexpError as exc:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(2)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    _hydra_main()
    if _interrupted:
        sys.exit(130)
    if _failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
