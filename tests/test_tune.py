"""``recipeset tune``: [tune] parsing errors, a tiny search (parent + child runs, best config, resume), pruning,
recovery of interrupted trials, and (slow) a search killed with SIGKILL and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import invoke, ok, store_in

from recipeset.config import load_config
from recipeset.errors import RecipesetError
from recipeset.experiments import load_experiment
from recipeset.tune import open_study, recover_interrupted

REPO = Path(__file__).resolve().parent.parent

TINY = """
[experiment]
name = "{name}"

[base]
"data.n_recipes" = 200
"model.name" = "deep-sets"
"model.d_model" = 8
"train.max_steps" = {steps}
"train.eval_every" = 1
"train.checkpoint_every" = 1
"train.warmup_steps" = 1
"train.batch_size" = 32
"train.device" = "cpu"
"eval.tasks" = ["completion"]
"eval.max_queries" = 5
"eval.val_max_queries" = 5

[tune]
trials = 2
{tune}
[tune.space]
"train.lr" = {{ low = 1e-4, high = 3e-3, log = true }}
"model.rho_layers" = {{ low = 1, high = 2 }}
"train.batch_size" = {{ choices = [16, 32] }}
"""


def write(directory: Path, name: str = "tiny-tune", steps: int = 2, tune: str = "") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(TINY.format(name=name, steps=steps, tune=tune), encoding="utf-8")
    return path




# ---- the [tune] section's errors: one line naming the file and the key ------------------------------------------
SPACE = '[tune]\ntrials = 2\n[tune.space]\n'


@pytest.mark.parametrize("text, fragments", [
    (SPACE + '"train.lrr" = { low = 1e-4, high = 1e-3 }\n', ["train.lrr: unknown key (did you mean 'lr'?)"]),
    (SPACE + '"model.dropout" = { low = 0.3, high = 0.1 }\n', ["tune.space.model.dropout: low must be < high"]),
    (SPACE + '"train.lr" = { low = 0.0, high = 1e-3, log = true }\n', ["tune.space.train.lr: a log range needs"]),
    (SPACE + '"train.batch_size" = { choices = [] }\n', ["tune.space.train.batch_size.choices: expected a non-empty"]),
    (SPACE + '"train.lr" = { low = 1e-4, hi = 1e-3 }\n', ["tune.space.train.lr.hi: unknown key (did you mean 'high"]),
    (SPACE + '"model.dropout" = { low = 0.0, high = 1.5 }\n', ["model.dropout: must be >= 0 and < 1, got 1.5"]),
    ('[tune]\n[tune.space]\n"train.lr" = { low = 1e-4, high = 1e-3 }\n', ["tune: no budget"]),
    ('[tune]\ntrials = 2\nmetric = "val/completion/mrr"\n[tune.space]\n"train.lr" = { low = 1e-4, high = 1e-3 }\n',
     ["tune.metric: 'val/completion/mrr' is not a validation metric", "val_eval/completion/mrr"]),
    ('[tune]\ntrials = 2\npruner = "medain"\n[tune.space]\n"train.lr" = { low = 1e-4, high = 1e-3 }\n',
     ["tune.pruner: unknown value 'medain' (did you mean 'median'?)"]),
    ('[tune]\ntrials = 2\nmetric = "val/loss/cls"\n[tune.space]\n"train.lr" = { low = 1e-4, high = 1e-3 }\n',
     ["tune.metric: the run trains no objective 'cls'"]),
    ('[tune]\ntrials = 2\nspcae = 1\n', ["tune.spcae: unknown key (did you mean 'space'?)"]),
])
def test_tune_section_errors_are_one_line_naming_file_and_key(tmp_path, text, fragments):
    path = tmp_path / "bad.toml"
    path.write_text('[base]\n"model.name" = "deep-sets"\n' + text, encoding="utf-8")
    result = invoke("tune", str(path))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(path) in lines[0], result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_file_without_tune_and_an_unknown_variant(tmp_path):
    path = tmp_path / "plain.toml"
    path.write_text('[base]\n"train.epochs" = 1\n', encoding="utf-8")
    assert "no [tune] section" in invoke("tune", str(path)).output
    assert "unknown variant 'nope'" in invoke("tune", str(write(tmp_path)), "--variant", "nope").output


def test_base_or_one_variant_gives_the_fixed_part(tmp_path):
    path = write(tmp_path)
    path.write_text(path.read_text() + '[[grid]]\nname = "wide"\n"model.d_model" = 16\n')
    exp = load_experiment(path)
    assert exp.fixed_config().model.params["d_model"] == 8
    assert exp.fixed_config("wide").model.params["d_model"] == 16
    with pytest.raises(RecipesetError, match="unknown variant 'wdie' \\(did you mean 'wide'\\?\\)"):
        exp.fixed_config("wdie")


def test_the_example_tune_file_loads():
    exp = load_experiment(REPO / "experiments" / "tune_deep_sets.toml")
    assert exp.tune.metric == "val_eval/completion/mrr" and exp.tune.direction == "maximize"
    assert exp.fixed_config(quick=True).train.max_steps == 20


# ---- a tiny search ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def searched(mlflow_template_db: Path, tmp_path_factory: pytest.TempPathFactory):
    """One trial of a tiny search (CLI, ``--trials 1``), the same command again, then the file's budget of 2."""
    root = tmp_path_factory.mktemp("tune")
    with store_in(mlflow_template_db, root) as uri:
        path = write(root)
        first = ok("tune", str(path), "--out", "study", "--trials", "1")
        storage = f"sqlite:///{root / 'study' / 'optuna.db'}"
        before = {t.number: t.datetime_complete for t in optuna.load_study(study_name="tiny-tune",
                                                                            storage=storage).trials}
        again = ok("tune", str(path), "--out", "study", "--trials", "1")
        more = ok("tune", str(path), "--out", "study")
        yield {"root": root, "uri": uri, "first": first.output, "again": again.output, "more": more.output,
               "before": before, "study": optuna.load_study(study_name="tiny-tune", storage=storage)}


