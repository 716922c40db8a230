"""Composing and checking a command's configs before anything runs.

Every override (each value of a sweep included) is composed and validated once, so a typo
fails in one line before any job runs. Importing this module registers the config schema and
makes every `sweeps/<name>.yaml` the option `sweep=<name>`.
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from nstexp import config as config_schema
from nstexp.config import CONFIG_DIR, SWEEPS_DIR
from nstexp.errors import NstexpError
from nstexp.validation import validate


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


def _describe(exc: BaseException, override: str, base: DictConfig) -> str:
    """One line for a Hydra/OmegaConf composition error caused by `override`."""
    key = override.lstrip("+~").split("=", 1)[0]
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(base, parent_key) if parent_key else base
    if isinstance(parent, DictConfig) and leaf not in parent and group_options(key) is None:
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


def group_options(group: str) -> list[str] | None:
    if group == "sweep":
        return sweep_names()
    if group.startswith("hydra"):
        return None  # launchers and sweepers come from plugins too; Hydra checks them
    folder = Path(CONFIG_DIR) / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _expand(overrides: list[str]) -> list[tuple[str, list[str]]]:
    """Each override with the concrete values it stands for (several for a sweep; a search's
    `interval(a,b)`, which Hydra cannot enumerate, stands for its two ends)."""
    from hydra.core.override_parser.types import IntervalSweep

    parsed = OverridesParser.create().parse_overrides(overrides)
    out = []
    for text, o in zip(overrides, parsed):
        key = o.get_key_element()
        if isinstance(o.value(), IntervalSweep):
            values = [f"{key}={v}" for v in (o.value().start, o.value().end)]
        elif o.is_sweep_override():
            values = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            values = [text]
        out.append((text, values))
    return out


def _check_group_options(expanded: list[tuple[str, list[str]]]) -> None:
    for _, values in expanded:
        for v in values:
            key, _, option = v.lstrip("+~").partition("=")
            options = group_options(key)
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
        compose_one = grid_composer()
        for ovs in itertools.product(*(vals for _, vals in expanded)):
            ovs = list(ovs)
            try:
                cfg = compose_one(ovs)
            except Exception as exc:
                bad = next((o for o in ovs if o.split("=")[0].lstrip("+~") in str(exc)), " ".join(ovs))
                # The default config, composed only now: it names the keys a bad one could have been.
                raise NstexpError(_describe(exc, bad, compose(config_name="config"))) from None
            try:
                validate(cfg)
            except NstexpError as exc:
                if not swept:
                    raise
                combination = " ".join(o for o in ovs if any(o in vals for vals in swept))
                raise NstexpError(f"{exc} (in the sweep's job {combination})") from None
    GlobalHydra.instance().clear()
    return [vals[0].lstrip("+~").split("=", 1)[0] for _, vals in expanded if len(vals) > 1], params


# The configs of the choices of config groups composed in this process, latest last (the package's
# own conf/ and sweeps/, which do not change while it runs): see grid_composer.
_BASES: OrderedDict[tuple[str, ...], DictConfig | ConfigCompositionException] = OrderedDict()
_MAX_BASES = 64


def grid_composer():
    """compose(overrides) for the many combinations of a grid, as Hydra composes each, in a fraction
    of the time: Hydra builds the defaults list (the slow part) from the config-group choices alone,
    then sets the values on the result; so the configs are built once per choice of groups (and
    kept for the process), and each combination's values are set on a copy the way Hydra sets
    them. Call inside initialize_config_dir."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    loader = GlobalHydra.instance().config_loader()
    group_exists = getattr(getattr(loader, "repository", None), "group_exists", None)
    parser = OverridesParser.create()
    bases = _BASES

    def compose_one(overrides: list[str]) -> DictConfig:
        if group_exists is None:  # not the loader this was written against: compose each in full
            return compose(config_name="config", overrides=overrides)
        parsed = parser.parse_overrides(overrides)
        # As Hydra's defaults list sorts them: a dict value is a value even for a group's key.
        is_group = [group_exists(o.key_or_group) and not isinstance(o.value(), dict) for o in parsed]
        groups = tuple(o.input_line for o, g in zip(parsed, is_group) if g)
        if groups not in bases:
            try:
                bases[groups] = compose(config_name="config", overrides=list(groups))
            except ConfigCompositionException as exc:
                bases[groups] = exc
            while len(bases) > _MAX_BASES:
                bases.popitem(last=False)
        bases.move_to_end(groups)
        base = bases[groups]
        if isinstance(base, Exception):
            raise base
        cfg = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config([o for o, g in zip(parsed, is_group) if not g], cfg)
        return cfg

    return compose_one


def compose_job(overrides: list[str]) -> DictConfig:
    """The config a job with these overrides runs, as Hydra composes it (without Hydra's own node)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def hydra_node(overrides: list[str]) -> DictConfig:
    """Hydra's own node (launcher, sweeper, sweep dir) of the command with these overrides (only
    Hydra's and `sweep=` count: a swept value cannot be composed)."""
    ours = [o for o in overrides if o.lstrip("+~").startswith(("hydra.", "hydra/", "sweep="))]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=ours, return_hydra_config=True).hydra
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
