"""resume=true for a single run: a run stopped (or lost) part way goes on from its saved state
and ends exactly where an unbroken run of the same command ends (nstexp.run.resume)."""

import json

import pytest
from conftest import run_cli, tiny_cfg

# Two coarse-to-fine levels (32 x 16 and 48 x 32 px) of 5 steps each.
TWO_LEVELS = ["steps=5", "scales.min=24", "log_every=1"]


def _stop_at(monkeypatch, stop_file, level_size: int, step: int, crash: bool = False, act=None):
    """Make the next run stop (the stop file, as a sweep's Ctrl-C does) or crash (an error, as a
    lost machine ends it) once the level of `level_size` px has emitted its step `step`; or
    call `act()` then instead."""
    from nstexp.run import coarse_to_fine

    real = coarse_to_fine.optimize

    def optimize(image, objective, cfgs, steps, clamp, on_step, *args, **kwargs):
        def observed(ev):
            on_step(ev)
            if max(image.shape[-2:]) == level_size and ev.step == step:
                if crash:
                    raise RuntimeError("the machine was lost")
                (act or stop_file.touch)()

        return real(image, objective, cfgs, steps, clamp, observed, *args, **kwargs)

    monkeypatch.setattr(coarse_to_fine, "optimize", optimize)


def _lines(folder):
    return [(line["step"], line["loss/total"]) for line in map(json.loads, (folder / "metrics.jsonl").open())]


def _unbroken(tmp_path, overrides):
    from nstexp.run import runner

    whole = tmp_path / "whole"
    whole.mkdir()
    return runner.run(tiny_cfg(*overrides), str(whole)), whole


@pytest.mark.parametrize("setting, goes_on_from", [
    ([], 8),  # the default L-BFGS: mid-level, exactly where it stopped
    (["optimizer=adam", "optimizer.ema=0.5"], 8),  # Adam's moments (carried over levels) and the average
    (["optimizer.line_search=strong_wolfe"], 8),  # torch's L-BFGS
    (["param=laplacian_pyramid", "param_levels=2"], 8),  # a pyramid's bands
    (["style.loss=sliced"], 5),  # random directions at each evaluation: the level's start
])
def test_a_stopped_run_goes_on_to_the_unbroken_runs_result(tmp_path, monkeypatch, setting, goes_on_from):
    from nstexp.run import runner

    overrides = [*TWO_LEVELS, *setting]
    expected, whole = _unbroken(tmp_path, overrides)
    folder, stop = tmp_path / "stopped", tmp_path / "STOP"
    folder.mkdir()
    _stop_at(monkeypatch, stop, 48, 2)
    stopped = runner.run(tiny_cfg(*overrides), str(folder), stop_file=stop)
    assert stopped["status"] == "interrupted" and stopped["steps"] < 10
    assert json.loads((folder / "state.json").read_text())["step"] == goes_on_from
    monkeypatch.undo()

    summary = runner.run(tiny_cfg(*overrides, "resume=true"), str(folder))
    assert summary["status"] == "completed" and summary["steps"] == expected["steps"] == 10
    assert [r["step"] for r in summary["resumed"]] == [goes_on_from]
    assert summary["final/loss/total"] == expected["final/loss/total"]
    assert (folder / "final.png").read_bytes() == (whole / "final.png").read_bytes()
    assert _lines(folder) == _lines(whole)  # every step once, with the unbroken run's losses
    assert not (folder / "state.pt").exists() and not (folder / "state.json").exists()  # completed


def test_a_run_stopped_twice_at_a_level_boundary_and_mid_level_goes_on_to_the_same_result(tmp_path, monkeypatch):
    """Stopped once as its first level ends (its state: the second level's step 0), then again
    mid-level after going on: two going-ons, one result, every metrics line once."""
    from nstexp.run import runner

    expected, whole = _unbroken(tmp_path, TWO_LEVELS)
    folder, stop = tmp_path / "stopped", tmp_path / "STOP"
    folder.mkdir()
    _stop_at(monkeypatch, stop, 32, 5)  # the first level: 32 x 16 px
    assert runner.run(tiny_cfg(*TWO_LEVELS), str(folder), stop_file=stop)["status"] == "interrupted"
    assert json.loads((folder / "state.json").read_text())["step"] == 5
    monkeypatch.undo()
    stop.unlink()
    _stop_at(monkeypatch, stop, 48, 3)
    assert runner.run(tiny_cfg(*TWO_LEVELS, "resume=true"), str(folder), stop_file=stop)["status"] == "interrupted"
    monkeypatch.undo()
    stop.unlink()

    summary = runner.run(tiny_cfg(*TWO_LEVELS, "resume=true"), str(folder))
    assert summary["status"] == "completed" and [r["step"] for r in summary["resumed"]] == [5, 9]
    assert (folder / "final.png").read_bytes() == (whole / "final.png").read_bytes()
    assert _lines(folder) == _lines(whole)


