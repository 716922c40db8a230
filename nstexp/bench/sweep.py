"""A sweep's throughput: its jobs one after another, and as one batch as `hydra/launcher=batched` runs them."""

from __future__ import annotations

import time

import torch

from nstexp.bench.case import Case, config_for, sync
from nstexp.network import hardware
from nstexp.run import inputs


def sweep_throughput(jobs: int, size: int, steps: int, optimizer: str, device_name: str, extra: list[str],
                     log=print) -> dict:
    """`jobs` jobs of a sweep (style weights and seeds) at `size`: seconds for `steps` steps of
    all of them, one after another and as one batch (the batched launcher's way), in one run."""
    from nstexp.losses.objective import BatchObjective
    from nstexp.optim.engine import optimize

    device = hardware.resolve_device(device_name)
    weights = [f"style.weight={w}" for w in ("1e5", "3e5", "1e6", "3e6")]
    cases = [Case(config_for(size, optimizer, "auto", device_name,
                          [weights[i % len(weights)], f"seed={i // len(weights)}", "init=noise", *extra]), device)
             for i in range(jobs)]
    starts = [inputs.initial_image(c.cfg, c.inputs.content, c.inputs.styles) for c in cases]

    def one_after_another() -> float:
        sync(device)
        t = time.perf_counter()
        for case, start in zip(cases, starts):
            optimize(start, case.objective, case.cfg.optimizer, steps, check_every=case.log_every)
        sync(device)
        return time.perf_counter() - t

    def batched(n: int = steps) -> float:
        objective = BatchObjective([c.objective for c in cases])
        sync(device)
        t = time.perf_counter()
        optimize(torch.cat(starts), objective, [c.cfg.optimizer for c in cases], n,
                 check_every=cases[0].log_every)
        sync(device)
        return time.perf_counter() - t

    batched(2)  # warm-up: allocation and, on a GPU, cuDNN's search for the batch's shapes
    sequential_s, batched_s = one_after_another(), batched()
    row = {"jobs": jobs, "size": size, "steps": steps, "optimizer": optimizer, "precision": cases[0].precision,
           "sequential_s": sequential_s, "batched_s": batched_s, "speedup": sequential_s / batched_s}
    log(f"sweep of {jobs} jobs at {size} px, {steps} {optimizer} steps each: one after another "
        f"{sequential_s:.1f} s, batched {batched_s:.1f} s ({row['speedup']:.2f}x)")
    return row
