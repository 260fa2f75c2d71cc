"""The ``recipeset`` command line end to end (click's CliRunner, plus real subprocesses for --help)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import invoke, ok

TINY_SETTINGS = ["data.n_recipes=400", "model.d_model=16", "model.n_layers=1", "train.batch_size=32",
                 "train.warmup_steps=2", "eval.max_queries=30", "eval.joint_max_queries=10", "train.device=cpu"]


def tiny_args(skip: tuple[str, ...] = ()) -> list[str]:
    """A tiny decoder run (the main job without --model trains deep-sets; these tests name the decoder)."""
    model = [] if "model.n_layers" in skip else ["--model", "decoder"]
    return model + [x for kv in TINY_SETTINGS if kv.split("=")[0] not in skip for x in ("--set", kv)]


TINY = tiny_args()
SPECIALS = ("[PAD]", "[MASK]", "[BOS]", "[EOS]", "[SEP]", "[CLS]", "[UNK]", "[NULL]")
VENV_BIN = Path(sys.executable).parent




def one_line_error(result, *needles: str) -> str:
    """A failed command: non-zero exit, one 'Error: ...' line, no traceback."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an escaped exception
    text = result.output.strip()
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), text
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def store(mlflow_template_db: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cli")
    shutil.copy(mlflow_template_db, root / "mlflow.db")
    return root, f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture
def in_store(store, monkeypatch):
    root, uri = store
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return root, uri


@pytest.fixture(scope="module")
def trained(store):
    """A tracked CLI run with a cuisine head (clm + cls), shared by the commands that read a model."""
    root, uri = store
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        result = ok("train", *TINY, "--objective", "clm", "--objective", "cls=0.5", "--max-steps", "20",
                    "--set", "train.lr=3e-3", "--experiment", "cli-test", "--out", "run", "--quiet")
    run_id = next(line.split()[2] for line in result.output.splitlines() if line.startswith("mlflow run:"))
    return {"root": root, "uri": uri, "model": str(root / "run" / "model"), "run_id": run_id,
            "output": result.output}


# ---- train -------------------------------------------------------------------------------------------------
def test_train_tracked_leaves_a_finished_run(trained):
    from mlflow import MlflowClient

    assert "run directory:" in trained["output"] and "completion/mrr" in trained["output"]
    run = MlflowClient(trained["uri"]).get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["objectives.weights.cls"] == "0.5" and run.data.params["model.d_model"] == "16"
    assert (Path(trained["root"]) / "run" / "mlflow_run_id").read_text().strip() == trained["run_id"]


def test_train_no_track_with_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = ok("train", *tiny_args(skip=("model.n_layers",)), "--model", "deep-sets", "--set", "model.phi_layers=1",
                "--set", "model.rho_layers=1", "--max-steps", "3", "--seed", "7", "--no-track", "--out", "r", "--quiet")
    assert "mlflow run" not in result.output
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model"]["name"] == "deep-sets" and cfg["model"]["d_model"] == 16 and cfg["train"]["seed"] == 7
    assert cfg["objectives"]["weights"] == {"mlm": 1.0}  # the model's natural objective
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "r" / "mlflow_run_id").exists()
    assert (tmp_path / "r" / "model" / "weights.pt").exists()


def test_train_from_a_config_file_with_options_winning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text('[data]\nn_recipes = 300\n[model]\nname = "decoder"\nd_model = 32\n'
                                       'n_layers = 1\n[train]\nmax_steps = 2\nwarmup_steps = 1\n'
                                       '[eval]\nmax_queries = 10\njoint = false\n')
    ok("train", "--config", "run.toml", "--set", "model.d_model=16", "--order", "shuffle", "--no-track",
       "--out", "r", "--quiet")
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model"]["d_model"] == 16 and cfg["data"]["order"] == "shuffle" and cfg["train"]["max_steps"] == 2


# ---- complete / classify / evaluate --------------------------------------------------------------------------
def _vocab(model_dir: str) -> list[str]:
    import recipeset

    return recipeset.load_model(model_dir).vocab.ingredients