def test_search_has_a_parent_run_with_a_child_per_trial(searched):
    from mlflow import MlflowClient

    c = MlflowClient(searched["uri"])
    exp = c.get_experiment_by_name("tiny-tune-tune")
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "parent"]
    assert len(parents) == 1 and parents[0].info.run_name == "tiny-tune/tune"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["trial"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in children + parents)
    best = searched["study"].best_trial
    assert parent.data.metrics["best/value"] == pytest.approx(best.value)
    assert parent.data.tags["best_trial"] == str(best.number)
    assert parent.data.params["tune.space.train.batch_size"] == "choices [16, 32]"
    assert "best_config.toml" in [a.path for a in c.list_artifacts(parent.info.run_id)]
    assert "best trial" in searched["first"] and "best config: study/best_config.toml" in searched["first"]


def test_rerun_resumes_without_repeating_finished_trials(searched):
    study = searched["study"]
    assert "1 finished trials, 0 to go" in searched["again"] and "trial 1:" not in searched["again"]
    assert "1 finished trials, 1 to go" in searched["more"] and "trial 1:" in searched["more"]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for number, completed in searched["before"].items():  # the first two were not run again
        assert study.trials[number].datetime_complete == completed


@pytest.mark.slow  # two worker processes, each importing torch and MLflow (~20-40 s on 2 cores)
def test_two_workers_share_the_budget_without_repeating_a_trial(mlflow_uri, tmp_path, monkeypatch):
    """``--jobs 2``: two worker processes take trials from one study; together they finish the budget (4), no
    trial twice, each trial a finished child run of the one parent, and the summary follows."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "jobs-tune", steps=3, tune='pruner = "none"')
    result = ok("tune", str(path), "--out", "study", "--trials", "4", "--jobs", "2", "--tracking-uri", mlflow_uri)
    study = optuna.load_study(study_name="jobs-tune", storage=f"sqlite:///{tmp_path / 'study' / 'optuna.db'}")
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == len(study.trials) and 4 <= len(finished) <= 5  # a race may start jobs - 1 more
    assert len({t.user_attrs["owner"]["pid"] for t in finished}) == 2  # both workers ran trials
    assert all(f"worker-{i}: trial" in result.output for i in (0, 1)) and "best trial" in result.output
    c = MlflowClient(mlflow_uri)
    runs = c.search_runs([c.get_experiment_by_name("jobs-tune-tune").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("run_kind") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["trial"]) for r in children) == list(range(len(finished)))
    assert {r.info.status for r in children + [parent]} == {"FINISHED"}


def test_best_config_loads_and_trains(searched, monkeypatch):
    root = searched["root"]
    monkeypatch.chdir(root)
    cfg = load_config(root / "study" / "best_config.toml")
    best = searched["study"].best_params
    assert cfg.train.lr == pytest.approx(best["train.lr"]) and cfg.train.batch_size == best["train.batch_size"]
    assert cfg.model.params["rho_layers"] == best["model.rho_layers"]
    assert cfg.tracking.run_name is None and cfg.tracking.experiment == "tiny-tune"
    result = ok("train", "--config", "study/best_config.toml", "--dataset", "synthetic", "--set",
                "data.n_recipes=150", "--max-steps", "1", "--no-track", "--quiet", "--out", "retrained")
    assert (root / "retrained" / "model" / "weights.pt").exists(), result.output


def test_a_pruned_trial_ends_its_run_killed_and_tagged(mlflow_uri, tmp_path, monkeypatch):
    """The pruner is fed at every periodic validation; a pruned trial's run says so (not FAILED)."""
    from mlflow import MlflowClient

    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda n_startup_trials: optuna.pruners.ThresholdPruner(
        upper=0.0))  # every loss is above 0: pruned at the first validation
    path = write(tmp_path, "pruned-tune", tune="trials = 1")
    path.write_text(path.read_text().replace("trials = 2\n", ""))
    result = invoke("tune", str(path))
    assert "pruned at step 1" in result.output and "no trial completed yet (1 pruned)" in result.output, result.output
    c = MlflowClient(mlflow_uri)
    runs = c.search_runs([c.get_experiment_by_name("pruned-tune-tune").experiment_id])
    trial = [r for r in runs if r.data.tags.get("run_kind") == "run"][0]
    assert trial.info.status == "KILLED" and trial.data.tags["tune_state"] == "pruned"
    assert trial.data.tags["pruned_at_step"] == "1"


