"""`nstexp bench --startup`: how long the command takes to start, each figure as a ratio to a
bare `python -c "import torch"` measured in the same run (so machines compare by ratio).

- help: `nstexp --help` and `nstexp compare --help`;
- refusal: a bad value (`style.weight=-1`), refused in one line with exit status 2;
- first step: the default run (W&B as it defaults, offline without a server), from the start
  of the command until its progress bar shows the first optimizer step; the run is then stopped.
Each is the median of `repeats` runs, one at a time, each in a fresh temporary folder.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

NSTEXP = [sys.executable, "-m", "nstexp"]
CASES = {
    "import torch (floor)": [sys.executable, "-c", "import torch"],
    "nstexp --help": [*NSTEXP, "--help"],
    "nstexp compare --help": [*NSTEXP, "compare", "--help"],
    "refusal (style.weight=-1)": [*NSTEXP, "style.weight=-1"],
}
FIRST_STEP = "default run, first step"


def _env(folder: str) -> dict[str, str]:
    # W&B and Hydra write into the temporary folder only; no server is contacted.
    return {**os.environ, "WANDB_DIR": folder, "WANDB_CACHE_DIR": folder, "WANDB_CONFIG_DIR": folder,
            "WANDB_DATA_DIR": folder, "WANDB_SILENT": "true", "WANDB_MODE": "offline"}


def _timed(cmd: list[str]) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        code = subprocess.run(cmd, cwd=folder, env=_env(folder), capture_output=True).returncode
        return time.perf_counter() - t, code


def _first_step(timeout: float = 600.0) -> float:
    """Seconds from the command's start until its progress bar shows step 1, as the user sees
    it (metrics.jsonl follows on the writer thread, after step 0's scores); the run is then
    interrupted."""
    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        proc = subprocess.Popen([*NSTEXP, "hydra.run.dir=out"], cwd=folder, env=_env(folder),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen = b""
        try:
            while time.perf_counter() - t < timeout:
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"the default run exited with status {proc.wait()} before its first step")
                seen = (seen + chunk)[-4096:]
                if re.search(rb"\| *[1-9][0-9]*/[0-9]+ ", seen):  # tqdm's "| 1/200 [..."
                    return time.perf_counter() - t
            raise RuntimeError(f"no first step within {timeout:.0f} s")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # the run stops cleanly and leaves its files
                try:
                    proc.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()


def startup(repeats: int = 3, log=print) -> dict:
    """{case: {"s": median seconds, "vs_torch": ratio, "runs": [...]}} for every case."""
    rows = {}
    for name, cmd in CASES.items():
        runs = []
        for _ in range(repeats):
            seconds, code = _timed(cmd)
            expected = 2 if name.startswith("refusal") else 0
            if code != expected:
                raise RuntimeError(f"{' '.join(cmd[1:])}: exit status {code}, expected {expected}")
            runs.append(seconds)
        rows[name] = {"runs": runs}
        log(f"{name}: {statistics.median(runs):.2f} s")
    rows[FIRST_STEP] = {"runs": [_first_step() for _ in range(repeats)]}
    log(f"{FIRST_STEP}: {statistics.median(rows[FIRST_STEP]['runs']):.2f} s")
    floor = statistics.median(rows["import torch (floor)"]["runs"])
    for row in rows.values():
        row["s"] = statistics.median(row["runs"])
        row["vs_torch"] = row["s"] / floor
    return rows


def markdown(rows: dict, machine: str) -> str:
    lines = [f"Machine: {machine}. Median of {len(next(iter(rows.values()))['runs'])} runs each.", "",
             "| command | seconds | × `import torch` |", "|---|---|---|"]
    lines += [f"| {name} | {row['s']:.2f} | {row['vs_torch']:.2f} |" for name, row in rows.items()]
    return "\n".join(lines) + "\n"