def test_complete_ranked(trained):
    result = ok("complete", trained["model"], "tomato, garlic", "--top", "5")
    lines = result.output.strip().splitlines()
    assert len(lines) == 5
    names = [line.split()[1] for line in lines]
    assert [int(line.split(".")[0]) for line in lines] == [1, 2, 3, 4, 5]
    probs = [float(line.split()[2]) for line in lines]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    vocab = set(_vocab(trained["model"]))
    assert set(names) <= vocab and not {"tomato", "garlic"} & set(names)
    assert len(set(names)) == 5


def test_complete_generate_has_no_repeats_and_no_specials(trained):
    result = ok("complete", trained["model"], "tomato, garlic", "--generate", "--max-new", "6")
    out = result.output.strip()
    names = [x.strip() for x in out.split(",")] if out != "(nothing to add)" else []
    assert len(names) <= 6 and len(names) == len(set(names))
    assert not {"tomato", "garlic"} & set(names)
    assert not any(s in out for s in SPECIALS)
    assert set(names) <= set(_vocab(trained["model"]))
    again = ok("complete", trained["model"], "tomato, garlic", "--generate", "--max-new", "6")
    assert again.output == result.output  # greedy generation is deterministic


def test_classify_on_a_cls_trained_model(trained):
    result = ok("classify", trained["model"], "soy_sauce, ginger", "--top", "3")
    lines = result.output.strip().splitlines()
    assert len(lines) == 3
    probs = [float(line.split()[-1]) for line in lines]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3


def test_names_as_users_type_them(trained):
    """Queries are normalised like the loaders' names: case, spaces and stray blanks do not matter, in every form
    a query takes (comma-separated, a JSON list, repeated --ingredient) and in the Python API."""
    import torch

    import recipeset

    model = trained["model"]
    canonical = ok("complete", model, "olive_oil, tomato", "--top", "5").output
    for typed in (["olive oil, Tomato"], [" Olive  Oil ;TOMATO "], ['["Olive Oil", " Tomato"]'],
                  ["--ingredient", "Olive Oil", "--ingredient", "Tomato"], ["Olive Oil", "--ingredient", "tomato"]):
        assert ok("complete", model, *typed, "--top", "5").output == canonical, typed
    assert (ok("classify", model, "--ingredient", "Soy Sauce", "--ingredient", "GINGER").output
            == ok("classify", model, "soy_sauce, ginger").output)
    m = recipeset.load_model(model)
    assert m.complete([[" Olive Oil", "Tomato"]], max_new=3) == m.complete([["olive_oil", "tomato"]], max_new=3)
    assert torch.equal(m.classify([["Soy Sauce"]]), m.classify([["soy_sauce"]]))


def test_unknown_name_after_normalisation_names_it_and_where_to_look(trained):
    line = one_line_error(invoke("complete", trained["model"], "Olive Oyl, tomato"), "'olive_oyl'", "olive_oil",
                          "recipeset data stats", "--ingredients")
    assert "tomato'" not in line  # only the unknown name
    one_line_error(invoke("classify", trained["model"], "--ingredient", "Dragon Fruit"), "'dragon_fruit'",
                   "--ingredients")
    one_line_error(invoke("complete", trained["model"]), "--ingredient")
    one_line_error(invoke("complete", trained["model"], '["tomato", 3]'), "JSON list")


def test_names_holding_commas_as_a_list(tmp_path):
    """A name with a comma in it is one name when given with --ingredient or in a JSON list; the comma-separated
    form splits it (and says which piece is unknown)."""
    from recipeset.data.vocab import Vocabulary
    from recipeset.models import DeepSets, DeepSetsConfig, save_model

    vocab = Vocabulary(["salt,_kosher", "tomato", "basil", "garlic"])
    save_model(DeepSets(DeepSetsConfig(d_model=8), vocab), tmp_path / "m")
    model = str(tmp_path / "m")
    ranked = ok("complete", model, "--ingredient", "Salt, Kosher", "--ingredient", "tomato", "--top", "2").output
    assert ok("complete", model, '["salt, kosher", "Tomato"]', "--top", "2").output == ranked
    assert {line.split()[1] for line in ranked.splitlines()} == {"basil", "garlic"}
    one_line_error(invoke("complete", model, "Salt, Kosher, tomato"), "'salt' (from 'Salt')", "--ingredients")


