"""Progress of long work (recipeset.progress): plain periodic lines off a terminal, a live line on one, nothing when
quiet — in the helper itself, in the commands (CliRunner output is not a terminal) and forwarded from grid children.
"""

from __future__ import annotations

import io
import re
import sys

import pytest
from helpers import ok

from recipeset import progress
from recipeset.processes import ChildProcesses
from recipeset.study import _forward_progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain(clock: Clock) -> tuple[progress.Reporter, io.StringIO]:
    out = io.StringIO()
    return progress.Reporter(stream=out, tty=False, clock=clock), out


def batches(n_batches: int, per_batch: int) -> list[list[int]]:
    return [list(range(per_batch))] * n_batches


# ---- the helper ---------------------------------------------------------------------------------------------------
def test_plain_lines_at_each_tenth_at_most_every_5_s():
    clock = Clock()
    reporter, out = plain(clock)
    with progress.reporting(reporter), progress.phase("evaluating test"), progress.phase("completion"):
        for _ in progress.track(batches(100, 10), total=1000, unit="queries", size=len):
            clock.now += 1.0  # 10 s per tenth: every tenth is written
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and all(progress.is_progress_line(line) for line in lines)
    assert lines[0] == "[00:00] evaluating test: completion 0/1000 queries (0%)"
    assert lines[1] == "[00:10] evaluating test: completion 100/1000 queries (10%)"
    assert lines[-1] == "[01:40] evaluating test: completion 1000/1000 queries (100%)"
    assert len(lines) == 11

    clock.now = 0.0
    reporter, out = plain(clock)
    with progress.reporting(reporter):
        for _ in progress.track(batches(100, 10), "fast", total=1000, unit="queries", size=len):
            clock.now += 0.125  # 1.25 s per tenth: a tenth is written 5 s after the last line, and the end
    assert out.getvalue().splitlines() == ["[00:00] fast 0/1000 queries (0%)", "[00:05] fast 400/1000 queries (40%)",
                                           "[00:10] fast 800/1000 queries (80%)",
                                           "[00:12] fast 1000/1000 queries (100%)"]
    clock.now = 0.0
    reporter, out = plain(clock)
    with progress.reporting(reporter):
        for _ in progress.track(batches(4, 10), "quick", total=40, unit="queries", size=len):
            clock.now += 1.0  # a phase of a few seconds: one line
    assert out.getvalue() == "[00:00] quick 0/40 queries (0%)\n"


def test_plain_lines_every_30_s_inside_a_slow_step_and_named_items():
    clock = Clock()
    reporter, out = plain(clock)
    with progress.reporting(reporter):
        for _ in progress.track(["popularity", "mlp"], "baselines", name=str):
            for _ in progress.track(range(12), "grid"):
                clock.now += 10.0  # the outer loop moves rarely: the inner one shows every 30 s
    lines = [line.split("] ")[1] for line in out.getvalue().splitlines()]
    assert lines[0] == "baselines 1/2 popularity"
    assert "baselines 1/2 popularity: grid 4/12" in lines  # after 30 s, while the fourth grid point runs
    assert "baselines 2/2 mlp" in lines and lines[-1] == "baselines 2/2"
    stamps = [line.split("]")[0] for line in out.getvalue().splitlines()]
    assert stamps[:3] == ["[00:00", "[00:30", "[01:00"]


def test_terminal_line_is_redrawn_in_place_and_quiet_shows_nothing():
    clock = Clock()
    out = io.StringIO()
    with progress.reporting(progress.Reporter(stream=out, tty=True, clock=clock)):
        with progress.task("training", 50, "steps", leave=True) as bar:
            for step in range(1, 51):
                clock.now += 0.2
                bar.update(step, {"loss": 1.0 / step})
        kept = out.getvalue()
        for _ in progress.track(batches(5, 10), total=50, unit="queries", size=len):
            clock.now += 0.2
        with progress.reporting(False):  # --quiet inside: nothing, and the loop still runs
            assert list(progress.track(range(3), "hidden")) == [0, 1, 2]
    assert kept.count("\n") == 1 and kept.rstrip(" \n").endswith("loss=0.02")  # training's last state stays on screen
    assert kept.count("\r") > 40 and "[####################] 50/50 steps" in kept
    rest = out.getvalue()[len(kept):]
    assert "\n" not in rest and rest.endswith("\r") and rest.split("\r")[-2].strip() == ""  # a phase is cleared
    assert "hidden" not in out.getvalue()
    assert not progress.enabled()


