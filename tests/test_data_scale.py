"""The vectorised data layer gives exactly the results of the per-ingredient implementation it replaced.

``EXPECTED`` holds digests computed with the per-recipe Python implementation (commit e772145) of every
case below: cleaned recipes (ids, normalised names, cuisines, sources), cleaning report, ``describe()``,
group split, training vocabulary and encodings, or the one-line error message of a malformed input.
The per-ingredient normaliser and the string-keyed set grouping of that implementation are kept here as
references for randomised comparisons.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recipeset.bench import write_million_csv
from recipeset.data.sets import csr_sort_within
from recipeset.data.sources import load_dataset, tabular
from recipeset.data.sources.tabular import PY_WHITESPACE
from recipeset.data.splits import ingredient_set_groups, split_table
from recipeset.data.table import RecipeTable, normalize_names
from recipeset.data.vocab import Vocabulary
from recipeset.errors import RecipesetError

FLAVORNET = Path(os.environ.get("RECIPESET_FLAVORNET_DIR") or "/work/shared/data/flavornet")
HAVE_FLAVORNET = (FLAVORNET / "allr_recipes.txt").is_file()


# ---- the replaced implementation, as reference --------------------------------------------------------
def reference_normalize(name: str) -> str:
    """The per-ingredient normaliser every loader called."""
    return "_".join(name.strip().lower().split())


def reference_groups(sets: list[list[str]]) -> np.ndarray:
    """The string-keyed grouping of identical ingredient sets (group ids in key order)."""
    codes, _ = pd.factorize(pd.Series(["\t".join(sorted(set(r))) for r in sets], dtype=object), sort=True)
    return codes.astype(np.int64)


def reference_clean(sets: list[list[str]], min_count: int) -> list[list[str]]:
    """Dedupe inside recipes (first kept), drop names in fewer than ``min_count`` recipes, drop empty."""
    sets = [list(dict.fromkeys(r)) for r in sets]
    counts = pd.Series([x for r in sets for x in r], dtype=object).value_counts()
    rare = set(counts.index[counts < min_count])
    sets = [[x for x in r if x not in rare] for r in sets]
    return [r for r in sets if r]


# ---- digests --------------------------------------------------------------------------------------------
def _h(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def digest(table: RecipeTable) -> dict[str, str]:
    """Digests of everything the data layer derives from a table."""
    described = table.describe()
    described["source_path"] = described["source_path"] and Path(described["source_path"]).name
    out = {"recipes": _h([table.recipe_ids, table.ingredients, table.cuisines, table.frame["source"].tolist()]),
           "report": _h(table.report.to_dict()), "describe": _h(described)}
    if len(table) >= 3:
        split = split_table(table, seed=3)
        out["split"] = _h([split[n].tolist() for n in ("train", "val", "test")])
        train = table.subset(split.train)
        vocab = Vocabulary.build(train.ingredients, table.cuisines, min_count=2)
        out["vocab"] = _h([vocab.ingredients, vocab.counts, vocab.cuisines])
        enc = [train.encode(vocab, unknown="skip"), table.encode(vocab, unknown="unk")]
        out["encode"] = _h([[e.values.tolist(), e.offsets.tolist(), e.cuisine.tolist()] for e in enc])
    return out


def outcome(load: Callable[[], RecipeTable]) -> dict[str, str]:
    try:
        return digest(load())
    except RecipesetError as e:
        return {"error": re.sub(r"(/[^/\s:]+)+/", "", str(e))}  # without the temporary directory


# ---- the cases --------------------------------------------------------------------------------------------
NOISY_CSV = ('id,ingredients,cuisine\n'
             ' a1 ,"Crème  Fraîche;İstanbul Pepper;STRASSE ß",Thai\n'
             'a2,\u00a0Soy\u2003Sauce ;x\x1cy;soy sauce;,  Thai \n'
             'a3,;; ;,Thai\n'
             '\n'
             '   \n'
             'a4,Garlic;garlic;GARLIC ;basil,\n'
             'a5,basil;garlic,Greek\n'
             'a6,basil,Greek\n')
BAD_CSV = 'id,ingredients\n1,a;b\n2,c,extra\n3,d\n,e\n1,f\n4,g;h\n'
CLEAN_CSV = ('id,ingredients,cuisine\n'  # every line a well-formed row: the multi-threaded parser's files
             ' a1 ,Crème  Fraîche;crème fraîche;Tomatoes;tomato; TOMATO ,Thai\n'
             'a2,\u00a0Soy\u2003Sauce ;soy sauce;;Basil\t, Thai \n'
             'a3,; ;\t,Thai\n'
             'a4,,\n'
             'a5,basil;Basil;basils;BASIL ;basil;,Greek\n'
             'a6,garlic,\n'
             'a7,Garlic;;garlic;,greek\n'
             'a8,ﬃ;ǅ;İstanbul,Greek\n')
QUOTED_CSV = 'id,ingredients,cuisine\r\n1,"a;b\r\nc",x\r\n2,"d ""e""",y\r\n3,f,z\r\n'
JSONL = ('{"ingredients": ["Soy Sauce", "ginger", "soy  sauce"], "cuisine": "Chinese"}\n\n'
         '{"ingredients": "rice; Nori;", "cuisine": null}\n'
         'not json\n[1]\n{"ingredients": [1]}\n{"ingredients": ["  "]}\n{"ingredients": ["Rice", "nori"]}\n')
