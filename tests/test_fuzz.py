"""Fuzzing (hypothesis) of everything a user hands recipeset: every dataset loader (flavornet, CSV, JSON Lines,
JSON, What's Cooking, the synthetic generator's parameters and spec), run configs (TOML/JSON files,
``RunConfig.from_dict``/``override``) and the command line (``data stats``, ``train --set/--objective/--config``).

The property everywhere: whatever the input — random bytes, random lines, a valid file mutated (truncated,
separators swapped, unicode, empty fields, huge numbers, NaN/inf, wrong types, unknown keys, nested tables) — the
result is a valid one or a :class:`RecipesetError` whose message is ONE line naming the file (and line) or the
key; never another exception. Through the CLI: exit 0, or 1/2 with one ``Error:`` line on stderr, no traceback.

``RECIPESET_FUZZ_EXAMPLES`` sets the examples per property (default 60; e.g. 2000 for a long hunt).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import invoke
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from recipeset.config import RunConfig, bucket_pool_for, load_config, pack_for, resolve_objectives
from recipeset.data.sources import load_dataset
from recipeset.data.sources import tabular as tabular_module
from recipeset.data.sources.flavornet import COMPOUND_FILES, REQUIRED, flavornet_compound_features, load_flavornet
from recipeset.data.table import RecipeTable, normalize_ingredient
from recipeset.data.vocab import Vocabulary
from recipeset.errors import RecipesetError
from recipeset.experiments import load_experiment
from recipeset.pipeline import RunResult
from recipeset.registry import EVAL_TASKS, LOSSES, MODELS, OBJECTIVES, ORDERS

EXAMPLES = int(os.environ.get("RECIPESET_FUZZ_EXAMPLES", "60"))
fuzz = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in ("RECIPESET_FLAVORNET_DIR", "RECIPESET_DATA_DIR", "RECIPESET_FLAVORNET_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


# ---- the property ------------------------------------------------------------------------------------------
def outcome(fn: Callable[[], Any], *names: str) -> Any:
    """``fn()``, or None when it raised a RecipesetError of one line that names one of ``names``; any other
    exception fails the test."""
    try:
        result = fn()
    except RecipesetError as e:
        msg = str(e)
        assert msg.strip() and len(msg.splitlines()) == 1 and "\n" not in msg, repr(msg)
        assert any(n in msg for n in names), (names, msg)
        event("RecipesetError")  # --hypothesis-show-statistics: how often each outcome was reached
        return None
    event("valid")
    return result


def cli_outcome(result, *names: str) -> None:
    """A command: exit 0, or 1/2 with one ``Error:`` line on stderr (naming one of ``names``), no traceback."""
    assert "Traceback" not in result.output, result.output
    event(f"exit {result.exit_code}")
    if result.exit_code == 0:
        assert result.exception is None
        return
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), \
        (result.exit_code, repr(result.exception), result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert not names or any(n in lines[0] for n in names), (names, lines[0])


def check_table(t: RecipeTable) -> None:
    """A loader's result: unique ids, non-empty recipes of distinct normalised names, stripped cuisines."""
    assert isinstance(t, RecipeTable)
    ids = t.recipe_ids
    assert len(set(ids)) == len(ids) and all(isinstance(r, str) and r for r in ids)
    for names in t.ingredients:
        assert names and len(set(names)) == len(names)
        assert all(n and n == normalize_ingredient(n) for n in names), names
    assert all(c is None or (c and c == c.strip()) for c in t.cuisines)
    json.dumps(t.describe())  # what `data stats --json` prints


def check_config(cfg: RunConfig) -> None:
    """A validated config: everything a run does with it before training works, and it survives its own
    round trips (dict, config.json)."""
    assert isinstance(cfg, RunConfig)
    assert len(cfg.config_hash()) == 64
    json.dumps(cfg.flatten(), allow_nan=False)  # MLflow params
    resolve_objectives(cfg), bucket_pool_for(cfg), pack_for(cfg)
    np.random.default_rng([cfg.train.seed, cfg.eval.seed, cfg.data.split_seed])  # what the seeds are given to
    torch.Generator().manual_seed(cfg.train.seed)
    assert RunConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    with tempfile.TemporaryDirectory() as d:
        cfg.save(Path(d) / "config.json")
        assert load_config(Path(d) / "config.json").to_dict() == cfg.to_dict()


