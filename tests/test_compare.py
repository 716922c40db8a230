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
from nstexp import callbacks, compare
from nstexp.errors import NstexpError
from nstexp.sweep_jobs import display_value

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
    """The contact sheet's layout as compare.contact_sheet documents it."""
    box_w = cell + 2 * compare.PAD
    box_h = cell + 2 * compare.PAD + compare.LINE_H * (n_keys + 1)
    header_h = 2 * compare.PAD + compare.LINE_H * max(1, n_col_keys)
    top = box_h if n_inputs else 0
    size = (compare.ROW_HEADER_W + box_w * max(n_cols, n_inputs), top + header_h + box_h * n_rows)

    def image_box(row, col):
        """Left and top of the image area of cell (row, col)."""
        return (compare.ROW_HEADER_W + col * box_w + compare.PAD, top + header_h + row * box_h + compare.PAD)

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
        assert sheet.getpixel((x + 2, y + 2)) == compare.PLACEHOLDER
    # The content image (a photo, not a flat colour) sits above the grid, left of the style image.
    x, y = image_box(0, 0)
    band = sheet.crop((x, 0, x + CELL, y - compare.PAD))
    assert len(band.getcolors(maxcolors=CELL * CELL)) > 100


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
    assert sheet.getpixel((x + CELL // 2, compare.PAD + CELL // 2)) == CYAN


def test_one_key_is_one_row_in_job_number_order(tmp_path):
    colours = [(20 * i, 255 - 20 * i, 7 * i) for i in range(11)]
    make_sweep(tmp_path, [([f"seed={i}"], c, "completed", True) for i, c in enumerate(colours)])
    paths = compare.write_report(str(tmp_path), cell=CELL)
    sheet = Image.open(paths["contact_sheet"]).convert("RGB")
    size, image_box = layout(n_rows=1, n_cols=11, n_keys=1, n_col_keys=1, n_inputs=2)
    assert sheet.size == size
    # Job 10 is the last column (numeric order), not the third (as "10" < "2" would put it).
    assert [centre(sheet, image_box, 0, c) for c in range(11)] == colours


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
    return subprocess.run([sys.executable, "-m", "nstexp.compare", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_the_report(tmp_path):
    make_sweep(tmp_path, GRID)
    result = _cli(str(tmp_path), "--cell", "32")
    assert result.returncode == 0, result.stderr
    written = result.stdout.split()
    assert sorted(written) == sorted(str(tmp_path / n) for n in compare.OUTPUTS.values())
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
])
def test_swept_numbers_are_shown_as_people_write_them(text, shown):
    assert display_value(text) == shown
    if shown != text:
        assert float(shown) == float(text)  # exact, never rounded