def test_data_stats_lists_every_ingredient(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("ingredients\n" + "\n".join(";".join(f"ing{j}" for j in range(i % 13 + 1)) for i in range(40)) + "\n")
    listed = ok("data", "stats", str(p), "--ingredients").output.splitlines()
    counts = {line.split()[0]: int(line.split()[1]) for line in listed}
    assert len(counts) == 13 == len(listed)  # all of them, not the top ten
    assert counts["ing0"] == 40 and counts["ing12"] == 3
    assert list(counts.values()) == sorted(counts.values(), reverse=True)
    top = json.loads(ok("data", "stats", str(p), "--ingredients", "--json").output)["top_ingredients"]
    assert dict(top) == counts


def test_evaluate_json_matches_the_run(trained):
    result = ok("evaluate", trained["model"], "--json")
    metrics = json.loads(result.output)
    assert {"completion/mrr", "completion/recall@10", "set/micro_f1", "cuisine/accuracy"} <= set(metrics)
    saved = json.loads((Path(trained["root"]) / "run" / "eval.json").read_text())
    assert str(metrics["completion/mrr"])[:8] in json.dumps(saved)
    text = ok("evaluate", trained["model"], "--max-queries", "10").output
    assert "completion/mrr" in text


def test_evaluate_a_logged_model_by_uri(trained, in_store):
    local = json.loads(ok("evaluate", trained["model"], "--json").stdout)
    # stdout only: MLflow's download progress bar goes to stderr (which CliRunner's .output mixes in)
    remote = json.loads(ok("evaluate", f"runs:/{trained['run_id']}/model", "--json").stdout)
    assert local == remote


def test_compare_json_and_runs(trained, in_store):
    tables = json.loads(ok("compare", "cli-test", "--json").output)
    rows = {k: v for k, v in tables["completion"].items() if not k.startswith("bayes-optimal")}
    assert len(rows) == 1  # one (unnamed) variant; the synthetic Bayes ceiling is a row of its own
    row = next(iter(rows.values()))
    assert row["seeds"] == 1 and "test/completion/mrr" in row
    runs = json.loads(ok("compare", "cli-test", "--metric", "test/completion/mrr", "--json").output)
    assert runs[0]["status"] == "FINISHED" and "test/completion/mrr" in runs[0]


# ---- bad input: one line, non-zero exit ------------------------------------------------------------------------
def test_misspelled_loss_suggests_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("train", "--loss", "hungrian", "--no-track"), "hungrian", "did you mean 'hungarian'")


def test_unknown_ingredient_suggests_close_names(trained):
    one_line_error(invoke("complete", trained["model"], "tomatoe, garlic"), "tomatoe", "tomato")
    one_line_error(invoke("classify", trained["model"], "garlik"), "garlik", "garlic")


def test_missing_model_dir(tmp_path):
    for cmd in ("complete", "classify"):
        one_line_error(invoke(cmd, str(tmp_path / "nope"), "tomato"), "nope")
    one_line_error(invoke("evaluate", str(tmp_path / "nope")), "nope")


def test_unknown_set_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("train", "--set", "train.lrr=1", "--no-track"), "train.lrr", "train.lr")
    one_line_error(invoke("train", "--set", "trian.lr=1", "--no-track"), "trian")
    one_line_error(invoke("train", "--set", "model.d_modl=8", "--no-track"), "d_modl", "d_model")
    one_line_error(invoke("train", "--set", "novalue", "--no-track"), "KEY=VALUE")


def test_missing_dataset_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("train", "--dataset", "flavornet", "--path", "/nonexistent", "--no-track"), "/nonexistent")
    one_line_error(invoke("train", "--dataset", str(tmp_path / "missing.csv"), "--no-track"), "missing.csv")


def test_resume_without_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("train", "--resume", "--out", str(tmp_path / "none"), "--no-track"), "resume")


def test_train_into_an_existing_run_dir_needs_resume(trained):
    one_line_error(invoke("train", *TINY, "--out", str(Path(trained["root"]) / "run"), "--no-track"), "--resume")


def test_invalid_combination_and_bad_objective_weight(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("train", "--loss", "hungarian", "--no-track"), "hungarian", "deep-sets")  # the main job
    one_line_error(invoke("train", "--model", "decoder", "--objective", "mlm", "--no-track"), "mlm")
    one_line_error(invoke("train", "--objective", "cls=lots", "--no-track"), "cls=lots")