# ---- text: random and mutated ------------------------------------------------------------------------------
ODD_CHARS = list(",;\t|\"'{}[]:#=\\ .-+e0123456789") + ["\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029",
                                                          "\ufeff", "\u200b", "\xa0", "é", "ß", "北", "🍅", "\r"]
chars = st.sampled_from(ODD_CHARS) | st.characters(codec="utf-8") | st.sampled_from(list("abcxyzAB _"))
cell = st.text(chars, max_size=10)
newline = st.sampled_from(["\n", "\r\n", "\r"])
SNIPPETS = ["", "\x00", "é", "\u2028", "\x85", '"', "'", "\t", "\t\t", ",,", ";;", "\n", "\r", "\r\n", "\ufeff",
            "NaN", "nan", "Infinity", "-Infinity", "inf", "1e999", "-0", "9" * 30, "9" * 5000, "null", "true", "[]",
            "{}", "[" * 3000, "{" * 20, "[[1]]", '{"a": {"b": []}}', "#", "=", "[x]", "[[x]]", '"\\u0000"', " = 1"]


@st.composite
def mutated(draw, text: str) -> str:
    """``text`` after 1–3 edits: truncated, a slice deleted or duplicated, a separator swapped, a snippet
    (unicode, huge number, NaN/inf, brackets, empty field) inserted or put in place of a slice."""
    for _ in range(draw(st.integers(1, 3))):
        n = len(text)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, n))
        op = draw(st.sampled_from(["truncate", "delete", "duplicate", "swap", "insert", "replace"]))
        if op == "truncate":
            text = text[:i]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "swap":
            a, b = draw(st.sampled_from([(",", ";"), (";", ","), ("\t", ","), (",", "\t"), ("\n", "\r"),
                                         ("=", ":"), ('"', "'"), ("[", "{"), ("]", "}"), (".", "\u2028")]))
            text = text.replace(a, b, draw(st.integers(1, 3)))
        else:
            snippet = draw(st.sampled_from(SNIPPETS) | cell)
            text = text[:i] + snippet + (text[i:] if op == "insert" else text[j:])
    return text


def lines_of(line: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda ls, nl: nl.join(ls), st.lists(line, max_size=8), newline)


def contents(valid: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """A file's bytes: a valid file, a mutated valid file (each a third of the time), random lines or bytes."""
    text = st.one_of(valid, valid.flatmap(mutated), lines_of(cell), lines_of(st.text(chars, max_size=40)))
    return st.one_of(text, text, st.binary(max_size=300)).map(lambda s: s if isinstance(s, bytes) else s.encode())


# ---- valid files -------------------------------------------------------------------------------------------
name = st.text(st.sampled_from(list("abcdefgh _-éA")), min_size=1, max_size=8)
names_list = st.lists(name, max_size=5)


@st.composite
def csv_text(draw) -> str:
    cols = draw(st.permutations(["ingredients", "cuisine", "id", "extra"]).map(lambda c: c[:draw(st.integers(1, 4))]))
    if "ingredients" not in cols:
        cols = ["ingredients", *cols]
    rows = [",".join(cols)]
    for i in range(draw(st.integers(0, 6))):
        cells = {"ingredients": ";".join(draw(names_list)), "cuisine": draw(name), "id": str(i),
                 "extra": draw(st.sampled_from(["", "x", "1"]))}
        rows.append(",".join(cells[c] for c in cols))
    return "\n".join(rows) + draw(st.sampled_from(["", "\n", "\r\n"]))


leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.integers(-(10**40), 10**40),
                 st.sampled_from([2**63, 2**64, -(2**63) - 1]), st.floats(), cell)
json_value = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(cell, c, max_size=3), max_leaves=6)
good_record = st.fixed_dictionaries({"ingredients": names_list | names_list.map(";".join)},
                                    optional={"cuisine": name, "id": st.integers(0, 10**6), "other": json_value})
record = good_record | st.fixed_dictionaries({}, optional={
    "ingredients": st.one_of(names_list, names_list.map(";".join), json_value),
    "cuisine": name | json_value, "id": st.integers(0, 5).map(str) | json_value, "other": json_value})


