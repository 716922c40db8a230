"""The optimization loop. It knows nothing of files or trackers: it reports step events.

Step k's event carries the image after k updates and its losses; step 0 is the initial
image. Losses come from the optimizer's own evaluations where they match the current
image (every L-BFGS or Adam step starts by evaluating it), so logging costs no extra
forward pass except one at the very end, which `Result.evals` counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import time

import torch

from nstexp.objective import LossTerms


@dataclass
class StepEvent:
    step: int
    evals: int  # forward/backward evaluations spent to produce `image`
    time_s: float  # seconds from the start of `optimize` until `image` existed
    image: torch.Tensor  # (B, 3, H, W), detached
    terms: LossTerms  # of `image`, detached


@dataclass
class Result:
    status: str  # completed | interrupted | diverged
    image: torch.Tensor  # the last image whose losses were finite, clamped to [0, 1]
    terms: LossTerms | None  # of `image` itself
    steps: int
    evals: int  # every evaluation, the final measurement included
    optimizer_state: dict | None = None  # Adam's, to warm-start the next coarse-to-fine level


def build_optimizer(params: list[torch.Tensor], cfg) -> torch.optim.Optimizer:
    if cfg.name == "lbfgs":
        return torch.optim.LBFGS(
            params,
            lr=cfg.lr,
            max_iter=cfg.max_iter,
            history_size=cfg.history_size,
            line_search_fn=None if cfg.line_search == "none" else cfg.line_search,
            # Never stop early on small gradients/changes: the step budget decides.
            tolerance_grad=0.0,
            tolerance_change=0.0,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def _tell_lbfgs_the_clamped_step(optimizer: torch.optim.Optimizer, x: torch.Tensor, before: torch.Tensor) -> None:
    """Make L-BFGS's record of its last step (direction d times length t) the step actually taken.

    L-BFGS builds its curvature pairs from s = d * t. Clamping moves the image elsewhere;
    left uncorrected, the pairs are wrong and the iterates oscillate and degrade. With one
    iteration per step the correction is exact: s becomes the clamped displacement.
    """
    if not isinstance(optimizer, torch.optim.LBFGS) or optimizer.defaults["max_iter"] != 1:
        return
    state = optimizer.state[x]
    t = state.get("t")
    if state.get("d") is not None and t:
        state["d"] = (x.detach() - before).flatten() / t


class IterateAverage:
    """Bias-corrected exponential moving average of the iterates (Polyak-style averaging, as
    crowsonkb/style-transfer-pytorch does), corrected like Adam's moments: the average of
    x_0 … x_k with weights (1 - d) d^(k - i), divided by their sum 1 - d^(k + 1)."""

    def __init__(self, x: torch.Tensor, decay: float):
        self.decay, self.value, self.weight = decay, torch.zeros_like(x), 0.0
        self.update(x)

    def update(self, x: torch.Tensor) -> None:
        self.value.mul_(self.decay).add_(x.detach(), alpha=1 - self.decay)
        self.weight = self.weight * self.decay + (1 - self.decay)

    def get(self) -> torch.Tensor:
        return self.value / self.weight


def _detach(terms: LossTerms) -> LossTerms:
    d = lambda t: t.detach()  # noqa: E731
    return LossTerms(
        d(terms.total), d(terms.content), d(terms.style), d(terms.tv),
        {k: d(v) for k, v in terms.content_layers.items()},
        {k: d(v) for k, v in terms.style_layers.items()},
    )


def _finite(terms: LossTerms) -> bool:
    return bool(torch.isfinite(terms.total).all())


def optimize(
    image: torch.Tensor,
    objective: Callable[[torch.Tensor], LossTerms],
    optimizer_cfg,
    steps: int,
    clamp: str = "every_step",
    on_step: Callable[[StepEvent], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    optimizer_state: dict | None = None,
) -> Result:
    """Optimize the pixels of `image` (B, 3, H, W) for `steps` optimizer steps.

    With `optimizer_cfg.ema` > 0 the images reported (events, result) are the running average
    of the iterates, while the losses in the events stay those of the iterates the optimizer
    evaluates (measuring the average too would cost a second evaluation per step); the result's
    losses are measured on the average itself.
    """
    t0 = time.perf_counter()
    x = image.detach().clone().requires_grad_(True)
    optimizer = build_optimizer([x], optimizer_cfg)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    decay = float(getattr(optimizer_cfg, "ema", 0.0) or 0.0)
    average = IterateAverage(x, decay) if decay else None
    evals = 0
    first: dict = {}  # losses of the first evaluation in the current step
    scale: dict = {}  # the first loss, when the optimizer works on a normalized loss
    normalize = bool(getattr(optimizer_cfg, "normalize_loss", False))

    def closure():
        nonlocal evals
        optimizer.zero_grad(set_to_none=True)
        terms = objective(x)
        evals += 1
        if "terms" not in first:
            first["terms"] = _detach(terms)
        loss = terms.total.sum()  # samples are independent: their gradients do not mix
        if normalize and torch.isfinite(loss):
            # The optimizer sees one function: the loss divided by its first value.
            loss = loss / scale.setdefault("value", loss.detach().abs().clamp(min=1e-12))
        if torch.isfinite(loss):
            loss.backward()
        else:
            # Zero gradient makes the optimizer stand still; the loop sees the bad loss.
            x.grad = torch.zeros_like(x)
        return loss

    def emit(pending: tuple, img: torch.Tensor, terms: LossTerms) -> None:
        if on_step is not None:
            step, _, evals_at, t, _ = pending
            on_step(StepEvent(step, evals_at, t, img, terms))

    def shown() -> torch.Tensor:
        """The image to report for the current iterate: itself, or the running average."""
        if average is None:
            return x.detach().clone()
        average.update(x)
        return average.get()

    last_good, last_terms, good_step, measured_itself = x.detach().clone(), None, 0, False
    # (step, iterate, evals, time, image to report) of the newest iterate, waiting for its losses.
    pending = (0, x.detach().clone(), 0, 0.0, x.detach().clone())
    status = "completed"
    for step in range(1, steps + 1):
        if should_stop():
            status = "interrupted"
            break
        first.clear()
        optimizer.step(closure)
        # The step's first evaluation was of the image the previous step left.
        terms = first["terms"]
        if not _finite(terms):
            status = "diverged"
            break
        last_good, last_terms, good_step = pending[4], terms, pending[0]
        measured_itself = average is None  # else these are the iterate's losses, not the average's
        emit(pending, pending[4], terms)
        if clamp == "every_step":
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            _tell_lbfgs_the_clamped_step(optimizer, x, before=pending[1])
        pending = (step, x.detach().clone(), evals, time.perf_counter() - t0, shown())

    def measure(img: torch.Tensor) -> LossTerms:
        nonlocal evals
        with torch.no_grad():
            terms = _detach(objective(img))
        evals += 1
        return terms

    if status != "diverged":
        # The image the last step left has not been evaluated yet.
        img = pending[4].clamp(0.0, 1.0)
        terms = measure(img)
        if _finite(terms):
            last_good, last_terms, good_step = img, terms, pending[0]
            measured_itself = True
            emit(pending, img, terms)
        else:
            status = "diverged"
    final = last_good.clamp(0.0, 1.0)
    if last_terms is not None and not (measured_itself and torch.equal(final, last_good)):
        # With clamp=at_end the last good image may lie outside [0, 1], and with an average the
        # losses so far were the iterates': report the losses of the image that is returned.
        last_terms = measure(final)
    state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Adam) else None
    return Result(status, final, last_terms, good_step, evals, state)
