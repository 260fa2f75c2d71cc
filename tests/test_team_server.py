"""A team's tracking server: ``mlflow server`` on PostgreSQL, written to by a ``--jobs 2`` grid and two independent
``recipeset train`` processes at once (slow; the README's "For teams" commands).

Needs PostgreSQL's server programs (Debian's ``postgresql`` package: ``.ci/run`` installs it) and the ``postgres``
extra (``pip install -e ".[postgres]"``: psycopg 3, the PostgreSQL driver of MLflow's SQLAlchemy); skipped without
either. The database is a throw-away cluster (``initdb`` in a temporary directory, ``pg_ctl`` on a free loopback
port, its unix socket in that directory); PostgreSQL refuses to run as root, so under root its programs run as the
``postgres`` user (or ``nobody``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, http_server, ok, tiny_grid

pytestmark = pytest.mark.slow

DB_USER, DB_PASSWORD, DB_NAME = "recipeset", "team-secret", "mlflow"
GRID_RUNS = ("team-grid/frequency/seed0", "team-grid/shuffle/seed0")
SOLO_RUNS = ("solo-0", "solo-1")
TINY_TRAIN = ["--model", "deep-sets", "--max-steps", "2", "--no-baselines", "--quiet",
              *(x for kv in ("data.n_recipes=300", "model.d_model=16", "model.phi_layers=1", "model.rho_layers=1",
                             "train.batch_size=32", "train.warmup_steps=1", "train.device=cpu",
                             "eval.max_queries=10") for x in ("--set", kv))]


def postgres_bin() -> Path | None:
    """The directory of ``initdb``/``pg_ctl``/``createdb``: on PATH (links resolved), else Debian's
    /usr/lib/postgresql/<version>/bin, the newest version."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if
                   p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else None


def as_db_owner() -> dict:
    """Keyword arguments for ``subprocess`` that run a PostgreSQL server program as a non-root user: none unless
    this process is root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    pytest.skip("running as root, and no 'postgres' or 'nobody' user to run PostgreSQL as")


def run_checked(cmd: list[str], **kwargs) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout[-1500:]}{done.stderr[-1500:]}"


def stop_postgres(bindir: Path, data: Path, owner: dict) -> None:
    """``pg_ctl stop`` (fast: disconnects the server's clients); if the postmaster outlives it (its pid file is
    still there), SIGKILL it: its children notice its death and exit."""
    pidfile = data / "postmaster.pid"
    if not pidfile.exists():
        return
    subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                   capture_output=True, timeout=60, **owner)
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster with the database ``mlflow`` on a free loopback port; yields its URI
    (``postgresql://user:password@127.0.0.1:PORT/mlflow``)."""
    bindir = postgres_bin()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("no PostgreSQL server programs (initdb, pg_ctl): apt-get install postgresql")
    pytest.importorskip("psycopg", reason='no PostgreSQL driver (psycopg) for MLflow: pip install -e ".[postgres]"')
    owner = as_db_owner()
    # not under pytest's tmp_path: its parents are private to this user, and the server runs as another one
    root = Path(tempfile.mkdtemp(prefix="recipeset-pg-"))
    data, port = root / "data", free_port()
    try:
        if owner:
            os.chown(root, owner["user"], owner["group"])
        (root / "pwfile").write_text(DB_PASSWORD + "\n", encoding="utf-8")
        if owner:
            os.chown(root / "pwfile", owner["user"], owner["group"])
        run_checked([str(bindir / "initdb"), "-D", str(data), "-U", DB_USER, "--pwfile", str(root / "pwfile"),
                     "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--locale=C", "--no-sync"],
                    cwd=root, **owner)
        run_checked([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "60",
                     "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start"], cwd=root, **owner)
        run_checked([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, DB_NAME],
                    env={**os.environ, "PGPASSWORD": DB_PASSWORD})
        yield f"postgresql://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{port}/{DB_NAME}"
    finally:
        stop_postgres(bindir, data, owner)
        shutil.rmtree(root, ignore_errors=True)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "recipeset.cli", *args]


@pytest.fixture(scope="module")
def team(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``mlflow server`` on the PostgreSQL database, artifacts proxied to a local directory; a ``--jobs 2`` grid
    and two independent ``recipeset train`` runs, all started together against it."""
    root = tmp_path_factory.mktemp("team")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # only --tracking-uri says where
    env["OMP_NUM_THREADS"] = "1"
    port = free_port()
    store = postgres.replace("postgresql://", "postgresql+psycopg://", 1)  # SQLAlchemy's driver, named
    server = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
              "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
              "--workers", "2"]
    with http_server(server, port, cwd=root, env=env, seconds=180) as uri:
        (root / "grid.toml").write_text(tiny_grid("team-grid"), encoding="utf-8")
        commands = {"grid": cli("experiment", "run", "grid.toml", "--jobs", "2", "--tracking-uri", uri)}
        for seed, name in enumerate(SOLO_RUNS):
            commands[name] = cli("train", *TINY_TRAIN, "--seed", str(seed), "--experiment", "team-solo",
                                 "--set", f"tracking.run_name={name}", "--out", f"runs/{name}", "--tracking-uri", uri)
        yield {"uri": uri, "root": root, "done": run_together(commands, root, env)}


def run_together(commands: dict[str, list[str]], root: Path, env: dict) -> dict[str, tuple[int, str]]:
    """Start every command at once (each in its own session, output to ``<name>.log``); wait for all; stop any
    still running after 10 minutes. Returns name -> (exit code, the log's tail)."""
    procs = {}
    try:
        for name, cmd in commands.items():
            with open(root / f"{name}.log", "w", encoding="utf-8") as log:
                procs[name] = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)
        for proc in procs.values():
            proc.wait(timeout=600)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {name: (proc.returncode, (root / f"{name}.log").read_text(encoding="utf-8")[-3000:])
            for name, proc in procs.items()}


def test_a_grid_and_two_runs_at_once_all_finish_on_the_postgres_server(team, postgres):
    for name, (code, log) in team["done"].items():
        assert code == 0, f"{name} exited with {code}: {log}"
    assert "2 run, 0 skipped" in team["done"]["grid"][1]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=team["uri"])
    runs = {r.info.run_name: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=1000)}
    expected = {*GRID_RUNS, "team-grid/grid", *SOLO_RUNS}
    assert expected <= set(runs), sorted(runs)
    assert {name: r.info.status for name, r in runs.items()} == dict.fromkeys(runs, "FINISHED")
    for name in (*GRID_RUNS, *SOLO_RUNS):  # artifacts went through the server to its destination
        assert "model" in {a.path for a in client.list_artifacts(runs[name].info.run_id)}, name
    weights = list((team["root"] / "artifacts").rglob("model/weights.pt"))
    logged_models = [w for w in weights if "models" in w.parts]  # the pyfunc model's own copy (runs:/<id>/pyfunc)
    assert len(weights) - len(logged_models) == len(logged_models) == len(GRID_RUNS) + len(SOLO_RUNS), weights

    import psycopg  # the runs are in PostgreSQL itself, not in some local store

    with psycopg.connect(postgres) as db:
        stored = dict(db.execute("SELECT name, status FROM runs").fetchall())
    assert stored == dict.fromkeys(runs, "FINISHED")


def test_compare_reads_the_grid_back_from_the_server(team):
    result = ok("compare", "team-grid", "--tracking-uri", team["uri"])
    assert "frequency" in result.output and "shuffle" in result.output, result.output
