"""Sweeps: the shipped grids, multirun with two launchers, the comparison, resume."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image

from conftest import refused_in_one_line, run_cli
from nstexp import composition
from nstexp.sweep.results import display_value
from wandb_offline import find_runs

# The grids (a search, hydra/sweeper=optuna, is tested in test_search.py).
SWEEPS = [n for n in composition.sweep_names()
          if "hydra/sweeper" not in open(os.path.join(composition.SWEEPS_DIR, f"{n}.yaml")).read()]
# A 2x2 grid that runs in seconds.
TINY = ["size=32", "steps=1", "progress=false", "snapshot_every=0", "eval.enabled=false", "eval.size=64"]
GRID = ["optimizer=adam,lbfgs", "style.weight=1e5,1e6"]


def _hydra_params(name):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=composition.CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"sweep={name}"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    parser = OverridesParser.create()
    out = {}
    for k, vals in cfg.hydra.sweeper.params.items():
        override = parser.parse_overrides([f"{k}={vals}"])[0]
        values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                  else [override.get_value_element_as_str()])
        out[k] = [display_value(v) for v in values]  # as written: 1e5, not the parser's 100000.0; sample:<name>
    return out


def test_the_expected_sweeps_ship():
    assert {"style_ratio", "optimizer_init", "layers", "normalization", "backbone_weights", "seeds"} <= set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_composes_every_value_is_valid_and_its_wandb_file_mirrors_the_grid(name):
    params = _hydra_params(name)
    assert params
    composition.preflight([f"sweep={name}"])  # composes and validates every swept value

    spec = yaml.safe_load(open(os.path.join(composition.SWEEPS_DIR, "wandb", f"{name}.yaml")))
    assert spec["method"] == "grid"
    assert "${args_no_hyphens}" in spec["command"] and "nstexp" in spec["command"]
    wandb_params = {k: [display_value(str(v)) for v in p["values"]] for k, p in spec["parameters"].items()}
    assert wandb_params == params
    # The grid, as `wandb agent` passes it (every key together), is valid in every combination
    # (composed in this process after the sweep file's own grid: the same choices of config groups).
    composition.preflight([f"{key}={','.join(values)}" for key, values in wandb_params.items()])


# Group choices alone, values alone, both in every order, additions, deletions, a dict value for
# a group's key, and overrides Hydra refuses.
COMBINATIONS = [
    ["loss=w2", "pair=coffee_mosaic", "style.weight=1e6", "scales.min=128"],
    ["style.balance=content", "loss=mean_balanced", "optimizer=lbfgs", "optimizer.lr=0.5"],
    ["+extra_key=3", "~tv", "init=noise"],
    ["optimizer={name: adam, lr: 0.1}"],
    [],
    ["style.wieght=1"],
    ["+style.weight=2"],
    ["optimizer=nope"],
    ["style.weight=abc", "loss=w2"],
]


@pytest.mark.parametrize("overrides", COMBINATIONS, ids=lambda o: " ".join(o) or "none")
def test_a_grid_composes_each_combination_as_hydra_does(overrides):
    """preflight composes once per choice of config groups and sets the values on a copy: the
    config, or the refusal, is Hydra's own compose's for the same overrides."""
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=composition.CONFIG_DIR, version_base="1.3"):
        compose_one = composition.grid_composer()
        compose_one(["loss=w2", "pair=coffee_mosaic"])  # the cached base of the first case, reused
        outcomes = []
        for make in (lambda: compose(config_name="config", overrides=overrides), lambda: compose_one(overrides)):
            try:
                outcomes.append(OmegaConf.to_yaml(make()))
            except ConfigCompositionException as exc:
                outcomes.append(("refused", type(exc), str(exc)))
    GlobalHydra.instance().clear()
    assert outcomes[0] == outcomes[1]


def test_bad_swept_value_fails_before_any_job(tmp_path):
    r = run_cli(["-m", "optimizer=adam,sgd", f"hydra.sweep.dir={tmp_path}/s"], cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: optimizer=sgd: unknown option for optimizer (allowed: adam, lbfgs, rmsprop)"
    assert not (tmp_path / "s").exists()


def _check_sweep(sweep, n_jobs=4):
    runs = find_runs(str(sweep))
    jobs = [r for r in runs if r.job_type == "run"]
    (summary_run,) = [r for r in runs if r.job_type == "compare"]
    assert len(jobs) == n_jobs and len({r.run_id for r in jobs}) == n_jobs
    assert all(r.finished and r.exit_code == 0 for r in runs)
    assert len({r.group for r in runs}) == 1
    names = {r.name for r in jobs}
    assert len(names) == n_jobs
    # The comparison files, with the values of every job's summary.json.
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert len(rows) == n_jobs
    for row in rows:
        summary = json.loads((sweep / str(row["job"]) / "summary.json").read_text())
        assert row["status"] == summary["status"] == "completed"
        assert float(row["final/loss/total"]) == summary["final/loss/total"]
    assert Image.open(sweep / "contact_sheet.png").size[0] > 0
    assert Image.open(sweep / "loss_curves.png").size[0] > 0
    table = summary_run.history[0]["comparison"]
    assert table["_type"] == "table-file" and table["nrows"] == n_jobs
    return jobs


def test_two_by_two_sweep_basic_launcher(tmp_path, wandb_env):
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", *TINY, *GRID, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    jobs = _check_sweep(sweep)
    assert jobs[0].group.startswith("multirun-")
    # Each W&B run's config is its job's own.
    assert sorted((j.config["optimizer"]["name"], j.config["style"]["weight"]) for j in jobs) == [
        ("adam", 1e5), ("adam", 1e6), ("lbfgs", 1e5), ("lbfgs", 1e6)]
    # Named by the swept values only, numbers as a person writes them (Hydra gives 100000.0).
    assert sorted(j.name for j in jobs)[0] == "optimizer=adam,style.weight=1e5"


def test_shipped_sweep_runs_tiny_and_command_line_replaces_a_swept_key(tmp_path, wandb_env):
    sweep = tmp_path / "sweep"
    r = run_cli(["sweep=optimizer_init", "init=noise", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    jobs = _check_sweep(sweep, n_jobs=2)  # init=noise replaced content,noise
    assert {j.config["init"]["kind"] for j in jobs} == {"noise"}
    assert all(j.group.startswith("optimizer_init-") for j in jobs)


RESUME = ["-m", "size=32", "steps=2", "progress=false", "snapshot_every=0", "wandb.mode=disabled", "eval.enabled=false",
          "eval.size=64"]


@pytest.fixture(scope="module")
def _finished_sweep(tmp_path_factory):
    """A finished 3-job sweep (`multirun/` of a folder), run once for the resume tests."""
    root = tmp_path_factory.mktemp("finished")
    r = run_cli([*RESUME, "seed=0,1,2"], cwd=root)
    assert r.returncode == 0, r.stderr
    return root / "multirun"


@pytest.fixture
def _cut_off_sweep(_finished_sweep):
    """A 3-job sweep as a lost machine leaves it: job 0 completed, job 1 half done, job 2 never started."""

    def make(tmp_path):
        shutil.copytree(_finished_sweep, tmp_path / "multirun")
        return _cut_off(tmp_path)

    return make


def _cut_off(tmp_path):
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    (sweep / "1" / "summary.json").unlink()
    (sweep / "1" / "final.png").unlink()
    shutil.rmtree(sweep / "2")
    return sweep


def test_resume_reruns_only_unfinished_jobs(tmp_path, wandb_env, _cut_off_sweep):
    sweep = _cut_off_sweep(tmp_path)
    before = (sweep / "0" / "summary.json").read_text()

    # The comparison of the cut-off sweep shows what exists and marks the rest.
    r = run_cli(["compare", str(sweep)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert [row["status"] for row in rows] == ["completed", "running", "missing"]
    assert rows[2]["seed"] == "2"

    # The same jobs, written in another order: job numbers still meet their own folders.
    r = run_cli(["-m", "seed=2,0,1", *RESUME[1:], "resume=true"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resuming multirun/{sweep.parent.name}/{sweep.name}" in r.stderr
    assert "job 0: already completed, skipped" in r.stderr
    assert (sweep / "0" / "summary.json").read_text() == before  # not rerun
    for job in ("0", "1", "2"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == int(job)
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert [(row["seed"], row["status"]) for row in rows] == [("0", "completed"), ("1", "completed"),
                                                              ("2", "completed")]
    assert len(list((tmp_path / "multirun").glob("*/*"))) == 1  # no second sweep directory


def test_resume_never_skips_a_job_whose_folder_holds_another_configuration(tmp_path, _cut_off_sweep):
    sweep = _cut_off_sweep(tmp_path)
    # Job 0's folder now holds the results of another configuration (seed 7).
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    summary["overrides"] = [o.replace("seed=0", "seed=7") for o in summary["overrides"]]
    (sweep / "0" / "summary.json").write_text(json.dumps(summary))
    r = run_cli([*RESUME, "seed=0,1,2", "resume=true"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "already completed" not in r.stderr
    assert "seed=0" in json.loads((sweep / "0" / "summary.json").read_text())["overrides"]


def _edit_recorded_config(job_dir, edit):
    """Change what job_dir's .hydra/config.yaml says the job ran, as an older preset or sweep file would have."""
    path = job_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config))


