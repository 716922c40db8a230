"""`nstexp compare`: a sweep folder in, contact sheet, loss curves and tables out (offline, no models)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import REPO
from nstexp.sweep import callbacks, compare, contact_sheet, plots
from nstexp.errors import NstexpError
from nstexp.eval import rules
from nstexp.sweep.results import Job, display_value

CELL = 64  # small cells keep the tests fast
RED, GREEN, BLUE, YELLOW, CYAN = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)

# optimizer=adam,lbfgs x style.weight=1e4,1e6,1e8, cut off while job 4 ran (job 5 never started).
GRID = [
    # (overrides, final.png colour or None, summary status or None, has metrics.jsonl)
    (["optimizer=adam", "style.weight=1e4", "size=48"], RED, "completed", True),
    (["optimizer=adam", "style.weight=1e6", "size=48"], GREEN, "completed", True),
    (["optimizer=adam", "style.weight=1e8", "size=48"], BLUE, "diverged", True),
    (["optimizer=lbfgs", "style.weight=1e4", "size=48"], YELLOW, "completed", True),
    (["optimizer=lbfgs", "style.weight=1e6", "size=48"], None, None, True),
    (["optimizer=lbfgs", "style.weight=1e8", "size=48"], None, None, False),
]


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def make_sweep(root, jobs, content="sample:chelsea", style="sample:swirls", subdir="${hydra.job.num}", task=None,
               cwd=None):
    """A sweep folder as Hydra multirun and the runner leave it; returns {job number: summary}.

    A job given as None was never started: it has no folder. `subdir` is hydra.sweep.subdir
    (${hydra.job.num} and ${hydra.job.override_dirname} are filled in); `task` the sweep's
    command-line overrides, from which the basic sweeper's jobs can be recomputed; `cwd` where
    the sweep was launched (default: `root`).
    """
    root.mkdir(parents=True, exist_ok=True)
    sweep = {"dir": str(root), "subdir": subdir}
    multirun = {"hydra": {"sweep": sweep, "job": {"num": "???"}}}
    if task is not None:
        multirun["hydra"].update(sweeper={"_target_": BASIC_SWEEPER, "params": None}, overrides={"task": task})
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    summaries = {}
    for num, spec in enumerate(jobs):
        if spec is None:
            continue
        overrides, colour, status, has_metrics = spec
        dirname = ",".join(sorted(overrides))  # as Hydra's override_dirname
        job = root / subdir.replace("${hydra.job.num}", str(num)).replace("${hydra.job.override_dirname}", dirname)
        (job / ".hydra").mkdir(parents=True)
        hydra = {"sweep": sweep, "job": {"num": num, "override_dirname": dirname},
                 "runtime": {"cwd": cwd or str(root), "output_dir": str(job)}}
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        config = {"content": {"image": content, "weight": 1.0}, "style": {"image": style, "weight": 1e4}}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        rows = [
            {"step": s, "evals": 2 * s, "time_s": 0.1 + 0.37 * s + num / 7, "loss/total": 1e6 / (s + 1) + num / 3,
             "loss/content": float(s) * 1.1, "loss/style": 1e6 / (s + 1), "loss/tv": 0.0}
            for s in range(4)
        ]
        if has_metrics:
            with open(job / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        if colour is not None:
            Image.new("RGB", (40, 30), colour).save(job / "final.png")
        if status is not None:
            last = rows[-1]
            summary = {"status": status, "steps": 3, "evals": 6, "wall_time_s": last["time_s"] + 0.01 * num,
                       **{f"final/{k}": v for k, v in last.items() if k.startswith("loss/")}, "seed": 0}
            (job / "summary.json").write_text(json.dumps(summary, indent=2))
            summaries[num] = summary
    return summaries


def layout(n_rows, n_cols, n_keys, n_col_keys, n_inputs, cell=CELL):
    """The contact sheet's layout as contact_sheet.contact_sheet documents it."""
    box_w = cell + 2 * contact_sheet.PAD
    box_h = cell + 2 * contact_sheet.PAD + contact_sheet.LINE_H * (n_keys + 1)
    header_h = 2 * contact_sheet.PAD + contact_sheet.LINE_H * max(1, n_col_keys)
    top = box_h if n_inputs else 0
    size = (contact_sheet.ROW_HEADER_W + box_w * max(n_cols, n_inputs), top + header_h + box_h * n_rows)

    def image_box(row, col):
        """Left and top of the image area of cell (row, col)."""
        return (contact_sheet.ROW_HEADER_W + col * box_w + contact_sheet.PAD, top + header_h + row * box_h + contact_sheet.PAD)

    return size, image_box


