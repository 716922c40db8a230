"""`hydra/sweeper=optuna`: a multi-objective search (Optuna) instead of a grid.

Hydra finds sweepers in the `hydra_plugins` package only; the work is done by
`nstexp.sweep.search_run.sweep`. The settings are named as in Hydra's own Optuna sweeper
(`params`, `n_trials`, `n_jobs`, `sampler`, `seed`), which pins an Optuna older than 3.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module outside
# sys.modules, where a dataclass cannot resolve string annotations.

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.nstexp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # The search space, in Hydra's Optuna syntax: key -> interval(a,b), tag(log,interval(a,b)), a,b,c
    params: Optional[Dict[str, str]] = None
    n_trials: int = 20
    # Trials launched at once (each runs one job per value of the every_trial keys).
    n_jobs: int = 2
    sampler: str = "tpe"  # tpe, nsga2 (both multi-objective) or random
    seed: Optional[int] = None
    # eval/ metrics, each optimized the way it ranks (nstexp.eval.rules): one or two.
    objectives: List[str] = field(default_factory=lambda: ["eval/ssim", "eval/style_sw"])
    # Keys whose values every trial runs (scored by each metric's mean over them), not searched.
    every_trial: List[str] = field(default_factory=lambda: ["pair"])


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="nstexp")


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from nstexp.sweep import search_run

        return search_run.sweep(self, arguments)