def test_grid_forwards_its_children_progress_lines_with_their_names(tmp_path):
    script = ("import sys; print('[00:03] evaluating test: completion 5/10 queries (50%)'); print('a warning'); "
              "sys.stdout.write('[00:04] partial')")
    with ChildProcesses(2) as children:
        for name in ("grid/a/seed0", "grid/b/seed0"):
            children.start(name, [sys.executable, "-c", script], tmp_path / name / "grid-child.log")
        while children.running:
            children.wait(timeout=1.0)
        clock = Clock()
        reporter, out = plain(clock)
        with progress.reporting(reporter):
            _forward_progress(children)
    assert sorted(out.getvalue().splitlines()) == [
        f"grid/{x}/seed0 [00:03] evaluating test: completion 5/10 queries (50%)" for x in "ab"]
    assert children.new_lines() == []  # read once; the unfinished last line is never shown
    with ChildProcesses(1) as children:  # --quiet: nothing is forwarded
        children.start("c", [sys.executable, "-c", script], tmp_path / "c.log")
        children.wait()
        with progress.reporting(False):
            _forward_progress(children)
    assert children.new_lines() == []


# ---- the commands (CliRunner: not a terminal) ------------------------------------------------------------------------
TINY = ["--model", "deep-sets", "--set", "data.n_recipes=300", "--set", "model.d_model=16", "--set",
        "train.batch_size=32", "--set", "eval.max_queries=20", "--set", "train.device=cpu", "--max-steps", "3",
        "--no-track"]


def progress_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if progress.is_progress_line(line)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("progress")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = ok("train", *TINY, "--out", "run")
    return {"model": str(root / "run" / "model"), "output": result.output}


def test_train_reports_training_then_each_evaluation_phase(trained):
    lines = progress_lines(trained["output"])
    text = "\n".join(lines)
    assert "\r" not in trained["output"]
    assert re.search(r"^\[00:\d\d\] training 0/3 steps \(0%\)$", text, re.M), text
    for part in ("tuning on val: stop rule", "evaluating val: completion", "evaluating test: completion",
                 "evaluating test: set", "baselines 1/3 popularity"):
        assert part in text, (part, text)
    assert text.index("training") < text.index("evaluating val") < text.index("evaluating test")


def test_train_quiet_reports_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = ok("train", *TINY, "--set", "eval.tasks=[\"completion\"]", "--out", "run", "--quiet")
    assert progress_lines(result.output) == [] and "run directory: run" in result.output


def test_evaluate_reports_its_phases_unless_quiet(trained):
    loud = ok("evaluate", trained["model"])
    assert any("] evaluating test: completion 0/" in line for line in progress_lines(loud.output)), loud.output
    quiet = ok("evaluate", trained["model"], "--quiet")
    assert progress_lines(quiet.output) == [] and "completion/mrr" in quiet.output
    assert progress_lines(ok("evaluate", trained["model"], "--json").output) == []  # --json implies --quiet


def test_baselines_report_their_progress_unless_quiet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["baselines", "--name", "popularity", "--name", "cooccurrence"]
    assert "] baselines 1/2 popularity" in "\n".join(progress_lines(ok(*args).output))
    quiet = ok(*args, "--quiet")
    assert progress_lines(quiet.output) == [] and "cooccurrence" in quiet.output


def test_every_long_command_has_quiet():
    for command in (["train"], ["evaluate"], ["baselines"], ["bench"], ["experiment", "run"], ["tune"]):
        assert "--quiet" in ok(*command, "--help").output, command

