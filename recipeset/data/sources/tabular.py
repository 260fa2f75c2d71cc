"""Generic recipe files: CSV, JSON Lines and JSON (a list of objects), one recipe per row/object.

Shared with the other loaders: strict UTF-8 reading with line-numbered errors, and :class:`BadLines`,
which raises on the first malformed line (strict) or skips and counts them (lenient).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

from recipeset.data.table import CleaningReport, RecipeTable, combined_sha256, normalize_cuisine, normalize_ingredient
from recipeset.errors import RecipesetError


# ---- shared helpers ----------------------------------------------------------------------------------
def read_bytes(path: Path, what: str = "file") -> bytes:
    """The bytes of ``path``; a missing file or a directory is a one-line RecipesetError."""
    path = Path(path)
    if path.is_dir():
        raise RecipesetError(f"{path}: is a directory, expected a {what}")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RecipesetError(f"{path}: {what} not found") from None
    except OSError as e:
        raise RecipesetError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def decode_utf8(data: bytes, path: Path) -> str:
    """Strict UTF-8 (a BOM is allowed); an undecodable byte is an error naming its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise RecipesetError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); "
                             f"re-save the file as UTF-8") from None


def read_text(path: Path, what: str = "file", allow_empty: bool = False) -> tuple[str, str]:
    """``(text, sha256)`` of a UTF-8 file; an empty file is an error unless ``allow_empty``."""
    data = read_bytes(path, what)
    if not allow_empty and not data.strip():
        raise RecipesetError(f"{path}: empty file, expected recipes")
    return decode_utf8(data, Path(path)), hashlib.sha256(data).hexdigest()


class BadLines:
    """Malformed input lines: strict mode raises ``path:line: message``; lenient mode counts and skips."""

    def __init__(self, path: Path, lenient: bool) -> None:
        self.path = Path(path)
        self.lenient = lenient
        self.count = 0
        self.examples: list[str] = []

    def __call__(self, line: int | str, message: str) -> None:
        where = f"{self.path}:{line}" if isinstance(line, int) else f"{self.path} {line}"
        if not self.lenient:
            raise RecipesetError(f"{where}: {message} (pass lenient=True / --lenient to skip bad lines)")
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(f"{self.path.name}:{line}: {message}")

    def add_to(self, report: CleaningReport) -> None:
        report.add("skipped_lines", self.count, f"malformed lines skipped in lenient mode ({self.path.name})",
                   self.examples)


def split_cell(cell: str, delimiter: str) -> list[str]:
    """``"Soy Sauce; ginger;"`` -> ``["soy_sauce", "ginger"]`` (empty pieces ignored)."""
    return [n for n in (normalize_ingredient(x) for x in cell.split(delimiter)) if n]


def _ingredients_value(value: object, delimiter: str) -> list[str] | str:
    """A JSON ingredients value -> names, or an error message string."""
    if isinstance(value, str):
        return split_cell(value, delimiter)
    if isinstance(value, list):
        if not all(isinstance(x, str) for x in value):
            return "ingredients list holds a non-string"
        return [n for n in (normalize_ingredient(x) for x in value) if n]
    return f"ingredients must be a list of strings or a delimited string, not {type(value).__name__}"


def _finish(path: Path, name: str, source: str, ids: list[str], sets: list[list[str]],
            cuisines: list[str | None], sha: str, bad: BadLines) -> RecipeTable:
    if not ids:
        raise RecipesetError(f"{path}: no recipes (every line was skipped or the file holds none)")
    report = CleaningReport()
    bad.add_to(report)
    table = RecipeTable.from_records(sets, cuisines, ids, source=source, name=name, normalize=False,
                                     source_path=str(path), sha256=combined_sha256({path.name: sha}),
                                     report=report)
    return table.clean()


class _Rows:
    """Collects recipes row by row, checking ids for duplicates."""

    def __init__(self, bad: BadLines) -> None:
        self.bad = bad
        self.ids: list[str] = []
        self.sets: list[list[str]] = []
        self.cuisines: list[str | None] = []
        self.seen: set[str] = set()

    def add(self, where: int | str, rid: str, ingredients: list[str], cuisine: str | None) -> None:
        if rid in self.seen:
            self.bad(where, f"duplicate recipe id {rid!r}")
            return
        self.seen.add(rid)
        self.ids.append(rid)
        self.sets.append(ingredients)
        self.cuisines.append(cuisine)


def _record_id(value: object) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