def json_dumps(value: Any) -> str:
    """JSON with NaN / Infinity as the extensions json reads back; a value holding an int too long for str() as
    a 5000-digit number."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except ValueError:
        return "9" * 5000


jsonl_text = st.lists(st.one_of(good_record, good_record, record, json_value), max_size=6) \
    .map(lambda rs: "\n".join(map(json_dumps, rs)))
json_text = st.one_of(st.lists(good_record, max_size=6), st.lists(record, max_size=6), json_value).map(json_dumps)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


SEPARATORS = st.sampled_from([",", ";", "|", "\t", " ", "", ",,", "ab", "\n", '"', "é", "\x00"]) | cell
loader_options = st.just({}) | st.fixed_dictionaries({}, optional={
    "ingredients_column": st.sampled_from(["ingredients", "id", ""]) | cell, "delimiter": SEPARATORS,
    "cuisine_column": st.none() | st.sampled_from(["cuisine", "id", "nope"]) | cell,
    "id_column": st.none() | st.sampled_from(["id", "cuisine", "nope"]) | cell})


# ---- loaders -----------------------------------------------------------------------------------------------
@fuzz
@given(data=contents(csv_text()), lenient=st.booleans())
@example(data=b"\x00\x0b\x00", lenient=False)  # found: a header of control characters gave a two-line message
def test_csv_any_bytes(tmp_path, data, lenient):
    p = write(tmp_path / "r.csv", data)
    t = outcome(lambda: load_dataset(p, lenient=lenient), "r.csv")
    if t is not None:
        check_table(t)


@fuzz
@given(data=contents(csv_text()), options=loader_options, sep=SEPARATORS, lenient=st.booleans())
@example(data=b"ingredients\na;b\n", options={"delimiter": ""}, sep=",", lenient=False)  # found: ValueError
@example(data=b"ingredients\na;b\n", options={}, sep=",,", lenient=False)  # found: TypeError from the csv module
@example(data=b"ingredients\na;b\n", options={"ingredients_column": ["x"]}, sep=",", lenient=False)  # TypeError
def test_csv_options(tmp_path, data, options, sep, lenient):
    p = write(tmp_path / "r.csv", data)
    t = outcome(lambda: load_dataset(p, sep=sep, lenient=lenient, **options), "r.csv")
    if t is not None:
        check_table(t)


@fuzz
@given(data=contents(csv_text()), options=loader_options, lenient=st.booleans())
def test_csv_fast_path_equals_csv_module(tmp_path, monkeypatch, data, options, lenient):
    """The pyarrow parser and the csv module give the same recipes, report and errors on any input."""
    p = write(tmp_path / "r.csv", data)

    def load() -> tuple:
        try:
            t = load_dataset(p, lenient=lenient, **options)
        except RecipesetError as e:
            return ("error", str(e))
        return (t.recipe_ids, t.ingredients, t.cuisines, t.report.to_dict())

    fast = load()
    with monkeypatch.context() as m:
        m.setattr(tabular_module, "_is_simple_csv", lambda *a: False)
        slow = load()
    assert fast == slow


@fuzz
@given(data=contents(jsonl_text), options=loader_options, lenient=st.booleans())
@example(data=b'{"ingredients": ["a"], "id": ' + b"9" * 5000 + b"}", options={"id_column": "id"}, lenient=False)
@example(data=b'{"ingredients": ["a"]}\n' + b"[" * 100000, options={}, lenient=True)  # found: RecursionError
def test_jsonl_any_bytes(tmp_path, data, options, lenient):
    p = write(tmp_path / "r.jsonl", data)
    t = outcome(lambda: load_dataset(p, lenient=lenient, **options), "r.jsonl")
    if t is not None:
        check_table(t)


@fuzz
@given(data=contents(json_text), lenient=st.booleans(), whatscooking=st.booleans())
@example(data=b'[{"ingredients": ["a"], "cuisine": ' + b"9" * 5000 + b"}]", lenient=False, whatscooking=True)
@example(data=b"[" * 100000, lenient=False, whatscooking=False)  # found: RecursionError
def test_json_and_whatscooking_any_bytes(tmp_path, data, lenient, whatscooking):
    p = write(tmp_path / "train.json", data)
    load = (lambda: load_dataset("whatscooking", path=p, lenient=lenient)) if whatscooking else \
        (lambda: load_dataset(p, lenient=lenient, id_column="id"))
    t = outcome(load, "train.json")
    if t is not None:
        check_table(t)


@st.composite
def flavornet_recipes(draw) -> str:
    return "\n".join("\t".join([draw(st.sampled_from(["Italy", "Canada", "Asian", "korean"]) | name),
                                *draw(names_list)]) for _ in range(draw(st.integers(0, 5))))


flavornet_map = st.lists(st.tuples(st.sampled_from(["Italy", "Canada", "Asian", "korean"]) | name,
                                   st.sampled_from(["", "SouthernEuropean", "EastAsian"]) | name), max_size=5) \
    .map(lambda rows: "\n".join(f"{a}\t{b}" for a, b in rows))


def one_replaced(valid: list[st.SearchStrategy[str]], any_bytes: list[st.SearchStrategy[bytes]]):
    """Valid files, the i-th of them (sometimes) replaced by any content."""
    return st.tuples(st.tuples(*(v.map(str.encode) for v in valid)), st.integers(0, len(valid)),
                     st.tuples(*any_bytes)).map(lambda t: [t[2][i] if i == t[1] else f for i, f in enumerate(t[0])])


@fuzz
@given(files=one_replaced([flavornet_recipes()] * 3 + [flavornet_map],
                          [contents(flavornet_recipes())] * 3 + [contents(flavornet_map)]),
       lenient=st.booleans(), keep_unmapped=st.booleans())
def test_flavornet_any_files(tmp_path, files, lenient, keep_unmapped):
    d = tmp_path / "fn"
    d.mkdir(exist_ok=True)
    for file, data in zip(REQUIRED, files, strict=True):
        write(d / file, data)
    t = outcome(lambda: load_flavornet(d, lenient=lenient, keep_unmapped=keep_unmapped, verify=False),
                *REQUIRED, "fn")
    if t is not None:
        check_table(t)
    outcome(lambda: load_flavornet(d), *REQUIRED)  # verified: never the pinned files


def tsv(n_fields: int) -> st.SearchStrategy[str]:
    row = st.lists(st.integers(0, 4).map(str) | name, min_size=n_fields, max_size=n_fields).map("\t".join)
    return st.lists(row, max_size=5).map(lambda rows: "\n".join(["# header", *rows]))


@fuzz
@given(files=one_replaced([tsv(3), tsv(3), tsv(2)], [contents(tsv(3)), contents(tsv(3)), contents(tsv(2))]))
def test_flavornet_compound_files_any_bytes(tmp_path, files):
    d = tmp_path / "fn"
    d.mkdir(exist_ok=True)
    for file, data in zip(COMPOUND_FILES, files, strict=True):
        write(d / file, data)
    features = outcome(lambda: flavornet_compound_features(Vocabulary(["a", "b", "egg"]), d), *COMPOUND_FILES)
    assert features is None or features.shape[0] == len(Vocabulary(["a", "b", "egg"]))


WRONG = st.one_of(st.none(), st.booleans(), st.floats(), cell, st.lists(st.integers(), max_size=2),
                  st.sampled_from([10**12, 10**30, 2**64, -1, 0, 1.5]))


@fuzz
@given(params=st.tuples(st.integers(1, 200), st.integers(0, 10**30), st.booleans())
       | st.tuples(st.integers(1, 200) | WRONG, st.integers(0, 10**30) | WRONG, st.booleans() | WRONG))
@example(params=(10**30, 0, False))  # found: ValueError (numpy's maximum dimension)
@example(params=(10**12, 0, False))  # found: MemoryError (116 TiB)
@example(params=(5, 0, "no"))  # found: a string taken for true (ordered mode)
def test_synthetic_parameters(params):
    n_recipes, seed, ordered = params
    t = outcome(lambda: load_dataset("synthetic", n_recipes=n_recipes, seed=seed, ordered=ordered), "synthetic")
    if t is not None:
        check_table(t)
        assert len(t) == n_recipes


SPEC = """description = "two cuisines"
[cuisines.a]
prior = 0.6
[cuisines.a.templates.t1]
title = "T1"
weight = 2
steps = ["salt", { basil = 0.5 }, { butter = 0.6, olive_oil = 0.4 }]
[cuisines.b]
prior = 0.4
[cuisines.b.templates.t2]
weight = 1.5
steps = ["rice", { nori = 0.25, salmon = 0.3 }]
"""


@fuzz
@given(data=contents(st.just(SPEC)))
@example(data=SPEC.replace("weight = 2", "weight = " + "9" * 5000).encode())  # found: ValueError (int digits)
@example(data=SPEC.replace('"rice"', "[" * 5000 + "]" * 5000).encode())  # found: RecursionError
def test_synthetic_spec_file_any_bytes(tmp_path, data):
    p = write(tmp_path / "spec.toml", data)
    t = outcome(lambda: load_dataset("synthetic", path=p, n_recipes=30), "spec.toml")
    if t is not None:
        check_table(t)


# ---- run configs -------------------------------------------------------------------------------------------
def _config_defaults() -> dict[str, Any]:
    """Every dotted key a config may hold (run config fields, each model's and loss's parameters, objective
    weights), with its default."""
    keys = RunConfig().flatten()
    for _, model_cls in MODELS.items():
        keys |= {f"model.{k}": v for k, v in dataclasses.asdict(model_cls.config_class()).items()}
    for _, entry in LOSSES.items():
        keys |= {f"loss.{k}": v for k, v in entry.defaults().items()}
    return keys | {f"objectives.weights.{n}": 1.0 for n in OBJECTIVES.names()}


CONFIG_DEFAULTS = _config_defaults()
CONFIG_KEYS = sorted(CONFIG_DEFAULTS) + [
    "data.mix", "data.options", "data.options.delimiter", "objectives.weights", "model.params",
    "model.params.d_model", "train.lr.x", "nosection.x", "train", "train.", ".lr", "train..lr", "train.nolr",
    "data.mix.x", "trian.lr", "model.name.x"]
NAMES = [*MODELS.names(), *LOSSES.names(), *OBJECTIVES.names(), *ORDERS.names(), *EVAL_TASKS.names(),
         "synthetic", "flavornet", "r.csv", "auto", "cpu", "cuda:0", "cosine", "balanced", "all", "", " "]


def typed(default: Any) -> st.SearchStrategy:
    """Values of the default's type, mostly in range (so that many configs validate and go further)."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(0, 2 * max(default, 4)) | st.integers(-2, 2)
    if isinstance(default, float):
        return st.floats(0, max(2 * default, 1)) | st.sampled_from([0.0, 0.5, 1.0])
    if isinstance(default, str):
        return st.just(default) | st.sampled_from(NAMES)
    if isinstance(default, list | tuple):
        return st.just(default) | st.lists(st.sampled_from(NAMES), max_size=3) | st.lists(st.floats(-1, 1), max_size=3)
    if isinstance(default, dict):
        return st.dictionaries(st.sampled_from(OBJECTIVES.names()), st.floats(0, 2), max_size=2)
    return st.none() | st.integers(1, 64) | st.floats(0, 1) | st.sampled_from(NAMES)  # None: the type is unknown


