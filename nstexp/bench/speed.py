"""`nstexp bench`: how fast nstexp is on this machine, against the floor and the peer, in one run.

    nstexp bench [--sizes 256 512] [--steps N] [--optimizers lbfgs adam] [--precision fp32 bf16]
                 [--no-peer] [--sweep-jobs 8] [--out DIR] [--device auto] [override ...]
    nstexp bench --losses [PRESET ...]   each loss preset's time per step against gatys's
    nstexp bench --startup               the command's start-up against `import torch`

For every image size, optimizer and precision it runs the default recipe (chelsea in the style
of swirls) through the real engine and reports:
- time per evaluation (median over the steps after warm-up; on a GPU the mean over them, since
  the host does not wait for each step), evaluations per second and peak memory;
- the floor: the bare truncated network, forward plus input gradient, in the same precision
  and memory format;
- the peer: the `pastiche` command on the same images, size and number of L-BFGS steps, its
  time per step taken from two step counts so that its start-up cancels;
- quality: the paper's loss computed in fp32 on the image after N steps, relative to the fp32
  run's, and time to quality, the seconds until that fp32 loss falls below what fp32 reaches
  after N steps (other precisions may run up to twice as many steps to get there).
With --sweep-jobs N it also times N jobs of a sweep (style weights and seeds) one after
another and as one batch, as `hydra/launcher=batched` runs them.
Writes bench.json and bench.md into --out and prints the table and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from nstexp.bench.case import CONTENT, STYLE, WARMUP, Case, config_for, fp32_losses, per_eval
from nstexp.bench.peer import peer
from nstexp.bench.report import line, markdown
from nstexp.bench.sweep import sweep_throughput
from nstexp.config import PRECISIONS
from nstexp.errors import NstexpError
from nstexp.network import hardware


def bench(sizes: list[int], steps: int, optimizers: list[str], precisions: list[str], device_name: str,
          with_peer: bool, out_dir: str, extra: list[str] | None = None, log=print,
          sweep: tuple[int, int, int] | None = None) -> dict:
    """Every case's row; with `sweep` = (jobs, size, steps), also a sweep's throughput batched
    and one job after another."""
    device = hardware.resolve_device(device_name)
    hardware.configure(device)
    machine = hardware.describe(device)
    log(f"bench on {machine.get('gpu', machine['cpu'])} ({device}), torch {machine['torch']}, "
        f"{machine['threads']} threads, native bf16: {machine['native_bf16']}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from nstexp import images

        files = {}
        for name in (CONTENT, STYLE):
            files[name] = os.path.join(tmp, name.split(":")[1] + ".png")
            images.load_image(name).save(files[name])
        for size in sizes:
            pastiche_s = peer(files[CONTENT], files[STYLE], size, (WARMUP, WARMUP + steps)) if with_peer else None
            for opt in optimizers:
                reference = None  # the fp32 run's loss after `steps`, and its time to get there
                # fp32 first: the others' quality is measured against it.
                for prec in sorted(precisions, key=lambda p: p != "fp32"):
                    cfg = config_for(size, opt, prec, device_name, extra or [])
                    case = Case(cfg, device)
                    at = WARMUP + steps  # the image after N measured steps (warm-up included in both)
                    if case.precision == "fp32" or reference is None:
                        run = case.run(at)
                    else:  # up to twice the steps to reach fp32's loss; keep the candidate images
                        run = case.run(WARMUP + 2 * steps, keep=_candidates(at, reference[0]))
                    t_eval = per_eval(run["times"], device)
                    row = {"size": size, "image": list(case.inputs.content.shape[-2:]), "optimizer": opt,
                           "precision": case.precision, "channels_last": case.channels_last,
                           "time_per_eval_s": t_eval, "evals_per_s": 1 / t_eval, "peak_memory_mb": run["peak_mb"],
                           "floor_s": case.floor(max(5, steps // 4))}
                    row["vs_floor"] = t_eval / row["floor_s"]
                    if pastiche_s is not None and opt == "lbfgs":
                        row.update(pastiche_s=pastiche_s, vs_pastiche=t_eval / pastiche_s)
                    if case.precision == "fp32":
                        reference = (run["losses"][at], run["times"][at])
                        row.update(fp32_loss_vs_fp32=1.0, time_to_quality_s=reference[1])
                    elif reference is not None:
                        row.update(_quality(cfg, device, run, at, reference))
                    if reference is not None:
                        reached = row.get("time_to_quality_s")
                        row["time_to_quality_vs_fp32"] = reached / reference[1] if reached is not None else None
                    rows.append(row)
                    log(line(row))
                    del case, run
    report = {"machine": machine, "steps": steps, "warmup": WARMUP, "content": CONTENT, "style": STYLE,
              "rows": rows}
    if sweep:
        report["sweep"] = [sweep_throughput(*sweep, optimizer=opt, device_name=device_name, extra=extra or [],
                                            log=log) for opt in optimizers]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(markdown(report))
    return report


def _candidates(at: int, target: float, most: int = 12):
    """keep(step, loss): the image at `at`, and the first `most` whose own loss is within 1% of
    `target` (low precision's own loss is close to, not equal to, the fp32 loss; few images are
    kept, since they count in the peak memory)."""
    taken = []

    def keep(step: int, loss: float) -> bool:
        if loss <= 1.01 * target and len(taken) < most:
            taken.append(step)
            return True
        return step == at

    return keep


def _quality(cfg, device, run: dict, at: int, reference: tuple[float, float]) -> dict:
    """The fp32 loss at equal steps, and the first kept step whose fp32 loss is below fp32's
    after N steps (the kept steps are those whose own loss came near it)."""
    checked = fp32_losses(cfg, device, run["images"])
    reached = next((k for k in sorted(checked) if checked[k] <= reference[0]), None)
    return {"fp32_loss_vs_fp32": checked[at] / reference[0],
            "time_to_quality_s": run["times"][reached] if reached is not None else None}


def _startup(out_dir: str, repeats: int) -> None:
    from nstexp.bench import startup

    if repeats < 1:
        print(f"error: bench: --repeats must be >= 1 (got {repeats})", file=sys.stderr)
        sys.exit(2)
    rows = startup.startup(repeats)
    machine = hardware.describe(hardware.resolve_device("cpu"))
    flags = ", ".join(machine["cpu_bf16"]) or "no AVX-512 bf16"
    where = f"{machine['cpu']} ({flags}), {os.cpu_count()} cores; torch {machine['torch']}"
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "startup.json"), "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=2)
    with open(os.path.join(out_dir, "startup.md"), "w") as f:
        f.write(startup.markdown(rows, where))
    print()
    print(startup.markdown(rows, where))
    print(f"wrote {os.path.join(out_dir, 'startup.json')} and startup.md")


def _losses(presets: list[str], args, precision: str) -> None:
    from nstexp import composition
    from nstexp.bench import losses

    known = composition.group_options("loss")
    presets = presets or known
    unknown = [p for p in presets if p not in known]
    if unknown:
        raise NstexpError(f"bench: --losses {unknown[0]}: not a loss preset (allowed: {', '.join(known)})")
    steps = args.steps or 30
    machine = _announce("--losses", args.device)
    rows = losses.loss_costs(presets, (args.sizes or [256])[0], steps, args.optimizers[0], precision, args.device,
                             args.overrides)
    _write(args.out, "losses", machine, steps, rows, losses.markdown(rows))


def _tiles(tile: int, args, precision: str) -> None:
    from nstexp.bench import tiles

    steps = args.steps or 5
    machine = _announce("--tiles", args.device)
    rows = tiles.tile_costs(args.sizes or [512, 1024], tile, steps, args.optimizers[0], precision, args.device,
                            args.overrides)
    _write(args.out, "tiles", machine, steps, rows, tiles.markdown(rows))


def _announce(what: str, device_name: str) -> dict:
    """The machine a table of `nstexp bench <what>` is measured on, said before it starts."""
    device = hardware.resolve_device(device_name)
    machine = hardware.describe(device)
    print(f"bench {what} on {machine.get('gpu', machine['cpu'])} ({device}), {machine['threads']} threads")
    return machine


def _write(out: str, name: str, machine: dict, steps: int, rows: list[dict], table: list[str]) -> None:
    """`<name>.json` (the rows) and `<name>.md` (the table, under its machine) in `out`, and the table printed."""
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['threads']} threads"
    text = "\n".join([f"Machine: {where}; torch {machine['torch']}; {steps} steps after {WARMUP} warm-up steps.",
                      "", *table]) + "\n"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump({"machine": machine, "steps": steps, "warmup": WARMUP, "rows": rows}, f, indent=2)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(text)
    print()
    print(text)
    print(f"wrote {os.path.join(out, name + '.json')} and {name}.md")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nstexp bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="longest sides (default: 256 512 on a CPU, "
                        "512 1024 2048 4096 on a GPU)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default: 30 on a CPU, 100 on a GPU)")
    parser.add_argument("--optimizers", nargs="+", default=["lbfgs", "adam"], choices=["lbfgs", "adam"])
    parser.add_argument("--precision", nargs="+", default=None, choices=list(PRECISIONS),
                        help="default: fp32 and what auto picks here")
    parser.add_argument("--no-peer", action="store_true", help="skip pastiche")
    parser.add_argument("--sweep-jobs", type=int, default=0, help="also time a sweep of this many jobs at "
                        "--sweep-size, batched vs one after another (0: skip)")
    parser.add_argument("--sweep-size", type=int, default=256)
    parser.add_argument("--sweep-steps", type=int, default=10, help="steps of each sweep job")
    parser.add_argument("--startup", action="store_true", help="time the command's start instead (help, a refusal, "
                        "a default run's first step) against `import torch`; writes startup.json and startup.md")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each --startup case (the median counts)")
    parser.add_argument("--losses", nargs="*", default=None, metavar="PRESET",
                        help="time each loss preset (default: all of conf/loss/) per step against gatys's Gram "
                        "loss instead, at the first --sizes and --optimizers; writes losses.json and losses.md")
    parser.add_argument("--tiles", type=int, default=None, metavar="PX",
                        help="time a step whole and in tiles of PX px (and the peak memory of each) at --sizes "
                        "(default 512 1024), at the first --optimizers; writes tiles.json and tiles.md")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=".", help="folder for bench.json and bench.md")
    parser.add_argument("overrides", nargs="*", help="config overrides for every case, e.g. layers=tensorflow_blog")
    args = parser.parse_args(argv)
    if args.startup:
        _startup(args.out, args.repeats)
        return
    try:
        if args.losses is not None:
            _losses(args.losses, args, (args.precision or ["fp32"])[0])
            return
        if args.tiles is not None:
            _tiles(args.tiles, args, (args.precision or ["fp32"])[0])
            return
        device = hardware.resolve_device(args.device)
        gpu = device.type == "cuda"
        sizes = args.sizes or ([512, 1024, 2048, 4096] if gpu else [256, 512])
        steps = args.steps or (100 if gpu else 30)
        if steps < 2 or min(sizes) < 16:
            raise NstexpError(f"bench: --steps must be >= 2 and --sizes >= 16 (got {steps}, {min(sizes)})")
        precisions = args.precision or sorted({"fp32", hardware.resolve_precision("auto", device)},
                                              key=lambda p: p != "fp32")
        for p in precisions:
            hardware.resolve_precision(p, device)  # refuses fp16 off CUDA in one line
        sweep = (args.sweep_jobs, args.sweep_size, args.sweep_steps) if args.sweep_jobs > 0 else None
        report = bench(sizes, steps, args.optimizers, precisions, args.device, not args.no_peer, args.out,
                       args.overrides, sweep=sweep)
    except NstexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print()
    print(markdown(report))
    print(f"wrote {os.path.join(args.out, 'bench.json')} and bench.md")


if __name__ == "__main__":
    main()
