"""Supervised child processes: at most N at a time, each logging to its own file, with a public stop; and a
server run in a process group of its own that is stopped as a whole.

The grid runner (:mod:`recipeset.study`) runs every child run of a ``--jobs N`` grid through
:class:`ChildProcesses`, ``recipeset ui`` the MLflow server through :func:`run_process_group`; nothing here knows
about recipeset's runs.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from recipeset.signals import RunTerminated

log = logging.getLogger(__name__)


@dataclass
class ChildExit:
    """A child process that has exited: its name, exit code (negative: killed by that signal), wall time."""

    name: str
    returncode: int
    wall_s: float
    log_path: Path


@dataclass
class _Running:
    proc: subprocess.Popen
    started: float
    log_path: Path
    log_file: IO[bytes]


@dataclass
class _Tail:
    """What a child has written to its log since it started and has not been read yet."""

    path: Path
    offset: int          # where this attempt's output starts (the log is appended to on every attempt)
    partial: bytes = b""

    def read(self) -> list[str]:
        """The complete lines written since the last call."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [line.decode(errors="replace").rstrip("\r") for line in lines]


class ChildProcesses:
    """At most ``max_running`` child processes, each with its stdout and stderr appended to its own log file.

    ``start`` launches one, ``poll``/``wait`` reap the ones that exited, ``new_lines`` reads what they have written
    to their logs (e.g. to show their progress), ``stop`` ends them all: SIGTERM to each,
    up to ``timeout`` seconds (in total) for them to unwind and exit, then SIGKILL for the stragglers. Used as a
    context manager, an exception in the ``with`` block (Ctrl-C, SIGTERM, a bug) stops the children before it
    propagates, so none is left behind.

    Each child gets a process group of its own: a Ctrl-C in the terminal reaches the supervisor only, which
    forwards one SIGTERM to each child (instead of children unwinding from SIGINT while the supervisor's SIGTERM
    lands in the middle of it).
    """

    def __init__(self, max_running: int, poll_interval_s: float = 0.2) -> None:
        if max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        self.max_running = max_running
        self.poll_interval_s = poll_interval_s
        self._running: dict[str, _Running] = {}
        self._tails: dict[str, _Tail] = {}

    @property
    def running(self) -> list[str]:
        """Names of the children started and not yet reaped, in start order."""
        return list(self._running)

    def has_room(self) -> bool:
        return len(self._running) < self.max_running

    def start(self, name: str, argv: list[str], log_path: str | os.PathLike, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike | None = None) -> int:
        """Launch ``argv`` as child ``name`` (output appended to ``log_path``); returns its pid."""
        if name in self._running:
            raise ValueError(f"child {name!r} is already running")
        if not self.has_room():
            raise RuntimeError(f"already {self.max_running} children running; wait for one to exit first")
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")  # closed when the child is reaped
        self._tails[name] = _Tail(log_path, log_file.seek(0, os.SEEK_END))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    env=None if env is None else dict(env), cwd=cwd, process_group=0)
        except BaseException:
            log_file.close()
            del self._tails[name]
            raise
        self._running[name] = _Running(proc, time.perf_counter(), log_path, log_file)
        return proc.pid

    def poll(self) -> list[ChildExit]:
        """The children that have exited since the last call (reaped; does not block)."""
        exited = []
        for name, child in list(self._running.items()):
            rc = child.proc.poll()
            if rc is not None:
                exited.append(self._reap(name, rc))
        return exited

    def new_lines(self) -> list[tuple[str, str]]:
        """``(child name, line)`` for every complete line the children have written to their logs since the last
        call (this attempt's output only), the last lines of children reaped since included."""
        out = []
        for name, tail in list(self._tails.items()):
            out += [(name, line) for line in tail.read()]
            if name not in self._running:
                del self._tails[name]
        return out

    def wait(self, timeout: float | None = None) -> list[ChildExit]:
        """Block until at least one child exits (or ``timeout`` seconds pass, or none is running); reap them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            exited = self.poll()
            if exited or not self._running or (deadline is not None and time.monotonic() >= deadline):
                return exited
            time.sleep(self.poll_interval_s)

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Stop every running child: SIGTERM, up to ``timeout`` seconds for all of them to exit, then SIGKILL for
        those still alive. Returns the names of the children that had to be killed. An interrupt during the
        wait (a second Ctrl-C) kills the rest at once."""
        for child in self._running.values():
            if child.proc.poll() is None:
                child.proc.terminate()
        deadline = time.monotonic() + timeout
        try:
            while any(c.proc.poll() is None for c in self._running.values()) and time.monotonic() < deadline:
                time.sleep(min(self.poll_interval_s, 0.05))
        except KeyboardInterrupt:
            pass
        killed = []
        for name, child in list(self._running.items()):
            if child.proc.poll() is None:
                log.warning("%s did not exit within %.0fs of SIGTERM: killed", name, timeout)
                child.proc.kill()
                killed.append(name)
            child.proc.wait()
            self._reap(name, child.proc.returncode)
        return killed

    def _reap(self, name: str, returncode: int) -> ChildExit:
        child = self._running.pop(name)
        child.log_file.close()
        return ChildExit(name, returncode, time.perf_counter() - child.started, child.log_path)

    def __enter__(self) -> ChildProcesses:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()  # after an exception; on a normal exit nothing is running any more


# ---- a server in a process group of its own -------------------------------------------------------------------
def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` cannot be bound: a server listens there (a port a server left in TIME_WAIT counts as
    free, as it does for servers, which set SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies, which hold nothing, left out); Linux reads /proc,
    elsewhere the answer is [pgid] while any process of the group exists."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send ``sig`` to the process group ``proc`` leads and wait until none of its processes is left; SIGKILL
    for the group after ``timeout`` seconds."""
    for s, wait_s in ((sig, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while True:
            proc.poll()  # reap the leader, or it stays a zombie
            if not group_members(proc.pid) or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if not group_members(proc.pid):
            break
        log.warning("process group %d still running %.0fs after signal %d", proc.pid, wait_s, s)
    proc.wait()


def when_listening(port: int, action: Callable[[], object], seconds: float = 120.0,
                   host: str = "127.0.0.1") -> threading.Thread:
    """Call ``action()`` from a daemon thread as soon as a server accepts connections on ``host:port`` (tried every
    0.2 s; a connection, not a bind, so the probe never takes the port from the starting server); never if none
    does within ``seconds``. Returns the thread."""
    def wait() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, port), timeout=1).close()
            except OSError:
                time.sleep(0.2)
                continue
            action()
            return

    thread = threading.Thread(target=wait, name=f"when-listening-{port}", daemon=True)
    thread.start()
    return thread


def run_process_group(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``argv`` (a server that starts workers of its own) as the leader of a new session and process group,
    until it exits; returns its exit code. Ctrl-C (SIGINT) or SIGTERM of this process — both arrive as a
    ``KeyboardInterrupt``, SIGTERM as :class:`~recipeset.signals.RunTerminated` once the handler is installed — is
    forwarded to the whole group, which is waited for before the interrupt propagates, so no worker outlives the
    command (and keeps its port). The terminal's Ctrl-C reaches this process only: the group is not in the
    foreground."""
    proc = subprocess.Popen(argv, env=None if env is None else dict(env), start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt as e:
        stop_group(proc, signal.SIGTERM if isinstance(e, RunTerminated) else signal.SIGINT)
        raise
    finally:
        if group_members(proc.pid):  # the leader exited (or this raised) and left workers behind
            stop_group(proc)
