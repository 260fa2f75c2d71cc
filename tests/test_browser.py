"""The MLflow UI started by ``recipeset ui`` shows a finished grid's runs (headless Chromium; slow).

``test_ui_runs_view_in_chromium`` opens the runs-view URL ``recipeset ui`` prints in a fresh Chromium profile; it
needs /usr/bin/chromium and is skipped without it;
``test_ui_server_lists_the_grid_runs`` checks the same server through its REST API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, http_server, tiny_grid

from recipeset.runs import runs_view_url

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
GRID = tiny_grid("browser-grid")
RUN_NAMES = ("browser-grid/frequency/seed0", "browser-grid/shuffle/seed0")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "recipeset.cli", *args]


@pytest.fixture(scope="module")
def ui(mlflow_template_db: Path, tmp_path_factory: pytest.TempPathFactory):
    """A finished tiny grid in a fresh store, and `recipeset ui` serving it on a free loopback port."""
    root = tmp_path_factory.mktemp("browser")
    shutil.copy(mlflow_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    (root / "grid.toml").write_text(GRID, encoding="utf-8")
    done = subprocess.run(cli("experiment", "run", "grid.toml"), cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 run, 0 skipped" in done.stdout

    port = free_port()
    # `recipeset ui` starts `mlflow ui`, which starts server workers: the helper stops the whole group
    with http_server(cli("ui", "--port", str(port)), port, cwd=root, env=env) as base:
        yield {"base": base, "root": root, "uri": uri}


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def experiment_id(base: str) -> str:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=browser-grid",
                                timeout=10) as r:
        return json.loads(r.read())["experiment"]["experiment_id"]


def test_ui_server_lists_the_grid_runs(ui):
    exp_id = experiment_id(ui["base"])
    runs = _post(f"{ui['base']}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    names = {r["info"]["run_name"]: r["info"]["status"] for r in runs}
    for name in RUN_NAMES:
        assert names.get(name) == "FINISHED", names
    assert "browser-grid/grid" in names  # the parent run
    with urllib.request.urlopen(ui["base"] + "/", timeout=10) as r:
        assert r.status == 200 and b"<html" in r.read().lower()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium")
def test_ui_runs_view_in_chromium(ui, tmp_path):
    exp_id = experiment_id(ui["base"])
    runs = _post(f"{ui['base']}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    mrr = {r["info"]["run_name"]: m["value"] for r in runs for m in r["data"].get("metrics", [])
           if m["key"] == "test/completion/mrr"}
    assert set(mrr) == set(RUN_NAMES), mrr
    url = runs_view_url(ui["base"], "browser-grid", ui["uri"])  # the URL `recipeset ui` prints
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1600,900",
           "--virtual-time-budget=20000", "--dump-dom", url]
    # the child runs as rows (not folded under their parent) and the test MRR as a column, with its values
    wanted = [*RUN_NAMES, 'id="cell-metrics.`test/completion/mrr`', *(repr(v) for v in mrr.values())]
    dom = ""
    for _ in range(3):  # the single-page app renders the runs table after its API calls: allow a slow first load
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        dom = out.stdout
        if all(w in dom for w in wanted):
            break
    missing = [w for w in wanted if w not in dom]
    assert not missing, f"not in the rendered runs view of {url}: {missing} (DOM: {len(dom)} chars)"
