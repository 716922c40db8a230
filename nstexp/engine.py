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

from nstexp.lbfgs import BatchedLBFGS
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


def uses_batched_lbfgs(cfg) -> bool:
    """L-BFGS with one iteration per step and no line search runs on nstexp.lbfgs: per sample,
    without host synchronisation. Line searches and several iterations per step use torch's."""
    return cfg.name == "lbfgs" and cfg.max_iter == 1 and cfg.line_search == "none"


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
    """Make torch's L-BFGS record of its last step (direction d times length t) the step actually taken.

    L-BFGS builds its curvature pairs from s = d * t. Clamping moves the image elsewhere;
    left uncorrected, the pairs are wrong and the iterates oscillate and degrade. With one
    iteration per step the correction is exact: s becomes the clamped displacement.
    (nstexp.lbfgs takes s from the positions themselves, so it needs no correction.)
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


def optimize(
    image: torch.Tensor,
    objective: Callable[[torch.Tensor], LossTerms],
    optimizer_cfg,
    steps: int,
    clamp: str = "every_step",
    on_step: Callable[[StepEvent], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    optimizer_state: dict | None = None,
    check_every: int = 1,
) -> Result:
    """Optimize the pixels of `image` (B, 3, H, W) for `steps` optimizer steps.

    With `optimizer_cfg.ema` > 0 the images reported (events, result) are the running average
    of the iterates, while the losses in the events stay those of the iterates the optimizer
    evaluates (measuring the average too would cost a second evaluation per step); the result's
    losses are measured on the average itself.

    The losses stay on the device: they are read, and events emitted, every `check_every` steps
    (a GPU then never waits for the host in between). A non-finite loss is caught there, and the
    result is the last image before it.
    """
    t0 = time.perf_counter()
    x = image.detach().clone().contiguous().requires_grad_(True)
    batched = uses_batched_lbfgs(optimizer_cfg)
    if batched:
        optimizer = BatchedLBFGS(x, optimizer_cfg.lr, optimizer_cfg.history_size)
    else:
        optimizer = build_optimizer([x], optimizer_cfg)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
    decay = float(getattr(optimizer_cfg, "ema", 0.0) or 0.0)
    average = IterateAverage(x, decay) if decay else None
    evals = 0
    first: dict = {}  # losses of the first evaluation in the current step
    # Per sample: the first loss, when the optimizer works on normalized losses.
    scale: dict = {}
    normalize = bool(getattr(optimizer_cfg, "normalize_loss", False))

    def evaluate() -> torch.Tensor:
        """Loss and gradient at x; a sample whose loss is not finite gets a zero gradient (its
        optimizer then stands still) and is caught at the next check."""
        nonlocal evals
        x.grad = None
        terms = objective(x)
        evals += 1
        if "terms" not in first:
            first["terms"] = _detach(terms)
        total = terms.total  # (B,): samples are independent, their gradients do not mix
        finite = torch.isfinite(total)
        if normalize:
            # Each sample's optimizer sees one function: its loss divided by its first value.
            first_value = torch.where(finite, total.detach().abs(), 1.0).clamp(min=1e-12)
            total = total / scale.setdefault("value", first_value)
        loss = torch.where(finite, total, 0.0).sum()
        loss.backward()
        x.grad = torch.where(finite.view(-1, *[1] * (x.dim() - 1)), x.grad, 0.0)
        return loss.detach()

    def shown() -> torch.Tensor:
        """The image to report for the current iterate: itself, or the running average."""
        if average is None:
            return x.detach().clone()
        average.update(x)
        return average.get()

    # Steps whose losses are known to the device but not yet read: (step, evals, time, image, terms).
    unread: list[tuple] = []
    last_good, last_terms, good_step, measured_itself = x.detach().clone(), None, 0, False

    def read() -> bool:
        """Read the unread losses (one synchronisation) and emit their events; False at the first
        non-finite one."""
        nonlocal last_good, last_terms, good_step, measured_itself
        if not unread:
            return True
        ok = torch.stack([torch.isfinite(u[4].total).all() for u in unread]).tolist()
        for (step, evals_at, t, img, terms), fine in zip(unread, ok):
            if not fine:
                unread.clear()
                return False
            last_good, last_terms, good_step = img, terms, step
            measured_itself = average is None  # else these are the iterate's losses, not the average's
            if on_step is not None:
                on_step(StepEvent(step, evals_at, t, img, terms))
        unread.clear()
        return True

    # (step, evals, time, image to report) of the newest iterate, waiting for its losses.
    pending = (0, 0, 0.0, x.detach().clone())
    status = "completed"
    for step in range(1, steps + 1):
        if should_stop():
            status = "interrupted"
            break
        first.clear()
        before = x.detach().clone() if clamp == "every_step" and not batched else None
        if batched:
            evaluate()
            optimizer.step(x.grad)
        else:
            optimizer.step(evaluate)
        # The step's first evaluation was of the image the previous step left.
        unread.append((*pending, first["terms"]))
        if clamp == "every_step":
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            if before is not None:
                _tell_lbfgs_the_clamped_step(optimizer, x, before)
        pending = (step, evals, time.perf_counter() - t0, shown())
        if step % check_every == 0 and not read():
            status = "diverged"
            break
    if status != "diverged" and not read():
        status = "diverged"

    def measure(img: torch.Tensor) -> LossTerms:
        nonlocal evals
        with torch.no_grad():
            terms = _detach(objective(img))
        evals += 1
        return terms

    if status != "diverged":
        # The image the last step left has not been evaluated yet: one forward pass, no gradient.
        img = pending[3].clamp(0.0, 1.0)
        terms = measure(img)
        unread.append((*pending[:3], img, terms))
        if read():
            measured_itself = True
        else:
            status = "diverged"
    final = last_good.clamp(0.0, 1.0)
    if last_terms is not None and not (measured_itself and torch.equal(final, last_good)):
        # With clamp=at_end the last good image may lie outside [0, 1], and with an average the
        # losses so far were the iterates': report the losses of the image that is returned.
        last_terms = measure(final)
    state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Adam) else None
    return Result(status, final, last_terms, good_step, evals, state)