# ---- CSV ---------------------------------------------------------------------------------------------
def load_csv(path: str | os.PathLike, ingredients_column: str = "ingredients", delimiter: str = ";",
             cuisine_column: str | None = None, id_column: str | None = None, sep: str = ",",
             lenient: bool = False, name: str | None = None) -> RecipeTable:
    """A CSV with a header, one recipe per row; ingredients in one cell separated by ``delimiter``.

    ``cuisine_column``: None uses a ``cuisine`` column when there is one. ``id_column``: None numbers the
    recipes ``"<file stem>:<line>"``. ``sep`` is the CSV field separator.
    """
    path = Path(path)
    text, sha = read_text(path, "CSV file")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    try:
        header = next(reader)
    except csv.Error as e:
        raise RecipesetError(f"{path}:1: malformed CSV header ({e})") from None
    header = [h.strip() for h in header]
    col = {h: i for i, h in enumerate(header)}
    for what, c in (("ingredients", ingredients_column), ("cuisine", cuisine_column), ("id", id_column)):
        if c is not None and c not in col:
            raise RecipesetError(f"{path}:1: no {what} column {c!r} in the header (columns: {', '.join(header)}); "
                                 f"pass the right --{what}-column / {what}_column")
    if cuisine_column is None and "cuisine" in col:
        cuisine_column = "cuisine"
    i_ing, i_cu = col[ingredients_column], col.get(cuisine_column) if cuisine_column else None
    i_id = col[id_column] if id_column else None
    bad = BadLines(path, lenient)
    rows = _Rows(bad)
    stem = path.stem
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            bad(reader.line_num, f"malformed CSV ({e})")
            continue
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            bad(line, f"expected {len(header)} fields, found {len(row)}")
            continue
        if i_id is not None:
            rid = _record_id(row[i_id])
            if rid is None:
                bad(line, f"empty id in column {id_column!r}")
                continue
        else:
            rid = f"{stem}:{line}"
        cuisine = normalize_cuisine(row[i_cu]) if i_cu is not None else None
        rows.add(line, rid, split_cell(row[i_ing], delimiter), cuisine)
    return _finish(path, name or stem, stem, rows.ids, rows.sets, rows.cuisines, sha, bad)


# ---- JSON Lines --------------------------------------------------------------------------------------
def load_jsonl(path: str | os.PathLike, ingredients_column: str = "ingredients", delimiter: str = ";",
               cuisine_column: str | None = None, id_column: str | None = None, lenient: bool = False,
               name: str | None = None) -> RecipeTable:
    """One JSON object per line; ingredients a list of strings or a ``delimiter``-separated string.

    ``cuisine_column``: None reads ``cuisine`` when an object has it. Blank lines are ignored.
    """
    path = Path(path)
    text, sha = read_text(path, "JSON Lines file")
    bad = BadLines(path, lenient)
    rows = _Rows(bad)
    stem = path.stem
    cu_key = cuisine_column or "cuisine"
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            bad(line, f"not valid JSON ({e.msg})")
            continue
        _add_object(rows, bad, line, obj, ingredients_column, delimiter, cu_key, id_column, f"{stem}:{line}")
    return _finish(path, name or stem, stem, rows.ids, rows.sets, rows.cuisines, sha, bad)


def _add_object(rows: _Rows, bad: BadLines, where: int | str, obj: object, ingredients_column: str,
                delimiter: str, cu_key: str, id_column: str | None, default_id: str) -> None:
    if not isinstance(obj, dict):
        bad(where, f"expected a JSON object, found {type(obj).__name__}")
        return
    if ingredients_column not in obj:
        bad(where, f"no {ingredients_column!r} key (keys: {', '.join(map(str, obj)) or 'none'})")
        return
    ingredients = _ingredients_value(obj[ingredients_column], delimiter)
    if isinstance(ingredients, str):
        bad(where, ingredients)
        return
    if id_column is not None:
        rid = _record_id(obj.get(id_column))
        if rid is None:
            bad(where, f"missing or empty id {id_column!r}")
            return
    else:
        rid = default_id
    cuisine = obj.get(cu_key)
    if cuisine is not None and not isinstance(cuisine, (str, int)):
        bad(where, f"cuisine must be a string, not {type(cuisine).__name__}")
        return
    rows.add(where, rid, ingredients, normalize_cuisine(cuisine))


# ---- JSON --------------------------------------------------------------------------------------------
def load_json(path: str | os.PathLike, ingredients_column: str = "ingredients", delimiter: str = ";",
              cuisine_column: str | None = None, id_column: str | None = None, lenient: bool = False,
              name: str | None = None, source: str | None = None) -> RecipeTable:
    """A JSON file holding a list of recipe objects (the Kaggle "What's Cooking" layout).

    Errors name the item (0-based) since JSON items have no line of their own.
    """
    path = Path(path)
    text, sha = read_text(path, "JSON file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecipesetError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise RecipesetError(f"{path}: expected a JSON list of recipe objects, found a {type(data).__name__}")
    bad = BadLines(path, lenient)
    rows = _Rows(bad)
    stem = path.stem
    cu_key = cuisine_column or "cuisine"
    for i, obj in enumerate(data):
        _add_object(rows, bad, f"item {i}", obj, ingredients_column, delimiter, cu_key, id_column, f"{stem}:{i}")
    return _finish(path, name or stem, source or stem, rows.ids, rows.sets, rows.cuisines, sha, bad)
