"""A search (hydra/sweeper=optuna): its trials through the launchers, its journal, failed
trials, a stop and a resume, its report and the dashboard. Real Optuna, real Hydra, tiny sizes."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState
from PIL import Image

from conftest import refused_in_one_line, run_cli
from wandb_offline import find_runs
from nstexp import composition
from nstexp.sweep import search

TINY = ["size=32", "steps=2", "progress=false", "snapshot_every=0", "eval.size=64"]
SEARCH = ["hydra/sweeper=optuna", "style.weight=tag(log,interval(1,1000))", "hydra.sweeper.sampler=random",
          "hydra.sweeper.seed=0"]
PAIRS = "pair=chelsea_swirls,coffee_mosaic"


def _study(sweep):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=search.STUDY, storage=search.storage(str(sweep)))


def _summary(sweep, job):
    return json.loads((sweep / str(job) / "summary.json").read_text())


def _counted(study):
    return [t for t in study.trials if t.state == TrialState.COMPLETE
            or (t.state == TrialState.FAIL and not t.user_attrs.get(search.INTERRUPTED))]


def test_a_search_runs_its_trials_on_every_pair_and_scores_the_means(tmp_path, wandb_env):
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", *TINY, *SEARCH, PAIRS, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                 f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=wandb_env)
    assert r.returncode == 0, r.stderr
    assert (sweep / search.JOURNAL).is_file()
    study = _study(sweep)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(study.trials) == 3 and all(t.state == TrialState.COMPLETE for t in study.trials)
    for t in study.trials:
        jobs = t.user_attrs["jobs"]
        assert len(jobs) == 2  # one job per pair
        summaries = [_summary(sweep, j) for j in jobs]
        assert {s["status"] for s in summaries} == {"completed"}
        assert t.values == pytest.approx([sum(s[k] for s in summaries) / 2 for k in ("eval/ssim", "eval/style_sw")])
        assert 1 <= t.params["style.weight"] <= 1000
        overrides = [(sweep / j / ".hydra" / "overrides.yaml").read_text() for j in jobs]
        assert all(f"style.weight={t.params['style.weight']}" in o for o in overrides)
        assert "pair=chelsea_swirls" in overrides[0] and "pair=coffee_mosaic" in overrides[1]
    # The report: the front, its contact sheet, the trials' table, the best trade-off's command.
    rows = list(csv.DictReader(open(sweep / "search.csv")))
    assert [int(row["trial"]) for row in rows] == [0, 1, 2]
    front = {t.number for t in study.best_trials}
    assert {int(row["trial"]) for row in rows if row["front"] == "yes"} == front
    assert Image.open(sweep / "front.png").size[0] > 0 and Image.open(sweep / "front_sheet.png").size[0] > 0
    best = (sweep / "best.txt").read_text().splitlines()
    number = int(best[0].split("trial ")[1].split(" ")[0])
    assert number in front
    params = study.trials[number].params
    assert best[1].startswith("nstexp -m ") and PAIRS in best[1] and f"style.weight={params['style.weight']}" in best[1]
    # The same in the W&B summary run: a row per trial, the front's plot.
    (summary_run,) = [run for run in find_runs(str(sweep)) if run.job_type == "compare"]
    assert summary_run.history[0]["search"]["nrows"] == 3 and "front" in summary_run.history[0]


def test_a_diverged_trial_is_failed_and_the_search_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    # 1e38 overflows fp32's range in the style term at once: every trial diverges.
    r = run_cli(["-m", *TINY, "wandb.mode=disabled", "optimizer=adam", "hydra/sweeper=optuna",
                 "style.weight=interval(1e37,1e38)", "pair=chelsea_swirls", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    study = _study(sweep)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("diverged" in t.user_attrs["failure"] for t in study.trials)
    rows = list(csv.DictReader(open(sweep / "search.csv")))
    assert [row["state"] for row in rows] == ["fail", "fail"] and not (sweep / "best.txt").exists()
    # The journal holds this search: another search space in the same folder is refused.
    r = run_cli(["-m", *TINY, "wandb.mode=disabled", "optimizer=adam", "hydra/sweeper=optuna",
                 "style.weight=interval(1,10)", "pair=chelsea_swirls", f"hydra.sweep.dir={sweep}"],
                cwd=tmp_path, process=True)
    assert "holds a search of command" in refused_in_one_line(r) and "style.weight=interval(1,10)" in r.stderr
    assert len(_study(sweep).trials) == 2


# Several processes each importing torch: slow on a 2-core machine, as test_sweeps' MULTIPROCESS.
MULTIPROCESS = pytest.mark.slow


@pytest.mark.parametrize("launcher", [pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], marks=MULTIPROCESS),
                                      ["hydra/launcher=batched", "hydra.launcher.batch_size=2", "optimizer=adam"]],
                         ids=["joblib", "batched"])
def test_a_search_runs_through_the_launchers(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", *TINY, "wandb.mode=disabled", *SEARCH, PAIRS, "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.n_jobs=2", *launcher, f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                process="joblib" in launcher[0])
    assert r.returncode == 0, r.stderr
    if "batched" in launcher[0]:
        assert "batched launcher: 4 jobs in 2 batches" in r.stderr
    study = _study(sweep)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    jobs = sorted(j for t in study.trials for j in t.user_attrs["jobs"])
    assert jobs == ["0", "1", "2", "3"] and all(_summary(sweep, j)["status"] == "completed" for j in jobs)


@pytest.mark.parametrize("bad, says", [
    (["hydra.sweeper.objectives=[eval/tv]"], "eval/tv cannot be an objective"),
    (["hydra.sweeper.sampler=grid"], "unknown sampler (allowed: tpe, nsga2, random)"),
    (["eval.enabled=false"], "eval.enabled=false: a search scores"),
    (["resume=true"], "resume=true: name the search's folder with hydra.sweep.dir="),
])
def test_a_search_refuses_bad_settings_in_one_line(tmp_path, bad, says):
    sweep = [] if bad == ["resume=true"] else [f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    r = run_cli(["-m", *TINY, "wandb.mode=disabled", *SEARCH, "pair=chelsea_swirls", *bad, *sweep],
                cwd=tmp_path, process=True)
    assert says in refused_in_one_line(r)
    assert not list(tmp_path.glob("sweep/0"))  # nothing ran


def test_the_bundled_search_composes_and_is_a_search():
    swept, params = composition.preflight(["sweep=search_default"])
    assert {"style.weight", "tv.weight", "pair"} <= set(swept)
    assert search.is_search(composition.hydra_node(["sweep=search_default"]))
    space = search.space([f"{k}={v}" for k, v in params.items()], ["pair"])
    assert space.every["pair"] == ["chelsea_swirls", "coffee_mosaic", "tubingen_starry_night"]
    assert all(d.log for d in space.distributions.values())
    # A command-line value replaces the sweep file's: one pair, a fixed TV weight.
    space = search.space([f"{k}={v}" for k, v in params.items()] + ["pair=coffee_mosaic", "tv.weight=3"], ["pair"])
    assert space.every == {} and space.fixed == ["tv.weight=3", "pair=coffee_mosaic"]
    assert list(space.distributions) == ["style.weight"]
    assert search.job_overrides(space, {"style.weight": 5.0}) == [["tv.weight=3", "pair=coffee_mosaic", "style.weight=5.0"]]


@MULTIPROCESS
def test_a_stopped_search_resumes_to_the_same_trials_without_rerunning_finished_ones(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "size=32", "steps=30", "progress=false", "snapshot_every=0", "eval.size=64", "wandb.mode=disabled",
            *SEARCH, "pair=chelsea_swirls", "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=1",
            f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, "-m", "nstexp", *args], cwd=tmp_path, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    while True:  # until the first trial is told to the journal; no deadline: a slower machine takes longer
        if (sweep / search.JOURNAL).exists() and any(t.state == TrialState.COMPLETE for t in _study(sweep).trials):
            break
        if proc.poll() is not None:
            raise AssertionError(f"the search ended before its first trial completed: {proc.communicate()[1]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    first = {t.number: (t.state, t.values, t.params) for t in _counted(_study(sweep))}
    assert 1 <= len(first) < 5
    finished_jobs = {j: (sweep / j / "summary.json").stat().st_mtime_ns
                     for t in _study(sweep).trials if t.number in first for j in t.user_attrs["jobs"]}

    r = run_cli([*args, "resume=true"], cwd=tmp_path, process=True)
    assert r.returncode == 0, r.stderr
    study = _study(sweep)
    counted = _counted(study)
    assert len(counted) == 5 and all(t.state == TrialState.COMPLETE for t in counted)
    for t in counted:  # the finished trials are as they were, their jobs not run again
        if t.number in first:
            assert (t.state, t.values, t.params) == first[t.number]
    assert {j: (sweep / j / "summary.json").stat().st_mtime_ns for j in finished_jobs} == finished_jobs
    # A stopped trial is run again with its parameters.
    for t in study.trials:
        if t.user_attrs.get(search.INTERRUPTED):
            assert any(c.params == t.params for c in counted if c.number > t.number)
    assert len(list(csv.DictReader(open(sweep / "search.csv")))) == len(study.trials)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dashboard_serves_the_searchs_journal(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", *TINY, "wandb.mode=disabled", *SEARCH, "pair=chelsea_swirls", "hydra.sweeper.n_trials=2",
                 f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    port = _free_port()
    dashboard = os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")
    proc = subprocess.Popen([dashboard, str(sweep / search.JOURNAL), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:  # no deadline: it is up when it answers
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(f"optuna-dashboard ended: {proc.communicate()[1]}")
                time.sleep(0.3)
        (study,) = studies
        assert study["study_name"] == search.STUDY
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=5) as response:
            detail = json.load(response)
        assert detail["name"] == search.STUDY and len(detail["trials"]) == 2
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
    finally:
        proc.terminate()
        proc.wait()