JSON = json.dumps([{"id": 1, "cuisine": "greek", "ingredients": ["Romaine Lettuce", "black olives"]},
                   {"id": 2, "cuisine": "greek", "ingredients": ["feta cheese", "black  olives"]},
                   {"id": 3, "ingredients": ["salt"]}, {"id": 4, "cuisine": "x", "ingredients": ["Salt", "salt"]}])


def _file(tmp: Path, name: str, text: str, newline: str | None = "") -> str:
    p = tmp / name
    with open(p, "w", encoding="utf-8", newline=newline) as f:
        f.write(text)
    return str(p)


def cases(tmp: Path) -> dict[str, Callable[[], RecipeTable]]:
    """Every compared case, by name (files are written into ``tmp``)."""
    million = str(tmp / "million.csv")
    write_million_csv(million, n=30_000, seed=5)
    crlf = _file(tmp, "crlf.csv", open(million, encoding="utf-8").read().replace("\n", "\r\n"))
    noisy, bad = _file(tmp, "noisy.csv", NOISY_CSV), _file(tmp, "bad.csv", BAD_CSV)
    quoted, jsonl = _file(tmp, "quoted.csv", QUOTED_CSV), _file(tmp, "r.jsonl", JSONL)
    js, piped = _file(tmp, "r.json", JSON), _file(tmp, "piped.csv", "id|items|kind\n7|a,B , b|x\n8|c|x\n9|c,a|y\n")
    clean, clean_crlf = _file(tmp, "clean.csv", CLEAN_CSV), _file(tmp, "clean_crlf.csv", CLEAN_CSV, newline="\r\n")
    clean_bom = _file(tmp, "clean_bom.csv", "\ufeff" + CLEAN_CSV.rstrip("\n"))
    multi = _file(tmp, "multi.csv", CLEAN_CSV.replace(";", " || "))
    tabbed = _file(tmp, "tabbed.csv", CLEAN_CSV.replace("\t", " ").replace(",", "\t").replace(";", "§"))
    tab_bad = _file(tmp, "tab_bad.csv", CLEAN_CSV.replace(",", "\t"))
    blank_end = _file(tmp, "blank_end.csv", CLEAN_CSV + "\n")
    single = _file(tmp, "single.csv", "ingredients\nA;b\n\n  \nb;B;c\n;\nc\n")
    records = [["Tomato", " basil ", "tomato"], [], ["Olive  Oil", "garlic"], ["garlic", "basil"], ["saffron"],
               ["a", "a\x01", "a_b"], ["a_b", "a"], ["a\x01"], ["a", "a_b"], ["b"], ["b", "c", "b"]]
    cuisines = ["Italian", "Italian", None, "Italian", "Spanish", "x", "y", None, "y", "x", "Italian"]
    out: dict[str, Callable[[], RecipeTable]] = {
        "million": lambda: load_dataset(million),
        "million_crlf": lambda: load_dataset(crlf),
        "noisy": lambda: load_dataset(noisy, id_column="id"),
        "noisy_no_id": lambda: load_dataset(noisy),
        "bad_strict": lambda: load_dataset(bad, id_column="id"),
        "bad_lenient": lambda: load_dataset(bad, id_column="id", lenient=True),
        "bad_no_id": lambda: load_dataset(bad, lenient=True),
        "clean": lambda: load_dataset(clean, id_column="id"),
        "clean_no_id": lambda: load_dataset(clean),
        "clean_crlf": lambda: load_dataset(clean_crlf, id_column="id"),
        "clean_bom": lambda: load_dataset(clean_bom),
        "clean_multichar_delimiter": lambda: load_dataset(multi, delimiter=" || ", id_column="id"),
        "clean_tabs": lambda: load_dataset(tabbed, sep="\t", delimiter="§", id_column="id"),
        "clean_tabs_bad_line": lambda: load_dataset(tab_bad, sep="\t", id_column="id"),
        "clean_blank_end": lambda: load_dataset(blank_end, id_column="id"),
        "single_column": lambda: load_dataset(single),
        "quoted": lambda: load_dataset(quoted, id_column="id"),
        "piped": lambda: load_dataset(piped, sep="|", ingredients_column="items", delimiter=",",
                                      cuisine_column="kind", id_column="id"),
        "jsonl_strict": lambda: load_dataset(jsonl),
        "jsonl_lenient": lambda: load_dataset(jsonl, lenient=True),
        "json": lambda: load_dataset(js, id_column="id"),
        "records": lambda: RecipeTable.from_records(records, cuisines, name="r"),
        "records_clean": lambda: RecipeTable.from_records(records, cuisines, name="r").clean(min_count=2),
        "records_mapped": lambda: RecipeTable.from_records(records, cuisines, name="r").map_cuisines(
            {"Italian": "EU", "Spanish": "EU", "x": None}).clean(dedupe=False, drop_empty=False),
        "records_raw": lambda: RecipeTable.from_records(records, cuisines, name="r", normalize=False),
        "synthetic": lambda: load_dataset("synthetic"),
        "synthetic_ordered": lambda: load_dataset("synthetic", n_recipes=3000, ordered=True, seed=4),
    }
    if HAVE_FLAVORNET:
        out["flavornet"] = lambda: load_dataset("flavornet", path=FLAVORNET)
        out["flavornet_unmapped"] = lambda: load_dataset("flavornet", path=FLAVORNET, keep_unmapped=True)
    return out


