"""Datasets too degenerate for a run are refused after data preparation and before the first training step, in one
line that says what to change — not after training (an empty 'available:' list of validation metrics, a stop
threshold with nothing to tune on) or by running out of memory (one huge recipe sizing the slot decoder)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from helpers import invoke, ok
from test_cli import one_line_error

TINY = ["--set", "model.d_model=8", "--max-steps", "2", "--set", "eval.max_queries=20", "--no-track",
        "--no-baselines", "--quiet"]


def write_csv(path: Path, recipes: list[list[str]]) -> str:
    path.write_text("ingredients\n" + "\n".join(";".join(r) for r in recipes) + "\n", encoding="utf-8")
    return str(path)


def recipes(n: int, sizes: tuple[int, int], pool: int = 60, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    names = [f"ing{i}" for i in range(pool)]
    return [rng.sample(names, rng.randint(*sizes)) for _ in range(n)]


def refused_before_training(tmp_path: Path, args: list[str], *needles: str) -> str:
    line = one_line_error(invoke("train", *args, *TINY, "--out", str(tmp_path / "run")), *needles)
    assert not any((tmp_path / "run" / d).exists() for d in ("checkpoint", "best", "model"))  # no training step
    return line


def test_recipes_of_one_ingredient(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_csv(tmp_path / "one.csv", recipes(300, (1, 1)))
    for model in ("deep-sets", "decoder"):
        refused_before_training(tmp_path, ["--dataset", data, "--model", model],
                                "one: every recipe has a single ingredient", "recipes of ≥ 2 ingredients")


def test_validation_recipes_the_training_vocabulary_cannot_encode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_csv(tmp_path / "disjoint.csv", [[f"a{i}", f"b{i}"] for i in range(60)])  # no two share a name
    refused_before_training(tmp_path, ["--dataset", data], "validation recipes has an ingredient of the training "
                            "split", "val/loss", "recipes that share ingredients")


def test_too_few_distinct_recipes_for_a_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_csv(tmp_path / "two.csv", [["egg", "milk"]] * 20 + [["rice", "nori", "salmon"]] * 20)
    refused_before_training(tmp_path, ["--dataset", data], "split is empty (40 recipes", "more distinct ones")


def test_recipes_too_small_for_set_completion_and_following_the_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_csv(tmp_path / "small.csv", recipes(300, (2, 3)))
    line = refused_before_training(tmp_path, ["--dataset", data], "eval.tasks: 'set' needs recipes of ≥ 4",
                                   "largest validation recipe of small has 3", "--set eval.tasks=")
    hint = line.split("--set ", 1)[1].split(")", 1)[0]          # eval.tasks='[...]' as printed
    tasks = json.loads(hint.split("=", 1)[1].strip("'"))
    assert "set" not in tasks and "completion" in tasks
    # the hint, as typed (the stop threshold is then left untuned: no validation recipe to tune it on)
    ok("train", "--dataset", data, "--set", f"eval.tasks={json.dumps(tasks)}", *TINY, "--out", "run")
    assert json.loads((tmp_path / "run" / "eval.json").read_text())


def test_one_huge_recipe_does_not_size_the_slot_decoder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = [f"ing{i}" for i in range(600)]
    rng = random.Random(2)
    data = write_csv(tmp_path / "huge.csv", [rng.sample(names, rng.randint(2, 8)) for _ in range(299)]
                     + [names[:500]])  # shares its ingredients: wherever the split puts it, it is encoded
    slots = ["--dataset", data, "--model", "set-transformer", "--loss", "hungarian"]
    refused_before_training(tmp_path, slots, "model.n_slots", "which has 500", "data.max_len", "model.n_slots = 500")
    ok("train", *slots, "--set", "data.max_len=20", *TINY, "--out", "capped")
    saved = json.loads((tmp_path / "capped" / "model" / "config.json").read_text())["config"]
    assert saved["n_slots"] <= 20
    refused_before_training(tmp_path, [*slots, "--set", "data.max_len=20", "--set", "model.n_slots=4"],
                            "model.n_slots=4 is smaller than the largest recipe", "data.max_len = 4")
    refused_before_training(tmp_path, ["--dataset", data, "--model", "decoder", "--set", "data.max_len=20", "--set",
                                       "model.positions=true", "--set", "model.max_len=6"],
                            "model.max_len=6 is shorter than the largest recipe", "data.max_len = 5")
