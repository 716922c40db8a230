"""`nstexp compare <sweep dir>`: every job of a Hydra multirun sweep, side by side.

A sweep folder holds Hydra's multirun.yaml and one folder per job (0/, 1/, ... by default,
anywhere below it with a custom hydra.sweep.subdir) with its overrides, metrics.jsonl,
summary.json and final.png. Opening them one at a time is slow and easy to misread, so this
writes files into the sweep folder that put the jobs next to each other:

- contact_sheet.png: the final images in a grid laid out by the swept values, with the
  content and style images along the top;
- loss_curves.png, eval_curves.png and tradeoff.png: see nstexp.plots (the last two only
  when the jobs logged the image-quality `eval/` metrics);
- comparison.csv and comparison.md: one row per job, its swept values and final numbers
  (the markdown rounded for reading, the CSV in full precision).

Jobs that are still running, were cut off or failed are shown as such rather than left out,
so a sweep can be looked at before it has finished.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import sys

from PIL import Image, ImageDraw, ImageFont

from nstexp import images, metrics, plots
from nstexp.sweep_jobs import Job, collect, nested, read_yaml
from nstexp.errors import NstexpError

# Contact sheet layout in pixels; `contact_sheet` documents how they add up.
CELL = 256  # default box per image: the image's longest side is scaled to this
PAD = 4  # margin around every image box and header
LINE_H = 16  # one line of text
FONT_SIZE = 12
ROW_HEADER_W = 160  # the left column that names each row's value
BACKGROUND = (255, 255, 255)
PLACEHOLDER = (192, 192, 192)  # stands in for a job without a final image
TEXT = (0, 0, 0)

RESULTS = ("status", "steps", "evals", "wall_time_s", *(f"final/{k}" for k in plots.LOSSES))
# The image-quality metrics of the final image that the tables show, when the jobs logged them.
EVALS = ("eval/ssim", "eval/content", "eval/style_gram", "eval/style_sw", "eval/colour_style", "eval/tv")
# Summary numbers that are no image metric but still rank one way: the costs of a run. The
# final losses (final/loss/...) are what the run minimised; the metrics say for themselves.
COSTS = ("wall_time_s", "time_per_eval_s", "total_time_s", "peak_memory_mb", "eval_time_s")
OUTPUTS = {
    "contact_sheet": "contact_sheet.png",
    "loss_curves": "loss_curves.png",
    "eval_curves": "eval_curves.png",
    "tradeoff": "tradeoff.png",
    "csv": "comparison.csv",
    "markdown": "comparison.md",
}


def _pairs(keys, values) -> list[str]:
    return [f"{k}={v}" for k, v in zip(keys, values)]


def input_images(job: Job) -> list[tuple[list[str], Image.Image]]:
    """(label lines, image) for the content and style images of `job`'s config; ones that cannot be loaded are left out.

    They only frame the sheet, so a moved or deleted input file must not stop the comparison.
    """
    if job.dir is None:
        return []
    cfg = read_yaml(os.path.join(job.dir, ".hydra", "config.yaml")) or {}
    launch_dir = nested(read_yaml(os.path.join(job.dir, ".hydra", "hydra.yaml")), "hydra", "runtime", "cwd")
    out = []
    for key in ("content", "style"):
        spec = (cfg.get(key) or {}).get("image")
        if not isinstance(spec, str):
            continue
        path = spec
        # A relative path is relative to where the sweep was launched, not to where compare runs.
        if launch_dir and not spec.startswith(images.SAMPLE_PREFIX) and not os.path.isabs(spec):
            path = os.path.join(launch_dir, spec)
        try:
            out.append(([key, os.path.basename(spec)], images.load_image(path, f"{key}.image")))
        except NstexpError:
            continue
    return out


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow 10.0 only has its fixed-size bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    """`text` cut to `width` pixels so it never runs into the next cell.

    The start goes: in `key=value` the value is what tells cells apart.
    """
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def _text(draw: ImageDraw.ImageDraw, font, x: int, y: int, lines: list[str], width: int) -> None:
    for i, line in enumerate(lines):
        draw.text((x, y + i * LINE_H), _fit(draw, line, width, font), fill=TEXT, font=font)


def _box(sheet: Image.Image, draw, font, x: int, y: int, cell: int, image, status: str, label: list[str]) -> None:
    """One box at (x, y): `image` scaled into cell x cell (or a grey square naming `status`), `label` below."""
    left, top = x + PAD, y + PAD
    if image is None:
        draw.rectangle([left, top, left + cell - 1, top + cell - 1], fill=PLACEHOLDER)
        text = _fit(draw, status, cell, font)
        draw.text((left + (cell - draw.textlength(text, font=font)) / 2, top + (cell - LINE_H) / 2), text,
                  fill=TEXT, font=font)
    else:
        image = images.resize_longest(image, cell)
        sheet.paste(image, (left + (cell - image.width) // 2, top + (cell - image.height) // 2))
    _text(draw, font, left, top + cell, label, cell)


def _values(jobs: list[Job], keys: list[str]) -> list[tuple[str, ...]]:
    """Every combination of the keys' values; each key's values in the order the jobs first used them."""
    return list(itertools.product(*(dict.fromkeys(job.swept[k] for job in jobs) for k in keys)))


def contact_sheet(
    jobs: list[Job], path: str, cell: int = CELL, inputs: list[tuple[list[str], Image.Image]] = ()
) -> None:
    """Draw the final images of `jobs` as a grid of their swept values and save it to `path`.

    Rows are the values of the first swept key and columns the combinations of the others
    (a single row when only one key is swept). Each image is scaled into a `cell` x `cell`
    box with a label below it: one line per swept key, then the job number and its status
    if not completed. A combination without a job, or a job without a readable final.png,
    gets a grey square naming why. `inputs` (label lines, image) pairs, the content and
    style images, form a first row of their own. In pixels:

        box_w    = cell + 2 * PAD
        box_h    = cell + 2 * PAD + LINE_H * (len(swept keys) + 1)
        header_h = 2 * PAD + LINE_H * max(1, len(column keys))    # names the column values
        width    = ROW_HEADER_W + box_w * max(len(columns), len(inputs))
        height   = (box_h if inputs else 0) + header_h + box_h * len(rows)

    Jobs with identical swept values share a cell; the first one is shown.
    """
    keys = list(jobs[0].swept)
    row_keys, col_keys = (keys[:1], keys[1:]) if len(keys) > 1 else ([], keys)
    rows, cols = _values(jobs, row_keys), _values(jobs, col_keys)
    by_values: dict[tuple[str, ...], Job] = {}
    for job in jobs:
        by_values.setdefault(tuple(job.swept.values()), job)

    box_w, box_h = cell + 2 * PAD, cell + 2 * PAD + LINE_H * (len(keys) + 1)
    header_h = 2 * PAD + LINE_H * max(1, len(col_keys))
    top = box_h if inputs else 0
    size = (ROW_HEADER_W + box_w * max(len(cols), len(inputs)), top + header_h + box_h * len(rows))
    sheet = Image.new("RGB", size, BACKGROUND)
    draw, font = ImageDraw.Draw(sheet), _font()

    if inputs:
        _text(draw, font, PAD, PAD, ["inputs"], ROW_HEADER_W - 2 * PAD)
        for i, (label, image) in enumerate(inputs):
            lines = label[: len(keys) + 1]  # what the label strip has room for
            _box(sheet, draw, font, ROW_HEADER_W + i * box_w, 0, cell, image, "", lines)
        draw.line([(0, top - 1), (size[0], top - 1)], fill=PLACEHOLDER)  # inputs above, results below
    for c, col in enumerate(cols):
        _text(draw, font, ROW_HEADER_W + c * box_w + PAD, top + PAD, _pairs(col_keys, col), cell)
    for r, row in enumerate(rows):
        y = top + header_h + r * box_h
        _text(draw, font, PAD, y + PAD, _pairs(row_keys, row), ROW_HEADER_W - 2 * PAD)
        for c, col in enumerate(cols):
            job = by_values.get(row + col)
            image, status = None, "missing"
            if job is not None:
                status = job.status
                try:
                    image = images.load_image(job.final, "final.png") if job.final else None
                except NstexpError:
                    status = "unreadable"
            label = _pairs(keys, row + col)
            if job is not None:
                label.append(f"job {job.num}" + ("" if status == "completed" else f": {status}"))
            _box(sheet, draw, font, ROW_HEADER_W + c * box_w, y, cell, image, status, label)
    sheet.save(path)


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


def result_keys(jobs: list[Job], every_eval: bool = False) -> list[str]:
    """RESULTS, then the EVALS any job's summary has; with `every_eval` also its other `eval/` keys (per layer)."""
    found = dict.fromkeys(k for job in jobs for k in job.summary or {} if k.startswith("eval/"))
    evals = [k for k in EVALS if k in found] + ([k for k in found if k not in EVALS] if every_eval else [])
    return [*RESULTS, *evals]