def test_an_interrupted_trial_is_failed_and_queued_again_once(tmp_path):
    spec = load_experiment(write(tmp_path)).tune
    study = open_study(spec, tmp_path / "optuna.db", "s")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)})
    trial.set_user_attr("owner", {"host": os.uname().nodename, "pid": dead.pid})
    alive = study.ask()
    alive.set_user_attr("owner", {"host": os.uname().nodename, "pid": os.getppid()})  # a live process: left alone
    assert recover_interrupted(study) == [trial.number]
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "RUNNING", "WAITING"]
    assert study.trials[2].system_attrs["fixed_params"] == study.trials[0].params  # the same params, queued
    assert study.trials[2].user_attrs == {"resumes": 0, "run_dir_trial": 0}
    assert recover_interrupted(study) == []  # once


# ---- a killed search resumes (slow) -----------------------------------------------------------------------------
@pytest.mark.slow  # a real search process killed and resumed (~1-2 min on 2 busy cores)
def test_sigkilled_search_resumes_without_repeating_finished_trials(mlflow_uri, tmp_path):
    from mlflow import MlflowClient

    path = write(tmp_path, "killed-tune", steps=60, tune="pruner = \"none\"")
    path.write_text(path.read_text().replace("trials = 2", "trials = 3"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "recipeset.cli", "tune", str(path), "--out", "study"]
    storage = f"sqlite:///{tmp_path / 'study' / 'optuna.db'}"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    try:
        # trials run one after another: trial 1 with a checkpoint means trial 0 finished; kill it mid-trial (the
        # files, not the study, are watched: the test must not touch the SQLite file the search writes)
        while not (tmp_path / "study" / "trial-1" / "checkpoint").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    killed = optuna.load_study(study_name="killed-tune", storage=storage).trials
    complete_before = {t.number: t.datetime_complete for t in killed if t.state.name == "COMPLETE"}
    interrupted = [t.number for t in killed if t.state.name == "RUNNING"]
    assert len(interrupted) == 1
    resumed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"queued again (interrupted): trial {interrupted[0]}" in resumed.stdout
    study = optuna.load_study(study_name="killed-tune", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and states[interrupted[0]] == "FAIL", states
    for number, completed in complete_before.items():  # never run again
        assert study.trials[number].datetime_complete == completed
    retry = [t for t in study.trials if t.user_attrs.get("resumes") == interrupted[0]]
    assert len(retry) == 1 and retry[0].params == killed[interrupted[0]].params
    c = MlflowClient(mlflow_uri)
    runs = c.search_runs([c.get_experiment_by_name("killed-tune-tune").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}  # the retry continued the killed trial's run
    assert len([r for r in runs if r.data.tags.get("run_kind") == "run"]) == 3
