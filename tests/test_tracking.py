"""MLflow tracking and run queries against a temporary SQLite store (a copy of the session's migrated template);
the plotting helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import recipeset
from recipeset.config import RunConfig
from recipeset.errors import RecipesetError
from recipeset.plots import plot_confusion, plot_embedding_map, plot_learning_curves
from recipeset.runs import download_model_dir, find_finished_run, metric_history, run_tags, search_runs_table
from recipeset.signals import RunTerminated
from recipeset.tracking import (
    CLASSIC_ML_KIND,
    EXPERIMENT_KIND_TAG,
    Tracker,
    ensure_experiment,
    metric_key,
    resolve_tracking_uri,
    start_parent_run,
)

CFG = RunConfig().override({"model.d_model": 32, "loss.name": "set-ar", "train.seed": 3,
                            "tracking.experiment": "test-exp"})


def client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_import_does_not_load_mlflow():
    code = ("import recipeset.tracking, recipeset.plots, recipeset.experiments, sys; "
            "assert not {'mlflow', 'matplotlib', 'torch'} & set(sys.modules), sorted(sys.modules); "
            "import recipeset.runs; assert not {'mlflow', 'matplotlib'} & set(sys.modules)")  # runs loads models
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/env.db")
    assert resolve_tracking_uri() == "sqlite:////x/env.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    with pytest.raises(RecipesetError, match="expected a URI"):
        resolve_tracking_uri("mlruns")


def test_experiment_is_tagged_classic_ml(mlflow_uri):
    exp_id = ensure_experiment("kind", mlflow_uri, description="what it is")
    assert ensure_experiment("kind", mlflow_uri) == exp_id  # idempotent
    exp = client(mlflow_uri).get_experiment(exp_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML_KIND == "custom_model_development"
    assert exp.tags["mlflow.note.content"] == "what it is"
    assert Path(exp.artifact_location.removeprefix("file://")).is_relative_to(Path.cwd())


def test_params_tags_and_config_artifact(mlflow_uri, tmp_path):
    with Tracker.start(CFG, run_name="r1", tags={"note": "x"}) as tr:
        run_id = tr.run_id
    run = client(mlflow_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    p = run.data.params
    assert p["model.name"] == "decoder" and p["model.d_model"] == "32" and p["loss.name"] == "set-ar"
    assert p["objectives.weights.clm"] == "1.0" and p["eval.tasks"].startswith('["completion"')
    assert len(p) == len(CFG.flatten())
    t = run.data.tags
    assert t["seed"] == "3" and t["config_hash"] == CFG.config_hash() and t["note"] == "x"
    assert t["dataset"] == "synthetic"
    exp = client(mlflow_uri).get_experiment(run.info.experiment_id)
    assert exp.name == "test-exp"
    path = client(mlflow_uri).download_artifacts(run_id, "config.json", str(tmp_path))
    assert RunConfig.from_dict(json.loads(Path(path).read_text())) == CFG


def test_git_commit_tag_of_the_cwd_repo(mlflow_uri, tmp_path):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], check=True)
    Path("f.txt").write_text("x")
    subprocess.run(["git", "add", "f.txt"], check=True)
    subprocess.run(["git", "commit", "-q", "-m", "x"], check=True, env=env)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    with Tracker.start(CFG) as tr:
        run_id = tr.run_id
    assert client(mlflow_uri).get_run(run_id).data.tags["mlflow.source.git.commit"] == sha


def test_metrics_are_buffered_and_batched(mlflow_uri):
    calls = []
    with Tracker.start(CFG, flush_every_steps=10, flush_interval_s=3600) as tr:
        real = tr._client.log_batch

        def counting(run_id, metrics=(), **kw):
            calls.append(len(metrics))
            return real(run_id, metrics=metrics, **kw)

        tr._client.log_batch = counting
        for step in range(25):
            tr.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 0.1, "val/recall@10": step / 100}, step)
        assert calls == [30, 30]  # two flushes of 10 steps; 5 steps still buffered
        run_id = tr.run_id
    assert calls == [30, 30, 15]
    c = client(mlflow_uri)
    hist = sorted((m.step, m.value) for m in c.get_metric_history(run_id, "train/loss"))
    assert hist == [(s, 1.0 / (s + 1)) for s in range(25)]
    assert [m.step for m in c.get_metric_history(run_id, "val/recall_at_10")] == list(range(25))


def test_flush_chunks_at_1000_metrics(mlflow_uri):
    sizes = []
    with Tracker.start(CFG, flush_every_steps=10**9, flush_interval_s=3600) as tr:
        real = tr._client.log_batch
        tr._client.log_batch = lambda run_id, metrics=(), **kw: (sizes.append(len(metrics)),
                                                                 real(run_id, metrics=metrics, **kw))
        for step in range(5):
            tr.log_metrics({f"m{i}": float(i) for i in range(500)}, step)
    assert sizes == [1000, 1000, 500]


def test_metric_key():
    assert metric_key("val/recall@10") == "val/recall_at_10"
    assert metric_key("a b:c-d.e/f") == "a b:c-d.e/f"
    assert metric_key("x%y") == "x_y"


def test_failed_on_exception(mlflow_uri):
    with pytest.raises(ValueError):
        with Tracker.start(CFG) as tr:
            tr.log_metrics({"loss": 1.0}, 0)
            raise ValueError("boom")
    run = client(mlflow_uri).get_run(tr.run_id)
    assert run.info.status == "FAILED" and run.data.metrics["loss"] == 1.0  # buffer flushed on failure
    with pytest.raises(RuntimeError, match="after the run"):
        tr.log_metrics({"loss": 2.0}, 1)
    with Tracker.start(CFG) as tr2, pytest.raises(RecipesetError, match="non-negative int"):
        tr2.log_metrics({"loss": 2.0}, -1)


def test_killed_on_keyboard_interrupt_and_sigterm_handling_left_to_the_entry_point(mlflow_uri):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with Tracker.start(CFG) as tr:
            assert signal.getsignal(signal.SIGTERM) is before  # the tracker installs no handler
            raise RunTerminated("received signal 15")
    assert client(mlflow_uri).get_run(tr.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before
    from recipeset import tracking

    assert tracking.RunTerminated is RunTerminated


@pytest.mark.parametrize("where", ["params", "config", "parent"])
def test_an_interrupt_while_the_run_is_being_created_ends_it_killed(mlflow_uri, monkeypatch, where):
    """SIGTERM (RunTerminated) landing after the run exists but before Tracker.start returns: the run ends KILLED,
    not RUNNING forever; any other error ends it FAILED."""
    def interrupted(*args, **kwargs):
        raise RunTerminated("received signal 15")

    if where == "params":
        monkeypatch.setattr(Tracker, "log_params", interrupted)
    elif where == "config":
        from mlflow import MlflowClient

        monkeypatch.setattr(MlflowClient, "log_dict", interrupted)
    else:  # a reused grid parent: interrupted right after it was set RUNNING again
        with pytest.raises(KeyboardInterrupt), start_parent_run("grid", "p"):
            raise KeyboardInterrupt
        from mlflow import MlflowClient

        real = MlflowClient.update_run

        def update_then_interrupt(self, run_id, *args, **kwargs):
            real(self, run_id, *args, **kwargs)
            raise RunTerminated("received signal 15")

        monkeypatch.setattr(MlflowClient, "update_run", update_then_interrupt)
    with pytest.raises(RunTerminated):
        if where == "parent":
            start_parent_run("grid", "p")
        else:
            Tracker.start(CFG, run_name="interrupted")
    c = client(mlflow_uri)
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]

    def broken(*args, **kwargs):
        raise ValueError("bad param")

    monkeypatch.setattr(Tracker, "log_params", broken)
    with pytest.raises(ValueError):
        Tracker.start(CFG, run_name="failed")
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])
    assert {r.info.run_name: r.info.status for r in runs}["failed"] == "FAILED"


WORKER = textwrap.dedent("""
    import sys, time
    from recipeset.config import RunConfig
    from recipeset.signals import install_sigterm_handler
    from recipeset.tracking import Tracker
    if sys.argv[1] != "no-handler":
        install_sigterm_handler()  # the Python-API one-liner (recipeset.cli.main does it for the CLI)
    cfg = RunConfig().override({"tracking.experiment": "test-exp"})
    with Tracker.start(cfg, run_name="worker") as tr:
        tr.log_metrics({"loss": 0.5}, 0)
        print(tr.run_id, flush=True)
        if sys.argv[1] in ("hang", "no-handler"):
            time.sleep(60)
