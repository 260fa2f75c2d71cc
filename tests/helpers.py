"""Helpers shared by the tests: the command line in-process (click's CliRunner), a module's own MLflow store, and
servers in their own process groups on free loopback ports."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipeset.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@contextlib.contextmanager
def store_in(template_db: Path, root: Path) -> Iterator[str]:
    """A copy of the migrated template store in ``root``, which becomes the cwd, its URI exported as
    ``MLFLOW_TRACKING_URI`` (both undone after); yields the URI. For module-scoped fixtures, where pytest's
    ``monkeypatch`` is not available."""
    shutil.copy(template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def tiny_grid(name: str) -> str:
    """An experiment file: two tiny decoder variants (``frequency``, ``shuffle``) × seed 0, two steps each; its
    child runs are named ``<name>/<variant>/seed0``."""
    return f"""
[experiment]
name = "{name}"
description = "a tiny grid for the tests"

[base]
"data.n_recipes" = 300
"model.d_model" = 16
"model.n_layers" = 1
"train.max_steps" = 2
"train.warmup_steps" = 1
"train.batch_size" = 32
"train.device" = "cpu"
"eval.max_queries" = 10
"eval.joint_max_queries" = 5

[[grid]]
name = "frequency"
"data.order" = "frequency"

[[grid]]
name = "shuffle"
"data.order" = "shuffle"

[seeds]
values = [0]
"""


def free_port() -> int:
    """A TCP port free on the loopback interface now (another process may still take it before it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process group ``proc`` leads (started with ``start_new_session=True``), SIGKILL after
    ``grace`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def http_server(cmd: list[str], port: int, *, cwd: Path, env: dict, seconds: float = 90) -> Iterator[str]:
    """Run ``cmd`` (an MLflow server listening on ``port``) in its own session until its ``/health`` answers;
    yield its base URL; stop its whole process group after (it starts worker processes)."""
    log = open(cwd / f"server-{port}.log", "w+", encoding="utf-8")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + seconds
        while not _answers(f"{base}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                state = f"exited with {proc.returncode}" if proc.poll() is not None else f"not up in {seconds:.0f} s"
                pytest.fail(f"{' '.join(cmd[:3])} {state}: {log.read()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        stop_process_group(proc)
        log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False
