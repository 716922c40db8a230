"""The optimizers the loop steps: torch's Adam, RMSprop and L-BFGS (nstexp.optim.lbfgs for batches),
and the running average of the iterates reported instead of the last one."""

from __future__ import annotations

import torch

from nstexp.optim.lbfgs import BatchedLBFGS

LINE_SEARCH_EVALS = 25  # torch's _strong_wolfe max_ls

# The optimizers whose samples are parameter groups of one torch optimizer, each with its own settings.
PER_SAMPLE = ("adam", "rmsprop")


def uses_batched_lbfgs(cfg) -> bool:
    """L-BFGS with one iteration per step and no line search runs on nstexp.optim.lbfgs: per sample,
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
            # Each iteration's line search may take torch's default 25 evaluations. torch's own
            # default, max_iter * 5 // 4, leaves it none at max_iter = 1: where the full step
            # raised the loss the search returned t = 0 and every later step repeated it.
            max_eval=cfg.max_iter * (1 + LINE_SEARCH_EVALS),
            # Never stop early on small gradients/changes: the step budget decides.
            tolerance_grad=0.0,
            tolerance_change=0.0,
        )
    if cfg.name in PER_SAMPLE:
        return per_sample(params, [cfg] * len(params))
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def for_samples(variable: torch.Tensor, cfgs: list) -> tuple[list[torch.Tensor], object]:
    """The leaves the optimizer moves, made from `variable` (B, ...), and the optimizer: the
    batched L-BFGS on one leaf, Adam or RMSprop on a leaf per sample (each a parameter group
    with its own settings), or torch's L-BFGS (a line search, or max_iter > 1: B = 1 only)."""
    cfg = cfgs[0]
    if uses_batched_lbfgs(cfg):
        x = variable.detach().clone().contiguous().requires_grad_(True)
        return [x], BatchedLBFGS(x, [c.lr for c in cfgs], cfg.history_size)
    parts = [variable[b:b + 1].detach().clone().requires_grad_(True) for b in range(variable.shape[0])]
    if cfg.name in PER_SAMPLE:
        return parts, per_sample(parts, cfgs)
    if len(parts) > 1:
        raise ValueError("torch's L-BFGS (a line search, or max_iter > 1) optimizes one sample at a time")
    return parts, build_optimizer(parts, cfg)


def adam(parts: list[torch.Tensor], cfgs: list) -> torch.optim.Adam:
    """One Adam over every sample, each a parameter group with its own lr, betas and eps: per
    sample exactly the Adam it would have alone."""
    groups = [{"params": [p], "lr": c.lr, "betas": tuple(c.betas), "eps": c.eps} for p, c in zip(parts, cfgs)]
    return torch.optim.Adam(groups)


def rmsprop(parts: list[torch.Tensor], cfgs: list) -> torch.optim.RMSprop:
    """One RMSprop over every sample, each a parameter group with its own lr, alpha and eps: torch's
    RMSprop without momentum, not centred (STROTSS's: torch's defaults but for the lr)."""
    groups = [{"params": [p], "lr": c.lr, "alpha": c.alpha, "eps": c.eps} for p, c in zip(parts, cfgs)]
    return torch.optim.RMSprop(groups)


def per_sample(parts: list[torch.Tensor], cfgs: list) -> torch.optim.Optimizer:
    return adam(parts, cfgs) if cfgs[0].name == "adam" else rmsprop(parts, cfgs)


def tell_lbfgs_the_clamped_step(optimizer: torch.optim.Optimizer, x: torch.Tensor, before: torch.Tensor) -> None:
    """Make torch's L-BFGS record of its last step (direction d times length t) the step actually taken.

    L-BFGS builds its curvature pairs from s = d * t. Clamping moves the image elsewhere;
    left uncorrected, the pairs are wrong and the iterates oscillate and degrade. With one
    iteration per step the correction is exact: s becomes the clamped displacement.
    (nstexp.optim.lbfgs takes s from the positions themselves, so it needs no correction.)
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


def select_state(state: dict, keep: list[int]) -> dict:
    """Adam's or RMSprop's state (a parameter group per job) for the jobs `keep` only."""
    return {"state": {i: state["state"][b] for i, b in enumerate(keep) if b in state["state"]},
            "param_groups": [{**state["param_groups"][b], "params": [i]} for i, b in enumerate(keep)]}