def test_resume_refuses_when_a_completed_job_ran_another_config(tmp_path, _cut_off_sweep):
    """The same overrides, but the `paper` layer preset weighed relu1_1 otherwise when job 0 ran."""
    sweep = _cut_off_sweep(tmp_path)
    _edit_recorded_config(sweep / "0", lambda c: c["layers"]["style"].update(relu1_1=0.5))
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    r = run_cli([*RESUME, "seed=0,1,2", "resume=true"], cwd=tmp_path)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: resume=true: job 0 (multirun/{sweep.parent.name}/{sweep.name}/0) completed "
                           "with layers.style.relu1_1=0.5, this command would run layers.style.relu1_1=0.2")
    assert "run without resume=true" in line
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before  # nothing touched


def test_resume_compares_the_whole_config_but_not_how_a_job_is_watched(tmp_path, _cut_off_sweep):
    from nstexp.sweep import resumable
    from nstexp.errors import NstexpError

    sweep = _cut_off_sweep(tmp_path)
    recorded = sweep / "0" / ".hydra" / "config.yaml"
    original = recorded.read_text()
    resumable.check_configs(str(sweep), composition.compose_job)  # as the sweep left it: what it would run now

    def watched_otherwise(config):
        config.update(progress=True, log_every=5, snapshot_every=7, resume=True)
        config["wandb"].update(mode="offline", project="elsewhere")
        config["eval"]["every"] = 3

    _edit_recorded_config(sweep / "0", watched_otherwise)
    resumable.check_configs(str(sweep), composition.compose_job)  # none of these changes a result
    # A job that did not complete is rerun from scratch whatever it ran.
    _edit_recorded_config(sweep / "1", lambda c: c.update(steps=9))
    resumable.check_configs(str(sweep), composition.compose_job)
    for edit, key in [(lambda c: c.update(steps=9), "steps"), (lambda c: c["eval"].update(size=128), "eval.size"),
                      (lambda c: c["optimizer"].update(history_size=3), "optimizer.history_size"),
                      (lambda c: c.update(new_key=1), "new_key")]:
        recorded.write_text(original)
        _edit_recorded_config(sweep / "0", edit)
        with pytest.raises(NstexpError, match=rf"job 0 \(.*\) completed with {key}="):
            resumable.check_configs(str(sweep), composition.compose_job)