def centre(sheet, image_box, row, col):
    x, y = image_box(row, col)
    return sheet.getpixel((x + CELL // 2, y + CELL // 2))


def test_collect_reads_jobs_swept_values_and_status(tmp_path):
    make_sweep(tmp_path, GRID)
    jobs = compare.collect(str(tmp_path))
    assert [j.num for j in jobs] == list(range(6))
    # size=48 is the same in every job, so it is not swept.
    assert [list(j.swept.items()) for j in jobs[:2]] == [
        [("optimizer", "adam"), ("style.weight", "1e4")],
        [("optimizer", "adam"), ("style.weight", "1e6")],
    ]
    assert jobs[0].overrides == {"optimizer": "adam", "style.weight": "1e4", "size": "48"}
    assert [j.status for j in jobs] == ["completed", "completed", "diverged", "completed", "running", "missing"]
    assert jobs[4].summary is None and jobs[4].final is None and len(jobs[4].metrics) == 4
    assert jobs[5].metrics == [] and jobs[5].final is None
    assert jobs[0].final == str(tmp_path / "0" / "final.png")


def test_a_folder_without_multirun_yaml_is_not_a_sweep(tmp_path):
    make_sweep(tmp_path, GRID[:2])  # job folders 0/ and 1/, but ...
    (tmp_path / "multirun.yaml").unlink()  # ... not the file only a Hydra multirun writes
    with pytest.raises(NstexpError, match=r"no multirun\.yaml"):
        compare.collect(str(tmp_path))


# optimizer=adam,lbfgs x seed=0,1 as Hydra writes the overrides; cut off while job 2 ran, job 3 never started.
SMALL_GRID = [
    (["optimizer=adam", "seed=0"], RED, "completed", True),
    (["optimizer=adam", "seed=1"], GREEN, "completed", True),
    (["optimizer=lbfgs", "seed=0"], None, None, True),
    None,
]
SMALL_TASK = ["optimizer=adam,lbfgs", "seed=0,1"]


@pytest.mark.parametrize("subdir", [
    "${hydra.job.num}_${hydra.job.override_dirname}",
    "a/${hydra.job.num}",
    "by_value/${hydra.job.override_dirname}",  # no number in the path at all
])
def test_jobs_are_found_wherever_a_custom_subdir_puts_them(tmp_path, subdir):
    make_sweep(tmp_path, SMALL_GRID, subdir=subdir, task=SMALL_TASK)
    job_dirs = [p.parent.parent for p in sorted(tmp_path.glob("**/.hydra/hydra.yaml"))]
    # Folders that hold .hydra/hydra.yaml but are no jobs of this sweep: inside a job folder, inside wandb/.
    for decoy, num in ((job_dirs[0] / "nested", 8), (tmp_path / "wandb" / "run-1" / "files", 9)):
        (decoy / ".hydra").mkdir(parents=True)
        (decoy / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))

    jobs = compare.collect(str(tmp_path))
    assert [(j.num, j.status) for j in jobs] == [(0, "completed"), (1, "completed"), (2, "running"), (3, "missing")]
    assert [j.swept for j in jobs] == [{"optimizer": o, "seed": s} for o in ("adam", "lbfgs") for s in ("0", "1")]
    found = {Path(j.dir) for j in jobs[:3]}
    assert found == set(job_dirs) and all(tmp_path in d.parents for d in found)
    assert jobs[3].dir is None  # never started, and its folder name is not just its number

    paths = compare.write_report(str(tmp_path), cell=CELL)
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["final_png"] == str((Path(jobs[0].dir) / "final.png").relative_to(tmp_path))
    assert [r["status"] for r in rows] == ["completed", "completed", "running", "missing"]
    sheet = Image.open(paths["contact_sheet"]).convert("RGB")
    size, image_box = layout(n_rows=2, n_cols=2, n_keys=2, n_col_keys=1, n_inputs=2)
    assert sheet.size == size
    assert (centre(sheet, image_box, 0, 0), centre(sheet, image_box, 0, 1)) == (RED, GREEN)


@pytest.mark.parametrize("subdir", ["${hydra.job.num}", "${hydra.job.num}_${hydra.job.override_dirname}"])
def test_jobs_never_started_are_missing_even_job_0(tmp_path, subdir):
    # A parallel launcher was cut off after starting job 1 only.
    make_sweep(tmp_path, [None, (["seed=1"], RED, "completed", True), None], subdir=subdir, task=["seed=0,1,2"])
    jobs = compare.collect(str(tmp_path))
    assert [(j.num, j.status, j.swept) for j in jobs] == [
        (0, "missing", {"seed": "0"}), (1, "completed", {"seed": "1"}), (2, "missing", {"seed": "2"})]
    # Where a job that never started would have gone is known only when its folder is its number.
    if subdir == "${hydra.job.num}":
        assert [j.dir for j in jobs] == [str(tmp_path / n) for n in ("0", "1", "2")]
    else:
        assert [j.dir for j in jobs] == [None, str(tmp_path / "1_seed=1"), None]
    # The inputs come from job 1's config, since job 0 has none.
    sheet = Image.open(compare.write_report(str(tmp_path), cell=CELL)["contact_sheet"]).convert("RGB")
    size, image_box = layout(n_rows=1, n_cols=3, n_keys=1, n_col_keys=1, n_inputs=2)
    assert sheet.size == size
    assert centre(sheet, image_box, 0, 1) == RED


def test_job_number_falls_back_to_an_integer_folder_name(tmp_path):
    make_sweep(tmp_path, GRID[:2])
    unnumbered = {"hydra": {"runtime": {"cwd": str(tmp_path)}}}  # hydra.yaml without hydra.job.num
    (tmp_path / "1" / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(unnumbered))
    (tmp_path / "extra" / ".hydra").mkdir(parents=True)
    (tmp_path / "extra" / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(unnumbered))
    assert [(j.num, j.dir) for j in compare.collect(str(tmp_path))] == [
        (0, str(tmp_path / "0")), (1, str(tmp_path / "1"))]  # extra/ has no number at all: left out


def test_contact_sheet_grid_layout_and_cells(tmp_path):
    make_sweep(tmp_path, GRID)
    paths = compare.write_report(str(tmp_path), cell=CELL)
    assert set(paths) == {"contact_sheet", "loss_curves", "csv", "markdown"}
    sheet = Image.open(paths["contact_sheet"]).convert("RGB")
    # Rows: optimizer (adam, lbfgs); columns: style.weight (1e4, 1e6, 1e8); content and style on top.
    size, image_box = layout(n_rows=2, n_cols=3, n_keys=2, n_col_keys=1, n_inputs=2)
    assert sheet.size == size
    assert centre(sheet, image_box, 0, 0) == RED
    assert centre(sheet, image_box, 0, 1) == GREEN
    assert centre(sheet, image_box, 0, 2) == BLUE  # diverged, but has a final image
    assert centre(sheet, image_box, 1, 0) == YELLOW
    for col in (1, 2):  # running and missing: grey placeholders (status text in the middle)
        x, y = image_box(1, col)
        assert sheet.getpixel((x + 2, y + 2)) == contact_sheet.PLACEHOLDER
    # The content image (a photo, not a flat colour) sits above the grid, left of the style image.
    x, y = image_box(0, 0)
    band = sheet.crop((x, 0, x + CELL, y - contact_sheet.PAD))
    assert len(band.getcolors(maxcolors=CELL * CELL)) > 100


def test_labels_name_the_key_unless_the_value_already_does():
    # A swept value that is itself an override (the leaderboard's methods) is not prefixed again:
    # "method=experiment=cmd" would spend a narrow cell's width on words every label repeats.
    assert contact_sheet._pairs(["style.weight", "method"], ["1e6", "experiment=cmd"]) == [
        "style.weight=1e6", "experiment=cmd"]


def test_edge_images_are_skipped_when_they_cannot_be_loaded(tmp_path):
    make_sweep(tmp_path, GRID[:4], content=str(tmp_path / "gone.png"), style="sample:nope")
    paths = compare.write_report(str(tmp_path), cell=CELL)
    sheet = Image.open(paths["contact_sheet"]).convert("RGB")
    size, image_box = layout(n_rows=2, n_cols=3, n_keys=2, n_col_keys=1, n_inputs=0)
    assert sheet.size == size
    assert centre(sheet, image_box, 1, 0) == YELLOW


def test_relative_input_paths_are_relative_to_the_launch_dir(tmp_path):
    launch = tmp_path / "project"
    (launch / "photos").mkdir(parents=True)
    Image.new("RGB", (20, 10), CYAN).save(launch / "photos" / "cat.png")
    sweep = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    make_sweep(sweep, GRID[:2], content="photos/cat.png", cwd=str(launch))
    sheet = Image.open(compare.write_report(str(sweep), cell=CELL)["contact_sheet"]).convert("RGB")
    size, image_box = layout(n_rows=1, n_cols=2, n_keys=1, n_col_keys=1, n_inputs=2)
    assert sheet.size == size
    x, _ = image_box(0, 0)
    assert sheet.getpixel((x + CELL // 2, contact_sheet.PAD + CELL // 2)) == CYAN


def test_one_key_is_one_row_in_job_number_order(tmp_path):
    colours = [(20 * i, 255 - 20 * i, 7 * i) for i in range(11)]
    make_sweep(tmp_path, [([f"seed={i}"], c, "completed", True) for i, c in enumerate(colours)])
    paths = compare.write_report(str(tmp_path), cell=CELL)
    sheet = Image.open(paths["contact_sheet"]).convert("RGB")
    size, image_box = layout(n_rows=1, n_cols=11, n_keys=1, n_col_keys=1, n_inputs=2)
    assert sheet.size == size
    # Job 10 is the last column (numeric order), not the third (as "10" < "2" would put it).
    assert [centre(sheet, image_box, 0, c) for c in range(11)] == colours


def test_wrap_lays_one_row_out_in_rows_of_wrap(tmp_path):
    """Eleven jobs of one swept key in rows of four: job i in row i // 4, column i % 4, no
    column header (each box's label names its value); a job without an image is grey."""
    colours = [(20 * i, 255 - 20 * i, 7 * i) for i in range(11)]
    jobs = []
    for i, colour in enumerate(colours):
        final = None
        if i != 9:
            final = str(tmp_path / f"{i}.png")
            Image.new("RGB", (40, 30), colour).save(final)
        jobs.append(Job(i, str(tmp_path), {}, {"method": f"m{i}"}, None, [], final, "completed" if final else "failed"))
    path = str(tmp_path / "sheet.png")
    contact_sheet.contact_sheet(jobs, path, CELL, specs_of=lambda job: (), wrap=4)
    sheet = Image.open(path).convert("RGB")
    box_w = CELL + 2 * contact_sheet.PAD
    box_h = CELL + 2 * contact_sheet.PAD + contact_sheet.LINE_H * 2
    assert sheet.size == (contact_sheet.ROW_HEADER_W + 4 * box_w, 3 * box_h)
    for i, colour in enumerate(colours):
        r, c = divmod(i, 4)
        x = contact_sheet.ROW_HEADER_W + c * box_w + contact_sheet.PAD + CELL // 2
        y = r * box_h + contact_sheet.PAD + CELL // 2
        assert sheet.getpixel((x, y)) == (contact_sheet.PLACEHOLDER if i == 9 else colour), i
    # Without wrap (or with fewer jobs than it) the same jobs are one row under a header.
    contact_sheet.contact_sheet(jobs, path, CELL, specs_of=lambda job: (), wrap=11)
    header_h = 2 * contact_sheet.PAD + contact_sheet.LINE_H
    assert Image.open(path).size == (contact_sheet.ROW_HEADER_W + 11 * box_w, header_h + box_h)


def test_three_keys_rows_first_key_columns_the_rest(tmp_path):
    jobs, colours = [], {}
    for i, (a, b, c) in enumerate([(a, b, c) for a in ("x", "y") for b in ("1", "2") for c in ("p", "q")]):
        colours[(a, b, c)] = (30 * i, 200, 255 - 30 * i)
        jobs.append(([f"a={a}", f"b={b}", f"c={c}"], colours[(a, b, c)], "completed", True))
    make_sweep(tmp_path, jobs)
    sheet = Image.open(compare.write_report(str(tmp_path), cell=CELL)["contact_sheet"]).convert("RGB")
    size, image_box = layout(n_rows=2, n_cols=4, n_keys=3, n_col_keys=2, n_inputs=2)
    assert sheet.size == size
    assert centre(sheet, image_box, 1, 2) == colours[("y", "2", "p")]
    assert centre(sheet, image_box, 0, 1) == colours[("x", "1", "q")]


def inputs_sweep(root, rows, cols, inputs_of):
    """Jobs of the values `rows` x `cols` (`key=value` each), job (a, b) made from the inputs named
    inputs_of(a, b) = (content, style), each a flat image of its own colour; returns {name: colour}."""
    jobs = [[a, b] for a in rows for b in cols]
    make_sweep(root, [(job, RED, "completed", True) for job in jobs])
    (root / "inputs").mkdir()
    colour = {}
    for num, (a, b) in enumerate(jobs):
        config_path = root / str(num) / ".hydra" / "config.yaml"
        config = yaml.safe_load(config_path.read_text())
        for key, name in zip(("content", "style"), inputs_of(a.split("=")[1], b.split("=")[1])):
            if name not in colour:
                colour[name] = (30 * len(colour), 255 - 30 * len(colour), 90)
                Image.new("RGB", (20, 20), colour[name]).save(root / "inputs" / f"{name}.png")
            config[key]["image"] = str(root / "inputs" / f"{name}.png")
        config_path.write_text(yaml.safe_dump(config))
    return colour


BOX_W = CELL + 2 * contact_sheet.PAD
BOX_H = CELL + 2 * contact_sheet.PAD + contact_sheet.LINE_H * 3  # two swept keys
HEADER_H = 2 * contact_sheet.PAD + contact_sheet.LINE_H  # one column key


def inputs_at(sheet, x, y):
    """The colours in the middle of the content and style halves of an inputs box at (x, y)."""
    half = (CELL - contact_sheet.PAD) // 2
    left, middle = x + contact_sheet.PAD + half // 2, y + contact_sheet.PAD + half // 2
    return sheet.getpixel((left, middle)), sheet.getpixel((left + half + contact_sheet.PAD, middle))


def test_each_column_shows_its_own_inputs(tmp_path):
    """sweep=neighbours: rows are methods, columns pairs; each column shows its own pair, not the first job's."""
    pairs = ["pair=p", "pair=q", "pair=r"]
    colour = inputs_sweep(tmp_path, ["experiment=a", "experiment=b"], pairs, lambda _, p: (f"photo_{p}", f"art_{p}"))
    sheet = Image.open(compare.write_report(str(tmp_path), cell=CELL)["contact_sheet"]).convert("RGB")
    top = contact_sheet.inputs_h(CELL)
    assert sheet.size == (contact_sheet.ROW_HEADER_W + 3 * BOX_W, top + HEADER_H + 2 * BOX_H)
    for c, pair in enumerate(p.split("=")[1] for p in pairs):
        x = contact_sheet.ROW_HEADER_W + c * BOX_W
        assert inputs_at(sheet, x, 0) == (colour[f"photo_{pair}"], colour[f"art_{pair}"]), pair
        middle = top + HEADER_H + contact_sheet.PAD + CELL // 2
        assert sheet.getpixel((x + contact_sheet.PAD + CELL // 2, middle)) == RED  # the results below


def test_each_row_shows_its_own_inputs_when_the_pair_is_the_row(tmp_path):
    colour = inputs_sweep(tmp_path, ["pair=p", "pair=q"], ["seed=1", "seed=2"], lambda p, _: (f"photo_{p}", f"art_{p}"))
    sheet = Image.open(compare.write_report(str(tmp_path), cell=CELL)["contact_sheet"]).convert("RGB")
    assert sheet.size == (contact_sheet.ROW_HEADER_W + 3 * BOX_W, HEADER_H + 2 * BOX_H)  # an inputs column
    for r, pair in enumerate(("p", "q")):
        y = HEADER_H + r * BOX_H
        assert inputs_at(sheet, contact_sheet.ROW_HEADER_W, y) == (colour[f"photo_{pair}"], colour[f"art_{pair}"])


def test_each_cell_shows_its_inputs_when_neither_rows_nor_columns_share_them(tmp_path):
    """Content swept by rows and style by columns: every cell has a pair of its own."""
    colour = inputs_sweep(tmp_path, ["content.image=x", "content.image=y"], ["style.image=u", "style.image=v"],
                          lambda a, b: (a, b))
    sheet = Image.open(compare.write_report(str(tmp_path), cell=CELL)["contact_sheet"]).convert("RGB")
    inputs_h = contact_sheet.inputs_h(CELL)
    assert sheet.size == (contact_sheet.ROW_HEADER_W + 2 * BOX_W, HEADER_H + 2 * (BOX_H + inputs_h))
    for r, content in enumerate(("x", "y")):
        for c, style in enumerate(("u", "v")):
            x, y = contact_sheet.ROW_HEADER_W + c * BOX_W, HEADER_H + r * (BOX_H + inputs_h)
            assert inputs_at(sheet, x, y) == (colour[content], colour[style]), (content, style)
            middle = (x + contact_sheet.PAD + CELL // 2, y + inputs_h + contact_sheet.PAD + CELL // 2)
            assert sheet.getpixel(middle) == RED  # its result below its inputs


def test_tables_match_summaries(tmp_path):
    summaries = make_sweep(tmp_path, GRID)
    paths = compare.write_report(str(tmp_path), cell=CELL)
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == [str(i) for i in range(6)]
    assert [(r["optimizer"], r["style.weight"]) for r in rows[:2]] == [("adam", "1e4"), ("adam", "1e6")]
    for num, summary in summaries.items():
        row = rows[num]
        assert row["status"] == summary["status"]
        assert int(row["steps"]) == summary["steps"] and int(row["evals"]) == summary["evals"]
        for key in ("wall_time_s", "final/loss/total", "final/loss/content", "final/loss/style"):
            assert float(row[key]) == summary[key], key  # full precision, not rounded
        assert row["final_png"] == f"{num}/final.png"
    assert rows[4]["status"] == "running" and rows[5]["status"] == "missing"
    assert all(rows[4][k] == rows[5][k] == "" for k in ("steps", "wall_time_s", "final/loss/total", "final_png"))

    md = Path(paths["markdown"]).read_text().splitlines()
    assert len(md) == 2 + len(rows)  # header, separator, one row per job
    assert md[0].startswith("| job | optimizer | style.weight | status |")
    assert md[2].startswith("| 0 | adam | 1e4 | completed | 3 | 6 | ")


def test_loss_curves_is_an_image(tmp_path):
    make_sweep(tmp_path, GRID)
    path = compare.write_report(str(tmp_path), cell=CELL)["loss_curves"]
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.width >= 600 and img.height >= 400
        assert len(img.convert("RGB").getcolors(maxcolors=img.width * img.height)) > 20  # not blank


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nstexp.sweep.compare", *args], cwd=REPO,
                          capture_output=True, text=True)


def test_cli_writes_the_report(tmp_path):
    make_sweep(tmp_path, GRID)
    result = _cli(str(tmp_path), "--cell", "32")
    assert result.returncode == 0, result.stderr
    written = result.stdout.split()
    # No eval/ metrics in these jobs, so no eval_curves.png or tradeoff.png.
    kinds = ("contact_sheet", "loss_curves", "csv", "markdown")
    assert sorted(written) == sorted(str(tmp_path / compare.OUTPUTS[k]) for k in kinds)
    size, _ = layout(n_rows=2, n_cols=3, n_keys=2, n_col_keys=1, n_inputs=2, cell=32)
    assert Image.open(tmp_path / "contact_sheet.png").size == size


@pytest.mark.parametrize("target", ["not_there", "empty", "numbered"])
def test_cli_error_is_one_line(tmp_path, target):
    (tmp_path / "empty" / "not_a_job").mkdir(parents=True)
    for num in ("0", "1"):  # folders named like jobs, but no multirun.yaml
        (tmp_path / "numbered" / num).mkdir(parents=True)
    result = _cli(str(tmp_path / target))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    if target != "not_there":
        assert "multirun.yaml" in result.stderr


STEPS_SWEEP = [([f"steps={n}"], colour, "completed", True) for n, colour in ((10, RED), (20, GREEN))]


def test_wandb_table_has_the_csv_columns_and_names_a_swept_steps_once(tmp_path):
    make_sweep(tmp_path, STEPS_SWEEP)
    jobs = compare.collect(str(tmp_path))
    table = callbacks.comparison_table(jobs)
    assert table.columns == ["job", "steps (swept)", *compare.RESULTS, "final", "run"]
    header, _ = compare.table(jobs, str(tmp_path))
    assert table.columns[:-2] == header[:-1]  # the same names up to each table's own last columns
    assert [row[:4] for row in table.data] == [[0, "10", "completed", 3], [1, "20", "completed", 3]]


def test_summary_run_logs_the_table_offline(tmp_path, wandb_env):
    import wandb
    from omegaconf import OmegaConf

    from wandb_offline import find_runs

    sweep = tmp_path / "sweep"
    make_sweep(sweep, STEPS_SWEEP)
    jobs = compare.collect(str(sweep))
    paths = compare.write_report(str(sweep), cell=CELL, jobs=jobs)
    wandb_cfg = OmegaConf.create({"project": "nstexp", "entity": None, "tags": []})
    callbacks.log_summary_run(str(sweep), jobs, paths, wandb_cfg, "offline", "g")
    wandb.teardown()  # the run file is complete only once W&B's service has stopped, as at the end of a sweep
    (run,) = find_runs(str(sweep))
    assert run.job_type == "compare" and run.exit_code == 0
    logged = json.loads(Path(run.media(run.history[0]["comparison"]["path"])).read_text())
    assert logged["columns"] == ["job", "steps (swept)", *compare.RESULTS, "final", "run"]
    assert [row[1] for row in logged["data"]] == ["10", "20"]


@pytest.mark.parametrize("text,shown", [
    ("100000.0", "1e5"), ("3000000.0", "3e6"), ("30000.0", "3e4"), ("0.0001", "1e-4"), ("0.02", "0.02"),
    ("1.0", "1"), ("0.1234567891", "0.1234567891"), ("123456.7", "1.234567e5"), ("7", "7"), ("adam", "adam"),
    ("sample:chelsea", "sample:chelsea"), ("inf", "inf"), ("1e5", "1e5"),
    ("sample\\:chelsea", "sample:chelsea"), ("[sample\\:a,sample\\:b]", "[sample:a,sample:b]"),
])
def test_swept_numbers_are_shown_as_people_write_them(text, shown):
    assert display_value(text) == shown
    if shown != text and "\\" not in text:
        assert float(shown) == float(text)  # exact, never rounded


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_markdown(path):
    """comparison.md as one dict per row, header -> cell."""
    lines = [line.strip("|\n").split(" | ") for line in Path(path).read_text().splitlines()]
    header = [c.strip() for c in lines[0]]
    return [dict(zip(header, (c.strip() for c in line))) for line in lines[2:]]


def update_summary(root, num, **values):
    path = root / str(num) / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def test_markdown_shows_4_significant_digits_and_csv_full_precision(tmp_path):
    # Hydra records a swept 1e5 as 100000.0: both tables show it as 1e5, as before.
    make_sweep(tmp_path, [(["style.weight=100000.0"], RED, "completed", True),
                          (["style.weight=0.0001"], GREEN, "completed", True)])
    exact = {"final/loss/total": 2316912345678901.2, "final/loss/style": 0.314159265358979,
             "final/loss/content": 12345.678, "wall_time_s": 4.6}
    update_summary(tmp_path, 0, **exact)
    paths = compare.write_report(str(tmp_path), cell=CELL)

    md, rows = read_markdown(paths["markdown"]), read_csv(paths["csv"])
    assert [r["style.weight"] for r in md] == [r["style.weight"] for r in rows] == ["1e5", "1e-4"]
    assert {k: md[0][k] for k in exact} == {"final/loss/total": "2.317e+15", "final/loss/style": "0.3142",
                                           "final/loss/content": "1.235e+04", "wall_time_s": "4.60 s"}
    assert (md[0]["steps"], md[0]["evals"]) == ("3", "6")  # integers as they are
    assert {k: rows[0][k] for k in exact} == {k: repr(v) for k, v in exact.items()}
    assert all(float(rows[0][k]) == v for k, v in exact.items())


LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def eval_metrics(ssim, style_sw):
    """The eval/ keys a run logs for one image, built around its SSIM and sliced style distance."""
    values = {"eval/ssim": ssim, "eval/content": 2 * (1 - ssim), "eval/style_gram": style_sw / 2,
              "eval/style_sw": style_sw, "eval/colour_style": 0.1, "eval/colour_content": 0.2, "eval/tv": 1.5,
              "eval/styleeval_cf": ssim, "eval/styleeval_ge": 1 - style_sw / 2, "eval/styleeval_lp": 0.5,
              "eval/styleeval": (ssim + 1 - style_sw / 2 + 0.5) / 3, "eval/cfsd": 1e3 * (1 - ssim),
              "eval/colour_hellinger": style_sw / 3}
    for kind in ("style_gram", "style_sw"):
        values.update({f"eval/{kind}/{layer}": values[f"eval/{kind}"] * i for i, layer in enumerate(LAYERS, 1)})
    return values


def add_evals(root, num, ssim, style_sw, **summary):
    """Job `num` with the eval metrics: evaluated at steps 0 and 3 (other rows lack them), final values in its summary.

    At step 0 the image is the content image: SSIM 1 and style distance 1.
    """
    path = root / str(num) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0].update(eval_metrics(1.0, 1.0))
    rows[3].update(eval_metrics(ssim, style_sw))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if (root / str(num) / "summary.json").exists():
        update_summary(root, num, **eval_metrics(ssim, style_sw), **summary)


# style.normalization=gatys,mean x style.weight=1e4,1e6, and job 4 still running: final style losses
# five orders of magnitude apart between the normalizations, so only the eval metrics compare them.
NORMS = [([f"style.normalization={n}", f"style.weight={w}"], RED, "completed", True)
         for n in ("gatys", "mean") for w in ("1e4", "1e6")] + [
    (["style.normalization=mean", "style.weight=1e8"], None, None, True)]
# job: (final/loss/style, eval/ssim, eval/style_sw)
NORM_RESULTS = {0: (3e15, 0.9, 0.6), 1: (1e14, 0.5, 0.2), 2: (0.5, 0.8, 0.4), 3: (0.02, 0.3, 0.1)}


def eval_sweep(root):
    make_sweep(root, NORMS)
    for num, (style_loss, ssim, style_sw) in NORM_RESULTS.items():
        add_evals(root, num, ssim, style_sw, **{"final/loss/style": style_loss})
    add_evals(root, 4, 0.7, 0.5)  # running: evaluated along the way, no summary yet


def test_eval_columns_compare_jobs_across_normalizations(tmp_path):
    eval_sweep(tmp_path)
    paths = compare.write_report(str(tmp_path), cell=CELL, sort="eval/style_sw", tables_only=True)
    assert set(paths) == {"csv", "markdown"} and not list(tmp_path.glob("*.png"))  # the tables alone
    md, rows = read_markdown(paths["markdown"]), read_csv(paths["csv"])
    # Best style distance first; the running job has none and comes last, with empty cells.
    assert [r["job"] for r in rows] == [r["job"] for r in md] == ["3", "1", "2", "0", "4"]
    assert [r["eval/style_sw"] for r in md] == ["0.1", "0.2", "0.4", "0.6", ""]
    assert [r["final/loss/style"] for r in md] == ["0.02", "1e+14", "0.5", "3e+15", ""]
    assert all(rows[-1][k] == md[-1][k] == "" for k in compare.EVALS)
    # The headline metrics in both tables, per layer (and colour_content) only in the CSV.
    per_layer = [f"eval/{kind}/{layer}" for kind in ("style_gram", "style_sw") for layer in LAYERS]
    assert list(md[0])[-len(compare.EVALS) - 1:] == [*compare.EVALS, "final_png"]
    assert list(rows[0])[-len(per_layer) - 2:] == ["eval/colour_content", *per_layer, "final_png"]
    assert float(rows[0]["eval/style_sw/relu5_1"]) == 0.1 * 5

    rows = read_csv(compare.write_report(str(tmp_path), cell=CELL, sort="eval/ssim", tables_only=True)["csv"])
    assert [r["job"] for r in rows] == ["0", "2", "1", "3", "4"]  # SSIM: higher is better, so highest first
    rows = read_csv(compare.write_report(str(tmp_path), cell=CELL, tables_only=True)["csv"])
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4"]  # unsorted: job order


def test_sorting_by_total_variation_puts_the_ratio_closest_to_1_first(tmp_path):
    """eval/tv is the result's total variation over the photo's: 0.2 is over-smoothed, 1.02 about right."""
    eval_sweep(tmp_path)
    tv = {0: 0.2, 1: 1.02, 2: 1.5, 3: 0.9}
    for num, value in tv.items():
        update_summary(tmp_path, num, **{"eval/tv": value})
    rows = read_csv(compare.write_report(str(tmp_path), cell=CELL, sort="eval/tv", tables_only=True)["csv"])
    closest_first = sorted(tv, key=lambda num: abs(tv[num] - 1))
    assert [r["job"] for r in rows] == [str(num) for num in closest_first] + ["4"]


def test_every_sortable_key_has_its_own_ranking_rule(tmp_path):
    """Each metric ranks by its definition (rules.BETTER), per-layer keys by their family's."""
    assert compare.ranking_rule("eval/ssim") == "higher"
    assert compare.ranking_rule("eval/tv") == "closer to 1"
    assert compare.ranking_rule("eval/style_sw/relu3_1") == compare.ranking_rule("eval/style_sw") == "lower"
    assert compare.ranking_rule("final/loss/style") == "lower"
    for key in compare.EVALS:
        assert compare.ranking_rule(key) is not None, key
    # A number without a rule is refused rather than ranked lowest first by default.
    eval_sweep(tmp_path)
    with pytest.raises(NstexpError, match=r"cannot sort by steps: no rule says which way it is better"):
        compare.sort_jobs(compare.collect(str(tmp_path)), "steps")


def test_cli_sorts_the_tables_and_refuses_a_key_no_job_has(tmp_path):
    eval_sweep(tmp_path)
    result = _cli(str(tmp_path), "--cell", "32", "--sort", "eval/style_sw", "--tables-only")
    assert result.returncode == 0, result.stderr
    assert [r["job"] for r in read_csv(tmp_path / "comparison.csv")] == ["3", "1", "2", "0", "4"]
    assert result.stdout.split() == [str(tmp_path / "comparison.csv"), str(tmp_path / "comparison.md")]
    assert not list(tmp_path.glob("*.png"))
    (tmp_path / "comparison.csv").unlink()
    result = _cli(str(tmp_path), "--sort", "eval/style_swd")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "eval/style_swd" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "comparison.csv").exists()  # refused before writing anything


def assert_plot(path, min_width=600):
    with Image.open(path) as img:
        assert img.width >= min_width and img.height >= 400
        assert len(img.convert("RGB").getcolors(maxcolors=img.width * img.height)) > 20  # not blank


def test_tradeoff_plot_has_a_point_per_job_with_the_eval_metrics(tmp_path):
    eval_sweep(tmp_path)
    jobs = compare.collect(str(tmp_path))
    assert [(job.num, x, y) for job, x, y in plots.tradeoff_points(jobs)] == [
        (num, ssim, style_sw) for num, (_, ssim, style_sw) in NORM_RESULTS.items()]  # not job 4, no summary
    assert plots.swept_label(jobs[1]) == "style.normalization=gatys, style.weight=1e6"
    assert plots.swept_label(jobs[4]) == "style.normalization=mean, style.weight=1e8 (running)"
    paths = compare.write_report(str(tmp_path), cell=CELL, jobs=jobs)
    assert paths["tradeoff"] == str(tmp_path / "tradeoff.png")
    assert_plot(paths["tradeoff"])


def test_tradeoff_axes_are_the_metrics_a_user_picks(tmp_path):
    eval_sweep(tmp_path)
    picked = {0: (0.9, 0.3), 1: (0.5, 0.6), 2: (0.7, 0.4), 3: (0.4, 0.8)}  # (eval/styleeval_cf, eval/styleeval_lp)
    for num, (cf, lp) in picked.items():
        update_summary(tmp_path, num, **{"eval/styleeval_cf": cf, "eval/styleeval_lp": lp})
    axes = ("eval/styleeval_cf", "eval/styleeval_lp")
    jobs = compare.collect(str(tmp_path))
    assert [(job.num, x, y) for job, x, y in plots.tradeoff_points(jobs, *axes)] == [
        (num, cf, lp) for num, (cf, lp) in picked.items()]
    # Where the best trade-offs lie follows each axis's rule; closer to 1 gives no side.
    assert plots.tradeoff_title(*axes) == "final images: best towards the top right"
    assert plots.tradeoff_title(*plots.TRADEOFF) == "final images: best towards the bottom right"
    assert plots.tradeoff_title("eval/tv", "eval/cfsd") == "final images: best towards the bottom"
    assert plots.tradeoff_labels(*axes) == ("content fidelity: eval/styleeval_cf (higher is better)",
                                            "style fidelity: eval/styleeval_lp (higher is better)")
    default = Path(compare.write_report(str(tmp_path), cell=32, jobs=jobs)["tradeoff"]).read_bytes()
    result = _cli(str(tmp_path), "--cell", "32", "--tradeoff", *axes)
    assert result.returncode == 0, result.stderr
    assert_plot(tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").read_bytes() != default
    refused = _cli(str(tmp_path), "--tradeoff", "eval/ssim", "steps")
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: cannot plot steps: no rule says which way it is better")


def test_eval_curves_use_only_the_evaluated_steps(tmp_path):
    eval_sweep(tmp_path)
    jobs = compare.collect(str(tmp_path))
    # Evaluated at steps 0 and 3 only: the curve has those two points, against evals and wall time.
    rows = jobs[1].metrics
    assert plots.points(jobs[1], "evals", "eval/style_sw") == [(0, 1.0), (6, 0.2)]
    assert plots.points(jobs[1], "time_s", "eval/ssim") == [(rows[0]["time_s"], 1.0), (rows[3]["time_s"], 0.5)]
    paths = compare.write_report(str(tmp_path), cell=CELL, jobs=jobs)
    assert paths["eval_curves"] == str(tmp_path / "eval_curves.png")
    assert_plot(paths["eval_curves"])


def test_axis_labels_say_which_way_is_better_as_the_metric_ranks():
    assert plots.axis_label("total variation", "eval/tv") == "total variation: eval/tv (closer to 1 is better)"
    assert plots.axis_label("ssim", "eval/ssim") == "ssim: eval/ssim (higher is better)"
    assert plots.axis_label("style", "eval/style_sw/relu3_1") == "style: eval/style_sw/relu3_1 (lower is better)"
    assert plots.axis_label("steps", "steps") == "steps: steps"  # no rule: no claim
    for key in rules.BETTER:
        assert plots.axis_label("x", key).endswith(f"({rules.better(key)} is better)"), key
    for key, label in (plots.CONTENT_FIDELITY, plots.STYLE_FIDELITY):
        assert label.endswith(f": {key} ({rules.better(key)} is better)")


def test_no_eval_plots_without_eval_metrics(tmp_path):
    make_sweep(tmp_path, GRID)
    paths = compare.write_report(str(tmp_path), cell=CELL)
    assert "tradeoff" not in paths and "eval_curves" not in paths
    assert not (tmp_path / "tradeoff.png").exists() and not (tmp_path / "eval_curves.png").exists()
    assert "eval/ssim" not in read_csv(paths["csv"])[0]


def test_summary_run_logs_the_eval_columns_and_the_tradeoff_scatter(tmp_path, wandb_env):
    import wandb
    from omegaconf import OmegaConf

    from wandb_offline import find_runs

    sweep = tmp_path / "sweep"
    eval_sweep(sweep)
    jobs = compare.collect(str(sweep))
    paths = compare.write_report(str(sweep), cell=CELL, jobs=jobs)
    wandb_cfg = OmegaConf.create({"project": "nstexp", "entity": None, "tags": []})
    callbacks.log_summary_run(str(sweep), jobs, paths, wandb_cfg, "offline", "g")
    wandb.teardown()
    (run,) = find_runs(str(sweep))
    logged = run.history[0]
    table = json.loads(Path(run.media(logged["comparison"]["path"])).read_text())
    assert table["columns"][-len(compare.EVALS) - 2:] == [*compare.EVALS, "final", "run"]  # headline ones only
    style_sw = table["columns"].index("eval/style_sw")
    assert [row[style_sw] for row in table["data"]] == [0.6, 0.2, 0.4, 0.1, None]
    scatter = json.loads(Path(run.media(logged["tradeoff_chart_table"]["path"])).read_text())
    x, y = plots.tradeoff_labels(*plots.TRADEOFF)
    assert scatter["columns"] == ["job", x, y] and "eval/ssim (higher" in x and "eval/style_sw (lower is better)" in y
    assert scatter["data"][0] == ["style.normalization=gatys, style.weight=1e4", 0.9, 0.6]
    chart = run.config["_wandb"]["visualize"]["tradeoff_chart"]
    assert chart["panel_config"]["fieldSettings"] == {"x": x, "y": y}
    assert {"contact_sheet", "loss_curves", "eval_curves", "tradeoff"} <= set(logged)
