"""Which jobs of a sweep can share one batch, and the launcher that runs them so.

Jobs that differ only in the settings each job of a batch uses on its own (`job.PER_JOB`:
loss weights, per-layer weights, normalizations, the style loss, init, seed, optimizer
settings, logging) go through the network together, unless the network itself differs (random
weights drawn from another seed, another set of layers); jobs that differ in anything else
(backbone, precision, image size, images, the optimizer's kind, steps, ...) go into separate
batches. Nothing is refused: the worst case is a batch of one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nstexp.optim.optimizers import PER_SAMPLE
from nstexp.run.job import shared_config
from nstexp.run.precision import keeps_fp32, network_precision
from nstexp.run.runner import network_spec

MAX_JOBS = 16


def batchable_optimizer(cfg: DictConfig) -> bool:
    """Optimizers that step a batch: torch's L-BFGS (a line search, several iterations per step) cannot."""
    o = cfg.optimizer
    return o.name in PER_SAMPLE or (o.max_iter == 1 and o.line_search == "none")


def key(cfg: DictConfig) -> str:
    """What must be equal for two jobs to share a batch: everything the batch shares (the config
    without the settings each job uses on its own, `job.PER_JOB`) and what the network is built
    from (which can depend on a per-job setting: random weights on the seed)."""
    node = {"shared": OmegaConf.to_container(shared_config(cfg)), "network": network_spec(cfg),
            # precision=auto can depend on the style loss, a per-job setting (nstexp.run.precision)
            "fp32": cfg.precision == "auto" and keeps_fp32(cfg)}
    return json.dumps(node, sort_keys=True, default=str)


def difference(a: DictConfig, b: DictConfig) -> list[str]:
    """The keys (dotted) whose values keep two jobs in separate batches."""
    x, y = json.loads(key(a)), json.loads(key(b))
    out: list[str] = []

    def walk(p, q, prefix):
        if prefix == "optimizer" and p.get("name") != q.get("name"):
            out.append("optimizer")  # another optimizer altogether: its settings do not compare
        elif isinstance(p, dict) and isinstance(q, dict):
            for k in sorted(set(p) | set(q)):
                walk(p.get(k), q.get(k), f"{prefix}.{k}" if prefix else k)
        elif p != q:
            out.append(prefix)

    walk(x["shared"], y["shared"], "")
    if x["fp32"] != y["fp32"]:
        out.append("precision (auto keeps fp32 for one job's style loss under L-BFGS)")
    # The network: named by what made it differ when no shared setting says so already.
    names = {"layers": "layer_sets", "seed": "seed (random weights)"}
    for k in sorted(set(x["network"]) | set(y["network"])):
        if x["network"].get(k) != y["network"].get(k) and (k in names or not out):
            out.append(names.get(k, f"network.{k}"))
    return out


def group(cfgs: list[DictConfig], batch_size: int | None) -> list[list[int]]:
    """The jobs' indices in batches, in the order of their first job; batches of at most
    `batch_size` (None: as many as memory allows) of jobs with equal keys."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        k = key(cfg) if batchable_optimizer(cfg) else f"single {i}"
        groups.setdefault(k, []).append(i)
    out = []
    for members in groups.values():
        size = batch_size or default_batch_size(cfgs[members[0]], len(members))
        out += [members[i:i + size] for i in range(0, len(members), size)]
    return sorted(out, key=lambda batch: batch[0])


def default_batch_size(cfg: DictConfig, jobs: int) -> int:
    """On a GPU, as many jobs as the memory estimate fits in 80% of what it has free (at most
    MAX_JOBS, and at least 1). On a CPU, 1: a CPU is busy with one image already, and batches
    measured slower there (`nstexp bench --sweep-jobs`; see the README)."""
    from nstexp.losses.objective import weighted_layers
    from nstexp.network import hardware, memory
    from nstexp.network.backbone import FeatureExtractor
    from nstexp.run.runner import DEFAULT_SIZE

    device = hardware.resolve_device(cfg.device)
    if device.type == "cpu":
        return 1
    have = memory.available_bytes(device)
    if have is None:
        return min(jobs, MAX_JOBS)
    layers = [k for part in weighted_layers(cfg.layers) for k in part]
    # The network's structure is all the estimate needs: random weights, nothing loaded.
    shape = FeatureExtractor(cfg.backbone.arch, "random", layers,
                             precision=network_precision(cfg, device),
                             checkpoint=cfg.checkpoint)
    size = cfg.size or DEFAULT_SIZE["cpu" if device.type == "cpu" else "gpu"]
    side = max(16, size * 3 // 4)  # a typical photo's shorter side
    n = 1
    while n < min(jobs, MAX_JOBS) and memory.estimate_bytes(shape, side, size, cfg.optimizer, n + 1) <= 0.8 * have:
        n += 1
    return n


def describe(cfgs: list[DictConfig], batches: list[list[int]]) -> str:
    """How the launcher grouped the jobs, in a few lines."""
    n = sum(len(b) for b in batches)
    lines = [f"batched launcher: {n} job{'s' if n > 1 else ''} in {len(batches)} "
             f"batch{'es' if len(batches) > 1 else ''}"]
    for batch in batches:
        lines.append(f"  jobs {','.join(str(i) for i in batch)}")
    firsts = [b[0] for b in batches]
    for a, b in zip(firsts, firsts[1:]):
        if not batchable_optimizer(cfgs[b]):
            lines.append(f"  job {b} runs alone: its optimizer (a line search or max_iter > 1) steps one job at a time")
        elif key(cfgs[a]) != key(cfgs[b]):
            lines.append(f"  jobs {a} and {b} differ in {', '.join(difference(cfgs[a], cfgs[b])[:4])}")
    return "\n".join(lines)


def launch(launcher, job_overrides, initial_job_idx: int):
    """What the batched launcher does: each job's folder, config files and name set up as
    Hydra's basic launcher would, then the jobs run batch by batch."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobStatus, configure_log, run_job, setup_globals
    from omegaconf import open_dict

    from nstexp.sweep import jobs

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    returns, plans = [], []
    for idx, overrides in enumerate(job_overrides):
        idx = initial_job_idx + idx
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        HydraConfig.instance().set_config(sweep_config)
        # Hydra's own job set-up (output folder, .hydra/ files, callbacks), with planning as the task.
        ret = run_job(hydra_context=launcher.hydra_context, task_function=jobs.plan_job, config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        returns.append(ret)
        plans.append(ret.return_value if ret.status == JobStatus.COMPLETED else None)
    ready = [i for i, plan in enumerate(plans) if plan is not None]
    batches = group([plans[i][0].cfg for i in ready], launcher.batch_size)
    batches = [[ready[i] for i in batch] for batch in batches]
    if batches:
        print(describe([p[0].cfg if p else None for p in plans], batches), file=sys.stderr)
    for batch in batches:
        stop_file = plans[batch[0]][1]
        if stop_file is not None and stop_file.exists():
            for i in batch:
                print(f"job {initial_job_idx + i}: not started, the sweep was stopped", file=sys.stderr)
            continue
        statuses = jobs.run_jobs([plans[i][0] for i in batch], stop_file)
        jobs.statuses.extend(statuses)
        for i, status in zip(batch, statuses):
            returns[i].return_value = status
    return returns
