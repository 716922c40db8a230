"""The optimization loop. It knows nothing of files or trackers: it reports step events.

Step k's event carries the image after k updates and its losses; step 0 is the initial
image. Losses come from the optimizer's own evaluations where they match the current
image (every L-BFGS or Adam step starts by evaluating it), so logging costs no extra
forward pass except one at the very end, which `Result.evals` counts. Between two steps
the loop can hand out its state (`checkpoint`), and continue from one (`resume`).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from nstexp.losses.terms import LossTerms
from nstexp.optim import optimizers, parameterization
from nstexp.optim.events import EngineState, Result, StepEvent, detach


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
    param=None,
    resume: EngineState | None = None,
    checkpoint: Callable[[Callable[[], EngineState], bool], None] | None = None,
) -> Result:
    """Optimize `image` (B, 3, H, W) for `steps` optimizer steps: its pixels, or the variable of
    `param` (nstexp.optim.parameterization, made from `image`; the objective sees the image).

    The B samples are independent problems (the objective's losses are per sample): each may
    have its own optimizer settings (`optimizer_cfg` a list of B configs; the name, history size,
    line search, EMA and loss normalization are shared) and stops alone when its loss stops
    being finite, while the others go on. A line search or several L-BFGS iterations per step
    (torch's L-BFGS) need B = 1.

    With `ema` > 0 the images reported (events, result) are the running average of the
    iterates, while the losses in the events stay those of the iterates the optimizer evaluates
    (measuring the average too would cost a second evaluation per step); the result's losses
    are measured on the average itself.

    The losses stay on the device: they are read, and events emitted, every `check_every` steps
    (a GPU then never waits for the host in between). A non-finite loss is caught there, and the
    sample's result is its last image before it.

    `checkpoint(capture, stopping)` is called after each check (`stopping`: False) and once
    more when `should_stop` ends the loop or a KeyboardInterrupt ends a step's first evaluation
    (True), while every sample still runs; `capture()`
    then returns the loop's state, from which `resume` goes on exactly (the same image, losses
    and optimizer; `image` then only gives the shape).
    """
    t0 = time.perf_counter()
    batch = image.shape[0]
    cfgs = list(optimizer_cfg) if isinstance(optimizer_cfg, (list, tuple)) else [optimizer_cfg] * batch
    cfg = cfgs[0]
    batched = optimizers.uses_batched_lbfgs(cfg)
    space, hw = param or parameterization.Pixels(), tuple(image.shape[-2:])
    parts, optimizer = optimizers.for_samples(space.encode(image.detach()), cfgs)
    if optimizer_state is not None and not batched:
        optimizer.load_state_dict(optimizer_state)

    def current() -> torch.Tensor:
        """The image the variable makes (with its graph)."""
        return space.decode(parts[0] if len(parts) == 1 else torch.cat(parts), hw)

    decay = float(getattr(cfg, "ema", 0.0) or 0.0)
    average = optimizers.IterateAverage(current(), decay) if decay else None
    evals = 0
    first: dict = {}  # losses of the first evaluation in the current step
    # Per sample: the first loss, when the optimizer works on normalized losses.
    scale: dict = {}
    normalize = bool(getattr(cfg, "normalize_loss", False))

    def evaluated() -> torch.Tensor:
        """Loss and gradient at the current image; a sample whose loss is not finite gets a zero
        gradient (its optimizer then stands still) and is caught at the next check."""
        nonlocal evals
        for p in parts:
            p.grad = None
        terms = objective(current())
        evals += 1
        if "terms" not in first:
            first["terms"] = detach(terms)
        total = terms.total  # (B,): samples are independent, their gradients do not mix
        finite = torch.isfinite(total)
        if normalize:
            # Each sample's optimizer sees one function: its loss divided by its first value.
            first_value = torch.where(finite, total.detach().abs(), 1.0).clamp(min=1e-12)
            total = total / scale.setdefault("value", first_value)
        first["total"] = total.detach()  # (B,) what each sample's optimizer sees, for L-BFGS's retries
        loss = torch.where(finite, total, 0.0).sum()
        loss.backward()
        keep = finite.view(-1, *[1] * (parts[0].dim() - 1))
        if len(parts) == 1:
            parts[0].grad = torch.where(keep, parts[0].grad, 0.0)
        else:
            for b, p in enumerate(parts):
                p.grad = torch.where(keep[b:b + 1], p.grad, 0.0)
        return loss.detach()

    def evaluate() -> torch.Tensor:
        """evaluated(); a KeyboardInterrupt in the step's first evaluation (a tiled evaluation
        takes minutes, and a stop ends it between two tiles) hands out the state first. Nothing of
        the step has changed the optimizer then (the batched L-BFGS, Adam and RMSprop update after
        it, torch's L-BFGS starts with it): the state is still the one after the step before."""
        nonlocal evals
        starting, count = "terms" not in first, evals
        try:
            return evaluated()
        except KeyboardInterrupt:
            if starting and checkpoint is not None and all(active):
                evals = count
                read()
                if all(active):
                    checkpoint(capture, True)
            raise

    def shown() -> torch.Tensor:
        """The images to report for the current iterate: itself, or the running average."""
        if average is None:
            return current().detach().clone()
        average.update(current())
        return average.get()

    active = [True] * batch
    statuses = ["completed"] * batch
    frozen = {"mask": None}  # the device copy of `active`, for the batched L-BFGS
    # Per sample: the (whole batch's) images and losses of the step whose losses were last
    # finite for it, and that step. References, not copies: nothing is copied per step.
    start = current().detach().clone()
    good: list[tuple] = [(start, None, 0)] * batch
    measured_itself = [False] * batch  # the good losses are the good image's own (not an iterate's)

    # Per sample: evaluations and time when it stopped (None while it runs).
    stopped: list[tuple[int, float] | None] = [None] * batch

    def freeze(b: int) -> None:
        active[b], statuses[b] = False, "diverged"
        stopped[b] = (evals, time.perf_counter() - t0)
        if batched:
            frozen["mask"] = torch.tensor(active, device=image.device)
        else:
            optimizer.param_groups[b]["lr"] = 0.0  # sample b's group (torch's L-BFGS: the only one)

    # Steps whose losses the device holds but the host has not read:
    # (step, evals, time, image, terms, pair counts).
    unread: list[tuple] = []

    last_pairs: list[list[int]] = []  # the pair counts of the newest step read

    def pairs() -> torch.Tensor | None:
        """A snapshot of the batched L-BFGS's counts, (B, 3): pairs accepted, rejected, steps
        taken back; still on the device."""
        return torch.stack([optimizer.accepted, optimizer.rejected, optimizer.retried], 1) if batched else None

    def read() -> None:
        """Read the unread losses (one synchronisation), emit their events, and stop each sample
        at its first non-finite loss."""
        if not unread:
            return
        # (K, B) finite flags, then (K, B * 3) L-BFGS counts where there are any: one transfer.
        rows = [torch.isfinite(u[4].total).long() if u[5] is None else torch.cat([torch.isfinite(u[4].total).long(),
                                                                                  u[5].flatten()]) for u in unread]
        host = torch.stack(rows).tolist()
        finite = [[bool(v) for v in row[:batch]] for row in host]
        counts_read = [[row[batch + 3 * b: batch + 3 * b + 3] for b in range(batch)] if len(row) > batch else None
                       for row in host]
        if counts_read[-1] is not None:
            last_pairs[:] = counts_read[-1]
        for (step, evals_at, t, img, terms, _), ok, counts in zip(unread, finite, counts_read):
            for b in range(batch):
                if not active[b]:
                    continue
                if not ok[b]:
                    freeze(b)
                    continue
                good[b] = (img, terms, step)
                measured_itself[b] = average is None  # else the iterate's losses, not the average's
            if on_step is not None and any(active):
                on_step(StepEvent(step, evals_at, t, img, terms, tuple(active), counts))
        unread.clear()

    # (step, evals, time, image to report, pair counts) of the newest iterate, waiting for its losses.
    pending = (0, 0, 0.0, current().detach().clone(), pairs())
    if resume is not None:  # one sample, going on where `capture` left it
        with torch.no_grad():
            parts[0].copy_(resume.variable)
        optimizer.load_state_dict(resume.optimizer)
        if resume.scale is not None:
            scale["value"] = resume.scale
        if average is not None:
            average.value.copy_(resume.average[0])
            average.weight = resume.average[1]
        evals, t0 = resume.evals, time.perf_counter() - resume.time_s
        good[0], measured_itself[0], pending, last_pairs[:] = resume.good, resume.measured_itself, resume.pending, resume.pairs
        resume = None  # its optimizer part, now copied (from a memory-mapped file, perhaps), is not kept

    def capture() -> EngineState:
        """The state after the newest step (all its events emitted but its own, which waits for
        its losses); references, not copies: use it before the next step."""
        return EngineState(pending[0], evals, time.perf_counter() - t0, parts[0].detach(), optimizer.state_dict(),
                           scale.get("value"), (average.value, average.weight) if average is not None else None,
                           good[0], measured_itself[0], pending, list(last_pairs))

    interrupted = False
    for step in range(pending[0] + 1, steps + 1):
        if should_stop():
            interrupted = True
            break
        first.clear()
        # torch's L-BFGS needs the start of the step to correct its record of a clamped step.
        torch_lbfgs = isinstance(optimizer, torch.optim.LBFGS)
        before = parts[0].detach().clone() if clamp == "every_step" and torch_lbfgs else None
        if batched:
            evaluate()
            optimizer.step(parts[0].grad, frozen["mask"], first["total"])
        else:
            optimizer.step(evaluate)
        # The step's first evaluation was of the image the previous step left.
        unread.append((*pending[:4], first["terms"], pending[4]))
        if clamp == "every_step":
            with torch.no_grad():
                for p in parts:
                    space.clamp_(p, hw)
            if before is not None and len(parts) == 1:
                optimizers.tell_lbfgs_the_clamped_step(optimizer, parts[0], before)
        pending = (step, evals, time.perf_counter() - t0, shown(), pairs())
        if step % check_every == 0:
            read()
            if not any(active):
                break
            if checkpoint is not None:
                checkpoint(capture, False)
    read()
    if interrupted and checkpoint is not None and all(active):
        checkpoint(capture, True)

    def measure(img: torch.Tensor) -> LossTerms:
        nonlocal evals
        with torch.no_grad():
            terms = detach(objective(img))
        evals += 1
        return terms

    # The images the samples still running ended with have not been evaluated yet: one forward
    # pass of the batch, no gradient. Those that diverged end with their last good image.
    running = list(active)
    taken_back = [False] * batch
    if any(running):
        img = torch.stack([pending[3][b] if running[b] else good[b][0][b] for b in range(batch)]).clamp(0.0, 1.0)
        terms = measure(img)
        if batched and average is None:
            # A last step that blew the loss up has no next step to take it back: end where it started.
            back, kept = optimizer.taken_back(terms.total / scale.get("value", 1.0) if normalize else terms.total)
            flags = back.tolist()  # one read, after the loop
            if any(flags):
                img = torch.where(back.view(-1, 1, 1, 1), space.decode(kept, hw).clamp(0.0, 1.0), img)
                with torch.no_grad():
                    terms = detach(objective(img))
                taken_back = flags  # an evaluation of those samples only: alone, the others make none
                pending = (*pending[:4], pairs())
        unread.append((*pending[:3], img, terms, pending[4]))
        read()
        for b in range(batch):
            if running[b] and active[b]:
                measured_itself[b] = True
    t_end = time.perf_counter() - t0
    sample_evals = [(evals if s is None else s[0]) + int(t) for s, t in zip(stopped, taken_back)]
    sample_time = [t_end if s is None else s[1] for s in stopped]
    good_images = torch.stack([img[b] for b, (img, _, _) in enumerate(good)])
    good_terms = [terms.select([b]) if terms is not None else None for b, (_, terms, _) in enumerate(good)]
    final = good_images.clamp(0.0, 1.0)
    stale = [b for b in range(batch) if good_terms[b] is not None
             and not (measured_itself[b] and torch.equal(final[b], good_images[b]))]
    if stale:
        # With clamp=at_end a last good image may lie outside [0, 1], and with an average the
        # losses so far were the iterates': report the losses of the images that are returned.
        again = measure(final)
        for b in stale:
            good_terms[b] = again.select([b])
            sample_evals[b] += 1  # alone, this sample would have been measured again too
    if interrupted:
        statuses = ["interrupted" if s == "completed" else s for s in statuses]
    state = optimizer.state_dict() if isinstance(optimizer, (torch.optim.Adam, torch.optim.RMSprop)) else None
    return Result(statuses, final, [step for _, _, step in good], evals, state, good_terms, sample_evals, sample_time,
                  last_pairs or None)