""")


def _start_worker(mode: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, mode], stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    assert run_id, "worker did not start a run"
    return proc, run_id


@pytest.mark.slow  # real processes killed and waited for (~20 s); .ci/run runs the slow tests too
def test_sigterm_to_a_real_process_marks_killed_and_sigkill_leaves_running(mlflow_uri):
    ensure_experiment("test-exp", mlflow_uri)  # in the parent, before the workers (SQLite migration races)
    term, term_id = _start_worker("hang")
    kill, kill_id = _start_worker("hang")
    bare, bare_id = _start_worker("no-handler")
    time.sleep(0.2)
    term.send_signal(signal.SIGTERM)
    kill.send_signal(signal.SIGKILL)
    bare.send_signal(signal.SIGTERM)
    assert term.wait(timeout=30) != 0 and kill.wait(timeout=30) == -signal.SIGKILL
    assert bare.wait(timeout=30) == -signal.SIGTERM
    c = client(mlflow_uri)
    assert c.get_run(term_id).info.status == "KILLED"
    assert c.get_run(term_id).data.metrics["loss"] == 0.5
    assert c.get_run(kill_id).info.status == "RUNNING"  # nothing could run: --resume continues it
    assert c.get_run(bare_id).info.status == "RUNNING"  # no handler installed: Python's default, like SIGKILL


def test_resume_continues_the_same_run_without_relogging(mlflow_uri):
    tr = Tracker.start(CFG, flush_every_steps=1)
    for step in range(6):
        tr.log_metrics({"loss": float(step)}, step)
    run_id = tr.run_id  # simulate a SIGKILL: the run is never ended and stays RUNNING
    c = client(mlflow_uri)
    assert c.get_run(run_id).info.status == "RUNNING"

    params_before = c.get_run(run_id).data.params
    with Tracker.start(CFG, resume_run_id=run_id) as tr2:
        tr2._client.log_batch = _forbid_params(tr2._client.log_batch)
        assert tr2.run_id == run_id
        for step in range(4, 10):  # the checkpoint was at step 4: steps 4 and 5 are replayed
            tr2.log_metrics({"loss": float(step)}, step)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == params_before
    assert [m.step for m in c.get_metric_history(run_id, "loss")] == list(range(10))  # each step once
    assert len(c.search_runs([run.info.experiment_id])) == 1

    with pytest.raises(RecipesetError, match="its config differs"):
        Tracker.start(CFG.override({"train.epochs": 99}), resume_run_id=run_id)
    with pytest.raises(RecipesetError, match="no MLflow run"):
        Tracker.start(CFG, resume_run_id="0123456789abcdef")


def _forbid_params(log_batch):
    def wrapped(run_id, metrics=(), params=(), tags=()):
        assert not params, "params must not be re-logged on resume"
        return log_batch(run_id, metrics=metrics, params=params, tags=tags)

    return wrapped


def test_artifacts_and_model_dir_round_trip(mlflow_uri, tmp_path):
    model_dir = tmp_path / "ckpt"
    (model_dir / "sub").mkdir(parents=True)
    (model_dir / "config.json").write_text('{"name": "decoder"}')
    (model_dir / "weights.pt").write_bytes(b"\x00\x01weights")
    (model_dir / "sub" / "vocab.json").write_text("[]")
    (tmp_path / "notes.txt").write_text("hello")
    table = pd.DataFrame({"metric": ["recall@10", "mrr"], "value": [0.5, 0.25]})
    with Tracker.start(CFG) as tr:
        uri = tr.log_model_dir(model_dir)
        tr.log_artifact(tmp_path / "notes.txt", "extra")
        tr.log_dict({"a": 1}, "d/a.json")
        tr.log_table(table, "eval/test")
        tr.log_figure(plot_learning_curves({"train/loss": [(0, 1.0), (1, 0.5)]}), "plots/curves")
        with pytest.raises(RecipesetError, match="not a model directory"):
            tr.log_model_dir(tmp_path / "missing")
    assert uri == f"runs:/{tr.run_id}/model"
    assert client(mlflow_uri).get_run(tr.run_id).data.tags["model_uri"] == uri

    local = Path(download_model_dir(uri, dst=tmp_path / "dl"))
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert files == ["config.json", "sub/vocab.json", "weights.pt"]
    assert (local / "weights.pt").read_bytes() == b"\x00\x01weights"
    assert download_model_dir(str(model_dir)) == str(model_dir)  # a local directory passes through

    c = client(mlflow_uri)
    names = {a.path for a in c.list_artifacts(tr.run_id)}
    assert {"config.json", "model", "extra", "d", "eval", "plots"} <= names
    csv = Path(c.download_artifacts(tr.run_id, "eval/test.csv", str(tmp_path / "a")))
    pd.testing.assert_frame_equal(pd.read_csv(csv), table)
    js = Path(c.download_artifacts(tr.run_id, "eval/test.json", str(tmp_path / "b")))
    assert json.loads(js.read_text()) == table.to_dict(orient="records")
    assert [a.path for a in c.list_artifacts(tr.run_id, "plots")] == ["plots/curves.png"]

    with pytest.raises(RecipesetError, match="cannot download model"):
        download_model_dir(f"runs:/{tr.run_id}/nothing-here", dst=tmp_path / "x")
    with pytest.raises(RecipesetError, match="not a model directory"):
        download_model_dir(str(tmp_path / "nope"))


def test_recipeset_load_model_downloads_a_runs_uri(mlflow_uri, tmp_path):
    """End to end: a real checkpoint logged to the store comes back through ``recipeset.load_model("runs:/…")``;
    the model layer's own loader reads local directories only."""
    import torch

    from recipeset.data.vocab import Vocabulary
    from recipeset.models import DeepSets, DeepSetsConfig, save_model
    from recipeset.models.io import load_model as load_model_dir

    torch.manual_seed(0)
    model = DeepSets(DeepSetsConfig(d_model=8), Vocabulary(["tomato", "basil", "garlic"], ["italian"])).eval()
    with Tracker.start(CFG) as tr:
        uri = tr.log_model_dir(save_model(model, tmp_path / "ckpt"))
    loaded = recipeset.load_model(uri)
    assert isinstance(loaded, DeepSets) and loaded.vocab == model.vocab and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.raises(RecipesetError, match="use recipeset.load_model"):
        load_model_dir(uri)
    with pytest.raises(RecipesetError, match="cannot download model"):
        recipeset.load_model(f"runs:/{tr.run_id}/nothing-here")


