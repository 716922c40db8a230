"""`nstexp evaluate`: the yardstick metrics (nstexp.eval.metrics) of any images, made by nstexp or not.

    nstexp evaluate RESULT [RESULT ...] --content C --style S [--size 256] [--out DIR]

A RESULT may be an image file, a folder (its images, sorted) or a glob pattern. Prints a
table and writes evaluation.csv (full precision), evaluation.md and evaluation.json into
--out (default: the current folder). Bad or mismatched images fail in one line.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys

from nstexp import images
from nstexp.errors import NstexpError
from nstexp.eval import rules
from nstexp.eval.tables import csv_cell, markdown_table

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def largest_multiple() -> int:
    """The largest multiple a run rounds its image's sides to: the total pooling before the
    deepest layer a run can use (nstexp.run.inputs rounds to that of its own deepest layer)."""
    from nstexp.config import ARCHS
    from nstexp.network.layout import layer_names, pools_before

    return max(2 ** pools_before(arch, layer) for arch in ARCHS for layer in layer_names(arch))


def fits(result_wh: tuple[int, int], content_wh: tuple[int, int], slack: float) -> bool:
    """Whether the content image, scaled by some factor, has both sides within `slack` px of the result's."""
    (rw, rh), (cw, ch) = result_wh, content_wh
    return max((rw - slack) / cw, (rh - slack) / ch) <= min((rw + slack) / cw, (rh + slack) / ch)


def expand(specs: list[str]) -> list[str]:
    """Files, folders (their images) and glob patterns -> image paths, in order, each once."""
    out: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            out += sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_SUFFIXES))
        elif not os.path.exists(spec) and glob.has_magic(spec):
            found = sorted(glob.glob(spec))
            if not found:
                raise NstexpError(f"{spec}: no file matches")
            out += found
        else:
            out.append(spec)
    if not out:
        raise NstexpError(f"{' '.join(specs)}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    return list(dict.fromkeys(out))


def evaluate(results: list[str], content: str, style: str, size: int = rules.REFERENCE_SIZE,
             device: str = "cpu") -> list[dict]:
    """One row of metrics per result image: {"image": path, "eval/...": value}."""
    from nstexp.eval import metrics  # here: the command's help and refusals need no torch

    c = metrics.load(content, "--content", device)
    s = metrics.load(style, "--style", device)
    # A result of this content has its aspect ratio up to the rounding of its sides, which moves
    # a small image's ratio by several percent (64 px of sample:chelsea: 64x48, 11% off).
    multiple = largest_multiple()
    slack = images.rounding_error(multiple)
    content_wh = (c.shape[-1], c.shape[-2])
    # Every result is checked before anything is scored: a bad one is refused at once, not after
    # the reference features and the images before it.
    for path in results:
        wh = images.load_image(path, "result").size
        if not fits(wh, content_wh, slack):
            raise NstexpError(f"{path}: {wh[0]}x{wh[1]} px does not have the content image's aspect ratio "
                              f"({content_wh[0]}x{content_wh[1]} px, up to {slack:g} px per side, what rounding "
                              f"sides to {multiple} px allows); is it a result of this content?")
    evaluator = metrics.Evaluator(c, s, size)
    return [{"image": path, **evaluator(metrics.load(path, "result", device))} for path in results]


def write(rows: list[dict], out_dir: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    header = list(rows[0])
    paths = {ext: os.path.join(out_dir, f"evaluation.{ext}") for ext in ("csv", "md", "json")}
    with open(paths["csv"], "w", newline="") as f:
        csv.writer(f).writerows([header, *([csv_cell(r[k]) for k in header] for r in rows)])
    with open(paths["md"], "w") as f:
        f.write(_table(rows, header))
    with open(paths["json"], "w") as f:
        json.dump(rows, f, indent=2)
    return paths


def _table(rows: list[dict], header: list[str]) -> str:
    return markdown_table(header, [[r[k] for k in header] for r in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nstexp evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="result images: files, folders or glob patterns")
    parser.add_argument("--content", required=True, help="the content image (a file or sample:<name>)")
    parser.add_argument("--style", required=True, help="the style image (a file or sample:<name>)")
    parser.add_argument("--size", type=int, default=rules.REFERENCE_SIZE,
                        help="longest side of the reference resolution (default: %(default)s)")
    parser.add_argument("--out", default=".", help="folder for evaluation.csv, .md and .json (default: .)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.size < 32:
            raise NstexpError(f"--size={args.size} must be >= 32")
        rows = evaluate(expand(args.results), args.content, args.style, args.size, args.device)
        paths = write(rows, args.out)
    except (NstexpError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    headline = ["image", *rules.HEADLINE]
    print(_table(rows, headline), end="")
    for path in paths.values():
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