def test_a_run_lost_part_way_goes_on_from_its_last_saved_state(tmp_path, monkeypatch):
    """No stop request: the state written along the way (here at every check) is what is left."""
    from nstexp.run import runner

    overrides = [*TWO_LEVELS, "save_state_every_min=1e-9"]
    expected, whole = _unbroken(tmp_path, overrides)
    folder = tmp_path / "lost"
    folder.mkdir()
    _stop_at(monkeypatch, tmp_path / "STOP", 48, 3, crash=True)
    with pytest.raises(RuntimeError, match="the machine was lost"):
        runner.run(tiny_cfg(*overrides), str(folder))
    # Written at a check before the error (how often: at least 10x the last write's time, so not
    # necessarily at the last one).
    saved = json.loads((folder / "state.json").read_text())["step"]
    assert 0 < saved <= 8
    monkeypatch.undo()

    summary = runner.run(tiny_cfg(*overrides, "resume=true"), str(folder))
    assert summary["status"] == "completed" and summary["resumed"] == [{"step": saved, **summary["resumed"][0]}]
    assert summary["final/loss/total"] == expected["final/loss/total"]
    assert (folder / "final.png").read_bytes() == (whole / "final.png").read_bytes()
    assert _lines(folder) == _lines(whole)


def test_a_completed_run_leaves_no_state_and_resume_without_one_starts_afresh(tmp_path, capfd):
    from nstexp.run import runner

    summary = runner.run(tiny_cfg(*TWO_LEVELS, "resume=true"), str(tmp_path))
    assert summary["status"] == "completed" and "resumed" not in summary
    assert "resume=true: no stopped run with the same settings" in capfd.readouterr().err
    assert not (tmp_path / "state.pt").exists() and not (tmp_path / "state.json").exists()


def test_a_stopped_run_of_other_settings_is_not_gone_on_with(tmp_path, monkeypatch, capfd):
    from nstexp.run import runner

    stop = tmp_path / "STOP"
    _stop_at(monkeypatch, stop, 48, 2)
    runner.run(tiny_cfg(*TWO_LEVELS, "style.weight=1e4"), str(tmp_path), stop_file=stop)
    assert (tmp_path / "state.pt").exists()
    monkeypatch.undo()
    stop.unlink()
    capfd.readouterr()

    summary = runner.run(tiny_cfg(*TWO_LEVELS, "style.weight=1e5", "resume=true"), str(tmp_path))
    assert "no stopped run with the same settings" in capfd.readouterr().err
    assert summary["status"] == "completed" and "resumed" not in summary and summary["steps"] == 10
    assert [s for s, _ in _lines(tmp_path)] == list(range(11))  # its own lines, from step 0


