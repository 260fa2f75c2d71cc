"""Store and server faults (README, "Reliability"): processes that start together on a new SQLite store, a
tracking server that does not answer, and one that goes away in the middle of a run."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import invoke

import recipeset.pipeline
import recipeset.tracking
from recipeset.config import RunConfig
from recipeset.errors import RecipesetError
from recipeset.pipeline import run_training
from recipeset.runs import load_model, metric_history
from recipeset.tracking import UNLOGGED_FILE, Tracker, open_store, replay_unlogged

REPO = Path(__file__).resolve().parents[1]
TINY = {"data.n_recipes": 300, "model.d_model": 16, "model.n_layers": 1, "train.batch_size": 32,
        "train.warmup_steps": 1, "train.device": "cpu", "eval.max_queries": 20, "eval.joint_max_queries": 5,
        "eval.query_draws": 1, "tracking.experiment": "faults"}


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _start_together(tmp_path: Path, n: int, imports: str, body: str, *args: str) -> list[subprocess.CompletedProcess]:
    """Start ``n`` Python processes that import ``imports``, wait for one signal, then run ``body`` (its ``i`` is
    the process's index): they reach the store at the same moment."""
    go = tmp_path / "go"
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import {imports}
        i = int(sys.argv[1])
        Path(sys.argv[2], f"ready{{i}}").touch()
        while not Path(sys.argv[2], "go").exists():
            time.sleep(0.01)
    """) + textwrap.dedent(body)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i), str(tmp_path), *args], cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(n)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


# ---- concurrent first runs on a new SQLite store ---------------------------------------------------------------
def test_racing_processes_create_the_store_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = _start_together(tmp_path, 2, "mlflow, sqlalchemy, recipeset.tracking", """
        from recipeset.tracking import create_sqlite_store, mlflow_client
        print(create_sqlite_store(sys.argv[3]))
        mlflow_client(sys.argv[3]).search_experiments()  # the store works in every process
    """, uri)
    assert all(p.returncode == 0 for p in procs), [p.stderr[-2000:] for p in procs]
    assert sorted(p.stdout.split()[-1] for p in procs) == ["False", "True"]  # one migration
    assert (tmp_path / "mlflow.db.lock").exists()


@pytest.mark.slow  # four real training processes from a cold start (~40 s on 2 busy cores)
def test_concurrent_first_runs_all_finish(tmp_path):
    from mlflow import MlflowClient

    procs = _start_together(tmp_path, 4, "mlflow, torch, recipeset.pipeline, recipeset.cli", """
        from recipeset.cli import main
        sys.argv = ["recipeset", "train", "--quiet", "--no-baselines", "--max-steps", "3", "--seed", str(i),
                    "--set", "data.n_recipes=200", "--set", "eval.query_draws=1", "--out", f"runs/r{i}"]
        main()
    """)
    assert all(p.returncode == 0 for p in procs), [p.stderr[-2000:] for p in procs]
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("recipeset").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
    assert all(len(c.get_metric_history(r.info.run_id, "train/loss")) == 3 for r in runs)


def test_store_in_a_missing_directory_is_one_line(tmp_path):
    with pytest.raises(RecipesetError, match="does not exist; create it"):
        open_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}")


# ---- a tracking server that does not answer ----------------------------------------------------------------
def _closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines on stderr
        pass


class _Starting(_Quiet):
    """An MLflow server still starting: ``/health`` answers at once, the API after ``delay`` seconds."""

    delay = 2.0

    def do_GET(self) -> None:
        self._answer(b"OK" if self.path == "/health" else b"{}", 200 if self.path == "/health" else 404)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.delay)
        self._answer(b'{"experiments": []}', 200)

    def _answer(self, body: bytes, status: int) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up waiting
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@contextlib.contextmanager
def _server(kind: str):
    """``silent``: accepts connections and never answers; ``not-mlflow``: an HTTP server answering 501;
    ``starting``: an MLflow server whose API answers only after :attr:`_Starting.delay` seconds."""
    if kind == "silent":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(8)
            yield f"http://127.0.0.1:{s.getsockname()[1]}"
        return
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Starting if kind == "starting" else _Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _no_data(*args, **kwargs):
    raise AssertionError("data prepared although the tracking server does not answer")


def _assert_one_line_naming(result, uri: str, started: float) -> None:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert uri in lines[0] and "--no-track" in lines[0] and "does not answer" in lines[0]
    assert time.monotonic() - started < 30  # a behaviour, not a benchmark: MLflow's retries took 256 s


def test_train_against_a_refusing_server_fails_at_once_before_the_data(mlflow_uri, monkeypatch):
    monkeypatch.setattr(recipeset.pipeline, "prepare_data", _no_data)
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = invoke("train", "--max-steps", "1", "--tracking-uri", uri, "--out", "runs/x")
    _assert_one_line_naming(result, uri, started)
    assert "Connection refused" in result.output
    assert not Path("runs/x/split.json").exists()


@pytest.mark.parametrize("kind", ["silent", "not-mlflow"])
def test_train_against_a_silent_or_foreign_server_fails_in_seconds(mlflow_uri, monkeypatch, kind):
    monkeypatch.setattr(recipeset.pipeline, "prepare_data", _no_data)
    with _server(kind) as uri:
        started = time.monotonic()
        result = invoke("train", "--max-steps", "1", "--tracking-uri", uri)
        _assert_one_line_naming(result, uri, started)
    assert ("(timed out)" if kind == "silent" else "(HTTP 501)") in result.output


def test_a_server_that_is_still_starting_is_waited_for(monkeypatch):
    """A fresh `mlflow server` answers /health before its first API answer (5-6 s on 2 busy cores): a grid started
    with it must not be told that it does not answer."""
    monkeypatch.setattr(recipeset.tracking, "PROBE_TIMEOUT_S", 1)  # the API answers after 2 s
    with _server("starting") as uri:
        assert open_store(uri) == uri
    monkeypatch.setattr(recipeset.tracking, "PROBE_STARTING_TIMEOUT_S", 1)  # still starting after the longer wait
    with _server("starting") as uri, pytest.raises(RecipesetError, match=r"does not answer \(timed out\)"):
        open_store(uri)


@pytest.mark.parametrize("command", ["experiment", "tune", "evaluate", "compare"])
def test_every_command_that_uses_the_server_fails_at_once(mlflow_uri, monkeypatch, command):
    import recipeset.study
    import recipeset.tune

    monkeypatch.setattr(recipeset.study, "run_training", _no_data)
    monkeypatch.setattr(recipeset.tune, "run_training", _no_data)
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = {"experiment": ["experiment", "run", str(REPO / "experiments" / "order_study.toml"), "--quick"],
            "tune": ["tune", str(REPO / "experiments" / "tune_deep_sets.toml"), "--quick", "--out", "t"],
            "evaluate": ["evaluate", "runs:/0123456789abcdef/model"],
            "compare": ["compare", "order_study"]}[command]
    started = time.monotonic()
    _assert_one_line_naming(invoke(*args), uri, started)
    assert not Path("t").exists() and not Path("runs").exists()


# ---- a server that goes away in the middle of a run ----------------------------------------------------------
class Outage:
    """Makes the MLflow client's writes fail like a server that went away (``down``), by patching the
    ``MlflowClient`` methods a run writes with; counts the calls that reached the "server" while it was down."""

    WRITES = ("log_batch", "log_artifact", "log_artifacts", "log_text", "log_dict", "log_figure", "log_inputs",
              "set_terminated", "set_tag", "create_logged_model", "log_model_artifacts", "log_outputs",
              "finalize_logged_model", "create_registered_model", "create_model_version")

    def __init__(self, monkeypatch: pytest.MonkeyPatch, what: tuple[str, ...] = WRITES) -> None:
        from mlflow import MlflowClient

        self.down, self.refused = False, 0
        for name in what:
            monkeypatch.setattr(MlflowClient, name, self._failing(getattr(MlflowClient, name)))

    def _failing(self, method):
        def call(client, *args, **kwargs):
            if self.down:
                import requests

                self.refused += 1
                raise requests.ConnectionError("[Errno 111] Connection refused")
            return method(client, *args, **kwargs)
        return call


def test_metrics_logged_during_an_outage_are_sent_when_the_server_is_back(mlflow_uri, monkeypatch, caplog):
    outage = Outage(monkeypatch, ("log_batch",))
    cfg = RunConfig().override({"tracking.experiment": "outage"})
    with Tracker.start(cfg, flush_every_steps=1, flush_interval_s=3600) as tracker:
        tracker.retry_after_s = 0.0  # try again at every flush
        for step in range(10):
            outage.down = 3 <= step < 7
            tracker.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
        assert outage.refused == 4  # steps 3-6 were tried, and kept
    history = metric_history(tracker.run_id, "train/loss")
    assert list(history.index) == list(range(10)) and history[5] == pytest.approx(1 / 6)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "does not answer (Connection refused)" in warnings[0]
    assert "answers again" in warnings[1]
    assert not Path(UNLOGGED_FILE).exists()


def test_during_an_outage_the_store_is_tried_again_only_after_a_wait(mlflow_uri, monkeypatch):
    outage = Outage(monkeypatch, ("log_batch",))
    cfg = RunConfig().override({"tracking.experiment": "outage"})
    tracker = Tracker.start(cfg, flush_every_steps=1, flush_interval_s=3600)
    outage.down = True
    for step in range(50):
        tracker.log_metrics({"train/loss": 1.0}, step)  # does not raise, does not wait for the server
    assert outage.refused == 1  # the first flush failed; the next try is not due yet (30 s)
    outage.down = False
    tracker.end()  # the last flush is tried whatever the wait
    assert list(metric_history(tracker.run_id, "train/loss").index) == list(range(50))


def test_a_run_whose_server_never_comes_back_finishes_locally_and_can_be_replayed(mlflow_uri, monkeypatch,
                                                                                   caplog, tmp_path):
    from mlflow import MlflowClient

    outage = Outage(monkeypatch)
    started = Tracker.start

    def start_then_go_down(*args, **kwargs):  # the server goes away once the run exists
        tracker = started(*args, **kwargs)
        outage.down = True
        return tracker

    monkeypatch.setattr(Tracker, "start", start_then_go_down)
    cfg = RunConfig().override({**TINY, "train.max_steps": 6}, source="test")
    result = run_training(cfg, out_dir=tmp_path / "run", progress=False)
    assert load_model(result.model_dir).vocab is not None  # the model was written
    assert (tmp_path / "run" / "eval.json").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "does not answer (Connection refused)" in warnings[0]
    last = warnings[-1]
    saved = tmp_path / "run" / UNLOGGED_FILE
    assert "metrics and the run's end not logged" in last and str(saved) in last
    assert "recipeset replay-metrics" in last and "model" in last  # the artifacts it kept locally
    assert "pyfunc" in last and result.pyfunc_uri is None  # the MLflow pyfunc model was not logged either
    records = [json.loads(line) for line in saved.read_text().splitlines()]
    losses = [r["step"] for r in records if r.get("key") == "train/loss"]
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert records[-1]["status"] == "FINISHED"
    assert MlflowClient(mlflow_uri).get_run(result.run_id).info.status == "RUNNING"

    outage.down = False  # the server is back: replay
    assert replay_unlogged(tmp_path / "run") == len(records) - 1
    assert list(metric_history(result.run_id, "train/loss").index) == [1, 2, 3, 4, 5, 6]
    assert MlflowClient(mlflow_uri).get_run(result.run_id).info.status == "FINISHED"
    assert (tmp_path / "run" / (UNLOGGED_FILE + ".replayed")).exists() and not saved.exists()


def test_replay_metrics_command(mlflow_uri, monkeypatch, tmp_path):
    outage = Outage(monkeypatch, ("log_batch",))
    tracker = Tracker.start(RunConfig().override({"tracking.experiment": "outage"}), local_dir=tmp_path / "run")
    outage.down = True
    tracker.log_metrics({"val/loss": 2.0}, 7)
    tracker.end()
    outage.down = False
    result = invoke("replay-metrics", str(tmp_path / "run"))
    assert result.exit_code == 0 and "1 metrics sent" in result.output, result.output
    assert dict(metric_history(tracker.run_id, "val/loss")) == {7: 2.0}
    assert invoke("replay-metrics", str(tmp_path / "run")).exit_code == 1  # nothing left to send: one line
