import contextlib
import io
import logging
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Under `-n N`, each of the N workers gets its share of the cores for torch's threads (and so do
# the commands the tests start): N processes of all-core thread pools on the same cores run the
# suite about a third slower. Set before torch is imported; OMP_NUM_THREADS given wins.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
# Small enough for a 2-core CPU: every CLI run in the suite uses these. The yardstick metrics are
# off (tests of them turn them on, at eval.size=64).
TINY = ["size=48", "steps=2", "progress=false", "snapshot_every=1", "eval.enabled=false", "eval.size=64"]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B offline, with every W&B folder inside the test's temp dir."""
    env = {
        "WANDB_DIR": str(tmp_path / "wandb_dir"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_SILENT": "true",
        "NETRC": str(tmp_path / "no_netrc"),
        # The suite never downloads: an empty torch hub cache makes that explicit.
        "TORCH_HOME": str(tmp_path / "torch_home"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    return env


def run_cli(args, cwd, env=None, timeout=None, module=True, process=False):
    """`nstexp ARGS` run from `cwd` with `env` added -> CompletedProcess (returncode, stdout, stderr).

    In this process, through the same entry point (`nstexp.cli.main`) the command calls, unless
    `process`: a test process has imported torch and wandb already, which a new process would take
    seconds to do. A subprocess for what only one shows: signals, the installed console script
    (module=False), Hydra's launchers that start processes, code planted through sitecustomize.
    """
    if process or not module:
        cmd = [sys.executable, "-m", "nstexp", *args] if module else [
            os.path.join(os.path.dirname(sys.executable), "nstexp"), *args]
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    return _run_in_process(list(args), cwd, env or {})


def _run_in_process(args, cwd, env):
    """main() as the command runs it, with everything it changes put back afterwards: the working
    directory, sys.argv, the environment, Hydra's global state, the logging handlers Hydra sets up,
    and the statuses the command reads its exit status from."""
    from hydra.core.global_hydra import GlobalHydra

    from nstexp import cli
    from nstexp.sweep import callbacks, jobs

    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    loggers = [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                       if isinstance(v, logging.Logger)]
    saved_logging = {lg: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers}
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.chdir(cwd)
        os.environ.update(env)
        sys.argv = ["nstexp", *args]
        jobs.statuses.clear()
        callbacks.sweep_outcome.clear()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        GlobalHydra.instance().clear()
        for lg in [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                           if isinstance(v, logging.Logger)]:
            handlers, level, propagate, disabled = saved_logging.get(lg, ([], logging.NOTSET, True, False))
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.handlers[:], lg.level, lg.propagate, lg.disabled = handlers, level, propagate, disabled
    return subprocess.CompletedProcess(["nstexp", *args], code, out.getvalue(), err.getvalue())


# In-process runs (`runner.run`), pinned to the CPU: reproducibility and the numbers tests compare are the CPU's.
# fp32: the CPU that runs the tests may or may not compute bf16 natively (precision=auto).
RUN_TINY = ["size=48", "steps=2", "progress=false", "snapshot_every=0", "wandb.mode=disabled", "device=cpu",
            "precision=fp32", "eval.enabled=false", "eval.size=64"]


def refused_in_one_line(r) -> str:
    """The one line a refused command printed (exit status 2, no traceback): `error: ...`."""
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: "), line
    return line


_composer: list = []  # one per test process: it keeps the configs of the config-group choices it has built


def compose_cfg(overrides):
    """The config `nstexp OVERRIDES` composes, as Hydra's compose makes it, in a fraction of its time
    (composition.grid_composer, as the command's own check of a sweep: the config groups' part is
    built once per choice of groups and test process, the values set on a copy as Hydra sets them;
    tests/test_sweeps.py holds the two equal)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nstexp import composition

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=composition.CONFIG_DIR, version_base="1.3"):
        if not _composer:
            _composer.append(composition.grid_composer())
        return _composer[0](list(overrides))


def tiny_cfg(*overrides):
    """The composed config of a tiny in-process run with `overrides` (see compose_cfg)."""
    return compose_cfg([*RUN_TINY, *overrides])


def sections(content_layers, style_layers, content_weight=1.0, style_weight=1e3, tv_weight=0.0,
             content=None, style=None, tv=None):
    """Objective's config sections (layers, content, style, tv) for a test: the schema's defaults
    with these layer weights, loss weights and options (e.g. style={"loss": "w2"})."""
    from nstexp.config import ContentConfig, LayersConfig, StyleConfig, TVConfig

    return (LayersConfig(content=dict(content_layers), style=dict(style_layers)),
            ContentConfig(weight=content_weight, **(content or {})),
            StyleConfig(weight=style_weight, **(style or {})),
            TVConfig(weight=tv_weight, **(tv or {})))
