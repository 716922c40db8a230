"""The peer: the `pastiche` command's time per L-BFGS step on the same images and size."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time


def peer(content: str, style: str, size: int, steps: tuple[int, int]) -> float | None:
    """pastiche's seconds per L-BFGS step: two runs of different lengths, so start-up cancels."""
    exe = shutil.which("pastiche") or os.path.join(os.path.dirname(sys.executable), "pastiche")
    if not os.path.exists(exe):
        return None
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in steps:
            cmd = [exe, "--content", content, "--styles", style, "--output", os.path.join(tmp, "out.png"),
                   "--size", str(size), "--num-steps", str(n), "--optimizer", "lbfgs", "--no-verbose",
                   "--seed", "0"]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
    per_step = (walls[1] - walls[0]) / (steps[1] - steps[0])
    return per_step if per_step > 0 else None  # start-up noise larger than the steps: no figure
