"""RecipeTable: normalisation, cleaning report, describe, encode, subset (tiny hand cases + real flavornet)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from recipeset.data.table import CleaningReport, RecipeTable, combined_sha256, normalize_ingredient
from recipeset.data.vocab import NUM_SPECIALS, UNK, UnknownIngredientError, Vocabulary
from recipeset.errors import RecipesetError

FLAVORNET = Path(os.environ.get("RECIPESET_FLAVORNET_DIR") or "/work/shared/data/flavornet")
needs_flavornet = pytest.mark.skipif(not (FLAVORNET / "allr_recipes.txt").is_file(),
                                     reason="flavornet files not available")


def tiny() -> RecipeTable:
    return RecipeTable.from_records(
        [["Tomato", " basil ", "tomato"], [], ["Olive  Oil", "garlic"], ["garlic", "basil"], ["saffron"]],
        cuisines=["Italian", "Italian", None, "Italian", "Spanish"], name="tiny")


def test_normalize_ingredient():
    assert normalize_ingredient("  Soy Sauce ") == "soy_sauce"
    assert normalize_ingredient("Extra\tVirgin  Olive oil") == "extra_virgin_olive_oil"
    assert normalize_ingredient("garlic") == "garlic"
    assert normalize_ingredient("   ") == ""


def test_from_records_normalises_and_ids():
    t = tiny()
    assert len(t) == 5
    assert t.recipe_ids == [f"tiny:{i}" for i in range(5)]
    assert t.ingredients[0] == ["tomato", "basil", "tomato"]  # not deduplicated until clean()
    assert t.ingredients[2] == ["olive_oil", "garlic"]
    assert t.cuisines == ["Italian", "Italian", None, "Italian", "Spanish"]


def test_duplicate_recipe_ids_rejected():
    with pytest.raises(RecipesetError, match="duplicate recipe id 'a'"):
        RecipeTable.from_records([["x"], ["y"]], recipe_ids=["a", "a"])


def test_clean_dedupes_drops_empty_and_reports():
    t = tiny().clean()
    assert len(t) == 4
    assert t.ingredients[0] == ["tomato", "basil"]
    assert t.recipe_ids == ["tiny:0", "tiny:2", "tiny:3", "tiny:4"]
    r = t.report
    assert r.count("duplicate_ingredients") == 1
    assert r.count("empty_recipes") == 1
    assert r["empty_recipes"].examples == ["tiny:1"]
    d = r.to_dict()
    assert set(d) == {"duplicate_ingredients", "empty_recipes"}
    assert all(isinstance(v["reason"], str) and v["reason"] for v in d.values())
    text = str(r)
    assert "duplicate_ingredients: 1" in text and "empty_recipes: 1" in text
    # cleaning never mutates the original table
    assert len(tiny()) == 5


def test_clean_min_count_and_emptied_recipes():
    t = tiny().clean(min_count=2)
    # counts after dedupe: tomato 1, basil 2, olive_oil 1, garlic 2, saffron 1
    assert t.ingredients == [["basil"], ["garlic"], ["garlic", "basil"]]
    r = t.report
    assert r.count("rare_ingredients") == 3
    assert r["rare_ingredients"].examples == ["olive_oil", "saffron", "tomato"]
    assert r.count("recipes_emptied_by_min_count") == 1
    assert r.count("empty_recipes") == 2  # the originally empty one + saffron
    with pytest.raises(RecipesetError, match="min_count"):
        tiny().clean(min_count=0)


def test_clean_is_idempotent_and_report_accumulates():
    once = tiny().clean()
    twice = once.clean()
    assert twice.ingredients == once.ingredients
    assert twice.report.to_dict() == once.report.to_dict()


def test_map_cuisines_drop_or_keep():
    t = tiny().clean()
    dropped = t.map_cuisines({"Italian": "SouthernEuropean"})
    assert dropped.cuisines == ["SouthernEuropean", None, "SouthernEuropean"]  # None stays None
    assert dropped.report.count("unmapped_cuisine") == 1
    assert dropped.report["unmapped_cuisine"].examples == ["Spanish"]
    kept = t.map_cuisines({"Italian": "SouthernEuropean", "Spanish": None}, keep_unmapped=True)
    assert len(kept) == 4 and kept.cuisines[-1] is None
    assert "kept with cuisine None" in kept.report["unmapped_cuisine"].reason


def test_describe_hand_computed():
    d = tiny().clean().describe()
    assert (d["recipes"], d["ingredients"], d["cuisines"], d["unlabelled"]) == (4, 5, 2, 1)
    assert d["set_size"] == {"min": 1, "mean": 1.75, "median": 2.0, "max": 2, "histogram": {"1": 1, "2": 3}}
    assert d["per_cuisine"] == {"Italian": 2, "Spanish": 1}
    assert d["top_ingredients"][:2] == [["basil", 2], ["garlic", 2]]
    assert d["cleaning"]["empty_recipes"]["count"] == 1
    import json

    json.dumps(d)  # serialisable


def test_encode_matches_vocab_encode_one_by_one():
    t = tiny().clean()
    vocab = Vocabulary.build(t.ingredients, t.cuisines)
    enc = t.encode(vocab)
    assert len(enc) == len(t)
    for i, r in enumerate(t.ingredients):
        assert enc[i].tolist() == vocab.encode(r)
    assert enc.cuisine.tolist() == [vocab.cuisine_id("Italian"), -1, vocab.cuisine_id("Italian"),
                                    vocab.cuisine_id("Spanish")]
    assert enc.values.min() >= NUM_SPECIALS


def test_encode_unknown_modes():
    t = tiny().clean()
    vocab = Vocabulary(["basil", "garlic", "tomato"], ["Italian"])
    with pytest.raises(UnknownIngredientError, match="tiny recipe tiny:2: unknown ingredient 'olive_oil'"):
        t.encode(vocab)
    skip = t.encode(vocab, unknown="skip")
    assert skip.to_lists() == [vocab.encode(["tomato", "basil"]), vocab.encode(["garlic"]),
                               vocab.encode(["garlic", "basil"]), []]  # rows stay aligned
    assert skip.cuisine.tolist() == [0, -1, 0, -1]  # unknown cuisine -> -1 outside strict mode
    unk = t.encode(vocab, unknown="unk")
    assert unk[1].tolist() == [UNK, vocab.id("garlic")]
    with pytest.raises(RecipesetError, match="unknown must be"):
        t.encode(vocab, unknown="drop")


def test_encode_strict_unknown_cuisine():
    t = RecipeTable.from_records([["basil"]], cuisines=["Martian"])
    with pytest.raises(RecipesetError, match="unknown cuisine 'Martian'"):
        t.encode(Vocabulary(["basil"], ["Italian"]))


def test_subset_keeps_lineage():
    t = RecipeTable.from_records([["a"], ["b"], ["c"]], name="x", sha256="abc", source_path="/p")
    s = t.subset([2, 0])
    assert s.recipe_ids == ["x:2", "x:0"]
    assert (s.name, s.sha256, s.source_path) == ("x", "abc", "/p")
    assert list(s.frame.index) == [0, 1]
    with pytest.raises(IndexError):
        t.subset([3])


def test_report_merge_and_zero_counts():
    a = CleaningReport()
    a.add("x", 0, "nothing")
    assert len(a) == 0 and str(a) == "cleaning: nothing dropped"
    a.add("x", 2, "why", ["e1"])
    b = CleaningReport()
    b.add("x", 3, "why", ["e2"])
    b.add("y", 1, "other")
    m = a.merged(b)
    assert m.count("x") == 5 and m["x"].examples == ["e1", "e2"] and m.count("y") == 1


def test_combined_sha256_order_independent():
    assert combined_sha256({"a": "1", "b": "2"}) == combined_sha256({"b": "2", "a": "1"})
    assert combined_sha256({"a": "1"}) != combined_sha256({"a": "2"})


@needs_flavornet
def test_flavornet_describe_matches_paper():
    from recipeset.data.sources.flavornet import load_flavornet

    t = load_flavornet(FLAVORNET)
    d = t.describe()
    assert (d["recipes"], d["ingredients"], d["cuisines"], d["unlabelled"]) == (56498, 381, 11, 0)
    assert d["per_cuisine"]["NorthAmerican"] == 41524 and d["per_cuisine"]["NorthernEuropean"] == 250
    assert (d["set_size"]["min"], d["set_size"]["max"]) == (1, 32)
    assert abs(d["set_size"]["mean"] - 8.22) < 0.01
    assert d["cleaning"]["unmapped_cuisine"]["count"] == 1193
    assert "duplicate_ingredients" not in d["cleaning"]
    vocab = Vocabulary.build(t.ingredients, t.cuisines)
    enc = t.encode(vocab)
    assert len(enc) == 56498 and enc.cuisine.min() >= 0
    assert np.array_equal(enc.lengths, t.frame["ingredients"].map(len).to_numpy())
