"""`nstexp leaderboard`: real runs at a tiny size (two methods, the peer, a recipe that cannot run),
resumed; the page, the contact sheet, the rank correlations, the Pareto front; bad names refused."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from conftest import refused_in_one_line, run_cli
from nstexp import images
from nstexp.eval import rules
from nstexp.sweep import contact_sheet as cs
from nstexp.sweep.leaderboard import folder, pair_images
from nstexp.sweep.leaderboard_page import SHEET_CELL, dominators, sheet_path, spearman, to_reach_front

PAIR = "chelsea_swirls"
FIRST = ["experiment=nstexp"]
# The default, a loss preset, the peer and a recipe that needs a download (refused offline).
METHODS = [*FIRST, "loss=gatys", "peer=pastiche", "experiment=seed000_keras_vgg16"]
TINY = ["--pairs", PAIR, "--size", "48", "--steps", "2", "--eval-size", "64"]


def test_leaderboard_end_to_end(tmp_path):
    """One test (the runs take tens of seconds, and a fixture would run once per xdist worker)."""
    board = _board(tmp_path)
    _every_method_has_a_row_and_the_recipe_that_cannot_run_says_why(board)
    _resume_skips_recorded_methods(board)
    _the_sheet_shows_the_inputs_once_then_the_results(board)
    _the_agreement_table_is_spearmans_rank_correlation(board)


def _board(tmp):
    """The default alone, then all of METHODS with the same folders: the second run resumes the first."""
    out, page = str(tmp / "runs"), str(tmp / "docs" / "leaderboard.md")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp / "wandb"), "WANDB_SILENT": "true",
           "TORCH_HOME": str(tmp / "torch_home"), "OMP_NUM_THREADS": "1"}
    args = [*TINY, "--out", out, "--page", page]
    first = run_cli(["leaderboard", "--methods", ",".join(FIRST), *args], tmp, env=env)
    final = os.path.join(folder(out, PAIR, FIRST[0]), "final.png")
    stamp = os.stat(final).st_mtime_ns
    second = run_cli(["leaderboard", "--methods", ",".join(METHODS), *args], tmp, env=env)
    records = {m: json.load(open(os.path.join(folder(out, PAIR, m), "record.json"))) for m in METHODS}
    return {"first": first, "second": second, "out": out, "page": page, "stamp": stamp, "final": final,
            "records": records, "text": open(page).read()}


def _every_method_has_a_row_and_the_recipe_that_cannot_run_says_why(board):
    assert board["first"].returncode == 0 and board["second"].returncode == 0, board["second"].stderr
    text, records = board["text"], board["records"]
    for method in METHODS[:3]:
        record = records[method]
        assert record["status"] == "completed", record
        assert record["time_s"] > 0
        assert set(rules.HEADLINE) <= set(record["metrics"])
        assert f"| {method} | completed |" in text  # its pair's table
        assert f"| {method} | 1 of 1 |" in text  # the overall table
    refused = records["experiment=seed000_keras_vgg16"]
    assert refused["status"] != "completed" and refused["reason"] and not refused["metrics"]
    reason = refused["reason"].replace("|", "\\|")  # as the Markdown table escapes it
    assert f"| experiment=seed000_keras_vgg16 | {refused['status']}: {reason} |" in text
    assert "| experiment=seed000_keras_vgg16 | 0 of 1 |" in text
    assert "Machine: " in text and "nstexp leaderboard --methods" in text


def _resume_skips_recorded_methods(board):
    assert "experiment=nstexp: completed, already recorded, skipped" in board["second"].stderr
    assert os.stat(board["final"]).st_mtime_ns == board["stamp"]  # not run again
    assert "loss=gatys: running" in board["second"].stderr


def _the_sheet_shows_the_inputs_once_then_the_results(board):
    """Contact sheet layout "shared" (nstexp.sweep.contact_sheet): the pair's content and style along
    the top, the results below in one row (four methods: fewer than a wrapped row holds)."""
    sheet = Image.open(sheet_path(board["page"], PAIR)).convert("RGB")
    n, box_w = len(METHODS), SHEET_CELL + 2 * cs.PAD
    box_h = SHEET_CELL + 2 * cs.PAD + cs.LINE_H * 2  # one swept key and the job line
    header_h = 2 * cs.PAD + cs.LINE_H
    assert sheet.size == (cs.ROW_HEADER_W + n * box_w, box_h + header_h + box_h)

    def shown_at(path, x, y):
        """`path` scaled into the cell as _box centres it in the box at (x, y): exactly there."""
        image = np.asarray(images.resize_longest(images.load_image(path), SHEET_CELL), dtype=float)
        h, w = image.shape[:2]
        left, top = x + cs.PAD + (SHEET_CELL - w) // 2, y + cs.PAD + (SHEET_CELL - h) // 2
        crop = np.asarray(sheet.crop((left, top, left + w, top + h)), dtype=float)
        return np.abs(crop - image).max() == 0

    assert shown_at(pair_images(PAIR)[0], cs.ROW_HEADER_W, 0)  # the content, once
    assert shown_at(pair_images(PAIR)[1], cs.ROW_HEADER_W + box_w, 0)  # the style beside it
    assert not shown_at(pair_images(PAIR)[0], cs.ROW_HEADER_W + 2 * box_w, 0)
    assert shown_at(board["final"], cs.ROW_HEADER_W, box_h + header_h)  # the default, first


def _the_agreement_table_is_spearmans_rank_correlation(board):
    records = list(board["records"].values())
    a, b = "eval/styleeval_cf", "eval/ssim"
    done = [r for r in records if r["status"] == "completed"]
    # Independently: Pearson's correlation of the ranks (no ties among three real results).
    ra = np.argsort(np.argsort([r["metrics"][a] for r in done]))
    rb = np.argsort(np.argsort([r["metrics"][b] for r in done]))
    expected = float(np.corrcoef(ra, rb)[0, 1])
    rho, n = spearman(records, a, b)
    assert n == 3 and rho == pytest.approx(expected)
    assert f"| styleeval_cf | ssim | {rho:+.2f} |" in board["text"]
    assert "the default is on the Pareto front" in board["text"] or "is dominated by" in board["text"]


def _record(method, ssim, style_sw):
    return {"method": method, "status": "completed", "metrics": {"eval/ssim": ssim, "eval/style_sw": style_sw}}


def test_pareto_dominators():
    records = [_record("d", 0.5, 0.5), _record("better_both", 0.6, 0.4), _record("tie_one", 0.5, 0.45),
               _record("trade", 0.9, 0.9), _record("equal", 0.5, 0.5)]
    assert dominators(records, "d") == ["better_both", "tie_one"]
    assert dominators(records, "better_both") == []
    # Beyond every method as close to the style (better_both, tie_one, equal), or as faithful (all).
    assert to_reach_front(records, "d") == (0.6, 0.4)
    assert dominators([_record("d", math.nan, 0.5)], "d") is None


@pytest.mark.parametrize("args,named", [
    (["--methods", "experiment=nope"], "experiment=nope"),
    (["--methods", "nstexp"], "nstexp"),
    (["--pairs", "cat_dog"], "cat_dog"),
    (["--pairs", ","], "nothing given"),
    (["--size", "8"], "--size=8"),
])
def test_bad_names_are_refused_in_one_line(tmp_path, args, named):
    line = refused_in_one_line(run_cli(["leaderboard", *args], tmp_path))
    assert named in line and ("allowed:" in line or ">=" in line)