def columns(keys, results: list[str], tail: tuple[str, ...]) -> list[str]:
    """A comparison table's header: job, the swept `keys`, the `results` (see result_keys), then `tail`.

    Shared by comparison.csv/.md and the W&B table so they name columns alike. A swept key named
    like another column (a swept `steps` next to the steps actually run) gets " (swept)": a
    repeated name would make the two columns impossible to tell apart.
    """
    fixed = ("job", *results, *tail)
    return ["job", *(f"{k} (swept)" if k in fixed else k for k in keys), *results, *tail]


def table(jobs: list[Job], sweep_dir: str, every_eval: bool = False) -> tuple[list[str], list[list]]:
    """Header and one row per job: number, swept values, results (None if missing), final.png relative to `sweep_dir`.

    `every_eval`: all of the summaries' `eval/` keys, not only the EVALS (see result_keys).
    """
    results = result_keys(jobs, every_eval)
    rows = []
    for job in jobs:
        summary = job.summary or {}
        final = os.path.relpath(job.final, sweep_dir) if job.final else ""
        rows.append([job.num, *job.swept.values(), job.status, *(summary.get(k) for k in results[1:]), final])
    return columns(jobs[0].swept, results, ("final_png",)), rows


def ranking_rule(key: str) -> str | None:
    """Which way summary number `key` is better (see metrics.BETTER); None where nothing says."""
    if key.startswith("final/loss/") or key in COSTS:
        return metrics.LOWER
    return metrics.better(key)


