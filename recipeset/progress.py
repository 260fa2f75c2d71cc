"""Progress of long work: a live one-line bar on a terminal, periodic plain lines elsewhere, nothing when quiet.

Code says where it is with :func:`phase` (a named part of the work: ``"evaluating test"``), :func:`track` (a loop
over items or batches) and :func:`task` (a counter it updates itself, e.g. the training steps). Nested phases and
loops make one line, outermost first::

    [00:42] evaluating test: completion 1200/5623 queries (21%)
    [03:10] baselines 6/8 mlp: grid 3/12: epoch 4/30

Nothing is shown unless a caller turned reporting on with :func:`reporting` — the command line does (not under
``--quiet``), and so does ``run_training(progress=True)`` — so library calls stay silent. On a terminal (stderr is
a tty) the line is redrawn in place, at most every 0.1 s. Elsewhere (a log file, CI, a grid child's log) a plain
line is written when the outermost loop starts, at each 10% of it (at most one line per 5 s), where it ended if it
took 5 s or more, and at least every 30 s while any loop moves. Plain lines start with the elapsed time,
``[mm:ss]``, which is how a supervisor recognises them in a child's log (:func:`is_progress_line`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

T = TypeVar("T")

DRAW_EVERY_S = 0.1     # terminal: the fastest redraw
MARK_EVERY_S = 5.0     # plain lines: a 10% mark is written at most this often
LINE_EVERY_S = 30.0    # plain lines: at least this often while work goes on
_PLAIN_LINE = re.compile(r"^\[(?:\d+:)?\d\d:\d\d\] ")


def is_progress_line(line: str) -> bool:
    """Whether ``line`` is a plain progress line (it starts with the ``[mm:ss]`` stamp)."""
    return bool(_PLAIN_LINE.match(line))


def _clock_text(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


@dataclass(eq=False)
class Frame:
    """One level of the line: a phase (``total`` None: a label) or a counter. ``items``: a loop over named units
    of work, shown as the current one's position (``grid 3/12``); else a count of what is done
    (``1200/5623 queries``). Updates go to its reporter (None: reporting is off, they do nothing)."""

    label: str
    total: int | None = None
    unit: str = ""
    items: bool = False
    leave: bool = False              # terminal: keep its last state on screen when it ends (training)
    done: float = 0
    item: str | None = None          # the current unit's name
    info: dict[str, float] = field(default_factory=dict)
    reporter: Reporter | None = None
    decile: int = 0                  # the last 10% mark reached
    started: float = 0.0

    def update(self, done: float, info: dict[str, float] | None = None) -> None:
        """Set the count (and the figures shown beside it, e.g. the loss)."""
        self.done = done
        if info is not None:
            self.info = info
        if self.reporter is not None:
            self.reporter.changed(self)

    def advance(self, n: float = 1) -> None:
        self.update(self.done + n)

    def begin(self, item: str | None) -> None:
        """A loop over items: the next one starts (``done`` counts the finished ones)."""
        self.item = item
        if self.reporter is not None:
            self.reporter.changed(self, start=self.done == 0)

    @property
    def fraction(self) -> float:
        return 1.0 if not self.total else min(1.0, self.done / self.total)

    def text(self, bar: bool) -> str:
        if self.total is None:
            return self.label
        if self.items:
            count = f"{min(int(self.done) + 1, self.total)}/{self.total}" + (f" {self.item}" if self.item else "")
        else:
            count = f"{int(self.done)}/{self.total}" + (f" {self.unit}" if self.unit else "")
            count = (f"[{'#' * int(20 * self.fraction):-<20}] " + count) if bar else f"{count} ({self.fraction:.0%})"
        figures = " ".join(f"{k}={v:.4g}" for k, v in self.info.items())
        return " ".join(x for x in (self.label, count, figures) if x)


class Reporter:
    """Where progress goes: ``stream`` (default: stderr when reporting starts), a live line when it is a terminal
    (``tty``, default: asked), else plain lines. ``clock`` is injectable for tests."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.clock = clock
        self.started = clock()
        self.frames: list[Frame] = []
        self._last_line = -math.inf   # plain: when the last line was written
        self._last_body = ""          # plain: and what it said
        self._last_draw = -math.inf   # terminal: when the line was last drawn
        self._shown = 0               # terminal: characters of the live line now on screen

    # ---- the stack --------------------------------------------------------------------------------------------
    def push(self, frame: Frame) -> None:
        frame.reporter, frame.started = self, self.clock()
        self.frames.append(frame)
        if frame.total is not None and not frame.items:  # a loop over items starts with its first item
            self.changed(frame, start=True)

    def pop(self, frame: Frame, finished: bool) -> None:
        """``frame`` (and anything left above it) ends; ``finished``: it ran to its end (not an exception)."""
        if frame not in self.frames:
            return
        outer = frame is self._outer()
        if outer and self.tty:
            self._end_live_line(keep=frame.leave)
        elif outer and finished and self.clock() - frame.started >= MARK_EVERY_S and self._body() != self._last_body:
            self._write_line()  # a loop that took a while shows where it ended
        del self.frames[self.frames.index(frame):]
        frame.reporter = None
        if self.tty and self._outer() is not None:
            self._draw()

    def _outer(self) -> Frame | None:
        return next((f for f in self.frames if f.total is not None), None)

    # ---- output -----------------------------------------------------------------------------------------------
    def changed(self, frame: Frame, start: bool = False) -> None:
        """``frame`` moved (``start``: it has just begun): redraw the live line, or write a plain line if due."""
        if self.tty:
            self._draw(force=start and frame is self._outer())
            return
        now = self.clock()
        due = now - self._last_line >= LINE_EVERY_S
        if frame is self._outer():
            decile = int(10 * frame.fraction)
            crossed, frame.decile = decile > frame.decile, max(decile, frame.decile)
            due = due or start or (crossed and now - self._last_line >= MARK_EVERY_S)
        if due:
            self._write_line()

    def line(self, bar: bool = False) -> str:
        """The current line: ``[elapsed] outer: ...: inner`` (a counter without a label joins its phase)."""
        return f"[{_clock_text(self.clock() - self.started)}] " + self._body(bar)

    def _body(self, bar: bool = False) -> str:
        parts: list[str] = []
        innermost = max((i for i, f in enumerate(self.frames) if f.total is not None), default=-1)
        for i, f in enumerate(self.frames):
            seg = f.text(bar and i == innermost)
            if not f.label and f.total is not None and parts:
                parts[-1] += " " + seg
            elif seg:
                parts.append(seg)
        return ": ".join(parts)

    def _write_line(self) -> None:
        self._last_line, self._last_body = self.clock(), self._body()
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_draw < DRAW_EVERY_S:
            return
        self._last_draw = now
        width = max(20, shutil.get_terminal_size((120, 24)).columns - 1)
        text = self.line(bar=True)[:width]
        self.stream.write("\r" + text.ljust(self._shown))
        self.stream.flush()
        self._shown = len(text)

    def _end_live_line(self, keep: bool) -> None:
        if keep:
            self._draw(force=True)
            self.stream.write("\n")
        elif self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
        self.stream.flush()
        self._shown = 0

    def message(self, text: str) -> None:
        """A line of its own (e.g. a grid child's progress), above the live line on a terminal."""
        if self.tty and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self._shown = 0
        self.stream.write(text + "\n")
        self.stream.flush()
        if self.tty and self._outer() is not None:
            self._draw(force=True)