config_leaf = st.one_of(leaf, st.sampled_from(NAMES), st.integers(0, 3).map(str),
                        st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -0.0, 0.5, 1e-300]),
                        st.builds(pow, st.just(10), st.just(4400)))  # too long for repr()/str()
config_value = st.recursive(config_leaf, lambda c: st.lists(c, max_size=3)
                            | st.dictionaries(st.sampled_from(["dataset", "path", "weight", "clm", "cls", "mlm"])
                                              | cell, c, max_size=3), max_leaves=5)
dotted = st.sampled_from(CONFIG_KEYS) | st.text(st.sampled_from(list("abtrain.xl\n")), max_size=10)
typed_entry = st.sampled_from(sorted(CONFIG_DEFAULTS)).flatmap(lambda k: st.tuples(st.just(k),
                                                                                   typed(CONFIG_DEFAULTS[k])))
entry = st.one_of(typed_entry, typed_entry, st.tuples(st.just("model.name"), st.sampled_from(MODELS.names())),
                  st.tuples(dotted, config_value))
overrides = st.lists(entry, max_size=4).map(dict)


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested tables (``{"train.lr": 1}`` -> ``{"train": {"lr": 1}}``), collisions kept as is."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[last] = value
    return out


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else "inf" if v == math.inf else "-inf" if v == -math.inf else repr(v)
    if isinstance(v, int):
        return str(v) if v.bit_length() < 14000 else "9" * 5000
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    return '""'