def test_models_uri_of_a_registered_model(mlflow_uri, tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with Tracker.start(CFG) as tr:
        uri = tr.log_model_dir(tmp_path / "ckpt")
    c = client(mlflow_uri)
    c.create_registered_model("recipe-model")
    c.create_model_version("recipe-model", source=uri, run_id=tr.run_id)
    local = Path(download_model_dir("models:/recipe-model/1", dst=tmp_path / "dl"))
    assert (local / "config.json").read_text() == "{}"


def test_log_dataset_lineage(mlflow_uri, tmp_path):
    src = tmp_path / "flavornet.csv"
    src.write_text("a,b\n")
    sha = "ab" * 32
    with Tracker.start(CFG) as tr:
        tr.log_dataset("flavornet", src, sha, {"train": 80, "val": 10, "test": 10})
        tr.log_dataset("synthetic", None, "cd" * 32, context="mix")
    run = client(mlflow_uri).get_run(tr.run_id)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    fl = inputs["flavornet"]
    assert json.loads(fl.dataset.source)["uri"] == str(src.resolve()) and fl.dataset.digest == sha[:32]
    tags = {t.key: t.value for t in fl.tags}
    assert tags["sha256"] == sha and tags["train"] == "80" and tags["mlflow.data.context"] == "train"
    assert inputs["synthetic"].dataset.source_type == "code"
    assert run.data.tags["dataset"] == "flavornet+synthetic"
    assert run.data.tags["dataset_sha256"] == f"{sha}+{'cd' * 32}"


def test_grid_parent_children_find_finished_and_table(mlflow_uri):
    cfgs = [CFG.override({"train.seed": s, "tracking.experiment": "grid"}) for s in range(3)]
    with start_parent_run("grid", "grid-parent") as parent:
        for i, cfg in enumerate(cfgs):
            status = None
            try:
                with Tracker.start(cfg, run_name=f"grid/v/seed{i}", parent_run_id=parent.run_id) as tr:
                    tr.log_metrics({"val/recall@10": 0.1 * (i + 1), "val/loss": 3.0 - i}, 10)
                    if i == 2:
                        raise RuntimeError("crash")
            except RuntimeError:
                status = "failed"
            assert status == ("failed" if i == 2 else None)
    c = client(mlflow_uri)
    child = c.get_run(tr.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    tags = run_tags([tr.run_id, parent.run_id])
    assert tags[tr.run_id]["mlflow.parentRunId"] == parent.run_id and tags[parent.run_id]["run_kind"] == "parent"
    history = metric_history(tr.run_id, "val/recall_at_10")
    assert history.to_dict() == {10: pytest.approx(0.3)} and history.dtype == float
    assert metric_history(tr.run_id, "never/logged").empty

    assert find_finished_run("grid", cfgs[0].config_hash()) is not None
    assert find_finished_run("grid", cfgs[1].config_hash()) is not None
    assert find_finished_run("grid", cfgs[2].config_hash()) is None  # failed: must be re-run
    assert find_finished_run("no-such-experiment", cfgs[0].config_hash()) is None

    best = search_runs_table("grid", metric="val/recall@10")
    assert list(best["run"]) == ["grid/v/seed2", "grid/v/seed1", "grid/v/seed0"]  # higher recall first
    assert list(best.columns[:4]) == ["run_id", "run", "status", "val/recall_at_10"]
    assert best.loc[0, "status"] == "FAILED" and best.loc[0, "model.d_model"] == "32"
    by_loss = search_runs_table("grid", metric="val/loss")
    assert list(by_loss["val/loss"]) == [1.0, 2.0, 3.0]  # lower loss first
    assert len(search_runs_table("grid", include_parents=True)) == 4
    with pytest.raises(RecipesetError, match="did you mean 'val/loss'"):
        search_runs_table("grid", metric="val/los")
    with pytest.raises(RecipesetError, match="no MLflow experiment 'gird'.*did you mean 'grid'"):
        search_runs_table("gird")


def test_a_stopped_grid_ends_the_children_its_killed_workers_left_running(mlflow_uri):
    def in_grid(seed: int):
        return CFG.override({"train.seed": seed, "tracking.experiment": "grid"})

    c = client(mlflow_uri)
    with start_parent_run("grid", "orphans") as parent:
        done = Tracker.start(in_grid(0), run_name="g/a", parent_run_id=parent.run_id)
        done.end("FINISHED")
        # a worker SIGKILLed mid-run: its Tracker never ends the run
        orphan = Tracker.start(in_grid(1), run_name="g/b", parent_run_id=parent.run_id)
        with start_parent_run("grid", "other") as other:  # another grid's running child is not touched
            bystander = Tracker.start(in_grid(2), run_name="g/c", parent_run_id=other.run_id)
            assert parent.end_running_children("KILLED") == [orphan.run_id]
            assert c.get_run(bystander.run_id).info.status == "RUNNING"
            bystander.end("FINISHED")
    assert c.get_run(orphan.run_id).info.status == "KILLED"
    assert c.get_run(done.run_id).info.status == "FINISHED"
    assert parent.end_running_children() == []


def test_killed_parent_is_reused_on_grid_resume(mlflow_uri):
    with pytest.raises(KeyboardInterrupt):
        with start_parent_run("grid", "p") as parent:
            raise KeyboardInterrupt
    with start_parent_run("grid", "p") as again:
        assert again.run_id == parent.run_id
    with start_parent_run("grid", "p") as fresh:  # the previous one finished: a new parent
        assert fresh.run_id != parent.run_id


def test_plots():
    from matplotlib.figure import Figure

    fig = plot_learning_curves({"train/loss": [(0, 2.0), (5, 1.0)], "val/loss": [(5, 1.2)], "train/lr": [(0, 1e-3)]})
    assert isinstance(fig, Figure) and sum(ax.get_visible() for ax in fig.axes) == 2  # loss panel + lr panel
    cm = np.array([[3, 1], [0, 4]])
    fig = plot_confusion(cm, ["italian", "japanese"])
    assert isinstance(fig, Figure)
    with pytest.raises(RecipesetError, match="does not match"):
        plot_confusion(cm, ["a"])
    rng = np.random.default_rng(0)
    names = [f"ing{i}" for i in range(50)]
    fig = plot_embedding_map(rng.normal(size=(50, 8)), names, n_labels=5)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == names[:5]  # rows are in frequency order: the first ones get labels
    counts = list(range(50))
    fig = plot_embedding_map(rng.normal(size=(50, 8)), names, counts=counts, n_labels=3)
    assert [t.get_text() for t in fig.axes[0].texts] == ["ing49", "ing48", "ing47"]


@pytest.mark.parametrize("said", [
    "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest",
    # a tracking server on PostgreSQL (tests/test_team_server.py met it)
    'BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"\n'
    "DETAIL:  Key (experiment_id, name, digest)=(2, synthetic, 3eb736eb19589ea97dd5097905b14b4e) already exists.",
])
def test_log_dataset_retries_the_parallel_insert_race(mlflow_uri, monkeypatch, said):
    """Two grid children logging the same new dataset at once: the store's unique key rejects the second
    insert; the tracker retries (the row then exists) instead of failing the child. Other errors propagate."""
    from mlflow.exceptions import MlflowException

    with Tracker.start(CFG) as tr:
        real = tr._client.log_inputs
        calls = []

        def racing(run_id, datasets=None, models=None):
            calls.append(run_id)
            if len(calls) == 1:
                raise MlflowException(said)
            return real(run_id, datasets=datasets)

        monkeypatch.setattr(tr._client, "log_inputs", racing)
        tr.log_dataset("synthetic", None, "ef" * 32)
        assert len(calls) == 2

        def broken(run_id, datasets=None, models=None):
            raise MlflowException("database is locked")

        monkeypatch.setattr(tr._client, "log_inputs", broken)
        with pytest.raises(MlflowException, match="locked"):
            tr.log_dataset("other", None, "01" * 32)
    run = client(mlflow_uri).get_run(tr.run_id)
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["synthetic"]
