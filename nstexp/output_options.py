"""The schema's sections for what a run reports besides its image: the yardstick metrics (`eval`)
and its W&B run (`wandb`). nstexp.config includes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class EvalConfig:
    # The yardstick metrics (nstexp/eval/metrics.py), at the end of every run and during it.
    enabled: bool = True
    # Every N steps; None: at every snapshot (snapshot_every); 0: only at the end.
    every: Optional[int] = None
    # Longest side of the reference resolution every metric is computed at, whatever `size`.
    size: int = 256


@dataclass
class WandbConfig:
    mode: str = "auto"
    project: str = "nstexp"
    entity: Optional[str] = None
    # None: one group per multirun sweep; a single run has no group.
    group: Optional[str] = None
    # None: made from the command-line overrides.
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)
