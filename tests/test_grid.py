"""Parallel grids (``--jobs N``): the child-process supervisor, and one child's entry point (spec in, result out).

The supervisor is tested with small Python commands (no torch import: each test takes about a second); a real
``--jobs 2`` grid is covered by the SIGTERM and child-failure tests in tests/test_cli.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from recipeset.errors import RecipesetError
from recipeset.experiments import load_experiment
from recipeset.processes import ChildExit, ChildProcesses
from recipeset.study import CHILD_LOG, CHILD_RESULT, _child_outcome, run_child_spec, write_child_spec

PY = sys.executable
IGNORE_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
                 "time.sleep(60)"
UNWIND_ON_SIGTERM = ("import signal, sys, time\n"
                     "def stop(*a):\n    print('unwinding', flush=True); sys.exit(3)\n"
                     "signal.signal(signal.SIGTERM, stop); print('up', flush=True); time.sleep(60)")


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _wait_for(path: Path, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{path}: no {text!r}"
        time.sleep(0.05)


def test_at_most_max_running_exit_codes_and_logs(tmp_path):
    children = ChildProcesses(2, poll_interval_s=0.02)
    children.start("a", [PY, "-c", "print('hello a')"], tmp_path / "a.log")
    children.start("b", [PY, "-c", "import sys; print('oops', file=sys.stderr); sys.exit(4)"], tmp_path / "b.log")
    assert children.running == ["a", "b"] and not children.has_room()
    with pytest.raises(RuntimeError, match="already 2 children running"):
        children.start("c", [PY, "-c", "pass"], tmp_path / "c.log")
    exited: dict[str, ChildExit] = {}
    while children.running:
        exited.update({e.name: e for e in children.wait(timeout=20)})
    assert exited["a"].returncode == 0 and exited["b"].returncode == 4
    assert exited["a"].wall_s > 0 and exited["b"].log_path == tmp_path / "b.log"
    assert (tmp_path / "a.log").read_text() == "hello a\n"
    assert (tmp_path / "b.log").read_text() == "oops\n"  # stderr goes to the same log
    assert children.has_room() and children.poll() == [] and children.wait() == []
    # a second attempt appends to the log (a resumed child keeps the first attempt's output)
    children.start("a", [PY, "-c", "print('again')"], tmp_path / "a.log")
    assert [e.returncode for e in children.wait(timeout=20)] == [0]
    assert (tmp_path / "a.log").read_text() == "hello a\nagain\n"


def test_children_get_their_own_process_group_and_the_given_env(tmp_path):
    with ChildProcesses(1) as children:
        pid = children.start("x", [PY, "-c", "import os; print(os.environ['OMP_NUM_THREADS'], os.getpgrp())"],
                             tmp_path / "x.log", env={**os.environ, "OMP_NUM_THREADS": "3"})
        assert children.wait(timeout=20)[0].returncode == 0
    # Ctrl-C in a terminal goes to the foreground process group: the grid's, not the children's
    assert (tmp_path / "x.log").read_text().split() == ["3", str(pid)]


def test_stop_sends_sigterm_then_kills_stragglers(tmp_path):
    children = ChildProcesses(2)
    polite = children.start("polite", [PY, "-c", UNWIND_ON_SIGTERM], tmp_path / "polite.log")
    stubborn = children.start("stubborn", [PY, "-c", IGNORE_SIGTERM], tmp_path / "stubborn.log")
    _wait_for(tmp_path / "polite.log", "up")
    _wait_for(tmp_path / "stubborn.log", "up")
    started = time.monotonic()
    killed = children.stop(timeout=1.5)
    took = time.monotonic() - started
    assert killed == ["stubborn"]
    assert 1.4 < took < 10, took  # waited the timeout for the stubborn one, then killed it
    assert "unwinding" in (tmp_path / "polite.log").read_text()  # the polite one got SIGTERM and unwound
    assert children.running == [] and not _alive(polite) and not _alive(stubborn)
    assert children.stop() == []  # nothing left to stop


def test_an_exception_in_the_with_block_stops_the_children(tmp_path):
    with pytest.raises(KeyboardInterrupt), ChildProcesses(1) as children:
        pid = children.start("x", [PY, "-c", UNWIND_ON_SIGTERM], tmp_path / "x.log")
        _wait_for(tmp_path / "x.log", "up")
        raise KeyboardInterrupt  # Ctrl-C / SIGTERM of the grid
    assert not _alive(pid) and "unwinding" in (tmp_path / "x.log").read_text()


# ---- one child: spec in, result out ----------------------------------------------------------------------------
GRID = """
[base]
"data.n_recipes" = 200
"model.name" = "set-transformer"
"model.d_model" = 16
"model.n_layers" = 1
"train.max_steps" = 2
"train.device" = "cpu"
"train.init_from" = "pretrained/seed{seed}/model"
[[grid]]
name = "ft"
[seeds]
values = [3]
"""


def test_a_failing_child_records_its_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.toml").write_text(GRID)
    run = load_experiment(tmp_path / "g.toml").runs()[0]
    spec = write_child_spec(run, "runs", "no-parent", f"sqlite:///{tmp_path / 'mlflow.db'}", threads=1)
    assert spec == Path("runs/g/ft/seed3/grid-child.json")
    saved = json.loads(spec.read_text())
    assert saved["run"]["name"] == "g/ft/seed3" and saved["config"]["train"]["init_from"].endswith("{seed}/model")
    with pytest.raises(RecipesetError, match="train.init_from"):
        run_child_spec(spec, echo=lambda *_: None)
    result = json.loads((spec.parent / CHILD_RESULT).read_text())
    assert result["status"] == "failed" and result["error"].startswith("train.init_from: pretrained/seed3/model")
    assert "\n" not in result["error"]

    lines: list[str] = []
    outcome = _child_outcome(run, ChildExit(run.name, 1, 7.0, spec.parent / CHILD_LOG), lines.append)
    assert outcome.status == "failed" and outcome.error == result["error"]
    assert lines == [f"FAILED g/ft/seed3: {result['error']}"]
    # no result file (the child died before it could write one): the exit and where its log is
    (spec.parent / CHILD_RESULT).unlink()
    outcome = _child_outcome(run, ChildExit(run.name, -9, 7.0, spec.parent / CHILD_LOG), lines.append)
    assert outcome.error == f"the child process was killed by SIGKILL (see {spec.parent / CHILD_LOG})"
