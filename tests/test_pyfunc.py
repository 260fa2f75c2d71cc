"""The run's model as an MLflow pyfunc model (recipeset/pyfunc.py, Tracker.log_pyfunc): logged by every tracked run
as a model from code (no pickle), loaded by ``mlflow.pyfunc.load_model`` from ``runs:/<id>/pyfunc`` and, after
``recipeset train --register NAME``, from ``models:/NAME/1``; predictions equal ``recipeset.load_model``'s; logging
it needs neither the network nor a subprocess; ``mlflow models serve`` answers (slow)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import invoke, ok, stop_process_group, store_in

from recipeset.models.io import load_model

NAME = "recipe-completer"
TINY = ["--model", "decoder", "--max-steps", "5", "--no-baselines", "--quiet"] + [
    x for kv in ("data.n_recipes=400", "model.d_model=16", "model.n_layers=1", "train.batch_size=32",
                 "train.warmup_steps=2", "eval.max_queries=30", "eval.joint_max_queries=10", "train.device=cpu")
    for x in ("--set", kv)]


@pytest.fixture(scope="module")
def registered(mlflow_template_db: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tiny tracked run, trained with ``--register recipe-completer`` (in its own cwd and store)."""
    root = tmp_path_factory.mktemp("pyfunc")
    with store_in(mlflow_template_db, root) as uri:
        result = ok("train", *TINY, "--experiment", "pyfunc-test", "--out", "run", "--register", NAME)
        lines = {line.split(":", 1)[0]: line.split(": ", 1)[1].split()[0] for line in result.output.splitlines()
                 if ": " in line}
        yield {"root": root, "uri": uri, "run_id": lines["mlflow run"], "registered": lines["registered"],
               "model_dir": root / "run" / "model"}


@pytest.fixture
def in_store(registered, monkeypatch):
    monkeypatch.chdir(registered["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    return registered


def queries(model_dir: Path) -> tuple[list[list[str]], pd.DataFrame]:
    """Three queries of the model's own ingredients, and the same as a request: lists and a string."""
    names = load_model(model_dir).vocab.ingredients
    sets = [names[:2], names[3:4], [names[5], names[1], names[8]]]
    return sets, pd.DataFrame({"ingredients": [sets[0], sets[1], ", ".join(sets[2])]})


def download(uri: str, dst: Path) -> Path:
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))


def test_train_logs_a_pyfunc_model_from_code_without_pickles(in_store, tmp_path):
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    from recipeset.pyfunc import pip_requirements

    run_id = in_store["run_id"]
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["pyfunc_uri"] == f"runs:/{run_id}/pyfunc"
    (output,) = run.outputs.model_outputs  # the logged model belongs to the run, at its last step
    assert output.step == 5
    logged = MlflowClient().get_logged_model(output.model_id)
    assert logged.name == "pyfunc" and logged.source_run_id == run_id and logged.status == LoggedModelStatus.READY

    local = download(f"runs:/{run_id}/pyfunc", tmp_path)
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle")) or "python_model" in f]
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # a model from code
    assert Path(flavor["model_code_path"]).name == "pyfunc_model.py" and "pyfunc_model.py" in files
    checkpoint = flavor["artifacts"]["model_dir"]["path"]
    assert {f"{checkpoint}/config.json", f"{checkpoint}/vocab.json", f"{checkpoint}/weights.pt"} <= files
    assert (local / "requirements.txt").read_text().split() == pip_requirements()
    assert {"input_example.json", "serving_input_example.json"} <= files


def test_pyfunc_predicts_what_load_model_completes(in_store):
    import mlflow.pyfunc

    sets, request = queries(in_store["model_dir"])
    model = load_model(in_store["model_dir"])
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{in_store['run_id']}/pyfunc")
    assert pyfunc.metadata.get_params_schema().to_dict() == [
        {"name": "top", "default": 10, "shape": None, "type": "long"},
        {"name": "generate", "default": False, "shape": None, "type": "boolean"},
        {"name": "max_new", "default": 10, "shape": None, "type": "long"}]

    ranked = pyfunc.predict(request, params={"top": 4})
    expected = model.top_completions(sets, top=4)
    assert [list(c) for c in ranked["completion"]] == [[n for n, _ in row] for row in expected]
    assert [list(p) for p in ranked["probability"]] == [[p for _, p in row] for row in expected]
    assert [len(c) for c in pyfunc.predict(request)["completion"]] == [10, 10, 10]  # the default top

    generated = pyfunc.predict(request, params={"generate": True, "max_new": 3})
    assert list(generated.columns) == ["completion"]
    assert [list(c) for c in generated["completion"]] == model.complete(sets, max_new=3)


