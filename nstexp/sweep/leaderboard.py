"""`nstexp leaderboard`: every recipe, every loss preset and the peer on the bundled pairs, scored alike.

    nstexp leaderboard [--methods M,...] [--pairs P,...] [--size 256] [--steps N] [--out DIR] [--page FILE]

A method is `experiment=<recipe>` (conf/experiment/), `loss=<preset>` (conf/loss/, on the
default config) or `peer=pastiche` (the pastiche command at its defaults). Each nstexp method
runs as an ordinary run, its own process, run folder and W&B run (group `leaderboard`), in
OUT/<pair>/<method>/; pastiche writes its image there too. Every final image is then scored
by `nstexp evaluate`'s code at the reference size, the same way whatever made it, and the
method's record (status, time, metrics) goes to record.json beside it. A method with a record
is not run again: a killed leaderboard resumes where it stopped (delete a record to redo it).
The page (tables, contact sheets, the text) is written from the records: see
nstexp.sweep.leaderboard_page.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from nstexp import composition, images
from nstexp.errors import NstexpError

PEER = "peer=pastiche"
DEFAULT_METHOD = "experiment=nstexp"
PAIRS_GROUP = "pair"


def all_methods() -> list[str]:
    """Every recipe, every loss preset and the peer, the default first."""
    recipes = [f"experiment={r}" for r in composition.group_options("experiment")]
    presets = [f"loss={p}" for p in composition.group_options("loss")]
    return [DEFAULT_METHOD, *(m for m in recipes if m != DEFAULT_METHOD), *presets, PEER]


def pick(given: str | None, allowed: list[str], option: str) -> list[str]:
    """The comma-separated names of `given` (all of `allowed` when None), each checked."""
    if given is None:
        return allowed
    names = [n.strip() for n in given.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        what = f"{', '.join(bad)} is not one of them" if bad else "nothing given"
        raise NstexpError(f"{option}: {what} (allowed: {', '.join(allowed)})")
    return list(dict.fromkeys(names))


def pair_images(pair: str) -> tuple[str, str]:
    """The content and style image specs of bundled pair `pair` (conf/pair/<pair>.yaml)."""
    from nstexp.sweep.results import read_yaml

    cfg = read_yaml(os.path.join(composition.CONFIG_DIR, PAIRS_GROUP, f"{pair}.yaml"))
    return cfg["content"]["image"], cfg["style"]["image"]


def folder(out: str, pair: str, method: str) -> str:
    return os.path.join(out, pair, method.replace("=", "-"))


def _reason(stderr: str) -> str:
    """The one line that says why a method did not complete: its last `error:` line, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1].removeprefix("error:").strip()


def _nstexp_command(method: str, pair: str, size: int, steps: int | None, run_dir: str) -> list[str]:
    cmd = [sys.executable, "-m", "nstexp", method, f"pair={pair}", f"size={size}", "progress=false",
           # Scored afterwards, as every method is: the run's own time is its optimization.
           "eval.enabled=false", f"hydra.run.dir={run_dir}", "wandb.group=leaderboard",
           f"wandb.name='{pair}/{method}'"]
    return cmd + ([f"steps={steps}"] if steps is not None else [])


def _peer_command(pair: str, size: int, steps: int | None, run_dir: str) -> list[str]:
    exe = shutil.which("pastiche") or os.path.join(os.path.dirname(sys.executable), "pastiche")
    content, style = (images.resolve(spec, key) for spec, key in zip(pair_images(pair), ("content", "style")))
    cmd = [exe, "--content", content, "--styles", style, "--output", os.path.join(run_dir, "final.png"),
           "--size", str(size), "--no-verbose", "--seed", "0"]
    return cmd + (["--num-steps", str(steps)] if steps is not None else [])


def _launch(cmd: list[str], run_dir: str) -> tuple[int, str, float]:
    """Run `cmd`: its exit status, its stderr (also kept in stderr.log) and its wall-clock seconds."""
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:  # the command itself is missing
        return 1, f"error: {cmd[0]}: {exc.strerror}", time.perf_counter() - start
    wall = time.perf_counter() - start
    if done.returncode == 130 or done.returncode < 0:
        raise KeyboardInterrupt
    with open(os.path.join(run_dir, "stderr.log"), "w") as f:
        f.write(done.stderr)
    return done.returncode, done.stderr, wall


