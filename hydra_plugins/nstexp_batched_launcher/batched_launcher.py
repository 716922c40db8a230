"""`hydra/launcher=batched`: a sweep's jobs run in batches that share the network.

Hydra finds launchers in the `hydra_plugins` package only; the work is done by
`nstexp.sweep.batching.launch`.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module outside
# sys.modules, where a dataclass cannot resolve string annotations.

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.nstexp_batched_launcher.batched_launcher.BatchedLauncher"
    # Jobs per batch; None: on a GPU as many as the memory estimate fits (at most 16), on a CPU 1.
    batch_size: Optional[int] = None


ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="nstexp")


class BatchedLauncher(Launcher):
    def __init__(self, batch_size: Optional[int] = None, **kwargs: Any) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"hydra.launcher.batch_size={batch_size} must be >= 1 (or null: from the memory)")
        self.batch_size = batch_size
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from nstexp.sweep import batching

        return batching.launch(self, job_overrides, initial_job_idx)
