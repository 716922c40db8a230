"""What the optimization loop reports (a step's event, its result) and what it can be continued
from (its state between two steps), apart from the loop itself (nstexp.optim.engine)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nstexp.losses.terms import LossTerms


@dataclass
class StepEvent:
    step: int
    evals: int  # forward/backward evaluations spent to produce `image`
    time_s: float  # seconds from the start of `optimize` until `image` existed
    image: torch.Tensor  # (B, 3, H, W), detached
    terms: LossTerms  # of `image`, detached
    # Per sample: still optimizing. A sample that diverged keeps its place in the batch, but
    # its image and losses from then on mean nothing. Empty: every sample.
    active: tuple[bool, ...] = ()
    # Per sample: the batched L-BFGS's counts so far, [pairs accepted, rejected, steps taken back]; None otherwise.
    pairs: list[list[int]] | None = None


@dataclass
class Result:
    statuses: list[str]  # per sample: completed | interrupted | diverged
    image: torch.Tensor  # (B, 3, H, W): each sample's last image whose losses were finite, in [0, 1]
    sample_steps: list[int]  # per sample: the step that made its image
    evals: int  # every evaluation (of the whole batch), the final measurement included
    optimizer_state: dict | None = None  # Adam's or RMSprop's, to warm-start the next coarse-to-fine level
    # Per sample: the losses of its image, (1,) each; None for a sample without a finite one.
    sample_terms: list[LossTerms | None] | None = None
    # Per sample: the evaluations and seconds it took part in, until it stopped: what it
    # would report alone (a sample that diverged early does not count the others' steps).
    sample_evals: list[int] | None = None
    sample_time_s: list[float] | None = None
    # Per sample: the batched L-BFGS's counts, [pairs accepted, rejected, steps taken back]; None otherwise.
    sample_pairs: list[list[int]] | None = None

    @property
    def terms(self) -> LossTerms | None:
        """The losses of `image` itself, every sample's; None if one sample has none."""
        if self.sample_terms is None or any(t is None for t in self.sample_terms):
            return None
        return LossTerms.cat(self.sample_terms)

    @property
    def status(self) -> str:
        """The run's status: the first sample's (a single run has one)."""
        return self.statuses[0]

    @property
    def steps(self) -> int:
        return self.sample_steps[0]


def detach(terms: LossTerms) -> LossTerms:
    d = lambda t: t.detach()  # noqa: E731
    return LossTerms(
        d(terms.total), d(terms.content), d(terms.style), d(terms.tv),
        {k: d(v) for k, v in terms.content_layers.items()},
        {k: d(v) for k, v in terms.style_layers.items()}, d(terms.laplacian), d(terms.temporal),
    )


@dataclass
class EngineState:
    """Everything the loop needs to go on after `step` steps exactly as if it had not stopped (a
    single sample, still optimizing): `optimize(..., resume=state)` continues from it."""

    step: int  # steps taken
    evals: int
    time_s: float  # seconds of optimization so far
    variable: torch.Tensor  # what the optimizer moves (pixels, or a pyramid's bands), after `step` steps
    optimizer: dict  # the optimizer's state_dict
    scale: torch.Tensor | None  # with optimizer.normalize_loss: the first losses the optimizer divides by
    average: tuple[torch.Tensor, float] | None  # with optimizer.ema: the running average and its weight
    good: tuple  # (image, losses, step) of the last step whose losses were finite
    measured_itself: bool  # the good losses are the good image's own (not an iterate's)
    pending: tuple  # (step, evals, time, image, pair counts) of the newest iterate, its losses not yet known
    pairs: list  # the batched L-BFGS's counts as last read