def test_classify_without_a_cuisine_head(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok("train", *TINY, "--max-steps", "2", "--no-track", "--out", "r", "--quiet", "--set", "eval.tasks=[\"cuisine\"]")
    one_line_error(invoke("classify", str(tmp_path / "r" / "model"), "tomato"), "no cuisine head", "--objective cls")


def test_compare_unknown_experiment(in_store):
    one_line_error(invoke("compare", "no-such-experiment"), "no-such-experiment")


def test_experiment_file_missing(tmp_path):
    one_line_error(invoke("experiment", "run", str(tmp_path / "none.toml")), "none.toml")


def test_unknown_option_exits_2():
    result = invoke("train", "--frobnicate")
    assert result.exit_code == 2 and "Traceback" not in result.output


# ---- real subprocesses -------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def test_module_and_console_script_help():
    out = subprocess.run([sys.executable, "-m", "recipeset.cli", "--help"], capture_output=True, text=True,
                         timeout=60, env=_env())
    assert out.returncode == 0 and "train" in out.stdout and "experiment" in out.stdout
    script = VENV_BIN / "recipeset"
    if script.exists():
        out = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True, timeout=60,
                             env=_env())
        assert out.returncode == 0 and "--resume" in out.stdout and "--init-from" in out.stdout


def test_help_does_not_import_torch_or_mlflow():
    code = ("import sys\nfrom recipeset.cli import main\nsys.argv = ['recipeset', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'mlflow', 'pandas', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    # and the same through -X importtime of the real entry point
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "recipeset.cli", "--help"], capture_output=True,
                         text=True, timeout=60, env=_env())
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert not {"torch", "mlflow"} & imported


# ---- experiment grids -----------------------------------------------------------------------------------------
GRID_TOML = """
[experiment]
name = "{name}"
description = "two tiny variants"
baselines = {baselines}

[base]
"data.n_recipes" = 300
"model.d_model" = 16
"model.n_layers" = 1
"train.max_steps" = 2
"train.warmup_steps" = 1
"train.batch_size" = 32
"train.device" = "cpu"
"eval.max_queries" = 10
"eval.joint_max_queries" = 5

[[grid]]
name = "dec"

[[grid]]
name = "st"
"model.name" = "set-transformer"    # default objectives: resolved to mlm by the pipeline

[seeds]
values = [0]
"""


def write_grid(directory: Path, name: str, baselines: bool = False) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(GRID_TOML.format(name=name, baselines=str(baselines).lower()), encoding="utf-8")
    return path