def to_toml(d: dict[str, Any]) -> str:
    """A small TOML writer for the tests (None values dropped: TOML has no null)."""
    top = [f"{toml_value(k)} = {toml_value(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    tables = [f"[{toml_value(k)}]\n" + "\n".join(f"{toml_value(str(kk))} = {toml_value(vv)}"
                                                  for kk, vv in v.items() if vv is not None)
              for k, v in d.items() if isinstance(v, dict)]
    return "\n".join(top + tables) + "\n"


config_text = overrides.map(lambda o: to_toml(nested(o)))


@fuzz
@given(data=contents(config_text), suffix=st.sampled_from([".toml", ".json"]))
@example(data=b"[train]\nlr = inf\n", suffix=".toml")  # found: config_hash's ValueError (inf is not JSON)
@example(data=b"[train]\nepochs = " + b"9" * 5000 + b"\n", suffix=".toml")  # found: ValueError (int digits)
@example(data=b"[train]\nlr = " + b"[" * 5000 + b"\n", suffix=".toml")  # found: RecursionError
@example(data=b'{"train": {"seed": 18446744073709551616}}', suffix=".json")  # found: torch's seed overflow
@example(data=b'[train]\n"a\\nb" = 1\n', suffix=".toml")  # found: a key with a line break, a two-line message
def test_config_file_any_bytes(tmp_path, data, suffix):
    p = write(tmp_path / f"run{suffix}", data)
    cfg = outcome(lambda: load_config(p), f"run{suffix}")
    if cfg is not None:
        check_config(cfg)