def test_the_command_goes_on_with_the_newest_stopped_run_and_its_wandb_run(tmp_path, monkeypatch):
    """`nstexp ... resume=true` from the same folder: Hydra gives the command a new
    outputs/<date>/<time>/, and the run goes on in the stopped one beside it, with its W&B run's id."""
    from nstexp.run import runner
    from wandb_offline import find_runs

    overrides = [*TWO_LEVELS, "wandb.mode=offline"]
    stopped_dir, stop = tmp_path / "outputs" / "2026-01-01" / "00-00-00", tmp_path / "STOP"
    stopped_dir.mkdir(parents=True)
    _stop_at(monkeypatch, stop, 48, 2)
    runner.run(tiny_cfg(*overrides), str(stopped_dir), stop_file=stop)
    monkeypatch.undo()

    from conftest import RUN_TINY

    r = run_cli([*RUN_TINY, *overrides, "resume=true"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resuming {stopped_dir} from step 8" in r.stderr
    summary = json.loads((stopped_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed"][0]["step"] == 8
    assert [s for s, _ in _lines(stopped_dir)] == list(range(11))
    runs = find_runs(str(stopped_dir))
    assert len(runs) == 2 and runs[0].run_id == runs[1].run_id and all(run.finished for run in runs)
    logged = sorted(row["step"] for run in runs for row in run.history if "loss/total" in row)
    assert logged == list(range(11))  # each step once over the two parts


def test_save_state_every_min_must_not_be_negative(tmp_path):
    from conftest import refused_in_one_line

    r = run_cli(["save_state_every_min=-1"], cwd=tmp_path)
    assert "save_state_every_min" in refused_in_one_line(r)


def test_every_loss_that_holds_a_generator_or_refreshes_its_targets_says_it_is_stateful():
    """A loss built with a torch.Generator draws anew at each evaluation: a run that stopped
    mid-level could not go on exactly, so it must say `stateful` (and one without must not)."""
    import torch
    from nstexp.config import ContentConfig, StyleConfig
    from nstexp.losses.base import CONTENT_LOSSES, STYLE_LOSSES

    said = {}
    for registry, section in ((STYLE_LOSSES, StyleConfig), (CONTENT_LOSSES, ContentConfig)):
        for name, cls in registry.items():
            if name == "mix":
                continue
            loss = cls(section(loss=name), 0)
            draws = any(isinstance(v, torch.Generator) for v in vars(loss).values())
            said[name] = (cls.stateful, draws or name == "nnst")  # nnst refreshes its targets
    assert said["sliced"] == (True, True) and said["gram"] == (False, False)
    assert [name for name, (stateful, holds) in said.items() if stateful != holds] == []


def _stop_inside_the_step_after(monkeypatch, stop_file, level_size: int, step: int, tile: int = 2):
    """Make the next tiled run stop between two tiles (the stop file, which the tiles' progress
    takes as a Ctrl-C): in the first evaluation after the level of `level_size` px has emitted
    its step `step`, at its `tile`-th tile."""
    from nstexp.run import coarse_to_fine

    armed = []
    _stop_at(monkeypatch, stop_file, level_size, step, act=lambda: armed.append(True))
    real = coarse_to_fine.tiling.announce

    def announce(tile_px, cfg, size, bar, stop):
        on_tile = real(tile_px, cfg, size, bar, stop)

        def counting(what, done, total):
            if what == "step" and done == tile and armed:
                stop_file.touch()
            return on_tile(what, done, total)

        return on_tile and counting

    monkeypatch.setattr(coarse_to_fine.tiling, "announce", announce)


@pytest.mark.parametrize("setting", [[], ["optimizer=adam"]])
def test_a_tiled_run_stopped_between_two_tiles_saves_its_state_and_goes_on_exactly(tmp_path, monkeypatch, setting):
    """A step at 8K px takes minutes: a stop ends it between two tiles. Nothing of the step has
    changed the optimizer yet (its first evaluation), so the state after the step before is
    saved, and the resumed run ends as the unbroken one."""
    from nstexp.run import runner

    # Tiled images' sides are multiples of 16 px: two levels, 32 and 64 px.
    overrides = ["steps=5", "size=64", "scales.min=32", "log_every=1", "tiles=16", *setting]
    expected, whole = _unbroken(tmp_path, overrides)
    folder, stop = tmp_path / "stopped", tmp_path / "STOP"
    folder.mkdir()
    _stop_inside_the_step_after(monkeypatch, stop, 64, 2)
    stopped = runner.run(tiny_cfg(*overrides), str(folder), stop_file=stop)
    monkeypatch.undo()
    assert stopped["status"] == "interrupted"
    # Step 2's event comes when step 3 is done (its losses are step 3's first evaluation's): the
    # stop comes inside step 4, and the state is the one after step 3 (5 + 3 over the levels).
    assert json.loads((folder / "state.json").read_text())["step"] == 8

    summary = runner.run(tiny_cfg(*overrides, "resume=true"), str(folder))
    assert summary["status"] == "completed" and [r["step"] for r in summary["resumed"]] == [8]
    assert summary["final/loss/total"] == expected["final/loss/total"]
    assert (folder / "final.png").read_bytes() == (whole / "final.png").read_bytes()
    assert _lines(folder) == _lines(whole)


def test_the_wall_time_of_a_run_stopped_again_counts_every_part(tmp_path, monkeypatch):
    """A run that ran T s into its level, stopped, went on and stopped again: its wall time
    counts the T s too, as its metrics lines' times do."""
    import torch
    from nstexp.run import runner

    folder, stop = tmp_path / "stopped", tmp_path / "STOP"
    folder.mkdir()
    _stop_at(monkeypatch, stop, 48, 2)
    runner.run(tiny_cfg(*TWO_LEVELS), str(folder), stop_file=stop)
    state = torch.load(folder / "state.pt", weights_only=False)
    assert state["engine"].pending[0] == 3
    state["engine"].time_s += 1000.0  # as if the level had run 1000 s longer before the stop
    torch.save(state, folder / "state.pt")
    monkeypatch.undo()
    stop.unlink()

    _stop_at(monkeypatch, stop, 48, 3)
    summary = runner.run(tiny_cfg(*TWO_LEVELS, "resume=true"), str(folder), stop_file=stop)
    assert summary["status"] == "interrupted" and summary["steps"] == 9
    times = [line["time_s"] for line in map(json.loads, (folder / "metrics.jsonl").open())]
    assert times[-1] > 1000.0  # the engine's own clock went on from its state
    assert summary["wall_time_s"] >= times[-1]
