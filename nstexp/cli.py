"""The `nstexp` command: Hydra composes the config, `sweep.jobs` plans and runs each job.

`nstexp compare`, `nstexp bench`, `nstexp evaluate` and `nstexp leaderboard` are subcommands dispatched here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nstexp import composition
from nstexp.config import CONFIG_DIR
from nstexp.errors import NstexpError


def _register_plugins() -> None:
    """hydra/launcher=batched and hydra/sweeper=optuna. Hydra looks for plugins in the
    `hydra_plugins` package, but cannot list it in an editable install: register them by hand.
    (The sweeper's module imports no Optuna: a search does, when it starts.)"""
    from hydra.core.plugins import Plugins

    from hydra_plugins.nstexp_batched_launcher.batched_launcher import BatchedLauncher
    from hydra_plugins.nstexp_optuna_sweeper.optuna_sweeper import OptunaSweeper

    Plugins.instance().register(BatchedLauncher)
    Plugins.instance().register(OptunaSweeper)


_register_plugins()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from nstexp.sweep import jobs

    planned = jobs.plan_job(cfg)
    if planned is not None:
        jobs.statuses.append(jobs.run_jobs([planned[0]], planned[1])[0])


def _help() -> str:
    """`nstexp --help`: the commands, every config group's options and the default config.

    Hydra's own help lists the same groups, but composes the config once per group option
    (seconds); --hydra-help still shows Hydra's."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    groups = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))
    lines = [f"  {g}: {', '.join(composition.group_options(g))}" for g in groups]
    lines.append(f"  sweep: {', '.join(composition.sweep_names())}  (a multirun: nstexp -m sweep=<name>)")
    ours = sorted(p.stem for p in (Path(CONFIG_DIR) / "hydra" / "launcher").glob("*.yaml"))
    launchers = ", ".join(["basic", "batched", *ours, "joblib", "submitit_local", "submitit_slurm"])
    lines.append(f"  hydra/launcher: {launchers}  (see docs/sweeps.md)")
    lines.append("  hydra/sweeper: basic, optuna  (optuna: a search, not a grid; see docs/sweeps.md)")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = OmegaConf.to_yaml(compose(config_name="config"))
    GlobalHydra.instance().clear()
    return "\n".join([
        "nstexp: neural style transfer (Gatys et al.), every method a config switch.",
        "",
        "  nstexp [group=option ...] [key=value ...]      one run",
        "  nstexp -m key=a,b [sweep=<name>] ...           a sweep: one job per combination",
        "  nstexp compare SWEEP_DIR | evaluate ... | bench ... | leaderboard ...   (each with --help)",
        "",
        "Config groups (group=option):", *lines,
        "",
        "Config (override anything: key=value; --cfg job prints a command's composed config):",
        *("  " + line for line in config.rstrip().splitlines()),
        "",
        "Exit status: 0 completed, 1 a run failed, 2 bad input, 130 interrupted. "
        "Reference: docs/config.md; Hydra's own help: --hydra-help.",
    ])


_INFO_FLAGS = {"-h", "--help", "--hydra-help", "--info", "-i", "-c", "--cfg", "--shell-completion", "-sc"}


def main() -> None:
    """Exit status: 0 every run completed; 1 a run failed or diverged (or a sweep's job never
    ran); 2 bad input, refused before anything ran; 130 interrupted (Ctrl-C, SIGTERM)."""
    args = sys.argv[1:]
    if args[:1] == ["compare"]:  # `nstexp compare <sweep dir>`
        from nstexp.sweep.compare import main as compare_main

        compare_main(args[1:])
        return
    if args[:1] == ["bench"]:  # `nstexp bench [--sizes ...]`
        from nstexp.bench.speed import main as bench_main

        bench_main(args[1:])
        return
    if args[:1] == ["leaderboard"]:  # `nstexp leaderboard [--methods ...] [--pairs ...]`
        from nstexp.sweep.leaderboard import main as leaderboard_main

        leaderboard_main(args[1:])
        return
    if args[:1] == ["evaluate"]:  # `nstexp evaluate RESULT... --content C --style S`
        from nstexp.eval.evaluation import main as evaluate_main

        evaluate_main(args[1:])
        return
    if args in (["--help"], ["-h"]):
        print(_help())
        return
    # Here, not at the top: --help needs none of them (they bring PIL and numpy).
    from nstexp.sweep import callbacks, jobs, resumable, search

    os.environ[jobs.PARENT_ENV] = str(os.getpid())
    if not any(a.split("=")[0] in _INFO_FLAGS for a in args):
        from hydra._internal.utils import get_args_parser

        parsed, _ = get_args_parser().parse_known_args(args)
        if parsed.config_name is None and parsed.config_path is None and parsed.config_dir is None:
            try:
                swept, params = composition.preflight(parsed.overrides)
                os.environ[jobs.SWEPT_ENV] = ",".join(swept)
                # A single run resumes on its own (nstexp.run.resume, nstexp.run.video); a sweep through its jobs.
                wanted = resumable.requested(parsed.overrides) and (parsed.multirun or params)
                if wanted and search.is_search(composition.hydra_node(parsed.overrides)):
                    search.check_resume(parsed.overrides)  # the search's own journal says what is left
                elif wanted:
                    planned = resumable.plan(parsed.overrides, params)
                    if planned is not None:
                        sweep_dir, overrides = planned
                        resumable.check_configs(sweep_dir, composition.compose_job)
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
        code = 130 if "interrupted" in jobs.statuses else 1 if any(s != "completed" for s in jobs.statuses) else 0
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