_current: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("recipeset_progress", default=None)


@contextlib.contextmanager
def reporting(enabled: bool | Reporter = True) -> Iterator[Reporter | None]:
    """Show progress inside the block (True: on stderr, continuing an enclosing reporter if there is one; a
    :class:`Reporter`: there) or nothing (False, e.g. ``--quiet``)."""
    if isinstance(enabled, Reporter):
        reporter: Reporter | None = enabled
    else:
        reporter = (_current.get() or Reporter()) if enabled else None
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)


def enabled() -> bool:
    """Whether progress is being reported here (so work started from here should report its own)."""
    return _current.get() is not None


def message(text: str) -> None:
    """Write ``text`` as a line of progress (nothing when reporting is off)."""
    reporter = _current.get()
    if reporter is not None:
        reporter.message(text)


@contextlib.contextmanager
def task(label: str = "", total: int | None = None, unit: str = "", items: bool = False, start: float = 0,
         leave: bool = False) -> Iterator[Frame]:
    """A level of the progress line for the block: a phase (``total`` None) or a counter the block updates
    (``frame.update(done, info)`` / ``advance`` / ``begin``). A no-op frame when reporting is off."""
    frame = Frame(label, total, unit, items, leave, done=start)
    reporter = _current.get()
    if reporter is None:
        yield frame
        return
    reporter.push(frame)
    finished = False
    try:
        yield frame
        finished = True
    finally:
        reporter.pop(frame, finished)


def phase(label: str) -> contextlib.AbstractContextManager[Frame]:
    """A named part of the work (``"evaluating test"``) for the block; an empty label adds nothing."""
    return task(label) if label else contextlib.nullcontext(Frame(""))


def track(iterable: Iterable[T], label: str = "", total: int | None = None, unit: str = "",
          size: Callable[[T], float] | None = None, name: Callable[[T], str] | None = None) -> Iterator[T]:
    """Iterate ``iterable`` as a level of the progress line. With ``size`` it counts what each item holds
    (batches of ``len(idx)`` queries: ``1200/5623 queries``); without, items (``grid 3/12``, named by ``name``).
    ``total`` defaults to ``len(iterable)``."""
    if _current.get() is None:
        yield from iterable
        return
    if total is None:
        total = len(iterable) if isinstance(iterable, Sized) else 0
    with task(label, total, unit, items=size is None) as frame:
        for x in iterable:
            if size is None:  # the next item's start is the event: "grid 3/12" while the third runs
                frame.begin(name(x) if name else None)
                yield x
                frame.done += 1
            else:
                yield x
                frame.advance(size(x))
        frame.item = None


__all__ = ["Frame", "Reporter", "enabled", "is_progress_line", "message", "phase", "reporting", "task", "track"]