def test_experiment_run_parent_children_skip_and_compare(mlflow_uri, tmp_path):
    from mlflow import MlflowClient

    path = write_grid(tmp_path, "tiny-grid")
    first = ok("experiment", "run", str(path), "--out", "runs")
    assert "2 run, 0 skipped" in first.output
    # --jobs 1: each child's progress in the grid's output (plain lines: CliRunner is not a terminal)
    assert len(re.findall(r"^\[\d\d:\d\d\] training 0/2 steps", first.output, re.M)) == 2, first.output
    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("tiny-grid")
    assert exp.tags.get("mlflow.note.content") == "two tiny variants"
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "parent"]
    children = [r for r in runs if r.data.tags.get("run_kind") == "run"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["tiny-grid/dec/seed0", "tiny-grid/st/seed0"]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["variant"] for r in children} == {"dec", "st"}
    assert (tmp_path / "runs" / "tiny-grid" / "st" / "seed0" / "model" / "weights.pt").exists()
    results = {a.path for a in c.list_artifacts(parents[0].info.run_id, "results")}
    assert {"results/completion.csv", "results/tables.md", "results/completion.png",
            "results/learning_curves.png"} <= results
    csv = Path(c.download_artifacts(parents[0].info.run_id, "results/completion.csv", str(tmp_path))).read_text()
    assert csv.startswith("variant,") and "\ndec," in csv and "\nst," in csv  # rows keep their variant names

    again = ok("experiment", "run", str(path), "--out", "runs")
    assert "0 run, 2 skipped" in again.output
    assert again.output.count("skip tiny-grid/") == 2
    children_after = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("run_kind") == "run"]
    assert sorted(r.info.run_id for r in children_after) == sorted(r.info.run_id for r in children)
    assert all(r.info.end_time == next(x for x in children if x.info.run_id == r.info.run_id).info.end_time
               for r in children_after)  # the finished children were not re-opened

    tables = json.loads(ok("compare", "tiny-grid", "--json").output)
    assert set(tables["completion"]) == {"dec", "st", "bayes-optimal (generator)"}
    assert all(row["seeds"] == 1 and row["test/completion/mrr"] != "" for row in tables["completion"].values())
    assert tables["completion"]["dec"]["test/completion_joint/mrr"] != ""   # joint scoring: decoders only
    # the generator's ceiling on the joint-scored queries comes from the decoder's run, whatever the run order
    assert math.isfinite(float(tables["completion"]["bayes-optimal (generator)"]["test/completion_joint/mrr"]))
    assert int(float(tables["training_cost"]["st"]["model.n_parameters"])) > 0
    cost = tables["training_cost"]["st"]
    assert float(cost["time/train_s"]) > 0 and float(cost["time/eval_s"]) > 0
    assert float(cost["train/mean_recipes_per_s"]) > 0 and "train/recipes_per_s" not in cost
    markdown = ok("compare", "tiny-grid", "--plots", "figs").output
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["completion.png", "learning_curves.png"]
    assert (tmp_path / "figs" / "completion.png").read_bytes()[:4] == b"\x89PNG"
    assert "| dec |" in markdown and "| st |" in markdown
    best_first = json.loads(ok("compare", "tiny-grid", "--metric", "test/completion/mean_rank", "--json").output)
    ranks = [r["test/completion/mean_rank"] for r in best_first]
    assert ranks == sorted(ranks)  # lower is better for ranks


def test_experiment_run_rejects_a_bad_grid(mlflow_uri, tmp_path):
    path = write_grid(tmp_path, "bad-grid")
    path.write_text(path.read_text().replace('"model.name" = "set-transformer"', '"model.nam" = "set-transformer"'))
    # fails before any child trains (one line, no "run ..." progress before it)
    one_line_error(invoke("experiment", "run", str(path)), "bad-grid.toml [grid 'st']", "model.nam")
    path.write_text(GRID_TOML.format(name="bad-grid", baselines="false").replace(
        'name = "dec"', 'name = "dec"\n"loss.name" = "hungarian"'))
    one_line_error(invoke("experiment", "run", str(path)), "bad-grid.toml [grid 'dec']", "hungarian")


@pytest.mark.parametrize("jobs", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_experiment_child_failure_finishes_the_others_and_rerun_continues(mlflow_uri, tmp_path, jobs):
    """A child that fails while training (here: its pre-trained model is missing) is reported in one line;
    the other children finish; the parent ends FAILED and re-running the command continues the same parent.
    With --jobs 2 the children are processes of their own (the same guarantees)."""
    from mlflow import MlflowClient

    path = write_grid(tmp_path, "failing-grid")
    path.write_text(path.read_text().replace(
        '"model.name" = "set-transformer"',
        '"model.name" = "set-transformer"\n"train.init_from" = "pretrained/seed{seed}/model"'))
    result = invoke("experiment", "run", str(path), "--out", "runs", "--jobs", jobs)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED ")]
    assert failed == ["FAILED failing-grid/st/seed0: train.init_from: pretrained/seed0/model is not a model "
                      f"directory (paths are relative to {Path.cwd()}); train the model it names first (grids: run "
                      "with --jobs 1)"]
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error:") and "1 of 2 runs failed" in error and "init_from" in error
    if jobs == "2":  # the children's output is in their logs, with their share of the cores
        assert "done failing-grid/dec/seed0 in " in result.output
        # and their progress lines are shown by the grid, each prefixed with its child's name
        assert re.search(r"^failing-grid/dec/seed0 \[\d\d:\d\d\] training 0/2 steps", result.output, re.M)
        for variant in ("dec", "st"):
            child_log = (tmp_path / "runs" / "failing-grid" / variant / "seed0" / "grid-child.log").read_text()
            assert f"{max(1, (os.cpu_count() or 1) // 2)} torch threads" in child_log
        # the failed child's log (st, the last one read) ends with its one-line error, no traceback
        message = failed[0].split(": ", 1)[1]
        assert "Traceback" not in child_log and child_log.strip().splitlines()[-1] == f"Error: {message}"
    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("failing-grid")
    runs = c.search_runs([exp.experiment_id])
    status = {r.info.run_name: r.info.status for r in runs}
    assert status["failing-grid/dec/seed0"] == "FINISHED" and status["failing-grid/grid"] == "FAILED"
    parent = next(r for r in runs if r.info.run_name == "failing-grid/grid")
    assert parent.data.tags["failed_children"] == "failing-grid/st/seed0"

    # provide the pre-trained model and re-run: the finished child is skipped, the failed one runs, same parent
    ok("train", "--no-track", "--set", "data.n_recipes=300", "--model", "set-transformer", "--set",
       "model.d_model=16", "--set", "model.n_layers=1", "--max-steps", "2", "--out", "pretrained/seed0")
    again = ok("experiment", "run", str(path), "--out", "runs", "--jobs", jobs)
    assert "1 run, 1 skipped" in again.output
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.info.run_name == "failing-grid/st/seed0"]
    assert any(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
               for r in children)


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


