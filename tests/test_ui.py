"""``recipeset ui``: the MLflow server runs in a process group of its own that a SIGTERM stops as a whole (no worker
left listening), and a taken port is one line before anything starts."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import invoke


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

