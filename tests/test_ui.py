"""``recipeset ui``: the MLflow server runs in a process group of its own that a SIGTERM stops as a whole (no worker
left listening), a taken port is one line before anything starts, and it prints (``--open``: opens) the URL of the
latest or the named experiment's runs view with the headline test metrics as columns."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from helpers import invoke, ok

from recipeset.runs import SHARED_VIEW_TAG, runs_view_url
from recipeset.tracking import mlflow_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, process group) of every process (Linux /proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            out[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return out


def descendants(pid: int) -> set[int]:
    table = processes()
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, (_, ppid, _) in table.items() if ppid == parent and p not in found]
        found.update(children)
        todo += children
    return found


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_taken_port_is_one_line_and_nothing_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = invoke("ui", "--port", str(port))
        assert time.monotonic() - started < 10
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [f"Error: port {port} is in use: pass --port N"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.slow  # the MLflow server and its workers take a minute to come up on 2 shared cores
def test_sigterm_stops_the_server_and_all_its_workers(mlflow_template_db, tmp_path):
    shutil.copy(mlflow_template_db, tmp_path / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "recipeset.cli", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    server: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while not listening(port):
            assert ui.poll() is None, ui.stdout.read()[-2000:]
            assert time.monotonic() < deadline, "the MLflow UI did not come up within 180 s"
            time.sleep(0.5)
        server = descendants(ui.pid)  # mlflow ui, uvicorn and its workers, the job runner, ...
        groups = {processes()[p][2] for p in server if p in processes()}
        assert len(server) >= 2 and ui.pid not in groups  # the server is a process group of its own
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
    finally:
        if ui.poll() is None:  # never leave a server behind on a shared machine
            os.killpg(ui.pid, signal.SIGKILL)
            for pid in server:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            ui.wait()
    output = ui.stdout.read()
    assert ui.returncode != 0, output
    left = {p: s for p, s in processes().items() if (p in server or s[2] in groups) and s[0] not in "ZX"}
    assert not left, (left, output[-2000:])
    assert not listening(port)



def add_run(client, experiment: str, start: int, end: int | None = None, **metrics: float) -> str:
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, start_time=start, run_name=f"{experiment}/run")
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key.replace("__", "/"), value)
    if end is not None:
        client.set_terminated(run.info.run_id, end_time=end)
    return exp_id


def view_of(url: str) -> tuple[str, dict[str, str]]:
    """(experiment id, query) of a runs-view URL."""
    route, _, query = urllib.parse.urlsplit(url).fragment.partition("?")
    assert route.startswith("/experiments/") and route.endswith("/runs"), url
    return route.split("/")[2], dict(urllib.parse.parse_qsl(query))


def test_runs_view_url_of_the_latest_or_the_named_experiment(mlflow_uri):
    client = mlflow_client()
    old = add_run(client, "old", start=1_000, end=5_000, test__completion__mrr=0.25, train__loss=1.0)
    add_run(client, "running", start=3_000)  # started after "old" started, before it ended
    exp_id, query = view_of(runs_view_url("http://127.0.0.1:5000"))
    assert exp_id == old
    assert query["workflowType"] == "machine_learning"  # Model-training mode, not the GenAI overview
    state = json.loads(client.get_experiment(old).tags[SHARED_VIEW_TAG + query["viewStateShareKey"]])
    # every run a row (sorted by name: MLflow nests children only under a start-time sort), test metrics columns
    assert state == {"orderByKey": "tags.`mlflow.runName`", "orderByAsc": True,
                     "selectedColumns": ["metrics.`test/completion/mrr`"]}
    assert runs_view_url("http://127.0.0.1:5000") == runs_view_url("http://127.0.0.1:5000")  # one tag, one key

    new = add_run(client, "new", start=6_000, test__completion__recall_at_10=0.5)
    assert view_of(runs_view_url("http://h:1"))[0] == new
    assert view_of(runs_view_url("http://h:1", "old"))[0] == old


def test_runs_view_url_of_an_empty_store_is_the_ui(mlflow_uri):
    assert runs_view_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_ui_of_an_unknown_experiment_is_one_line_listing_the_known_ones(mlflow_uri, monkeypatch):
    add_run(mlflow_client(), "order_study", start=1_000, end=2_000)
    monkeypatch.setattr("recipeset.processes.run_process_group", lambda cmd: pytest.fail("the server started"))
    result = invoke("ui", "--port", str(free_port()), "--experiment", "order-stdy")
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no MLflow experiment 'order-stdy'"), lines
    assert "(did you mean 'order_study'?) — existing: order_study, Default" in lines[0]


def test_ui_prints_and_opens_the_runs_view_once_the_server_listens(mlflow_uri, monkeypatch):
    exp_id = add_run(mlflow_client(), "grid", start=1_000, end=2_000, test__completion__mrr=0.25)
    port = free_port()
    opened: list[str] = []
    browsed = threading.Event()

    def fake_server(cmd: list[str]) -> int:
        assert cmd[2:4] == ["mlflow", "ui"] and not opened  # nothing is opened before the server listens
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()
            assert browsed.wait(10), "the browser was not opened"
        return 0

    monkeypatch.setattr("recipeset.processes.run_process_group", fake_server)
    monkeypatch.setattr("webbrowser.open", lambda url: (opened.append(url), browsed.set()))
    result = ok("ui", "--port", str(port), "--open")
    url = result.output.splitlines()[-1].removeprefix("runs view: ")
    assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?") and opened == [url]