@pytest.mark.slow  # real processes killed and waited for (~20 s); .ci/run runs the slow tests too
def test_sigterm_to_a_parallel_grid_stops_its_workers(mlflow_uri, tmp_path):
    """`kill` of a --jobs 2 grid ends promptly: each running child process gets SIGTERM and unwinds (its run ends
    KILLED), the queued children never start, the parent ends KILLED, and no child process is left behind."""
    from mlflow import MlflowClient

    path = write_grid(tmp_path, "long-grid")
    # two seeds: two children run and two wait in the queue — a stopped grid must not start one
    path.write_text(path.read_text().replace('"train.max_steps" = 2', '"train.max_steps" = 100000')
                    .replace("values = [0]", "values = [0, 1]"))
    proc = subprocess.Popen([sys.executable, "-m", "recipeset.cli", "experiment", "run", str(path), "--jobs", "2"],
                            cwd=tmp_path, env={**_env(), "MLFLOW_TRACKING_URI": mlflow_uri},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    c = MlflowClient(mlflow_uri)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    try:
        while True:  # both children started (their runs exist)
            exp = c.get_experiment_by_name("long-grid")
            runs = c.search_runs([exp.experiment_id]) if exp else []
            if sum(r.data.tags.get("run_kind") == "run" for r in runs) == 2:
                break
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-2000:]
            time.sleep(0.5)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        workers = [int(p) for p in children if " experiment child " in _cmdline(int(p))]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:  # never leave a 100000-step grid running on a shared machine
            for pid in [proc.pid, *workers]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
    output = proc.stdout.read()
    assert proc.returncode != 0
    assert len(workers) == 2, output  # one OS process per running child, at most --jobs of them
    alive = [p for p in workers if _alive(p)]  # the supervisor waited for them (or killed them) before exiting
    assert not alive, [_cmdline(p)[:200] for p in alive]
    status = {r.info.run_name: r.info.status for r in c.search_runs([exp.experiment_id])}
    assert status == {"long-grid/grid": "KILLED", "long-grid/dec/seed0": "KILLED", "long-grid/st/seed0": "KILLED"}
    for variant in ("dec", "st"):  # each child unwound from the SIGTERM (was not SIGKILLed) and said so
        run_dir = tmp_path / "runs" / "long-grid" / variant / "seed0"
        result = json.loads((run_dir / "grid-child-result.json").read_text())
        assert result == {"status": "killed", "error": "interrupted (received signal 15)"}, result
        assert "Traceback" not in (run_dir / "grid-child.log").read_text()
    assert "torch threads" not in output  # the children's output went to their logs, not the grid's terminal
    assert not (tmp_path / "runs" / "long-grid" / "dec" / "seed1").exists()  # the queued children never started
    assert not (tmp_path / "runs" / "long-grid" / "st" / "seed1").exists()


