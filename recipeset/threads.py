"""CPU threads of a run, and the OpenMP wait policy (no torch import here: the CLI sets the policy before torch
is loaded, which reads it once, when its OpenMP runtime starts).

With other processes on the machine, OpenMP threads that spin-wait between parallel regions fight them for the
cores: a training step was measured 3.9x (deep-sets) to 12.5x (set-transformer) slower with torch's 2 default
threads than with 1 on a busy 2-core machine; ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep while they wait)
removed the collapse.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import MutableMapping
from pathlib import Path

WAIT_POLICY = "OMP_WAIT_POLICY"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(jobs: int = 1) -> int:
    """The threads of one of ``jobs`` concurrent jobs: the available cores ÷ ``jobs``, at least 1."""
    return max(1, available_cores() // max(1, jobs))


def resolve_threads(threads: int | None) -> int:
    """The torch threads of a run: ``threads`` (``train.threads``) when set; else ``OMP_NUM_THREADS`` when the
    user or the grid runner (which gives each of its N concurrent children the cores ÷ N) set it; else all the
    available cores (one job)."""
    if threads is not None:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return default_threads(1)


def set_passive_wait_policy(env: MutableMapping[str, str] = os.environ) -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` in ``env`` (the process's environment by default, or a child's), unless the
    user set a policy. Effective only before the OpenMP runtime starts (before ``import torch``)."""
    env.setdefault(WAIT_POLICY, "PASSIVE")


def child_environment(jobs: int) -> tuple[int, dict[str, str]]:
    """``(threads, env)`` for one of ``jobs`` concurrent recipeset child processes (grid children, tuning
    workers): the available cores ÷ ``jobs`` OpenMP/MKL threads, the passive wait policy (spin-waiting threads of
    N children on shared cores collapse throughput), unbuffered output, and — when this recipeset is imported
    from a source checkout, which a child started in another directory would not find — the checkout first on
    ``PYTHONPATH`` (never site-packages: it would shadow the standard library)."""
    threads = default_threads(jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    set_passive_wait_policy(env)
    root = Path(__file__).resolve().parent.parent
    if root not in {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return threads, env