def run_method(method: str, pair: str, size: int, steps: int | None, out: str, eval_size: int) -> dict:
    """Run one method on one pair (unless it has a record), score its image, write its record."""
    run_dir = folder(out, pair, method)
    record_path = os.path.join(run_dir, "record.json")
    if os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
        print(f"{pair} {method}: {record['status']}, already recorded, skipped", file=sys.stderr)
        return record
    shutil.rmtree(run_dir, ignore_errors=True)  # what a stopped attempt left
    os.makedirs(run_dir)
    if method == PEER:
        cmd = _peer_command(pair, size, steps, run_dir)
        shown = ["pastiche", *cmd[1:]]
    else:
        cmd = _nstexp_command(method, pair, size, steps, run_dir)
        shown = ["nstexp", *cmd[3:]]
    print(f"{pair} {method}: running", file=sys.stderr)
    code, stderr, wall = _launch(cmd, run_dir)
    record = {"pair": pair, "method": method, "dir": run_dir, "time_s": wall, "status": "completed", "reason": None,
              "command": shown, "metrics": {}}
    summary_path = os.path.join(run_dir, "summary.json")
    if method != PEER and os.path.exists(summary_path):
        with open(summary_path) as f:
            record["status"] = json.load(f).get("status", "failed")
    final = os.path.join(run_dir, "final.png")
    if code != 0 or record["status"] != "completed" or not os.path.exists(final):
        record["status"] = "refused" if code == 2 else (
            record["status"] if record["status"] != "completed" else "failed")
        record["reason"] = _reason(stderr)
    else:
        from nstexp.eval.evaluation import evaluate  # here: refusing bad options needs no torch

        try:
            row = evaluate([final], *pair_images(pair), eval_size)[0]
            record["metrics"] = {k: v for k, v in row.items() if k.startswith("eval/")}
        except NstexpError as exc:  # an image the yardstick cannot score: said in the table
            record["status"], record["reason"] = "unscored", str(exc)
    with open(record_path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"{pair} {method}: {record['status']} in {wall:.1f} s" + (
        f" ({record['reason']})" if record["reason"] else ""), file=sys.stderr)
    return record


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="nstexp leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", help="comma-separated methods (default: all, as named below)")
    parser.add_argument("--pairs", help="comma-separated bundled pairs (default: all of conf/pair/)")
    parser.add_argument("--size", type=int, default=256, help="longest side of every result (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="steps a level for every method (default: each method's own)")
    parser.add_argument("--eval-size", type=int, default=256, help="the size the metrics are computed at "
                        "(default: %(default)s, the yardstick's reference size)")
    parser.add_argument("--out", default="outputs/leaderboard", help="the runs' folder (default: %(default)s)")
    parser.add_argument("--page", default="docs/leaderboard.md", help="the page to write (default: %(default)s); "
                        "its contact sheets go into the folder of its name (docs/leaderboard/<pair>.png)")
    parser.epilog = "methods: experiment=<recipe>, loss=<preset>, peer=pastiche"
    args = parser.parse_args(argv)
    try:
        methods = pick(args.methods, all_methods(), "--methods")
        pairs = pick(args.pairs, composition.group_options(PAIRS_GROUP), "--pairs")
        for option, value, least in (("--size", args.size, 32), ("--eval-size", args.eval_size, 32),
                                     ("--steps", args.steps, 1)):
            if value is not None and value < least:
                raise NstexpError(f"{option}={value} must be >= {least}")
    except NstexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    from nstexp.sweep.leaderboard_page import write_page

    try:
        records = [run_method(m, p, args.size, args.steps, args.out, args.eval_size) for p in pairs for m in methods]
    except KeyboardInterrupt:
        print("interrupted: the methods recorded so far are kept; run the same command to resume", file=sys.stderr)
        sys.exit(130)
    command = " ".join(["nstexp leaderboard", *argv])
    write_page(records, {p: pair_images(p) for p in pairs}, methods, args.page, command, DEFAULT_METHOD)
    print(args.page, file=sys.stderr)
    failed = [r for r in records if r["status"] != "completed"]
    if failed:
        print(f"{len(failed)} of {len(records)} runs did not complete (listed in the page)", file=sys.stderr)