def test_registered_version_loads_from_the_registry(in_store):
    import mlflow.pyfunc

    assert in_store["registered"] == f"models:/{NAME}/1"  # printed by recipeset train
    sets, request = queries(in_store["model_dir"])
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    got = pyfunc.predict(request, params={"generate": True})
    assert [list(c) for c in got["completion"]] == load_model(in_store["model_dir"]).complete(sets)


@pytest.mark.parametrize("request_frame, params, needle", [
    (pd.DataFrame({"ingredients": ["tomatoe, garlic"]}), None, "unknown ingredient 'tomatoe'"),
    (pd.DataFrame({"ingredient": [["garlic"]]}), None, "missing inputs ['ingredients']"),  # MLflow's schema check
    (pd.DataFrame({"ingredients": [" , "]}), None, "give at least one ingredient"),
    (pd.DataFrame({"ingredients": [["garlic"]]}), {"top": 0}, "param 'top' must be a positive integer"),
])
def test_bad_requests_are_mlflow_errors_that_say_what_is_wrong(in_store, request_frame, params, needle):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    pyfunc = mlflow.pyfunc.load_model(f"runs:/{in_store['run_id']}/pyfunc")
    with pytest.raises(MlflowException) as e:
        pyfunc.predict(request_frame, params=params)
    assert needle in e.value.message and "Traceback" not in e.value.message


@contextlib.contextmanager
def no_network_nor_subprocess():
    """Record (and refuse) every socket connection, name lookup and subprocess this thread starts."""
    calls: list[str] = []
    me = threading.current_thread()
    real = {"connect": socket.socket.connect, "getaddrinfo": socket.getaddrinfo, "popen": subprocess.Popen.__init__}

    def guard(name):
        def refuse(*args, **kwargs):
            if threading.current_thread() is me:
                calls.append(f"{name}{args[1:3]!r}")
                raise OSError(f"test: no {name} here")
            return real[name](*args, **kwargs)
        return refuse

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", guard("connect"))
        mp.setattr(socket, "getaddrinfo", guard("getaddrinfo"))
        mp.setattr(subprocess.Popen, "__init__", guard("popen"))
        yield calls


def test_logging_the_pyfunc_needs_no_network_nor_subprocess_and_registers_the_next_version(in_store):
    from recipeset.config import RunConfig
    from recipeset.tracking import Tracker

    with Tracker.start(RunConfig(), experiment="pyfunc-test", run_name="log-again") as tracker:
        with no_network_nor_subprocess() as calls:
            uri = tracker.log_pyfunc(in_store["model_dir"], register=NAME)
    assert calls == []  # no pip resolution, no requirement inference in a subprocess
    assert uri == f"runs:/{tracker.run_id}/pyfunc" and tracker.registered == f"models:/{NAME}/2"


@pytest.mark.parametrize("args, needle", [
    (["--register", "a/b"], "--register 'a/b': not a registered model name"),
    (["--register", "x", "--no-track"], "drop --no-track"),
    (["--register", "x", "--set", "tracking.pyfunc=false"], "tracking.pyfunc = false"),
])
def test_a_register_that_cannot_work_is_one_line_before_training(mlflow_uri, tmp_path, args, needle):
    result = invoke("train", *TINY, "--out", "run", *args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "run" / "config.json").exists()  # nothing was prepared


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_completions(in_store):
    """``mlflow models serve -m models:/NAME/1 --env-manager local``: /ping, then /invocations."""
    port = _free_port()
    venv_bin = Path(sys.executable).parent  # mlflow starts uvicorn from PATH
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen([str(venv_bin / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/1",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as answer:
                    if answer.status == 200:
                        break
            assert time.monotonic() < deadline, "the server did not answer /ping in 180 s"
            time.sleep(1)
        sets, request = queries(in_store["model_dir"])
        model = load_model(in_store["model_dir"])
        records = [{"ingredients": v} for v in request["ingredients"]]
        got = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": records, "params": {"top": 3}})
        assert [p["completion"] for p in got["predictions"]] == [[n for n, _ in r] for r in
                                                                 model.top_completions(sets, top=3)]
        got = _post(f"http://127.0.0.1:{port}/invocations",
                    {"dataframe_records": records, "params": {"generate": True, "max_new": 4}})
        assert [p["completion"] for p in got["predictions"]] == model.complete(sets, max_new=4)
    finally:
        stop_process_group(server, grace=30)