def sort_jobs(jobs: list[Job], key: str) -> list[Job]:
    """`jobs` best first by their summary's number `key`, by its ranking rule; jobs without it last.

    NstexpError for a key without a ranking rule, or that no job has a number for.
    """
    rule = ranking_rule(key)
    if rule is None:
        raise NstexpError(f"cannot sort by {key}: no rule says which way it is better (sortable: "
                          f"{', '.join(metrics.BETTER)}, their per-layer keys, final/loss/..., {', '.join(COSTS)})")

    def rank(job: Job) -> tuple[int, float]:
        value = (job.summary or {}).get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            return (1, 0.0)
        return (0, metrics.badness(rule, value))

    if all(rank(job)[0] for job in jobs):
        raise NstexpError(f"cannot sort by {key}: no job's summary.json has a number for it")
    return sorted(jobs, key=rank)


def markdown_table(header: list[str], rows: list[list]) -> str:
    cells = [[_md_cell(k, v) for k, v in zip(header, row)] for row in rows]
    lines = [header, ["---"] * len(header), *cells]
    return "".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |\n" for line in lines)


def write_report(sweep_dir: str, cell: int = CELL, jobs: list[Job] | None = None, sort: str | None = None
                 ) -> dict[str, str]:
    """Write the comparison files into `sweep_dir`; returns the paths written, keyed as in OUTPUTS.

    eval_curves.png and tradeoff.png are written only when some job has the `eval/` metrics.
    `jobs` is what `collect(sweep_dir)` returns, for callers that already have it; `sort` a
    summary key that orders the tables' rows (see sort_jobs), else they are in job order.
    """
    jobs = collect(sweep_dir) if jobs is None else jobs
    rows_order = sort_jobs(jobs, sort) if sort else jobs  # first: a wrong key must not leave half a report
    paths = {kind: os.path.join(sweep_dir, name) for kind, name in OUTPUTS.items()}
    # Any started job's config names the inputs; job 0 may not have started (parallel launchers).
    first = next((job for job in jobs if job.dir and os.path.isdir(job.dir)), jobs[0])
    contact_sheet(jobs, paths["contact_sheet"], cell, input_images(first))
    title = os.path.abspath(sweep_dir)
    plots.loss_curves(jobs, paths["loss_curves"], title)
    for kind, plot in (("eval_curves", plots.eval_curves), ("tradeoff", plots.tradeoff)):
        if not plot(jobs, paths[kind], title):
            del paths[kind]
    header, rows = table(rows_order, sweep_dir, every_eval=True)
    with open(paths["csv"], "w", newline="") as f:
        csv.writer(f).writerows([header, *([csv_cell(v) for v in row] for row in rows)])
    with open(paths["markdown"], "w") as f:
        f.write(markdown_table(*table(rows_order, sweep_dir)))
    return paths


def _positive_int(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    """`nstexp compare`: a path that is not a sweep folder is one `error:` line and exit status 2."""
    parser = argparse.ArgumentParser(
        prog="nstexp compare",
        description="Compare the jobs of a Hydra multirun sweep: writes contact_sheet.png, loss_curves.png, "
        "comparison.csv and comparison.md into the sweep folder, and eval_curves.png and tradeoff.png when "
        "the jobs logged the eval/ image-quality metrics.",
    )
    parser.add_argument("sweep_dir", help="the sweep folder, the one holding Hydra's multirun.yaml")
    parser.add_argument("--cell", type=_positive_int, default=CELL,
                        help="longest side of each image in the contact sheet, in pixels (default: %(default)s)")
    parser.add_argument("--sort", metavar="KEY",
                        help="order the tables' rows best first by this summary.json number, e.g. eval/style_sw "
                        "(each metric's own rule: lowest first, highest first for eval/ssim, closest to 1 first "
                        "for eval/tv)")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.sweep_dir, args.cell, sort=args.sort)
    except NstexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # e.g. a read-only sweep folder
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    main()
