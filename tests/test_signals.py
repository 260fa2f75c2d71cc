"""SIGTERM raises RunTerminated once the entry point installed the handler (recipeset.signals)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from recipeset.signals import RunTerminated, install_sigterm_handler, sigterm_handler_installed


@pytest.fixture(autouse=True)
def restore_sigterm():
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def test_install_is_idempotent_and_sigterm_raises_run_terminated():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert not sigterm_handler_installed()
    assert install_sigterm_handler() and install_sigterm_handler()
    handler = signal.getsignal(signal.SIGTERM)
    assert install_sigterm_handler() and signal.getsignal(signal.SIGTERM) is handler and sigterm_handler_installed()
    with pytest.raises(RunTerminated, match="received signal 15") as info:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode boundary
    assert isinstance(info.value, KeyboardInterrupt)  # `except KeyboardInterrupt` (and Tracker) treat it as Ctrl-C


def test_off_the_main_thread_it_reports_that_it_could_not_install():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    result = []
    thread = threading.Thread(target=lambda: result.append(install_sigterm_handler()))
    thread.start()
    thread.join()
    assert result == [False] and not sigterm_handler_installed()
    install_sigterm_handler()
    thread = threading.Thread(target=lambda: result.append(install_sigterm_handler()))
    thread.start()
    thread.join()
    assert result == [False, True]  # already in place: nothing to do


def test_the_cli_entry_point_installs_it_first(monkeypatch):
    from recipeset import cli

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    monkeypatch.setattr(sys, "argv", ["recipeset", "--version"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 0 and sigterm_handler_installed()


def test_grid_workers_install_it_first():
    """study._run_child installs the handler before anything else (it runs in a fresh worker process)."""
    from recipeset import study

    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    class Stop(Exception):
        pass

    class PlannedRun:  # stops the child at its first look at the planned run
        @property
        def config(self):
            assert sigterm_handler_installed()
            raise Stop

    with pytest.raises(Stop):
        study._run_child(PlannedRun(), "runs", "parent", "sqlite:///x.db")


def test_a_sigterm_swallowed_by_a_finalizer_is_raised_at_the_next_safe_point():
    # Python drops an exception raised while it runs a finalizer ("Exception ignored in ..."): seen with torch,
    # a grid child went on training after SIGTERM until it was killed. The next safe point raises it again.
    import gc

    from recipeset.signals import raise_if_terminated

    old = signal.getsignal(signal.SIGTERM)
    old_hook = sys.unraisablehook
    try:
        install_sigterm_handler()

        class Finalized:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)  # the handler raises inside __del__: swallowed

        Finalized()
        gc.collect()
        with pytest.raises(RunTerminated, match="received signal 15"):
            raise_if_terminated()
        raise_if_terminated()  # once only
    finally:
        signal.signal(signal.SIGTERM, old)
        sys.unraisablehook = old_hook
