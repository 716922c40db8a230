"""Batched L-BFGS: B independent problems stepped together, without host synchronisation.

Each sample ``x[b]`` follows, one ``step`` per call, exactly the path of::

    torch.optim.LBFGS([x_b], lr=lr[b], max_iter=1, history_size=m, line_search_fn=None,
                      tolerance_grad=0, tolerance_change=0)

run alone on it, except for one documented departure (see ``BatchedLBFGS``). Every per-sample
decision (first step, curvature test, ascent direction, zero gradient, frozen sample) is a mask
applied with ``torch.where``: nothing reads a tensor value on the host, so on a GPU a whole step
is enqueued without waiting for the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


# A pair is accepted only where the gradient's change y has a cosine above this with the step s.
# Torch accepts any y.s > 1e-10, whatever the scale. In bf16 a gradient carries rounding noise
# (about 5% of its norm through VGG-19), and over a short step the change of the gradient is
# mostly that noise, nearly orthogonal to s: a y.s that is tiny but positive, whose 1 / (y.s)
# then throws the two-loop recursion off. Measured on the 2-core Xeon with AMX (2026-12-07,
# the default recipe at 512 px, one level, 40 steps): bf16 ended at 8.2x fp32's loss with the
# first pair accepted at a cosine under 1e-2, and 2.4% above it with that pair rejected (the
# same with 0.1); fp32's run rejects nothing either way and is unchanged to the last bit.
COSINE = 1e-2


class BatchedLBFGS:
    """Fixed-step L-BFGS (``max_iter=1``, no line search) over the leading dim of ``x``.

    ``x`` (B, ...) is updated in place by ``step(grad)``, where ``grad`` is the gradient of the
    summed per-sample losses at the current ``x``. The caller may change ``x`` between steps
    (e.g. clamp it in place): the curvature pair uses the actual displacement
    ``s = x_now - x_at_previous_step``, so such a projection is taken into account exactly.

    Departures from torch:

    - The history is a ring of ``history_size`` slots shared by the batch, one slot per step.
      A pair that a sample rejects (``y.s <= 1e-10`` or ``y.s <= COSINE |y| |s|``, zero
      gradient, inactive, or its first step) still takes that sample's slot, stored with
      ``ro = 0`` so it is a no-op in the two-loop recursion. ``history_size`` therefore counts
      steps, not accepted pairs: after a rejection, a sample's oldest accepted pair can leave
      the history earlier than in torch.
    - The fallback step. While a sample has no accepted pair, its direction is ``-g`` with the
      inverse-Hessian scale 1, as in torch; torch then steps ``lr`` times the gradient, so how
      far it moves depends on the loss's units. A start in a region of negative curvature
      (``y.s < 0``, common from a content image) rejects pair after pair and, with a loss
      divided by its first value, creeps along at a tiny step forever. Here the fallback's
      length doubles with each rejection: ``t = lr * 2**(r - 1)`` after ``r`` rejections, until
      the first pair is accepted (then L-BFGS's own scale ``y.s / y.y`` takes over). With at
      most one rejection before the first acceptance (``r = 1``) this is torch's step.

    - Steps that blow up are taken back (when ``step`` is given the losses). Without a line
      search, a pair taken over a short step can underestimate the curvature of a Gram loss
      (quartic in the pixels) by orders of magnitude, and the next step overshoots: on
      conv-output layers (layers=pytorch_tutorial, 64 px) the loss rose 76x in one step and
      stayed 5-7x above its start for 30 steps. When a sample's loss more than doubles (rises
      by more than ``|f|`` of the point the step left), the point is dropped: the next iterate
      is that point plus a fraction of the failed step, the minimum of the quadratic through
      the two losses and the slope, within [0.1, 0.5] (backtracking, Nocedal & Wright 3.5); the
      failed step's pair still enters the history (it measures the curvature along the step),
      and the steps that follow are scaled by the product of those fractions, which doubles back
      to 1 with each step that is kept (a trust radius). ``retried`` counts them. The failed
      point's gradient is that step's one evaluation: nothing is evaluated twice.

    Without rejections or retries the two agree exactly; ``accepted`` and ``rejected`` count the
    pairs.
    """

    def __init__(self, x: torch.Tensor, lr: float | Sequence[float] | torch.Tensor,
                 history_size: int = 100):
        if not x.is_contiguous():
            raise ValueError("BatchedLBFGS needs a contiguous x: it updates x through a (B, N) view")
        if history_size < 1:
            raise ValueError(f"history_size must be >= 1, got {history_size}")
        self.x = x
        B, N = x.shape[0], x[0].numel()
        opts = {"dtype": x.dtype, "device": x.device}
        self.lr = torch.as_tensor(lr, **opts).broadcast_to((B,)).clone()  # (B,)
        self.m = history_size
        # Ring of curvature pairs; a rejected pair is all-zero with ro = 0 (so it stays finite).
        self.y_hist = torch.zeros(history_size, B, N, **opts)  # (m, B, N) gradient changes
        self.s_hist = torch.zeros(history_size, B, N, **opts)  # (m, B, N) displacements
        self.ro_hist = torch.zeros(history_size, B, **opts)  # (m, B) 1 / (y.s), 0 if rejected
        # Python ints: they depend only on how many steps were taken, never on values.
        self.pos = 0  # next slot to write
        self.count = 0  # filled slots
        self.steps = 0  # calls to step()
        self.h_diag = torch.ones(B, **opts)  # (B,) initial inverse-Hessian scale
        self.started = torch.zeros(B, dtype=torch.bool, device=x.device)  # (B,) torch's n_iter >= 1
        self.x_prev = torch.zeros(B, N, **opts)  # (B, N) where the previous gradient was taken
        self.g_prev = torch.zeros(B, N, **opts)  # (B, N) that gradient
        # (B,) curvature pairs formed so far: accepted into the history, or rejected.
        self.accepted = torch.zeros(B, dtype=torch.long, device=x.device)
        self.rejected = torch.zeros(B, dtype=torch.long, device=x.device)
        self.f_prev = torch.zeros(B, **opts)  # (B,) the loss at x_prev, where one was given
        self.retried = torch.zeros(B, dtype=torch.long, device=x.device)  # (B,) steps taken again
        self.reach = torch.ones(B, **opts)  # (B,) the step's scale after retries, back to 1 by doubling

    @torch.no_grad()
    def step(self, grad: torch.Tensor, active: torch.Tensor | None = None,
             loss: torch.Tensor | None = None) -> None:
        """One L-BFGS step from the gradient ``grad`` (shape of x) taken at the current ``x``.

        ``active`` (B,) bool: samples marked False neither move nor change their state
        (their ring slot of this step is filled with a no-op pair, like a rejection).
        ``loss`` (B,): each sample's loss at ``x``; a step that more than doubled it is taken
        again (see the class's departures). Without it, torch's step is taken.
        """
        B = self.x.shape[0]
        x = self.x.view(B, -1)  # (B, N), shares storage with self.x
        g = grad.detach().reshape(B, -1).to(x.dtype)  # (B, N)
        # torch's opt_cond with tolerance_grad=0: an all-zero gradient returns before touching
        # any state. A NaN gradient is not "optimal" there either, hence `!= 0` (NaN != 0).
        live = (g != 0).any(-1)  # (B,)
        if active is not None:
            live = live & active.to(device=x.device, dtype=torch.bool)

        if self.steps > 0:  # on the very first call no sample has a previous point
            y = g - self.g_prev  # (B, N)
            s = x - self.x_prev  # (B, N) actual displacement, clamps included
            ys, yy = torch.linalg.vecdot(y, s), torch.linalg.vecdot(y, y)  # (B,)
            # The first step of a sample forms no pair (torch's n_iter == 1 branch).
            # NaN ys compares False, so a diverged sample rejects its pair.
            formed = live & self.started
            curved = ys > COSINE * (yy * torch.linalg.vecdot(s, s)).sqrt()  # y along s, not noise
            accept = formed & (ys > 1e-10) & curved  # (B,)
            self.accepted += accept
            self.rejected += formed & ~accept
            keep = accept[:, None]
            self.y_hist[self.pos] = torch.where(keep, y, 0.0)
            self.s_hist[self.pos] = torch.where(keep, s, 0.0)
            self.ro_hist[self.pos] = torch.where(accept, 1.0 / ys, 0.0)
            self.h_diag = torch.where(accept, ys / yy, self.h_diag)
            self.pos = (self.pos + 1) % self.m
            self.count = min(self.count + 1, self.m)
        # A step that more than doubled a finite loss is taken again from where it started.
        # (NaN compares False: a diverged sample is the engine's to stop.)
        f = self.f_prev if loss is None else loss.detach().reshape(B).to(x.dtype)
        retry = (self.started & live & torch.isfinite(f) & (f - self.f_prev > self.f_prev.abs())
                 if self.steps > 0 and loss is not None else torch.zeros_like(live))
        self.retried += retry
        if self.steps > 0:
            # Backtracking along the failed step s: the minimum of the quadratic through f(x_prev),
            # its slope g_prev.s and f(x_prev + s), kept within [0.1, 0.5] of s (Nocedal & Wright,
            # Numerical Optimization, 3.5).
            slope = (self.g_prev * s).sum(-1)  # (B,) < 0: the step was a descent direction
            curve = (f - self.f_prev - slope).clamp(min=1e-30)
            back = (-slope / (2 * curve)).nan_to_num(0.5).clamp(0.1, 0.5)  # (B,)
            retry_x = self.x_prev + back[:, None] * s
            self.reach = torch.where(retry, self.reach * back, (2 * self.reach).clamp(max=1.0))
        rv = retry[:, None]

        # Two-loop recursion over the filled slots, newest first; slots with ro = 0 give
        # alpha = beta = 0 and leave q / d exactly unchanged, which is how rejection is handled.
        order = [(self.pos - self.count + i) % self.m for i in range(self.count)]  # oldest first
        q = g.neg()  # (B, N)
        alpha = {}
        # (vecdot and addcmul_ make no temporaries the size of the image.)
        for i in reversed(order):
            alpha[i] = torch.linalg.vecdot(self.s_hist[i], q) * self.ro_hist[i]  # (B,)
            q.addcmul_(alpha[i][:, None], self.y_hist[i], value=-1.0)
        d = q.mul_(self.h_diag[:, None])  # (B, N)
        for i in order:
            beta = torch.linalg.vecdot(self.y_hist[i], d) * self.ro_hist[i]  # (B,)
            d.addcmul_((alpha[i] - beta)[:, None], self.s_hist[i])
        # A sample's first step is plain steepest descent (its slots all have ro = 0 and
        # h_diag = 1, so d is already -g; the where makes it explicit and NaN-proof).
        first = ~self.started  # (B,)
        d = torch.where(first[:, None], g.neg(), d)

        # Step length: torch's min(1, 1/||g||_1) * lr on the first step, lr afterwards; while
        # no pair was accepted, lr * 2^(rejections - 1) (see the class's departures).
        growth = torch.where(self.accepted == 0, 2.0 ** (self.rejected - 1).clamp(min=0).to(x.dtype), 1.0)
        t = torch.where(first, torch.clamp(1.0 / g.abs().sum(-1), max=1.0) * self.lr, self.lr * growth * self.reach)
        # torch breaks before moving when g.d > -tolerance_change (= 0), but still records the
        # state below; comparing `> 0` keeps its handling of g.d == 0 and NaN.
        move = live & ~((g * d).sum(-1) > 0)  # (B,)

        # State of live samples moves to the current point (the start of this step, where grad
        # was taken); frozen and zero-gradient samples keep theirs.
        lv = (live & ~retry)[:, None]
        self.x_prev = torch.where(lv, x, self.x_prev)
        self.g_prev = torch.where(lv, g, self.g_prev)
        self.f_prev = torch.where(lv[:, 0], f, self.f_prev)
        self.started = self.started | live
        self.steps += 1

        # where (not a product with the mask) so a NaN direction cannot leak into a frozen sample.
        x.add_(torch.where(move[:, None], t[:, None] * d, 0.0))
        if self.steps > 1:
            x.copy_(torch.where(rv, retry_x, x))

    @torch.no_grad()
    def taken_back(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """After the last step, where no step follows to take a blow-up back: the samples whose
        loss at ``x`` (B,) more than doubled over the point the step left (B,) bool, and x with
        those samples at that point (a copy; x itself is left as it is); ``retried`` counts them."""
        B = self.x.shape[0]
        f = loss.detach().reshape(B).to(self.x.dtype)
        back = self.started & torch.isfinite(f) & (f - self.f_prev > self.f_prev.abs())
        self.retried += back
        return back, torch.where(back[:, None], self.x_prev, self.x.view(B, -1)).view_as(self.x)


    def state_dict(self) -> dict:
        """Everything but ``x``: the history, the counts and the per-sample scales (references)."""
        return {k: v for k, v in vars(self).items() if k != "x"}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Go on from ``state_dict()``'s state: tensors are copied into this optimizer's own (so a
        state read from a memory-mapped file takes no second copy of the history)."""
        for k, v in state.items():
            mine = getattr(self, k)
            if isinstance(mine, torch.Tensor):
                if mine.shape != v.shape:
                    raise ValueError(f"BatchedLBFGS state: {k} has shape {tuple(v.shape)}, this one {tuple(mine.shape)}")
                mine.copy_(v)
            else:
                setattr(self, k, v)