# computed with the per-recipe implementation (commit e772145); since then only the texts of the --lenient and
# keep_unmapped hints changed (the errors below; report/describe of records_mapped and flavornet)
EXPECTED: dict[str, dict[str, str]] = {
    'million': {
        'recipes': '91c94d2db34134dc', 'report': '177a40e51691bd9a', 'describe': '4dccf17ff8020c3e',
        'split': '78742a93888033ec', 'vocab': '3a8f374c2535cc66', 'encode': '819647adc9584886',
    },
    'million_crlf': {
        'recipes': 'ddaf1a23167058a2', 'report': '913ed592e75bfdea', 'describe': '240aba3c2d1e4ef9',
        'split': '78742a93888033ec', 'vocab': '3a8f374c2535cc66', 'encode': '819647adc9584886',
    },
    'noisy': {
        'recipes': '0ee73e3989305463', 'report': 'd1a954077f5ea9be', 'describe': '50d0065645ae4a88',
        'split': '269b66c2f069c601', 'vocab': '225cc2e7f149d3a2', 'encode': '29320e4d2a3961ab',
    },
    'noisy_no_id': {
        'recipes': '8e6ca5ef8391f302', 'report': '6e810396ef7c1f6e', 'describe': '082ec509dfe9a388',
        'split': '269b66c2f069c601', 'vocab': '225cc2e7f149d3a2', 'encode': '29320e4d2a3961ab',
    },
    'bad_strict': {'error': 'bad.csv:3: expected 2 fields, found 3 (--lenient, or data.lenient = true in a run '
                            'config, skips bad lines)'},
    'bad_lenient': {
        'recipes': '4ff6b589b8eccb40', 'report': '30bb1097b66d2c24', 'describe': '17eb957a196b1f91',
        'split': '022e2a2bb76a0a80', 'vocab': 'f865256c77f3fc9f', 'encode': '97303549eb5f913e',
    },
    'bad_no_id': {
        'recipes': '0127b67f599dec29', 'report': '3db9d1a9f49ff315', 'describe': '306831a6decb68c6',
        'split': '4ea0fd2489151173', 'vocab': 'f865256c77f3fc9f', 'encode': '26d5475b28ea3f08',
    },
    'quoted': {
        'recipes': '5d23e4a2db4d32d8', 'report': '44136fa355b3678a', 'describe': '79388992486a8764',
        'split': '0f9b9f449cbe8d2e', 'vocab': '71912fce3958045b', 'encode': 'c976ec9b5e3d135f',
    },
    'piped': {
        'recipes': '84dbc14069f15910', 'report': '18ec8fdd2b273ce5', 'describe': '711bee29d80444d4',
        'split': '0f9b9f449cbe8d2e', 'vocab': 'e04e080b28e5a874', 'encode': '4c0f26e5bdc01b21',
    },
    'jsonl_strict': {
        'error': 'r.jsonl:4: not valid JSON (Expecting value) (--lenient, or data.lenient = true in a run config, '
                 'skips bad lines)'},
    'jsonl_lenient': {
        'recipes': '519c5d8e45b124aa', 'report': '3b965da147f743e3', 'describe': '1b084d5ac46af6ec',
        'split': '0f9b9f449cbe8d2e', 'vocab': 'a9ff0d07fb10f2d3', 'encode': '1123935808e5c827',
    },
    'json': {
        'recipes': '80ff1f8df4a6beac', 'report': 'ece9ddd34b5d8370', 'describe': 'a23c8126e04a2ec4',
        'split': 'd9d8cc86ea4375a6', 'vocab': '88485cd9f995b050', 'encode': 'f267a73961123580',
    },
    'records': {
        'recipes': 'b013ffbc4e676de7', 'report': '44136fa355b3678a', 'describe': 'cc7b12988661615e',
        'split': '6930a117ede35067', 'vocab': '0a84b8444720ee15', 'encode': '04c805ee96649275',
    },
    'records_clean': {
        'recipes': '5ac11279fd8a451f', 'report': 'c8ba15b07cf41759', 'describe': 'c472b0353de70173',
        'split': '2e3b1297fe28e333', 'vocab': '1543c278f046fc86', 'encode': '24e927f7d3ff6130',
    },
    'records_mapped': {
        'recipes': '131f2fc53624d230', 'report': '9d0c0b0cfffbfdb8', 'describe': '83501baebf47b990',
        'split': '3f74f324ff2bdc57', 'vocab': '7d38bd3735c8d273', 'encode': 'd69b0b663c86d482',
    },
    'records_raw': {
        'recipes': '174b7b17f9883b1f', 'report': '44136fa355b3678a', 'describe': '3d4ab3748399c08e',
        'split': '6930a117ede35067', 'vocab': '462cf51c243c28eb', 'encode': '6a805f5a0881fba8',
    },
    'synthetic': {
        'recipes': '7924fc48c734eb80', 'report': '44136fa355b3678a', 'describe': '4e342af2b2001b5c',
        'split': 'cea1c8b080d9a76e', 'vocab': '6999804ce220c837', 'encode': '1eccf3d450614832',
    },
    'synthetic_ordered': {
        'recipes': '97915c7ed265a55f', 'report': '44136fa355b3678a', 'describe': '5c51146fc348a9d5',
        'split': '6fc4e20d41200e7b', 'vocab': '37c4006f83471b19', 'encode': 'baa3b584c478b28c',
    },
    # files of well-formed rows (and their neighbours), computed before the pyarrow.csv reader (commit c858f64)
    'clean': {
        'recipes': 'a8bdc68df1f781e1', 'report': 'f0a47c2c06502c7f', 'describe': '55665f4a540506e4',
        'split': 'f108a78935470af2', 'vocab': '512438e61e870ac4', 'encode': '7453bcc4f93ce723',
    },
    'clean_no_id': {
        'recipes': '469d37e07e0e96a9', 'report': '689729cfe1f3a6ce', 'describe': '49f739396d4f7d73',
        'split': 'f108a78935470af2', 'vocab': '512438e61e870ac4', 'encode': '7453bcc4f93ce723',
    },
    'clean_crlf': {
        'recipes': '5ccef1dc69fb8c09', 'report': 'f0a47c2c06502c7f', 'describe': '6f506ae6c0004c56',
        'split': 'f108a78935470af2', 'vocab': '512438e61e870ac4', 'encode': '7453bcc4f93ce723',
    },
    'clean_bom': {
        'recipes': 'f9b2bb37380afc15', 'report': '9b387d8d63e8b957', 'describe': '7d41179b2c85bdbd',
        'split': 'f108a78935470af2', 'vocab': '512438e61e870ac4', 'encode': '7453bcc4f93ce723',
    },
    'clean_multichar_delimiter': {
        'recipes': '3dc25b355e8b3df3', 'report': 'f0a47c2c06502c7f', 'describe': 'e7b7c7ec2aa1a007',
        'split': 'f108a78935470af2', 'vocab': '512438e61e870ac4', 'encode': '7453bcc4f93ce723',
    },
    'clean_tabs': {
        'recipes': 'ff28038d7044ee63', 'report': 'f0a47c2c06502c7f', 'describe': '26a5a9ee9d7b1e9a',
        'split': 'f108a78935470af2', 'vocab': '512438e61e870ac4', 'encode': '7453bcc4f93ce723',
    },
    'clean_tabs_bad_line': {
        'error': 'tab_bad.csv:3: expected 3 fields, found 4 (--lenient, or data.lenient = true in a run config, '
                 'skips bad lines)'},
    'clean_blank_end': {
        'recipes': 'c8a7fed120351392', 'report': 'f0a47c2c06502c7f', 'describe': '31205c999c3f75d5',
        'split': 'f108a78935470af2', 'vocab': '512438e61e870ac4', 'encode': '7453bcc4f93ce723',
    },
    'single_column': {
        'recipes': '729c54df78f9c022', 'report': 'a0eace551f98b7ad', 'describe': '98458a299dbdb23e',
        'split': '022e2a2bb76a0a80', 'vocab': 'fef592f1a42123dc', 'encode': '5533a286e0f05724',
    },
    'flavornet': {
        'recipes': 'd036d0f9662c2270', 'report': 'fbb6d21f07d166a9', 'describe': 'dd171646e9fff942',
        'split': '6b01fbd17f869d68', 'vocab': '2337211e854c71ec', 'encode': '51e6fb225d418bd4',
    },
    'flavornet_unmapped': {
        'recipes': 'fbf8cafd33e60307', 'report': '5e00a43cf61059b6', 'describe': '85ece4638c5bb913',
        'split': '2e8576a0bf89df8f', 'vocab': 'd5b1ad73a19dc0ab', 'encode': '9a58431172e4252a',
    },
}