@pytest.mark.slow
def test_experiment_baselines_share_the_children_queries(mlflow_uri, tmp_path):
    from mlflow import MlflowClient

    path = write_grid(tmp_path, "grid-with-baselines", baselines=True)
    ok("experiment", "run", str(path), "--out", "runs")
    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("grid-with-baselines")
    runs = {r.data.tags.get("variant"): r for r in c.search_runs([exp.experiment_id])}
    assert runs["baselines"].data.metrics["popularity/test/completion/n"] == 10  # eval.max_queries, like the models
    assert runs["dec"].data.metrics["test/completion/n"] == 10
    # validation (model selection) on the same seeded val subset as the children's val_eval/
    assert (runs["baselines"].data.metrics["popularity/val_eval/completion/n"]
            == runs["dec"].data.metrics["val_eval/completion/n"])
    tables = json.loads(ok("compare", "grid-with-baselines", "--json").output)
    assert "baseline:popularity" in tables["completion"]
    best = tables["best_on_validation"]
    assert [(r["task"], r["metric"]) for r in best][:2] == [("completion", "completion/recall_at_10"),
                                                            ("completion", "completion/mrr")]
    assert best[0]["model (best on val)"] in {"dec", "st"} and best[0]["baseline (best on val)"]
    assert best[0]["target"].split(" (")[0] in {"met", "not met"}
    assert "0 run, 3 skipped" not in ok("experiment", "run", str(path), "--out", "runs").output


def test_resume_refuses_changed_options_but_accepts_the_same_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--max-steps", "2", "--set", "eval.tasks=[\"completion\"]", "--no-track", "--quiet"]
    ok("train", *args, "--out", "r")
    one_line_error(invoke("train", *args, "--out", "r", "--resume", "--max-steps", "50"), "train.max_steps")
    one_line_error(invoke("train", "--out", "r", "--resume", "--set", "model.d_model=32", "--no-track"),
                   "model.d_model")
    ok("train", *args, "--out", "r", "--resume")            # the same options: continues (here: already done)
    ok("train", "--out", "r", "--resume", "--no-track", "--quiet")  # no options: the saved config


def test_resume_with_the_same_config_file_continues(tmp_path, monkeypatch):
    """A run config leaves train.pack unset (the run saves it resolved): re-running its command with --resume is
    the same options, not a changed train.pack."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text('[model]\nname = "deep-sets"\nd_model = 16\n[train]\nmax_steps = 2\n'
                                       'batch_size = 8\n[eval]\ntasks = ["completion"]\nmax_queries = 20\n')
    args = ["--config", "run.toml", "--no-track", "--quiet", "--no-baselines", "--out", "r"]
    ok("train", *args)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["pack"] is False  # saved resolved
    ok("train", *args, "--resume")


@pytest.mark.parametrize("args", [("complete", "--top", "0"), ("complete", "--generate", "--max-new", "-1"),
                                  ("classify", "--top", "0"), ("evaluate", "--max-queries", "0")])
def test_counts_must_be_positive(trained, args):
    cmd, *opts = args
    positional = [trained["model"]] + (["tomato"] if cmd != "evaluate" else [])
    result = invoke(cmd, *positional, *opts)
    assert result.exit_code == 2 and "Traceback" not in result.output and "x>=1" in result.output


def test_resume_refuses_a_checkpoint_that_could_run_code(tmp_path, monkeypatch):
    """--resume reads the checkpoint's weights like load_model: a code-running pickle is refused in one line that
    names the file and never suggests loading it unsafely."""
    import torch

    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--max-steps", "2", "--set", "eval.tasks=[\"completion\"]", "--no-track", "--quiet", "--out", "r"]
    ok("train", *args)
    weights = tmp_path / "r" / "checkpoint" / "model" / "weights.pt"
    torch.save({**torch.load(weights, weights_only=True), "evil": _Evil(tmp_path / "pwned")}, weights)
    line = one_line_error(invoke("train", *args, "--resume"), "r/checkpoint/model/weights.pt: refused to load",
                          "could run code")
    assert "weights_only" not in line and not (tmp_path / "pwned").exists()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_evaluate_against_a_baseline_gives_the_paired_difference(trained):
    """``--baseline NAME``: the model − baseline difference on the same test queries, inside its interval, equal
    to the difference of the two runs' own MRRs (the baseline's as the run scored it beside the model)."""
    metrics = json.loads(ok("evaluate", trained["model"], "--baseline", "popularity", "--json").output)
    for metric in ("recall@10", "mrr"):
        d, low, high = (metrics[f"vs/popularity/{metric}{end}"] for end in ("", "/low", "/high"))
        assert low <= d <= high and low < high
    from recipeset.pipeline import run_data
    from recipeset.protocol import run_baselines_on
    from recipeset.runs import load_model

    cfg, _, data = run_data(load_model(trained["model"]), trained["model"])
    baseline = run_baselines_on(cfg, data, names=["popularity"])
    for metric in ("recall@10", "mrr"):  # model − baseline, each as scored alone on the run's test queries
        assert metrics[f"vs/popularity/{metric}"] == pytest.approx(
            metrics[f"completion/{metric}"] - baseline["popularity"]["test"][f"completion/{metric}"], abs=1e-12)
    one_line_error(invoke("evaluate", trained["model"], "--baseline", "logistic-cuisine"), "not a completion baseline")
    one_line_error(invoke("evaluate", trained["model"], "--baseline", "mlp", "--split", "val"), "own test split")


def test_evaluate_set_changes_eval_settings_only(trained):
    """``evaluate --set eval.KEY=VALUE``: the run's evaluation settings changed for this evaluation (here: one
    held-out draw per recipe instead of the run's 5), any other section refused in one line."""
    five = json.loads(ok("evaluate", trained["model"], "--json").output)
    one = json.loads(ok("evaluate", trained["model"], "--set", "eval.query_draws=1", "--json").output)
    assert five["completion/draws"] == 5 and one["completion/draws"] == 1
    assert one["completion/n"] == five["completion/n"]
    one_line_error(invoke("evaluate", trained["model"], "--set", "train.lr=0.1"), "eval.* settings only")
    one_line_error(invoke("evaluate", trained["model"], "--set", "eval.query_draws=0"), "eval.query_draws")


