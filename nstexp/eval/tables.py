"""Result tables as CSV cells and Markdown, shared by `nstexp compare` and `nstexp evaluate`."""

from __future__ import annotations


def csv_cell(value) -> str:
    """Floats in full precision (repr), so they read back equal to summary.json; None is empty."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _md_cell(key: str, value) -> str:
    """Floats to 4 significant digits (`2.317e+15`, `0.3142`), seconds (keys ending in `_s`) as `4.60 s`."""
    if not isinstance(value, float):
        return csv_cell(value)  # swept values are strings, shown as they are
    return f"{value:.2f} s" if key.endswith("_s") else f"{value:.4g}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    cells = [[_md_cell(k, v) for k, v in zip(header, row)] for row in rows]
    lines = [header, ["---"] * len(header), *cells]
    return "".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |\n" for line in lines)