@pytest.fixture(scope="module")
def case_loaders(tmp_path_factory) -> dict[str, Callable[[], RecipeTable]]:
    return cases(tmp_path_factory.mktemp("scale"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_same_results_as_the_per_ingredient_implementation(case_loaders, name):
    if name not in case_loaders:
        pytest.skip("flavornet files not available")
    assert outcome(case_loaders[name]) == EXPECTED[name]


if __name__ == "__main__":  # print EXPECTED for the implementation on sys.path
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps({k: outcome(f) for k, f in cases(Path(d)).items()}, indent=1))


# ---- randomised comparisons with the references ----------------------------------------------------------
NOISE = [" ", "  ", "\t", "\u00a0", "\u2003", "\x1c", "\x85", "\u3000", "_", "-"]
LETTERS = ["a", "B", "é", "İ", "ß", "Σ", "x", "Y", "ǅ", "ﬃ"]


def _noisy_names(rng: np.random.Generator, n: int) -> list[str]:
    alphabet = NOISE + LETTERS
    return ["".join(rng.choice(alphabet, size=rng.integers(0, 7)).tolist()) for _ in range(n)]


def test_python_whitespace_class_is_str_isspace():
    assert set(PY_WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


def test_normalize_names_equals_the_per_ingredient_normaliser():
    rng = np.random.default_rng(0)
    raw = _noisy_names(rng, 3000)
    raw += raw[::7]  # repeats: normalised once, mapped back
    codes, names = normalize_names(raw)
    assert [names[c] for c in codes] == [reference_normalize(x) for x in raw]
    assert len(set(names.tolist())) == len(names)


@pytest.mark.parametrize("seed", range(4))
def test_clean_and_groups_equal_the_references(seed):
    rng = np.random.default_rng(seed)
    pool = ["a", "a_b", "ab", "b", "a\x01", "b\tc", "c", "d", "e", "f", "a_"][:8 + seed]
    sets = [rng.choice(pool, size=rng.integers(0, 7)).tolist() for _ in range(400)]
    table = RecipeTable.from_records(sets, normalize=False)
    assert np.array_equal(ingredient_set_groups(table), reference_groups(sets))
    for min_count in (1, 3, 40):
        assert table.clean(min_count=min_count).ingredients == reference_clean(sets, min_count)
    normal = RecipeTable.from_records([[x for x in r if "\t" not in x and "\x01" not in x] for r in sets],
                                      normalize=False)  # the integer path (no name holds a char <= "\t")
    assert np.array_equal(ingredient_set_groups(normal), reference_groups(normal.ingredients))


@pytest.mark.parametrize("kind", ["small", "negative", "uint64", "float", "huge"])
def test_csr_sort_within_equals_lexsort(kind):
    """Both ways of sorting inside rows (one keyed argsort; length classes) give the stable lexsort."""
    rng = np.random.default_rng(len(kind))
    lengths = rng.integers(0, 9, size=500)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    key = {"small": rng.integers(0, 5, size=offsets[-1]), "negative": rng.integers(-3, 3, size=offsets[-1]),
           "uint64": rng.integers(0, 2**63, size=offsets[-1], dtype=np.uint64) * np.uint64(2),
           "float": rng.integers(0, 4, size=offsets[-1]) / 2, "huge": rng.integers(-2**62, 2**62, size=offsets[-1])}
    key = key[kind]
    rows = np.repeat(np.arange(len(lengths)), lengths)
    assert np.array_equal(csr_sort_within(offsets, key), np.lexsort((key, rows)))


def _random_csv(rng: np.random.Generator, quoted: bool, bad: float = 0.13) -> str:
    """A small CSV with blank and whitespace lines and wrong widths (``bad`` of the lines), empty and repeated
    ids, noisy names."""
    lines = ["id,ingredients,cuisine"]
    for _ in range(rng.integers(1, 60)):
        kind = rng.random() * 0.13 / bad if bad else 1.0
        if kind < 0.06:
            lines.append(rng.choice(["", "  ", "\t", "\u00a0"]))
        elif kind < 0.1:
            lines.append("x,y")
        elif kind < 0.13:
            lines.append("p,q;r,s,t")
        else:
            rid = rng.choice(["", " ", f" r{rng.integers(0, 40)} ", f"r{rng.integers(0, 40)}"])
            cell = ";".join(_noisy_names(rng, int(rng.integers(0, 5))))
            cell = f'"{cell}"' if quoted and rng.random() < 0.3 else cell
            lines.append(f"{rid},{cell},{rng.choice(['', ' Thai', 'Greek ', 'x'])}")
    return "\n".join(lines) + rng.choice(["", "\n"])


@pytest.mark.parametrize("seed", range(25))
def test_simple_csv_parser_equals_the_csv_module(tmp_path, monkeypatch, seed):
    """The pyarrow parser of quote-free CSVs and the csv-module reader agree on every outcome."""
    rng = np.random.default_rng(seed)
    text = _random_csv(rng, quoted=False)
    if seed % 3 == 0:
        text = text.replace("\n", "\r\n")
    path = _file(tmp_path, "r.csv", text)
    assert tabular._is_simple_csv(Path(path).read_bytes(), ",", ";")
    options = [{"id_column": "id"}, {}, {"id_column": "id", "lenient": True}, {"lenient": True}]
    with_arrow = [outcome(lambda o=o: load_dataset(path, **o)) for o in options]
    monkeypatch.setattr(tabular, "_is_simple_csv", lambda *a: False)
    assert [outcome(lambda o=o: load_dataset(path, **o)) for o in options] == with_arrow


@pytest.mark.parametrize("seed", range(12))
def test_pyarrow_csv_reader_equals_the_csv_module(tmp_path, monkeypatch, seed):
    """Files whose every line is a well-formed row are read by pyarrow.csv, with the csv-module outcomes."""
    rng = np.random.default_rng(100 + seed)
    text = _random_csv(rng, quoted=False, bad=0.0)
    text = re.sub("^,,$", ",,x", text, flags=re.M)  # a row of empty fields goes line by line
    text = text.replace("\n", "\r\n") if seed % 3 == 0 else text
    path = _file(tmp_path, "r.csv", text)
    data = Path(path).read_bytes()
    layout = tabular._csv_layout(Path(path), ["id", "ingredients", "cuisine"], "ingredients", None, None, ",", ";")
    assert tabular._parse_csv_arrow(data, layout) is not None
    options = [{"id_column": "id"}, {}, {"id_column": "id", "lenient": True}]
    with_arrow = [outcome(lambda o=o: load_dataset(path, **o)) for o in options]
    monkeypatch.setattr(tabular, "_is_simple_csv", lambda *a: False)
    assert [outcome(lambda o=o: load_dataset(path, **o)) for o in options] == with_arrow

