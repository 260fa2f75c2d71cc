"""Loaders: flavornet (real files when present), download (file:// and loopback HTTP only — never the
internet), What's Cooking, CSV/JSONL/JSON, bad input, load_dataset dispatch and the data CLI."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import socket
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from recipeset.cli import cli
from recipeset.data.sources import load_dataset
from recipeset.data.sources.flavornet import (
    COMPOUND_FILES,
    REQUIRED,
    download_flavornet,
    flavornet_compound_features,
    load_flavornet,
    manifest,
)
from recipeset.data.table import RecipeTable, combined_sha256
from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError

FLAVORNET = Path(os.environ.get("RECIPESET_FLAVORNET_DIR") or "/work/shared/data/flavornet")
needs_flavornet = pytest.mark.skipif(not all((FLAVORNET / f).is_file() for f in (*REQUIRED, *COMPOUND_FILES)),
                                     reason="flavornet files not available")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    # Loaders read these; never let the developer's environment (or the real cache) leak into a test.
    for var in ("RECIPESET_FLAVORNET_DIR", "RECIPESET_DATA_DIR", "RECIPESET_FLAVORNET_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@functools.cache
def _flavornet() -> RecipeTable:
    return load_flavornet(FLAVORNET)


def write_fake_flavornet(d: Path) -> Path:
    """A tiny directory in the flavornet layout (verify=False: it is not the pinned data)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "allr_recipes.txt").write_text("Canada\tEgg\tmilk\nAsian\tsoy_sauce\tginger\nItaly\ttomato\tbasil\n")
    (d / "epic_recipes.txt").write_text("Italy\tbasil\tgarlic\tbasil\n")
    (d / "menu_recipes.txt").write_text("korean\tgarlic\tsoy_sauce\n")
    (d / "map.txt").write_text("Canada\tNorthAmerican\nItaly\tSouthernEuropean\nkorean\tEastAsian\nAsian\t\n")
    (d / "ingr_info.tsv").write_text("# id\tingredient name\tcategory\n0\tegg\tanimal\n1\tbasil\therb\n"
                                     "2\tgarlic\tvegetable\n3\tunused_thing\tplant\n")
    (d / "comp_info.tsv").write_text("# id\tCompound name\tCAS number\n0\tc0\t1-1-1\n1\tc1\t1-1-2\n2\tc2\t1-1-3\n")
    (d / "ingr_comp.tsv").write_text("# ingredient id\tcompound id\n0\t0\n1\t1\n1\t2\n2\t2\n3\t0\n")
    return d


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- flavornet: real data ----------------------------------------------------------------------------
@needs_flavornet
def test_flavornet_counts_ids_sources():
    t = _flavornet()
    d = t.describe()
    assert (d["recipes"], d["ingredients"], d["cuisines"]) == (56498, 381, 11)
    assert d["per_source"] == {"allrecipes": 41825, "epicurious": 12232, "menupan": 2441}
    assert t.recipe_ids[:2] == ["allr:1", "allr:2"]
    assert t.ingredients[0] == ["egg", "yeast", "wheat", "milk", "lard"]
    assert t.cuisines[0] == "NorthAmerican"
    assert set(t.frame["source"]) == {"allrecipes", "epicurious", "menupan"}
    assert t.sha256 == combined_sha256({f: manifest()["files"][f] for f in REQUIRED})
    assert t.report.count("unmapped_cuisine") == 1193
    assert sorted(t.report["unmapped_cuisine"].examples) == ["Asian", "asian"]


@needs_flavornet
def test_flavornet_keep_unmapped():
    t = load_flavornet(FLAVORNET, keep_unmapped=True)
    d = t.describe()
    assert (d["recipes"], d["ingredients"], d["unlabelled"]) == (57691, 383, 1193)


@needs_flavornet
def test_flavornet_found_via_env_and_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RECIPESET_FLAVORNET_DIR", str(FLAVORNET))
    assert len(load_dataset("flavornet")) == 56498
    monkeypatch.delenv("RECIPESET_FLAVORNET_DIR")
    (tmp_path / "d").mkdir()
    os.symlink(FLAVORNET, tmp_path / "d" / "flavornet")
    monkeypatch.setenv("RECIPESET_DATA_DIR", str(tmp_path / "d"))
    assert len(load_dataset("flavornet")) == 56498


