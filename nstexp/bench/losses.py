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
    `gatys`'s, which is measured first whether listed or not."""
    device = hardware.resolve_device(device_name)
    order = [BASELINE, *[p for p in presets if p != BASELINE]]
    rows, base = [], None
    for preset in order:
        cfg = config_for(size, optimizer, precision, device_name, [f"loss={preset}", *extra])
        case = Case(cfg, device)
        run = case.run(WARMUP + steps)
        t = per_eval(run["times"], case.device)
        base = t if base is None else base
        loss = cfg.style.loss if isinstance(cfg.style.loss, str) else "+".join(cfg.style.loss)
        row = {"preset": preset, "style_loss": loss, "size": size, "optimizer": optimizer,
               "precision": case.precision, "time_per_eval_s": t, "vs_gram": t / base,
               "peak_memory_mb": run["peak_mb"]}
        rows.append(row)
        log(f"loss={preset} ({loss}) at {size} px: {t:.3g} s per step, {row['vs_gram']:.2f}x gram")
        del case, run
    return rows


def markdown(rows: list[dict]) -> list[str]:
    """The table's lines."""
    lines = ["| loss preset | style.loss | size | optimizer | precision | s / step | × gram | peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['style_loss']} | {r['size']} | {r['optimizer']} | {r['precision']} | "
                     f"{r['time_per_eval_s']:.3g} | {r['vs_gram']:.2f} | {r['peak_memory_mb']:.0f} |")
    return lines