@fuzz
@given(sections=st.dictionaries(st.sampled_from(["data", "model", "loss", "objectives", "train", "eval",
                                                 "tracking", "nope"]) | cell, config_value | overrides.map(nested),
                                max_size=4),
       flat=overrides)
def test_config_from_dict_any_structure(sections, flat):
    cfg = outcome(lambda: RunConfig.from_dict(sections | nested(flat)), "config")
    if cfg is not None:
        check_config(cfg)


@fuzz
@given(flat=overrides)
@example(flat={"eval.tasks": [["completion"]]})  # found: TypeError (unhashable name)
@example(flat={"model.cuisine_offsets": [0.5]})  # found: KeyError (tuple fields)
@example(flat={"objectives.weights.clm": math.inf})  # found: config_hash's ValueError
@example(flat={"data.mix": [{"dataset": "synthetic", "weight": math.inf}]})  # found: config_hash's ValueError
@example(flat={"train.batch_size": 10**4400})  # found: ValueError from repr() in the message
@example(flat={"data.split_seed": -1})  # found: numpy's ValueError when the split is drawn
@example(flat={"data.options": {"delimiter": math.nan}})  # found: config_hash's ValueError (NaN is not JSON)
def test_config_override_any_values(flat):
    cfg = outcome(lambda: RunConfig().override(flat), "overrides")
    if cfg is not None:
        check_config(cfg)


# ---- the command line --------------------------------------------------------------------------------------
LOADER_OPTIONS = ["delimiter", "sep", "ingredients_column", "id_column", "cuisine_column", "verify", "keep_unmapped",
                  "lenient", "n_recipes", "seed", "ordered"]
option_args = st.lists(st.tuples(st.sampled_from(LOADER_OPTIONS) | cell,
                                 st.sampled_from([";", ",", "id", "cuisine", "true", "5", "-1", *SNIPPETS]) | cell)
                       .map(lambda p: f"--option={p[0]}={p[1]}") | st.sampled_from(["--option=x", "--option="]),
                       max_size=2)


FILES = {"r.csv": csv_text(), "r.jsonl": jsonl_text, "r.json": json_text, "whatscooking": json_text,
         "synthetic": st.just(SPEC)}


@fuzz
@given(kind_data=st.sampled_from(sorted(FILES)).flatmap(lambda k: st.tuples(st.just(k), contents(FILES[k]))),
       lenient=st.booleans(), as_json=st.booleans(), options=st.just([]) | option_args)
