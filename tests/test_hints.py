"""Every hint in an error message names something a user can type: a real option of a recipeset command or a
real run-config key — and following the hints that used to name nothing (a CSV column, --lenient on train, a
modified flavornet copy, the unmapped cuisines) does what they say."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
from pathlib import Path

import click
from helpers import invoke, ok
from test_cli import one_line_error
from test_loaders import write_fake_flavornet

import recipeset
from recipeset.cli import cli
from recipeset.config import SECTIONS, RunConfig
from recipeset.data.prepare import load_table
from recipeset.data.sources import flavornet, synthetic, tabular, whatscooking
from recipeset.registry import LOSSES, MODELS, OBJECTIVES

PACKAGE = Path(recipeset.__file__).parent
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
KEY = re.compile(r"\b(?:data|model|train|loss|eval|objectives|tracking)\.[a-z_]+(?:\.[a-z_]+)?\b(?!\()")
PYTHON_FLAG = re.compile(r"\b[a-z_]+=(?:True|False)\b")  # a Python keyword argument: no user can type it
MLFLOW_COMMAND = re.compile(r"\bmlflow [a-z-]+[^)`;]*")  # e.g. `mlflow server --host HOST`: mlflow's own options
NOT_KEYS = {"train.json"}  # What's Cooking's file name


def _text(node: ast.AST) -> str:
    """The literal text of a message expression, in source order; an f-string's fields become '{}'."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.FormattedValue):
        return "{}"
    glue = "" if isinstance(node, ast.JoinedStr) else " "  # the parts of one f-string, or separate arguments
    return glue.join(_text(child) for child in ast.iter_child_nodes(node))


def messages() -> list[tuple[str, str]]:
    """``(file:line, text)`` of every exception's message, every cleaning-report reason and every shared hint."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                msg = node.exc
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(("Error", "report.add")):
                msg = node  # an error built to be raised elsewhere, or a cleaning-report reason
            elif isinstance(node, ast.Assign) and any("HINT" in ast.unparse(t) for t in node.targets):
                msg = node.value  # a hint shared by several messages
            else:
                continue
            out.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", _text(msg)))
    return out


def cli_options(group: click.Group = cli) -> set[str]:
    out: set[str] = set()
    for command in group.commands.values():
        out |= cli_options(command) if isinstance(command, click.Group) else {
            o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    return out


def loader_options() -> set[str]:
    loaders = (tabular.load_csv, tabular.load_jsonl, tabular.load_json, flavornet.load_flavornet,
               whatscooking.load_whatscooking, synthetic.load_synthetic)
    return {name for f in loaders for name in inspect.signature(f).parameters} - {"path"}


def config_keys() -> set[str]:
    """Every dotted key a run config (or --set) accepts, down to the entries of its tables."""
    keys = {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    keys |= {f"model.{f.name}" for _, entry in MODELS.items() for f in dataclasses.fields(entry.config_class)}
    keys |= {f"loss.{k}" for _, entry in LOSSES.items() for k in entry.defaults()}
    keys |= {f"objectives.weights.{name}" for name in OBJECTIVES.names()}
    return keys | {f"data.options.{name}" for name in loader_options()}


def test_every_hint_names_a_real_option_or_config_key():
    options, keys = cli_options(), config_keys()
    assert {"--set", "--path", "--objective"} <= options and {"loss.k", "model.n_slots"} <= keys
    found = messages()
    assert len(found) > 100  # the scan sees the messages
    bad = []
    for where, text in found:
        bad += [f"{where}: option {o}" for o in OPTION.findall(MLFLOW_COMMAND.sub("", text)) if o not in options]
        bad += [f"{where}: key {k}" for k in KEY.findall(text) if k not in keys | NOT_KEYS]
        bad += [f"{where}: Python argument {a}" for a in PYTHON_FLAG.findall(text)]
    assert not bad, "\n".join(dict.fromkeys(bad))


def _help(*command: str) -> str:
    return ok(*command, "--help").output


def test_loader_hints_are_options_of_the_commands_that_read_data():
    for command in (("train",), ("evaluate",), ("baselines",), ("data", "stats")):
        text = _help(*command)
        assert "--lenient" in text and "--option" in text, command
    # the config keys the hints name validate, and reach the loader
    RunConfig().override({"data.lenient": True, "data.options.ingredients_column": "items",
                          "data.options.verify": False, "data.options.keep_unmapped": True})


def test_following_the_csv_hints_trains(tmp_path, monkeypatch):
    """A CSV whose column is not 'ingredients' and which has a malformed line: each error says what to type, and
    typing it gets the run through."""
    monkeypatch.chdir(tmp_path)
    names = ["tomato", "basil", "garlic", "onion", "egg", "milk", "flour", "rice", "leek", "salt"]
    rows = [f"r{i},{';'.join(names[i % 7: i % 7 + 2 + i % 3])}" for i in range(30)]
    (tmp_path / "r.csv").write_text("id,items\n" + "\n".join(rows[:10] + ["r10,a;b,extra"] + rows[11:]) + "\n")
    run = ["train", "--dataset", "r.csv", "--model", "deep-sets", "--set", "model.d_model=8", "--max-steps", "1",
           "--set", 'eval.tasks=["completion"]', "--no-track", "--no-baselines", "--quiet"]
    one_line_error(invoke(*run), "r.csv:1: no ingredients column", "--option ingredients_column=NAME",
                   "data.options.ingredients_column")
    one_line_error(invoke(*run, "--option", "ingredients_column=items"), "r.csv:12", "--lenient", "data.lenient")
    ok(*run, "--option", "ingredients_column=items", "--lenient", "--out", "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert saved["options"] == {"ingredients_column": "items"} and saved["lenient"] is True
    cfg = RunConfig().override({"data.dataset": "r.csv", "data.lenient": True,
                                "data.options.ingredients_column": "items"})
    assert len(load_table(cfg.data)) == 29
    (tmp_path / "s.csv").write_text("ingredients\negg;milk\nflour;egg\n")
    mixed = RunConfig().override({"data.lenient": True, "data.mix": [
        {"dataset": "r.csv", "options": {"ingredients_column": "items"}}, {"dataset": "s.csv"}]})
    assert len(load_table(mixed.data)) == 31  # each dataset of a mix with its own loader options
    assert len(json.loads(ok("evaluate", "run/model", "--json").output)) > 0  # the saved options read it again


def test_following_the_flavornet_hints(tmp_path):
    fake = str(write_fake_flavornet(tmp_path / "fn"))
    one_line_error(invoke("data", "stats", "flavornet", "--path", fake), "SHA-256 mismatch", "--option verify=false",
                   "data.options.verify")
    report = ok("data", "stats", "flavornet", "--path", fake, "--option", "verify=false").output
    assert "unmapped_cuisine: 1" in report and "--option keep_unmapped=true" in report
    kept = json.loads(ok("data", "stats", "flavornet", "--path", fake, "--option", "verify=false", "--option",
                         "keep_unmapped=true", "--json").output)
    assert kept["unlabelled"] == 1 and kept["recipes"] == 5
    cfg = RunConfig().override({"data.dataset": "flavornet", "data.path": fake, "data.options.verify": False,
                                "data.options.keep_unmapped": True})
    assert len(load_table(cfg.data)) == 5
    one_line_error(invoke("data", "stats", "whatscooking"), "--path", "data.path")
    one_line_error(invoke("data", "stats", "flavornet", "--path", fake, "--option", "verfy=false"), "verfy",
                   "--option", "data.options")