@needs_flavornet
def test_flavornet_compound_features():
    t = _flavornet()
    vocab = Vocabulary.build(t.ingredients, t.cuisines)
    f = flavornet_compound_features(vocab, FLAVORNET)
    assert f.shape == (len(vocab), 1107) and f.dtype == np.float32
    assert set(np.unique(f)) <= {0.0, 1.0}
    assert not f[:NUM_SPECIALS].any()
    assert (f[NUM_SPECIALS:].sum(1) > 0).all()  # every flavornet recipe ingredient has compounds


def test_flavornet_compound_features_hand_case(tmp_path):
    d = write_fake_flavornet(tmp_path / "fn")
    vocab = Vocabulary(["basil", "egg", "nutmeg"])
    f = flavornet_compound_features(vocab, d)
    assert f.shape == (len(vocab), 3)
    assert f[NUM_SPECIALS:].tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 0]]  # nutmeg: not in ingr_info -> zeros


# ---- flavornet: parsing and bad input on small files -------------------------------------------------
def test_flavornet_small_dir_parses(tmp_path):
    t = load_flavornet(write_fake_flavornet(tmp_path / "fn"), verify=False)
    assert t.recipe_ids == ["allr:1", "allr:3", "epic:1", "menu:1"]
    assert t.ingredients[0] == ["egg", "milk"]
    assert t.ingredients[2] == ["basil", "garlic"]  # deduplicated
    assert t.cuisines == ["NorthAmerican", "SouthernEuropean", "SouthernEuropean", "EastAsian"]
    assert t.report.count("unmapped_cuisine") == 1 and t.report.count("duplicate_ingredients") == 1


def test_flavornet_checksum_mismatch_is_an_error(tmp_path):
    d = write_fake_flavornet(tmp_path / "fn")
    with pytest.raises(RecipesetError, match=r"allr_recipes.txt: SHA-256 mismatch \(expected 00c0b8.*, got .*delete"):
        load_flavornet(d)


def test_flavornet_malformed_line_strict_and_lenient(tmp_path):
    d = write_fake_flavornet(tmp_path / "fn")
    (d / "epic_recipes.txt").write_text("Italy\tbasil\n\tgarlic\nItaly\ta\t\tb\nItaly\tgarlic\n")
    with pytest.raises(RecipesetError, match=r"epic_recipes.txt:2: empty cuisine field") as e:
        load_flavornet(d, verify=False)
    assert "\n" not in str(e.value)
    t = load_flavornet(d, verify=False, lenient=True)
    assert t.report.count("skipped_lines") == 2
    assert [r for r in t.recipe_ids if r.startswith("epic")] == ["epic:1", "epic:4"]


def test_flavornet_not_utf8(tmp_path):
    d = write_fake_flavornet(tmp_path / "fn")
    (d / "menu_recipes.txt").write_bytes(b"korean\tgarlic\nkorean\tk\xe9ch\n")
    with pytest.raises(RecipesetError, match=r"menu_recipes.txt:2: not valid UTF-8"):
        load_flavornet(d, verify=False)


def test_flavornet_missing_names_dirs_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("RECIPESET_FLAVORNET_DIR", str(tmp_path / "nowhere"))
    (tmp_path / "data" / "flavornet").mkdir(parents=True)
    with pytest.raises(RecipesetError) as e:
        load_dataset("flavornet")
    msg = str(e.value)
    assert "nowhere (no such directory)" in msg and "data/flavornet (missing allr_recipes.txt" in msg
    assert "recipeset data download flavornet" in msg and "RECIPESET_FLAVORNET_DIR" in msg
    with pytest.raises(RecipesetError, match="empty file"):
        d = write_fake_flavornet(tmp_path / "fn")
        (d / "allr_recipes.txt").write_text("")
        load_flavornet(d, verify=False)


# ---- download (never the internet) ---------------------------------------------------------------------
@needs_flavornet
def test_download_from_file_url_verifies_and_loads(tmp_path):
    dest = download_flavornet(tmp_path / "cache", base_url=FLAVORNET.as_uri())
    for name, digest in manifest()["files"].items():
        assert sha(dest / name) == digest
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temp files left behind
    # present files are not fetched again: an unreachable base URL is fine now
    download_flavornet(dest, base_url="http://127.0.0.1:9/")
    assert len(load_flavornet(dest)) == 56498