def test_resume_accepts_a_sweep_from_before_an_option_existed(tmp_path, _cut_off_sweep):
    """A key added since the sweep ran (content.loss) is not in its jobs' configs: at its default it
    changes nothing. A missing key whose value now is not its default still refuses."""
    from nstexp.errors import NstexpError
    from nstexp.sweep import resumable

    sweep = _cut_off_sweep(tmp_path)
    recorded = sweep / "0" / ".hydra" / "config.yaml"
    original = recorded.read_text()
    _edit_recorded_config(sweep / "0", lambda c: c["content"].pop("loss"))
    resumable.check_configs(str(sweep), composition.compose_job)
    recorded.write_text(original)
    _edit_recorded_config(sweep / "0", lambda c: c.pop("steps"))  # the sweep runs steps=2, the default is 400
    with pytest.raises(NstexpError, match=r"completed with steps=\"\(absent\)\", this command would run steps=2"):
        resumable.check_configs(str(sweep), composition.compose_job)


def _edit_summary(job_dir, edit):
    path = job_dir / "summary.json"
    summary = json.loads(path.read_text())
    edit(summary)
    path.write_text(json.dumps(summary))


def test_resume_refuses_a_job_whose_open_size_another_machine_resolved(tmp_path, _cut_off_sweep):
    """The sweep left size to the machine (size=null): job 0 completed on a GPU at its 512 px, this
    CPU would run 256 px (docs/config.md's device defaults). The same job from a CPU is taken."""
    from nstexp.errors import NstexpError
    from nstexp.sweep import resumable

    sweep = _cut_off_sweep(tmp_path)
    _edit_recorded_config(sweep / "0", lambda c: c.update(size=None))

    def compose(overrides):  # the sweep's jobs as they would be without size=32
        return composition.compose_job([*overrides, "size=null"])

    def ran_on(device, size):
        return lambda s: s.update(device=device, size=size, resolved={**s["resolved"], "device": device, "size": size})

    _edit_summary(sweep / "0", ran_on("cuda", 512))
    with pytest.raises(NstexpError) as info:
        resumable.check_configs(str(sweep), compose)
    assert str(info.value) == (
        f"resume=true: job 0 ({sweep / '0'}) ran with size=512 (resolved from size=null on cuda); this machine "
        "resolves size=256 (on cpu); resume on a machine like that one, or run without resume=true to start a "
        "new sweep (with size=512 to match the old jobs)")
    _edit_summary(sweep / "0", ran_on("cpu", 256))
    resumable.check_configs(str(sweep), compose)
    # A setting the sweep gives is no machine's choice: size=32 given, a GPU's summary is taken.
    _edit_recorded_config(sweep / "0", lambda c: c.update(size=32))
    _edit_summary(sweep / "0", ran_on("cuda", 32))
    resumable.check_configs(str(sweep), composition.compose_job)


