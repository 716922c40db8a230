"""A tiled step against a whole one: the default recipe at each size, evaluated whole and in tiles
(nstexp.tiling), through the real engine, in one run, with the peak memory of each."""

from __future__ import annotations

from nstexp.bench.case import WARMUP, Case, config_for, per_eval
from nstexp.errors import NstexpError
from nstexp.network import hardware


def tile_costs(sizes: list[int], tile: int, steps: int, optimizer: str, precision: str, device_name: str,
               extra: list[str], log=print) -> list[dict]:
    """Per size: seconds per step and peak memory whole (tiles=off) and in tiles of `tile` px,
    and their ratios. A size that does not fit whole is timed in tiles only; one that does not
    fit in tiles either is a row with both refusals, and the sizes after it are still measured."""
    device = hardware.resolve_device(device_name)
    rows = []
    for size in sizes:
        row = {"size": size, "tile": tile, "optimizer": optimizer}
        for name, option in (("whole", "tiles=off"), ("tiled", f"tiles={tile}")):
            try:
                cfg = config_for(size, optimizer, precision, device_name, ["scales.min=null", option, *extra])
                case = Case(cfg, device)
            except Exception as exc:  # noqa: BLE001  (it does not fit: its refusal is the row)
                row[f"{name}_error"] = str(exc)
                continue
            run = case.run(WARMUP + steps)
            row.update({f"{name}_s": per_eval(run["times"], device), f"{name}_peak_mb": run["peak_mb"],
                        "precision": case.precision, "image": list(case.inputs.content.shape[-2:])})
        if "whole_s" in row and "tiled_s" in row:
            row.update(time_vs_whole=row["tiled_s"] / row["whole_s"], peak_vs_whole=row["tiled_peak_mb"] / row["whole_peak_mb"])
        rows.append(row)
        log(f"{size} px: whole {row.get('whole_s', '–')} s, tiled {row.get('tiled_s', '–')} s per step; "
            f"peak whole {row.get('whole_peak_mb', '–')} MB, tiled {row.get('tiled_peak_mb', '–')} MB"
            + "".join(f"; {name} refused: {row[name + '_error']}" for name in ("whole", "tiled") if name + "_error" in row))
    if not any("whole_s" in r or "tiled_s" in r for r in rows):  # nothing ran: the input, not the sizes
        raise NstexpError(f"bench --tiles: {rows[0].get('tiled_error') or rows[0]['whole_error']}")
    return rows


def markdown(rows: list[dict]) -> list[str]:
    def fmt(v, spec):
        return "–" if v is None else format(v, spec)

    lines = ["| size | image | tile | optimizer | precision | whole s / step | tiled s / step | × whole | "
             "whole peak MB | tiled peak MB | × whole |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        image = "x".join(map(str, r["image"])) if "image" in r else "–"
        lines.append(f"| {r['size']} | {image} | {r['tile']} | {r['optimizer']} | "
                     f"{r.get('precision', '–')} | {fmt(r.get('whole_s'), '.3g')} | {fmt(r.get('tiled_s'), '.3g')} | "
                     f"{fmt(r.get('time_vs_whole'), '.2f')} | {fmt(r.get('whole_peak_mb'), '.0f')} | "
                     f"{fmt(r.get('tiled_peak_mb'), '.0f')} | {fmt(r.get('peak_vs_whole'), '.2f')} |")
    refused = [f"- {r['size']} px {name}: {r[name + '_error']}" for r in rows for name in ("whole", "tiled")
               if name + "_error" in r]
    return lines + (["", "Refused:", "", *refused] if refused else [])