@needs_flavornet
def test_load_dataset_download_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECIPESET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECIPESET_FLAVORNET_URL", FLAVORNET.as_uri())
    with pytest.raises(RecipesetError, match="not found"):
        load_dataset("flavornet")
    t = load_dataset("flavornet", download=True)
    assert len(t) == 56498
    assert (tmp_path / "data" / "flavornet" / "ingr_comp.tsv").is_file()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A loopback HTTP server on 127.0.0.1 serving a fake flavornet directory."""
    root = write_fake_flavornet(tmp_path / "served")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_over_loopback_http(http_dir, tmp_path):
    root, url = http_dir
    sums = {n: sha(root / n) for n in (*REQUIRED, *COMPOUND_FILES)}
    dest = download_flavornet(tmp_path / "dl", base_url=url, checksums=sums)
    assert all((dest / n).read_bytes() == (root / n).read_bytes() for n in sums)
    assert len(load_flavornet(dest, verify=False)) == 4


def test_download_checksum_mismatch(http_dir, tmp_path):
    root, url = http_dir
    sums = {"map.txt": "0" * 64}
    with pytest.raises(RecipesetError) as e:
        download_flavornet(tmp_path / "dl", base_url=url, checksums=sums)
    msg = str(e.value)
    assert msg.startswith("map.txt: SHA-256 mismatch") and "expected " + "0" * 64 in msg
    assert f"got {sha(root / 'map.txt')}" in msg and "retry" in msg and "\n" not in msg
    assert not (tmp_path / "dl" / "map.txt").exists()
    assert not list((tmp_path / "dl").iterdir())  # the bad download was discarded


def test_download_http_404_and_no_network(http_dir, tmp_path):
    _, url = http_dir
    with pytest.raises(RecipesetError, match=r"could not download http://127.0.0.1:\d+/nope.txt"):
        download_flavornet(tmp_path / "dl", base_url=url, checksums={"nope.txt": "0" * 64})
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RecipesetError) as e:
        download_flavornet(tmp_path / "dl", base_url=f"http://127.0.0.1:{port}", checksums={"map.txt": "0" * 64},
                           timeout=5)
    msg = str(e.value)
    assert f"could not download http://127.0.0.1:{port}/map.txt" in msg
    assert "--path" in msg and "RECIPESET_FLAVORNET_DIR" in msg


def test_download_unknown_file_name(tmp_path):
    with pytest.raises(RecipesetError, match="no file"):
        download_flavornet(tmp_path, base_url="file:///nonexistent", files=["other.txt"])


def test_manifest_pins_every_file_and_uses_https():
    m = manifest()
    assert set(m["files"]) == {*REQUIRED, *COMPOUND_FILES}
    assert all(len(v) == 64 for v in m["files"].values())
    assert m["mirrors"] and all(u.startswith("https://") for u in m["mirrors"])


# ---- What's Cooking ----------------------------------------------------------------------------------
def test_whatscooking(tmp_path):
    p = tmp_path / "train.json"
    p.write_text(json.dumps([
        {"id": 10259, "cuisine": "greek", "ingredients": ["romaine lettuce", "black olives", "Feta Cheese"]},
        {"id": 25693, "cuisine": "southern_us", "ingredients": ["plain flour", "salt", "salt"]},
    ]))
    t = load_dataset("whatscooking", path=p)
    assert t.recipe_ids == ["10259", "25693"]
    assert t.ingredients == [["romaine_lettuce", "black_olives", "feta_cheese"], ["plain_flour", "salt"]]
    assert t.cuisines == ["greek", "southern_us"] and set(t.frame["source"]) == {"whatscooking"}
    assert t.name == "whatscooking" and t.report.count("duplicate_ingredients") == 1
    test = tmp_path / "test.json"
    test.write_text(json.dumps([{"id": 1, "ingredients": ["salt"]}]))
    assert load_dataset("whatscooking", path=test).cuisines == [None]


def test_whatscooking_bad_input(tmp_path):
    with pytest.raises(RecipesetError, match="whatscooking needs --path"):
        load_dataset("whatscooking")
    p = tmp_path / "w.json"
    p.write_text('{"id": 1}')
    with pytest.raises(RecipesetError, match="expected a JSON list of recipe objects, found a dict"):
        load_dataset("whatscooking", path=p)
    p.write_text('[{"id": 1,\n "ingredients": ["a"]\n')
    with pytest.raises(RecipesetError, match=r"w.json:3: not valid JSON"):
        load_dataset("whatscooking", path=p)
    p.write_text(json.dumps([{"id": 1, "ingredients": ["a"]}, {"id": 2, "ingredients": 5},
                             {"id": 1, "ingredients": ["b"]}]))
    with pytest.raises(RecipesetError, match=r"w.json item 1: ingredients must be"):
        load_dataset("whatscooking", path=p)
    t = load_dataset("whatscooking", path=p, lenient=True)
    assert t.recipe_ids == ["1"] and t.report.count("skipped_lines") == 2  # bad value + duplicate id


# ---- CSV / JSONL -------------------------------------------------------------------------------------
def test_csv_basic_and_options(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text('name,ingredients,cuisine\nr1,"Tomato; basil ;",Italian\nr2,garlic;garlic,\nr3,,Thai\n')
    t = load_dataset(p)
    assert t.recipe_ids == ["r:2", "r:3"] and t.name == "r"
    assert t.ingredients == [["tomato", "basil"], ["garlic"]]
    assert t.cuisines == ["Italian", None]  # "cuisine" column used when present
    assert t.report.count("empty_recipes") == 1 and t.report.count("duplicate_ingredients") == 1
    t = load_dataset(p, id_column="name", cuisine_column="cuisine")
    assert t.recipe_ids == ["r1", "r2"]
    p2 = tmp_path / "s.csv"
    p2.write_text("id|items|kind\n7|a,b|x\n")
    t = load_dataset(p2, ingredients_column="items", delimiter=",", sep="|", id_column="id", cuisine_column="kind")
    assert (t.recipe_ids, t.ingredients, t.cuisines) == (["7"], [["a", "b"]], ["x"])
    # the file's hash (computed on a thread while it is parsed), for the quote-free and the csv-module paths
    assert t.sha256 == combined_sha256({p2.name: hashlib.sha256(p2.read_bytes()).hexdigest()})
    assert load_dataset(p).sha256 == combined_sha256({p.name: hashlib.sha256(p.read_bytes()).hexdigest()})


def test_csv_bad_input(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("id,stuff\n1,a;b\n")
    with pytest.raises(RecipesetError, match=r"r.csv:1: no ingredients column 'ingredients' in the header "
                                             r"\(columns: id, stuff\)"):
        load_dataset(p)
    with pytest.raises(RecipesetError, match="no cuisine column 'kind'"):
        load_dataset(p, ingredients_column="stuff", cuisine_column="kind")
    p.write_text("id,ingredients\n1,a;b\n2,c,extra\n3,d\n")
    with pytest.raises(RecipesetError, match=r"r.csv:3: expected 2 fields, found 3") as e:
        load_dataset(p)
    assert "lenient" in str(e.value)
    t = load_dataset(p, lenient=True)
    assert t.recipe_ids == ["r:2", "r:4"] and t.report.count("skipped_lines") == 1
    assert "r.csv:3" in t.report["skipped_lines"].examples[0]
    p.write_bytes(b"id,ingredients\n1,caf\xe9\n")
    with pytest.raises(RecipesetError, match=r"r.csv:2: not valid UTF-8 \(byte 0xe9\)"):
        load_dataset(p)
    p.write_text("")
    with pytest.raises(RecipesetError, match="r.csv: empty file"):
        load_dataset(p)
    p.write_text("id,ingredients\n")
    with pytest.raises(RecipesetError, match="no recipes"):
        load_dataset(p)
    with pytest.raises(RecipesetError, match="missing.csv: CSV file not found"):
        load_dataset(tmp_path / "missing.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(RecipesetError, match="is a directory"):
        load_dataset(tmp_path / "dir.csv")
    p.write_text("id,ingredients\n1,a\n1,b\n")
    with pytest.raises(RecipesetError, match=r"r.csv:3: duplicate recipe id '1'"):
        load_dataset(p, id_column="id")
    with pytest.raises(RecipesetError, match=r"r.csv: unknown loader option\(s\) no_such_option \(--option, "
                                             r"data.options\); options: ingredients_column, delimiter"):
        load_dataset(p, no_such_option=1)
    with pytest.raises(RecipesetError, match="whatscooking: unknown loader option"):
        load_dataset("whatscooking", path=p, delimiter=",")
    with pytest.raises(RecipesetError, match="flavornet: unknown loader option"):
        load_dataset("flavornet", path=p, min_count=2)


def test_jsonl_list_or_string_and_bad_lines(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"ingredients": ["Soy Sauce", "ginger"], "cuisine": "Chinese"}\n\n'
                 '{"ingredients": "rice;nori"}\n')
    t = load_dataset(p)
    assert t.recipe_ids == ["r:1", "r:3"]
    assert t.ingredients == [["soy_sauce", "ginger"], ["rice", "nori"]] and t.cuisines == ["Chinese", None]
    p.write_text('{"ingredients": ["a"]}\nnot json\n[1, 2]\n{"other": 1}\n{"ingredients": [1]}\n')
    with pytest.raises(RecipesetError, match=r"r.jsonl:2: not valid JSON"):
        load_dataset(p)
    t = load_dataset(p, lenient=True)
    assert len(t) == 1 and t.report.count("skipped_lines") == 4


def test_load_dataset_dispatch_errors(tmp_path):
    with pytest.raises(RecipesetError, match="unknown dataset 'recipes1m': use one of flavornet, whatscooking, "
                                             "synthetic or a path ending in .csv, .jsonl, .json"):
        load_dataset("recipes1m")
    with pytest.raises(RecipesetError, match="unknown dataset"):
        load_dataset(tmp_path / "file.txt")


def test_load_dataset_synthetic_dispatch(monkeypatch):
    # The synthetic generator belongs to another module; check only that load_dataset hands over **kw.
    fake = types.ModuleType("recipeset.data.sources.synthetic")
    calls = []

    def load_synthetic(**kw):
        calls.append(kw)
        return RecipeTable.from_records([["a"]], name="synthetic")

    fake.load_synthetic = load_synthetic
    monkeypatch.setitem(sys.modules, "recipeset.data.sources.synthetic", fake)
    import recipeset.data.sources as sources

    monkeypatch.setattr(sources, "synthetic", fake, raising=False)
    assert load_dataset("synthetic", n_recipes=5, seed=1).name == "synthetic"
    assert calls == [{"n_recipes": 5, "seed": 1}]


# ---- CLI -----------------------------------------------------------------------------------------------
@needs_flavornet
def test_cli_stats_flavornet_json():
    res = CliRunner().invoke(cli, ["data", "stats", "flavornet", "--path", str(FLAVORNET), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert (d["recipes"], d["ingredients"], d["cuisines"]) == (56498, 381, 11)
    assert d["cleaning"]["unmapped_cuisine"]["count"] == 1193


def test_cli_stats_csv_text(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("ingredients,cuisine\na;b,x\nb;b,y\n,x\n")
    res = CliRunner().invoke(cli, ["data", "stats", str(p)])
    assert res.exit_code == 0, res.output
    assert "r: 2 recipes, 2 ingredients, 2 cuisines" in res.output
    assert "empty_recipes: 1" in res.output and "duplicate_ingredients: 1" in res.output


def test_cli_bad_input_one_line_no_traceback(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text('ingredients,x\n"a,b\n')  # unterminated quote
    runner = CliRunner()
    for args in (["data", "stats", str(p)], ["data", "stats", "nope"],
                 ["data", "stats", "flavornet", "--path", str(tmp_path / "missing")]):
        res = runner.invoke(cli, args)
        assert res.exit_code != 0
        assert "Traceback" not in res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
        assert res.exit_code == 1


def test_cli_download_from_loopback(http_dir, tmp_path, monkeypatch):
    root, url = http_dir
    monkeypatch.setattr("recipeset.data.sources.flavornet.manifest",
                        lambda: {"mirrors": [], "files": {"map.txt": sha(root / "map.txt")}})
    res = CliRunner().invoke(cli, ["data", "download", "flavornet", "--dest", str(tmp_path / "dl"),
                                   "--base-url", url])
    assert res.exit_code == 0, res.output
    assert "map.txt: downloaded, checksum ok" in res.output
    assert (tmp_path / "dl" / "map.txt").read_bytes() == (root / "map.txt").read_bytes()


def test_fake_dir_helper_is_not_the_real_data(tmp_path):
    # Guard: the fixture files must never be mistaken for the pinned data.
    d = write_fake_flavornet(tmp_path / "fn")
    assert all(sha(d / n) != manifest()["files"][n] for n in REQUIRED)
