"""Each style loss's cost per step against the Gram loss's: the loss presets (conf/loss/) at one
size, through the real engine, in one run, so the ratios hold on the machine that measured them."""

from __future__ import annotations

from nstexp.bench.case import WARMUP, Case, config_for, per_eval
from nstexp.network import hardware

# The preset whose loss the others are measured against: Gatys et al.'s Gram loss.
BASELINE = "gatys"


def loss_costs(presets: list[str], size: int, steps: int, optimizer: str, precision: str, device_name: str,
               extra: list[str], log=print) -> list[dict]:
    """Seconds per step of each loss preset at `size` (median after warm-up), and its ratio to
    `gatys`'s. The baseline is timed first and again last, whether listed or not, and the ratios
    are to the mean of the two: a machine whose speed drifts during the run shows it as
    `drift` (last over first), instead of skewing the ratios of the presets timed early or late."""
    device = hardware.resolve_device(device_name)
    others = [p for p in presets if p != BASELINE]

    def time_preset(preset: str) -> tuple[object, dict, float]:
        cfg = config_for(size, optimizer, precision, device_name, [f"loss={preset}", *extra])
        case = Case(cfg, device)
        run = case.run(WARMUP + steps)
        return cfg, {"precision": case.precision, "peak_memory_mb": run["peak_mb"]}, per_eval(run["times"], device)

    first = time_preset(BASELINE)
    timed = [(p, *time_preset(p)) for p in others]
    last = time_preset(BASELINE)
    base = (first[2] + last[2]) / 2
    rows = []
    for preset, cfg, info, t in [(BASELINE, first[0], first[1], base), *timed]:
        loss = cfg.style.loss if isinstance(cfg.style.loss, str) else "+".join(cfg.style.loss)
        rows.append({"preset": preset, "style_loss": loss, "size": size, "optimizer": optimizer, **info,
                     "time_per_eval_s": t, "vs_gram": t / base})
        log(f"loss={preset} ({loss}) at {size} px: {t:.3g} s per step, {t / base:.2f}x gram")
    rows[0]["drift"] = last[2] / first[2]
    log(f"the baseline's step, last over first: {rows[0]['drift']:.2f}")
    return rows


def markdown(rows: list[dict]) -> list[str]:
    """The table's lines, and the baseline's drift."""
    lines = ["| loss preset | style.loss | size | optimizer | precision | s / step | × gram | peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['style_loss']} | {r['size']} | {r['optimizer']} | {r['precision']} | "
                     f"{r['time_per_eval_s']:.3g} | {r['vs_gram']:.2f} | {r['peak_memory_mb']:.0f} |")
    lines += ["", f"The baseline was timed first and last (the mean counts); last over first: {rows[0]['drift']:.2f}."]
    return lines
