"""The longest sides of the coarse-to-fine levels, in plain Python (no torch): the runner's schedule
(nstexp.optim.pyramid) and the checks of the sizes before anything runs (nstexp.input_sizes)
read them from here."""

from __future__ import annotations


def levels(size: int, smallest: int | None, factor: float) -> list[int]:
    """Longest sides from `smallest` up to `size`, each `factor` times the previous, counted down
    from `size` (512 -> 362 -> 256 -> 181 -> 128 for a factor of √2); [size] without `smallest`."""
    if smallest is None or smallest >= size:
        return [size]
    out, k = [], 0
    while round(size / factor**k) >= smallest:
        out.append(round(size / factor**k))
        k += 1
    return sorted(set(out))
