"""contact_sheet.png: a sweep's final images in a grid laid out by the swept values, with the
content and style images they were made from: along the top when every job shares them, else
above each column, beside each row or in each cell, wherever they stay the same."""

from __future__ import annotations

import itertools
import os

from PIL import Image, ImageDraw, ImageFont

from nstexp import images
from nstexp.errors import NstexpError
from nstexp.sweep.results import Job, nested, read_yaml

# Contact sheet layout in pixels; `contact_sheet` documents how they add up.
CELL = 256  # default box per image: the image's longest side is scaled to this
PAD = 4  # margin around every image box and header
LINE_H = 16  # one line of text
FONT_SIZE = 12
ROW_HEADER_W = 160  # the left column that names each row's value
BACKGROUND = (255, 255, 255)
PLACEHOLDER = (192, 192, 192)  # stands in for a job without a final image
TEXT = (0, 0, 0)


def _pairs(keys, values) -> list[str]:
    """`key=value` per swept key; a value that is itself an override (the leaderboard's
    `experiment=cmd`) names its own key and is shown as it is."""
    return [v if "=" in str(v) else f"{k}={v}" for k, v in zip(keys, values)]


def input_specs(job: Job) -> tuple[tuple[str, str, str], ...]:
    """(key, spec, path) of the content and style images of `job`'s config; () for a job never started."""
    if job.dir is None:
        return ()
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
        out.append((key, spec, path))
    return tuple(out)


def input_images(specs: tuple[tuple[str, str, str], ...]) -> list[tuple[list[str], Image.Image]]:
    """(label lines, image) for `input_specs`; images that cannot be loaded are left out.

    They only frame the sheet, so a moved or deleted input file must not stop the comparison.
    """
    out = []
    for key, spec, path in specs:
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