def test_evaluate_with_a_memory_of_the_training_recipes(trained):
    """``evaluate --memory recipe-knn``: the model mixed with recipe-kNN fit on the run's training split, the weight
    and stop rule tuned on validation; the same keys as the model's table. Wrong uses are one line."""
    plain = json.loads(ok("evaluate", trained["model"], "--json").output)
    mixed = json.loads(ok("evaluate", trained["model"], "--memory", "recipe-knn", "--json").output)
    assert {"completion/mrr", "set/micro_f1"} <= set(mixed) and mixed["completion/n"] == plain["completion/n"]
    assert 0 < mixed["completion/mrr"] <= 1 and 0 <= mixed["set/micro_f1"] <= 1
    one_line_error(invoke("evaluate", trained["model"], "--memory", "logistic-cuisine"), "not a completion baseline")
    one_line_error(invoke("evaluate", trained["model"], "--memory", "recipe-knn", "--dataset", "synthetic"),
                   "drop --dataset")


def test_the_main_job_recipe_applies_only_when_no_model_is_named(tmp_path, monkeypatch):
    """`recipeset train` alone trains the main job's Deep Sets (MAIN_JOB: its dropout too); naming a model in any
    way — --model, --config, --set model.name — trains that model with its own defaults."""
    import recipeset.pipeline
    from recipeset.config import MAIN_JOB

    seen = []

    class Stop(Exception):
        pass

    def capture(cfg, **kwargs):
        seen.append(cfg)
        raise Stop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(recipeset.pipeline, "run_training", capture)
    config = tmp_path / "decoder.toml"
    config.write_text('[model]\nname = "decoder"\n')
    for args in ([], ["--set", "model.d_model=32"], ["--model", "decoder"], ["--set", "model.name=decoder"],
                 ["--config", str(config)]):
        assert isinstance(invoke("train", "--no-track", *args).exception, Stop)
    main, sized, *named = seen
    assert main.model.name == "deep-sets" and main.model.params["dropout"] == MAIN_JOB["model.dropout"] > 0
    assert sized.model.params == {"dropout": MAIN_JOB["model.dropout"], "d_model": 32}  # still the main job
    assert [c.model.name for c in named] == ["decoder"] * 3
    assert all("dropout" not in c.model.params for c in named)
