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
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nstexp import config as config_schema
from nstexp.errors import NstexpError
from nstexp.runner import run


def config_dir() -> str:
    """`conf/` ships inside the installed package; in a source checkout it sits beside it."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise NstexpError("config folder not found: reinstall nstexp (pip install .)")


CONFIG_DIR = config_dir()
config_schema.register()
_failures: list[str] = []
_interrupted: list[bool] = []


def _run_name(hc) -> str:
    return hc.job.override_dirname or "default"


def _group(cfg: DictConfig, hc) -> str | None:
    if cfg.wandb.group:
        return cfg.wandb.group
    if hc.mode != RunMode.MULTIRUN:
        return None
    # One group per sweep: the sweep's name and its start time (from the sweep directory).
    sweep = hc.runtime.choices.get("sweep") or "multirun"
    stamp = "_".join(Path(hc.sweep.dir).parts[-2:])
    return f"{sweep}-{stamp}"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
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


def preflight(overrides: list[str]) -> None:
    """Compose and validate the config for every value of every override; raise NstexpError."""
    try:
        expanded = _expand(overrides)
    except Exception as exc:  # the override grammar itself
        raise NstexpError(f"cannot parse overrides: {str(exc).strip().splitlines()[0]}") from None

    for text, values in expanded:
        for v in values:
            key, _, option = v.lstrip("+~").partition("=")
            options = _group_options(key)
            if options is not None and option not in options and option != "null":
                raise NstexpError(f"{v}: unknown option for {key} (allowed: {', '.join(options)})")

    base = [vals[0] for _, vals in expanded]
    checks = [(base, "the command line")]
    for i, (text, values) in enumerate(expanded):
        for v in values[1:]:
            checks.append((base[:i] + [v] + base[i + 1 :], v))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        base_cfg = compose(config_name="config")
        for ovs, label in checks:
            try:
                cfg = compose(config_name="config", overrides=ovs)
            except Exception as exc:
                bad = next((o for o in ovs if o.split("=")[0].lstrip("+~") in str(exc)), label)
                raise NstexpError(_describe(exc, bad, base_cfg)) from None
            config_schema.validate(cfg)
    GlobalHydra.instance().clear()


_INFO_FLAGS = {"-h", "--help", "--hydra-help", "--info", "-i", "-c", "--cfg", "--shell-completion", "-sc"}


def main() -> None:
    args = sys.argv[1:]
    if not any(a.split("=")[0] in _INFO_FLAGS for a in args):
        from hydra._internal.utils import get_args_parser

        parsed, _ = get_args_parser().parse_known_args(args)
        if parsed.config_name is None and parsed.config_path is None and parsed.config_dir is None:
            try:
                preflight(parsed.overrides)
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