@example(kind_data=("r.csv", b"ingredients\na;b\n"), lenient=False, as_json=False, options=["--option=delimiter="])
@example(kind_data=("synthetic", SPEC.encode()), lenient=False, as_json=False,
         options=["--option=lenient=;"])  # found: TypeError (lenient given twice), and "no" taken as true
@example(kind_data=("r.csv", b"ingredients\na;b\n"), lenient=False, as_json=False,
         options=["--option=path=x.csv"])  # found: TypeError (path given twice)
def test_cli_data_stats_any_file(tmp_path, kind_data, lenient, as_json, options):
    kind, data = kind_data
    if kind in ("whatscooking", "synthetic"):
        p = write(tmp_path / ("w.json" if kind == "whatscooking" else "spec.toml"), data)
        args = ["data", "stats", kind, "--path", str(p)]
    else:
        p = write(tmp_path / kind, data)
        args = ["data", "stats", str(p)]
    result = invoke(*args, *(["--lenient"] if lenient else []), *(["--json"] if as_json else []), *options)
    cli_outcome(result, p.name, kind, "--option")


@pytest.fixture
def trains(monkeypatch):
    """``recipeset train`` up to the run itself: run_training only checks the validated config it is given."""
    seen: list[RunConfig] = []

    def run_training(cfg, **kw):
        check_config(cfg)
        seen.append(cfg)
        return RunResult(out_dir=Path("runs/x"), run_id=None, model_dir=Path("runs/x/model"))

    monkeypatch.setattr("recipeset.pipeline.run_training", run_training)
    return seen


def _set_arg(pair: tuple[str, Any]) -> str:
    key, value = pair
    return f"--set={key}={value}" if isinstance(value, str) else f"--set={key}={json_dumps(value)}"


set_args = st.lists(st.one_of(entry.map(_set_arg), st.tuples(dotted, cell | st.sampled_from(SNIPPETS)).map(_set_arg),
                              st.sampled_from(["--set=train.lr", "--set==1", "--set=", "--set=train.lr=1=2"])),
                    max_size=4)
objective_args = st.lists(st.tuples(st.sampled_from(OBJECTIVES.names()) | cell,
                                    st.sampled_from(["", "=1", "=0.5", "=nan", "=inf", "=-1", "=x", "=1e999", "=0"]))
                          .map(lambda p: f"--objective={p[0]}{p[1]}"), max_size=2)
int_args = st.lists(st.tuples(st.sampled_from(["--epochs", "--max-steps", "--seed"]),
                              st.sampled_from(["1", "0", "-1", "x", "1.5", "", str(2**64), "9" * 5000]))
                    .map(lambda p: f"{p[0]}={p[1]}"), max_size=2)


@fuzz
@given(sets=set_args, objectives=objective_args, ints=int_args, options=st.just([]) | option_args)
@example(sets=[], objectives=[], ints=["--epochs=x"], options=[])  # found: click's usage block, four lines
@example(sets=["--set=train.epochs=" + "9" * 5000], objectives=[], ints=[], options=[])  # found: ValueError
@example(sets=[], objectives=["--objective=clm=inf"], ints=[], options=[])  # found: config_hash's ValueError
@example(sets=[], objectives=[], ints=["--seed=18446744073709551616"], options=[])  # found: torch's seed overflow
@example(sets=[], objectives=[], ints=[], options=["--option=delimiter=NaN"])  # found: config_hash's ValueError
def test_cli_train_options(trains, sets, objectives, ints, options):
    result = invoke("train", "--no-track", "--json", *sets, *objectives, *ints, *options)
    cli_outcome(result)
    assert result.exit_code != 0 or trains


@fuzz
@given(data=contents(config_text), sets=set_args)
def test_cli_train_config_file(tmp_path, trains, data, sets):
    p = write(tmp_path / "run.toml", data)
    cli_outcome(invoke("train", "--no-track", "--json", "--config", str(p), *sets))


EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.toml"))


@fuzz
@given(data=contents(st.sampled_from(EXPERIMENTS).map(lambda p: p.read_text(encoding="utf-8"))))
def test_experiment_file_any_bytes(tmp_path, data):
    """The project's own experiment files (grids of run configs), mutated."""
    p = write(tmp_path / "exp.toml", data)
    outcome(lambda: load_experiment(p), "exp.toml")
