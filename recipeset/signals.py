"""SIGTERM as an exception, installed once at the process entry point.

Python's default action for SIGTERM ends the process without unwinding: no ``finally``, no ``__exit__``, so an
MLflow run would stay RUNNING for good. :func:`install_sigterm_handler` makes SIGTERM raise
:class:`RunTerminated` (a ``KeyboardInterrupt``) instead, so ``kill <pid>`` unwinds like Ctrl-C and a
:class:`~recipeset.tracking.Tracker` ends its run KILLED. ``recipeset.cli.main`` and the grid's worker processes
call it first thing; Python-API users who want the same guarantee call it once in their main thread::

    from recipeset.signals import install_sigterm_handler
    install_sigterm_handler()
"""

from __future__ import annotations

import signal
import sys
import threading


class RunTerminated(KeyboardInterrupt):
    """Raised by the handler :func:`install_sigterm_handler` installs, so ``kill`` ends a run as KILLED."""


def _raise_run_terminated(signum, frame):
    raise RunTerminated(f"received signal {signum}")


# A signal handler's exception is lost when the signal lands while Python runs a finalizer or a weakref callback
# (torch runs many): Python reports it as "Exception ignored" and goes on. The hook below notices that loss and
# raise_if_terminated(), called at safe points (every training step, every evaluation task), raises it again.
_swallowed: RunTerminated | None = None
_previous_unraisablehook = sys.unraisablehook


def _note_swallowed(unraisable) -> None:
    global _swallowed
    if isinstance(unraisable.exc_value, RunTerminated):
        _swallowed = unraisable.exc_value
        return
    _previous_unraisablehook(unraisable)


def raise_if_terminated() -> None:
    """Raise the :class:`RunTerminated` a finalizer swallowed, if any (call it where stopping is safe)."""
    global _swallowed
    if _swallowed is not None:
        exc, _swallowed = _swallowed, None
        raise RunTerminated(str(exc))


def install_sigterm_handler() -> bool:
    """Make SIGTERM raise :class:`RunTerminated` in this process, for the rest of its life.

    Idempotent. Returns whether the handler is in place: False off the main thread, where Python cannot set
    signal handlers (install it from the main thread before starting the worker thread).
    """
    if signal.getsignal(signal.SIGTERM) is _raise_run_terminated:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _raise_run_terminated)
    sys.unraisablehook = _note_swallowed
    return True


def sigterm_handler_installed() -> bool:
    """Whether SIGTERM currently raises :class:`RunTerminated` in this process."""
    return signal.getsignal(signal.SIGTERM) is _raise_run_terminated


__all__ = ["RunTerminated", "install_sigterm_handler", "raise_if_terminated", "sigterm_handler_installed"]