def _inputs_box(sheet: Image.Image, draw, font, x: int, y: int, cell: int, inputs) -> None:
    """A job's inputs at (x, y), side by side in half-size boxes, `key: name` lines below; INPUTS_H high."""
    half = (cell - PAD) // 2
    for i, (_, image) in enumerate(inputs):
        image = images.resize_longest(image, half)
        left = x + PAD + i * (half + PAD)
        sheet.paste(image, (left + (half - image.width) // 2, y + PAD + (half - image.height) // 2))
    _text(draw, font, x + PAD, y + PAD + half, [": ".join(label) for label, _ in inputs], cell)


def inputs_h(cell: int) -> int:
    """The height of `_inputs_box`: half a cell, its margins and two lines of labels."""
    return (cell - PAD) // 2 + 2 * PAD + 2 * LINE_H


def inputs_layout(jobs: list[Job], specs: dict[int, tuple], row_keys: list[str], col_keys: list[str]) -> str:
    """Where the sheet shows the inputs, given each started job's `input_specs` by number:
    "shared" (one row along the top: every job has the same), "columns" (each column's jobs
    share theirs), "rows" or, failing all, "cells"."""

    def constant_along(keys: list[str]) -> bool:
        seen: dict[tuple, tuple] = {}
        return all(seen.setdefault(tuple(job.swept[k] for k in keys), specs[job.num]) == specs[job.num]
                   for job in jobs if job.num in specs)

    for layout, keys in (("shared", []), ("columns", col_keys), ("rows", row_keys)):
        if constant_along(keys):
            return layout
    return "cells"


def _values(jobs: list[Job], keys: list[str]) -> list[tuple[str, ...]]:
    """Every combination of the keys' values; each key's values in the order the jobs first used them."""
    return list(itertools.product(*(dict.fromkeys(job.swept[k] for job in jobs) for k in keys)))


def contact_sheet(jobs: list[Job], path: str, cell: int = CELL, specs_of=input_specs, wrap: int | None = None) -> None:
    """Draw the final images of `jobs` as a grid of their swept values and save it to `path`.

    Rows are the values of the first swept key and columns the combinations of the others
    (a single row when only one key is swept). Each image is scaled into a `cell` x `cell`
    box with a label below it: one line per swept key, then the job number and its status
    if not completed. A combination without a job, or a job without a readable final.png,
    gets a grey square naming why. The content and style images each job was made from are
    shown where `inputs_layout` finds them the same: "shared", full size, in a first row of
    their own; "columns", at half size above each column; "rows", beside each row; "cells",
    in each cell above its image. In pixels:

        box_w    = cell + 2 * PAD
        box_h    = cell + 2 * PAD + LINE_H * (len(swept keys) + 1)   (+ inputs_h for "cells")
        header_h = 2 * PAD + LINE_H * max(1, len(column keys))    # names the column values
        top      = box_h if "shared" (and the inputs load), inputs_h(cell) if "columns", else 0
        left     = ROW_HEADER_W + (box_w if "rows" else 0)
        width    = left + box_w * max(len(columns), len(shared inputs))
        height   = top + header_h + box_h * len(rows)

    Jobs with identical swept values share a cell; the first one is shown. `specs_of` gives a
    job's inputs as `input_specs` does (the leaderboard's peer has no config to read them from).
    `wrap`: a single row of more than `wrap` boxes is laid out in
    rows of `wrap` instead (the leaderboard's forty methods), each box named by its own label:
    header_h = 0, len(rows) = ceil(len(columns) / wrap), len(columns) = wrap, and inputs that
    differ between columns go in each cell.
    """
    keys = list(jobs[0].swept)
    row_keys, col_keys = (keys[:1], keys[1:]) if len(keys) > 1 else ([], keys)
    rows, cols = _values(jobs, row_keys), _values(jobs, col_keys)
    wrapped = bool(wrap) and not row_keys and len(cols) > wrap
    by_values: dict[tuple[str, ...], Job] = {}
    for job in jobs:
        by_values.setdefault(tuple(job.swept.values()), job)
    specs = {job.num: found for job in jobs if (found := specs_of(job))}
    layout = inputs_layout(jobs, specs, row_keys, col_keys)
    if wrapped and layout == "columns":
        layout = "cells"  # a column's inputs above it would name only the first row's
    loaded: dict[tuple, list] = {}  # each image read once

    def inputs(job: Job | None) -> list:
        found = specs.get(job.num, ()) if job is not None else ()
        return loaded[found] if found in loaded else loaded.setdefault(found, input_images(found))

    def first(values: tuple[str, ...], keys_: list[str]) -> Job | None:
        """The first started job whose `keys_` have `values`: whose inputs a row or column shows."""
        return next((j for j in jobs if j.num in specs and tuple(j.swept[k] for k in keys_) == values), None)

    shared = inputs(first((), [])) if layout == "shared" else []
    box_w, box_h = cell + 2 * PAD, cell + 2 * PAD + LINE_H * (len(keys) + 1)
    in_cell = inputs_h(cell) if layout == "cells" else 0
    box_h += in_cell
    header_h = 0 if wrapped else 2 * PAD + LINE_H * max(1, len(col_keys))
    top = box_h if shared else inputs_h(cell) if layout == "columns" else 0
    left = ROW_HEADER_W + (box_w if layout == "rows" else 0)
    n_cols, n_rows = (wrap, -(-len(cols) // wrap)) if wrapped else (len(cols), len(rows))
    size = (left + box_w * max(n_cols, len(shared)), top + header_h + box_h * n_rows)

    def at(r: int, c: int) -> tuple[int, int]:
        """The top left of the box of row r's column c."""
        if wrapped:
            r, c = divmod(c, wrap)
        return left + c * box_w, top + header_h + r * box_h

    sheet = Image.new("RGB", size, BACKGROUND)
    draw, font = ImageDraw.Draw(sheet), _font()

    if shared:
        _text(draw, font, PAD, PAD, ["inputs"], ROW_HEADER_W - 2 * PAD)
        for i, (label, image) in enumerate(shared):
            lines = label[: len(keys) + 1]  # what the label strip has room for
            _box(sheet, draw, font, left + i * box_w, 0, cell, image, "", lines)
    if layout == "columns":
        _text(draw, font, PAD, PAD, ["inputs"], ROW_HEADER_W - 2 * PAD)
        for c, col in enumerate(cols):
            _inputs_box(sheet, draw, font, left + c * box_w, 0, cell, inputs(first(col, col_keys)))
    if top:
        draw.line([(0, top - 1), (size[0], top - 1)], fill=PLACEHOLDER)  # inputs above, results below
    for c, col in enumerate([] if wrapped else cols):
        _text(draw, font, left + c * box_w + PAD, top + PAD, _pairs(col_keys, col), cell)
    for r, row in enumerate(rows):
        y = top + header_h + r * box_h
        _text(draw, font, PAD, y + PAD, _pairs(row_keys, row), ROW_HEADER_W - 2 * PAD)
        if layout == "rows":
            _inputs_box(sheet, draw, font, ROW_HEADER_W, y, cell, inputs(first(row, row_keys)))
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
            x, y = at(r, c)
            if in_cell:
                _inputs_box(sheet, draw, font, x, y, cell, inputs(job))
            _box(sheet, draw, font, x, y + in_cell, cell, image, status, label)
    sheet.save(path)