def test_resume_refuses_in_one_line_when_this_machine_resolves_precision_otherwise(tmp_path, _cut_off_sweep):
    """precision=auto (the sweep's): job 0's summary says it was resolved to the other precision."""
    sweep = _cut_off_sweep(tmp_path)
    here = json.loads((sweep / "0" / "summary.json").read_text())["precision"]  # the sweep ran on this machine
    other = "bf16" if here == "fp32" else "fp32"
    _edit_summary(sweep / "0", lambda s: s["resolved"].update(precision=other, device="cuda:1"))
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    r = run_cli([*RESUME, "seed=0,1,2", "resume=true"], cwd=tmp_path)
    line = refused_in_one_line(r)
    assert line.startswith(f"error: resume=true: job 0 (multirun/{sweep.parent.name}/{sweep.name}/0) ran with "
                           f"precision={other} (resolved from precision=auto on cuda:1); this machine resolves "
                           f"precision={here} (on cpu)")
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before  # nothing touched


def test_resume_into_a_sweep_of_another_grid_is_refused(tmp_path, _cut_off_sweep):
    sweep = _cut_off_sweep(tmp_path)
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    r = run_cli([*RESUME, "seed=0,1,3", "resume=true", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: resume=true: {sweep} holds another grid (3 jobs: ")
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before  # nothing touched


def test_resume_without_an_earlier_sweep_says_so(tmp_path):
    r = run_cli(["-m", "seed=0,1", "resume=true"], cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: resume=true: no earlier sweep with the same jobs")


def test_every_combination_is_checked_before_any_job(tmp_path):
    # Each value is valid with the first value of the other key; one combination is not.
    r = run_cli(["-m", "backbone.weights=random,caffe", "backbone.arch=vgg19,vgg16",
                 f"hydra.sweep.dir={tmp_path}/s"], cwd=tmp_path)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "backbone.weights=caffe exists only for vgg19, not vgg16" in line
    assert "backbone.weights=caffe backbone.arch=vgg16" in line
    assert not (tmp_path / "s").exists()


CRASH_ON_COFFEE = """
import nstexp.run.inputs

initial_image = nstexp.run.inputs.initial_image


def crash_on_coffee(cfg, content, styles):
    if cfg.content.image == "sample:coffee":
        raise ZeroDivisionError("a bug")
    return initial_image(cfg, content, styles)


nstexp.run.inputs.initial_image = crash_on_coffee
"""


# Under joblib and submitit, a sweep whose every job starts a process of its own: long end-to-end
# runs (half a minute on a 2-core CPU), in the slow suite. The default suite stops a run and a
# batched sweep by signal (test_cli.py, test_batching.py) and fails jobs under the basic launcher.
MULTIPROCESS = pytest.mark.slow


@pytest.mark.parametrize("launcher", [pytest.param([], id="basic"),
                                      pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], id="joblib",
                                                   marks=MULTIPROCESS),
                                      pytest.param(["hydra/launcher=submitit_local"], id="submitit", marks=MULTIPROCESS)])
def test_every_launcher_exits_1_when_jobs_fail_and_keeps_the_others_and_the_report(tmp_path, wandb_env, monkeypatch,
                                                                                   launcher):
    # Three jobs: one refuses its input (a missing file), one hits a bug that shows up in that job
    # only, one completes. Under joblib (2 workers) and submitit this is also their sweep that
    # runs: the completed job's run, files and report are as in any sweep. The bug is planted
    # through sitecustomize in every process the launchers start; the basic launcher runs the
    # jobs in the command's own process, here this one, where it is planted directly.
    sweep, env = tmp_path / "s", {}
    if launcher:
        (tmp_path / "plant").mkdir()
        (tmp_path / "plant" / "sitecustomize.py").write_text(CRASH_ON_COFFEE)
        env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "plant"), os.environ.get("PYTHONPATH", "")])}
    else:
        import nstexp.run.inputs

        monkeypatch.setattr(nstexp.run.inputs, "initial_image", nstexp.run.inputs.initial_image)  # put back after
        exec(CRASH_ON_COFFEE, {})  # as sitecustomize runs it
    r = run_cli(["-m", *TINY, "content.image=missing.png,sample:coffee,sample:chelsea", *launcher,
                 f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, process=bool(launcher))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    if "submitit" not in " ".join(launcher):  # submitit keeps each job's output in its own logs
        assert f"error: ZeroDivisionError: a bug (unexpected; traceback in {sweep}/1/error.log)" in r.stderr.splitlines()
    assert "ZeroDivisionError" in (sweep / "1" / "error.log").read_text()
    assert "missing.png" in json.loads((sweep / "0" / "summary.json").read_text())["error"]
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert [row["status"] for row in rows] == ["failed", "failed", "completed"]
    done = json.loads((sweep / "2" / "summary.json").read_text())
    assert done["status"] == "completed" and float(rows[2]["final/loss/total"]) == done["final/loss/total"]
    assert Image.open(sweep / "contact_sheet.png").size[0] > 0 and Image.open(sweep / "loss_curves.png").size[0] > 0
    runs = find_runs(str(sweep))
    assert sorted(r.job_type for r in runs) == ["compare", "run", "run", "run"] and all(r.finished for r in runs)
    jobs = [r for r in runs if r.job_type == "run"]
    assert len({r.run_id for r in jobs}) == len({r.name for r in jobs}) == 3 and len({r.group for r in runs}) == 1
    assert sorted((r.exit_code, "chelsea" in r.name) for r in jobs) == [(0, True), (1, False), (1, False)]
    (summary_run,) = [r for r in runs if r.job_type == "compare"]
    assert summary_run.history[0]["comparison"]["nrows"] == 3


def _start_long_sweep(tmp_path, *extra):
    """A 3-job sweep of endless jobs under joblib with 2 workers, in its own process group
    (as a terminal runs it); returns once both workers' jobs have logged 2 steps."""
    sweep = tmp_path / "s"
    cmd = [sys.executable, "-m", "nstexp", "-m", "size=32", "steps=100000", "progress=false", "snapshot_every=0",
           "eval.size=64", "seed=0,1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", *extra]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ}, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    while True:  # no deadline: a slower machine only takes longer to get there
        lines = [len((sweep / j / "metrics.jsonl").read_text().splitlines())
                 if (sweep / j / "metrics.jsonl").exists() else 0 for j in ("0", "1")]
        if min(lines) >= 2:
            return proc, sweep
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before both jobs logged 2 steps: {proc.communicate()[1]}")
        time.sleep(0.2)


@MULTIPROCESS
@pytest.mark.parametrize("how", ["ctrl-c at the terminal", "sigterm to the launcher"])
def test_interrupting_a_joblib_sweep_keeps_every_job(tmp_path, wandb_env, how):
    # The metrics of the interrupted images once, under Ctrl-C.
    proc, sweep = _start_long_sweep(tmp_path, *([] if how == "ctrl-c at the terminal" else ["eval.enabled=false"]))
    if how == "ctrl-c at the terminal":
        os.killpg(proc.pid, signal.SIGINT)  # the whole foreground group: launcher, workers, W&B
    else:
        proc.send_signal(signal.SIGTERM)  # the launcher alone: it tells the workers through the stop file
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["steps"] >= 1
        assert (sweep / job / "final.png").is_file()
    assert not (sweep / "2" / "summary.json").exists()  # queued: never started
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert [row["status"] for row in rows] == ["interrupted", "interrupted", "missing"]
    runs = find_runs(str(sweep))
    assert len(runs) == 3 and all(r.finished for r in runs)  # 2 jobs and the summary run
    assert not (sweep / ".nstexp_stop").exists()
