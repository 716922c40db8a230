"""L-BFGS on the loss divided by its first value (optimizer.normalize_loss, the default) never
stalls where the raw loss does not: after 30 steps at 64 px every shipped loss preset, layer
preset, recipe and sweep job that runs L-BFGS is within 2x of the raw-loss L-BFGS's progress.
The pair counts it records say when L-BFGS rejected its curvature pairs."""

import glob
import json
import os

import pytest
import yaml

from conftest import REPO, tiny_cfg

from nstexp.optim.optimizers import uses_batched_lbfgs
from nstexp.run.runner import run

COMMON = ["size=64", "steps=30", "eval.enabled=false"]


def _progress(tmp_path, overrides, name):
    """The final loss over the initial one, from the run's metrics lines."""
    out = tmp_path / name
    summary = run(tiny_cfg(*COMMON, *overrides), str(out))
    assert summary["status"] == "completed"
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return rows[-1]["loss/total"] / rows[0]["loss/total"]


def _names(group):
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(REPO, "conf", group, "*.yaml")))


def _default_options() -> dict[str, str]:
    """The primary config's group options (conf/config.yaml's defaults list): layers=paper, ..."""
    defaults = yaml.safe_load(open(os.path.join(REPO, "conf", "config.yaml")))["defaults"]
    return {k: v for item in defaults if isinstance(item, dict) for k, v in item.items()}


# Every loss preset, every layer preset but the default's (the default loss preset's case runs
# it), and every recipe (those that run Adam are skipped when the test composes them: nothing
# is composed while the suite is collected).
DEFAULTS = _default_options()
CASES = ([[f"loss={n}"] for n in _names("loss")]
         + [[f"layers={n}"] for n in _names("layers") if n != DEFAULTS["layers"]]
         + [[f"experiment={n}"] for n in _names("experiment")])
# The default suite checks the default preset; every other preset and recipe runs in the slow
# suite (`pytest -m slow`, which .ci/run runs too): each case is a long end-to-end comparison.
PARAMS = [pytest.param(o, id=" ".join(o), marks=() if o == [f"loss={DEFAULTS['loss']}"] else pytest.mark.slow)
          for o in CASES]


@pytest.mark.parametrize("overrides", PARAMS)
def test_the_normalized_loss_makes_at_least_half_the_raw_losss_progress(tmp_path, overrides):
    # The recipes' own sizes and coarse-to-fine levels give way to one level at 64 px; a recipe
    # that ships the raw loss (pytorch_tutorial) is checked with the normalized one.
    if tiny_cfg(*overrides).optimizer.name != "lbfgs":
        pytest.skip("the recipe runs Adam")
    overrides = [*overrides, "scales.min=null"]
    normalized = _progress(tmp_path, [*overrides, "optimizer.normalize_loss=true"], "normalized")
    raw = _progress(tmp_path, [*overrides, "optimizer.normalize_loss=false"], "raw")
    # Where the raw loss makes progress, the normalized one does too, and at least half as much.
    # (layers=pytorch_tutorial overshoots 65x in its first steps either way; the batched L-BFGS
    # takes such steps back, see tests/test_lbfgs.py, and both end far below their start.)
    assert normalized <= 2 * raw and (normalized < 1 or raw >= 1), f"normalized {normalized:.3g} vs raw {raw:.3g}"


def _sweep_lbfgs_jobs():
    from nstexp.sweep.resumable import grid

    jobs = []
    for path in sorted(glob.glob(os.path.join(REPO, "sweeps", "*.yaml"))):
        name = os.path.basename(path)[:-5]
        params = (yaml.safe_load(open(path)).get("hydra") or {}).get("sweeper", {}).get("params")
        for overrides in grid(params, []):
            cfg = tiny_cfg(f"sweep={name}", *overrides)
            if uses_batched_lbfgs(cfg.optimizer) and cfg.optimizer.normalize_loss:
                jobs.append([f"sweep={name}", *overrides])
    return jobs


@pytest.mark.slow
@pytest.mark.parametrize("overrides", _sweep_lbfgs_jobs() if os.environ.get("NSTEXP_SWEEP_JOBS") else [],
                         ids=lambda o: " ".join(o))
def test_every_sweep_job_on_the_normalized_loss_makes_at_least_half_the_raw_losss_progress(tmp_path, overrides):
    """NSTEXP_SWEEP_JOBS=1 pytest -m slow -k sweep_job: every L-BFGS job of every sweep file."""
    if "backbone.weights=imagenet" in overrides:
        pytest.skip("torchvision's ImageNet weights download on first use: not offline")
    overrides = [*overrides, "scales.min=null"]
    normalized = _progress(tmp_path, overrides, "normalized")
    raw = _progress(tmp_path, [*overrides, "optimizer.normalize_loss=false"], "raw")
    assert normalized <= 2 * raw and (normalized < 1 or raw >= 1), f"normalized {normalized:.3g} vs raw {raw:.3g}"


def test_pairs_are_counted_and_a_run_that_rejected_most_says_so(tmp_path, capsys):
    # The PyTorch tutorial's layers start in negative curvature: its first pairs are rejected.
    out = tmp_path / "run"
    summary = run(tiny_cfg("size=64", "steps=4", "experiment=pytorch_tutorial", "optimizer.normalize_loss=true",
                           "eval.enabled=false"), str(out))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    # Each step after the first forms one pair (the first step has no previous gradient).
    assert [r["lbfgs/pairs_accepted"] + r["lbfgs/pairs_rejected"] for r in rows] == [0, 0, 1, 2, 3]
    keys = ("lbfgs/pairs_accepted", "lbfgs/pairs_rejected", "lbfgs/steps_taken_back")
    assert [summary[k] for k in keys] == [rows[-1][k] for k in keys]
    assert summary["lbfgs/pairs_rejected"] > summary["lbfgs/pairs_accepted"]
    warning = [w for w in summary["warnings"] if w.startswith("L-BFGS rejected")]
    assert len(warning) == 1 and "L-BFGS rejected" in capsys.readouterr().err

    # The default run accepts its pairs from the second one on: no warning.
    summary = run(tiny_cfg("size=64", "steps=4", "eval.enabled=false"), str(tmp_path / "default"))
    assert summary["lbfgs/pairs_accepted"] >= 2 and not any("L-BFGS" in w for w in summary["warnings"])


def test_a_step_that_blows_the_loss_up_is_taken_back_and_counted(tmp_path):
    # layers=pytorch_tutorial (conv outputs) with the default loss: L-BFGS's 6th step at 64 px
    # overshoots about 65x, and without a step back the run ends 5-7x above its start.
    out = tmp_path / "run"
    summary = run(tiny_cfg(*COMMON, "layers=pytorch_tutorial", "scales.min=null", "snapshot_every=1",
                           "steps=20"), str(out))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    losses = [r["loss/total"] for r in rows]
    assert summary["lbfgs/steps_taken_back"] >= 1 and rows[-1]["lbfgs/steps_taken_back"] == summary["lbfgs/steps_taken_back"]
    assert max(b / a for a, b in zip(losses, losses[1:])) > 2  # the premise: a blow-up happened
    assert losses[-1] < 0.5 * losses[0]


def test_adam_records_no_pairs(tmp_path):
    summary = run(tiny_cfg("optimizer=adam", "eval.enabled=false"), str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert "lbfgs/pairs_accepted" not in summary and "lbfgs/pairs_accepted" not in rows[-1]
