"""Generic recipe files: CSV, JSON Lines and JSON (a list of objects), one recipe per row/object.

Shared with the other loaders: strict UTF-8 reading with line-numbered errors, and :class:`BadLines`,
which raises on the first malformed line (strict) or skips and counts them (lenient).

Ingredient names are collected raw and normalised once per distinct string (``CodedSets.from_raw``). A CSV
without quote characters, NUL bytes or lone carriage returns (the common case, and every large file) is
parsed with pyarrow string kernels in chunks (:func:`_parse_simple_csv`); anything else goes through the
``csv`` module row by row. Both give the same recipes, ids, errors and report.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recipeset.data.table import CleaningReport, CodedSets, RecipeTable, combined_sha256, normalize_cuisine
from recipeset.errors import RecipesetError, shown
from recipeset.io_utils import parse_json, sha256_in_background

# What str.strip()/str.split() treat as whitespace (str.isspace), as an RE2 character class.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                 "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_WS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE) + "]"
CHUNK_BYTES = 1 << 23  # the simple-CSV parser works on ~8 MiB of lines at a time


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


def read_data(path: Path, what: str = "file", allow_empty: bool = False) -> tuple[bytes, str]:
    """``(bytes, sha256)`` of a file; an empty (or all-whitespace) file is an error unless ``allow_empty``."""
    data = _read_recipes(path, what, allow_empty)
    return data, hashlib.sha256(data).hexdigest()


def read_data_hashing(path: Path, what: str = "file", allow_empty: bool = False) -> tuple[bytes, Callable[[], str]]:
    """:func:`read_data` with the hash computed on a thread while the caller parses (a function waits for it):
    for the large files the CSV loader parses with pyarrow."""
    data = _read_recipes(path, what, allow_empty)
    return data, sha256_in_background(data)


def _read_recipes(path: Path, what: str, allow_empty: bool) -> bytes:
    data = read_bytes(path, what)
    if not allow_empty and (not data or data.isspace()):
        raise RecipesetError(f"{path}: empty file, expected recipes")
    return data


def read_text(path: Path, what: str = "file", allow_empty: bool = False) -> tuple[str, str]:
    """``(text, sha256)`` of a UTF-8 file; an empty file is an error unless ``allow_empty``."""
    data, sha = read_data(path, what, allow_empty)
    return decode_utf8(data, Path(path)), sha


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
            raise RecipesetError(f"{where}: {message} (--lenient, or data.lenient = true in a run config, skips "
                                 "bad lines)")
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(f"{self.path.name}:{line}: {message}")

    def add_to(self, report: CleaningReport) -> None:
        report.add("skipped_lines", self.count, f"malformed lines skipped in lenient mode ({self.path.name})",
                   self.examples)


def _ingredients_value(value: object, delimiter: str) -> list[str] | str:
    """A JSON ingredients value -> raw names (normalised later), or an error message string."""
    if isinstance(value, str):
        return value.split(delimiter)
    if isinstance(value, list):
        if not all(isinstance(x, str) for x in value):
            return "ingredients list holds a non-string"
        return value
    return f"ingredients must be a list of strings or a delimited string, not {type(value).__name__}"


def _finish(path: Path, name: str, source: str, ids: list[str] | np.ndarray, coded: CodedSets,
            cuisines: list[str | None] | np.ndarray, sha: str, bad: BadLines) -> RecipeTable:
    """The cleaned table of a file's recipes (ids already checked unique), with the skipped lines reported."""
    if not len(ids):
        raise RecipesetError(f"{path}: no recipes (every line was skipped or the file holds none)")
    report = CleaningReport()
    bad.add_to(report)
    table = RecipeTable.from_coded(coded, ids, cuisines, source, name=name, source_path=str(path),
                                   sha256=combined_sha256({path.name: sha}), report=report, check_ids=False)
    return table.clean()


class _Rows:
    """Collects recipes row by row (raw ingredient names, flat), checking ids for duplicates."""

    def __init__(self, bad: BadLines) -> None:
        self.bad = bad
        self.ids: list[str] = []
        self.pieces: list[str] = []
        self.lengths: list[int] = []
        self.cuisines: list[str | None] = []
        self.seen: set[str] = set()

    def add(self, where: int | str, rid: str, ingredients: list[str], cuisine: str | None) -> None:
        if rid in self.seen:
            self.bad(where, f"duplicate recipe id {rid!r}")
            return
        self.seen.add(rid)
        self.ids.append(rid)
        self.pieces.extend(ingredients)
        self.lengths.append(len(ingredients))
        self.cuisines.append(cuisine)

    def finish(self, path: Path, name: str, source: str, sha: str) -> RecipeTable:
        coded = CodedSets.from_raw(self.pieces, self.lengths)
        return _finish(path, name, source, self.ids, coded, self.cuisines, sha, self.bad)


def check_separators(path: Path, delimiter: str, sep: str = ",") -> None:
    """The ingredient ``delimiter`` is not empty (``str.split`` refuses it), the CSV field ``sep`` one character
    (what the csv module takes). The options' types are load_dataset's to check."""
    if not delimiter:
        raise RecipesetError(f"{path}: option delimiter: must not be empty (e.g. ';')")
    if len(sep) != 1:
        raise RecipesetError(f"{path}: option sep: the CSV field separator must be one character (e.g. ','), "
                             f"not {shown(sep)}")


def _record_id(value: object) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


# ---- CSV ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _CsvLayout:
    """A CSV's columns, from its header, and the options that shape a data row."""

    path: Path
    n_fields: int
    i_ing: int
    i_cu: int | None
    i_id: int | None
    id_column: str | None
    sep: str
    delimiter: str


def _csv_layout(path: Path, header: list[str], ingredients_column: str, cuisine_column: str | None,
                id_column: str | None, sep: str, delimiter: str) -> _CsvLayout:
    header = [h.strip() for h in header]
    col = {h: i for i, h in enumerate(header)}
    for what, c in (("ingredients", ingredients_column), ("cuisine", cuisine_column), ("id", id_column)):
        if c is not None and c not in col:
            raise RecipesetError(f"{path}:1: no {what} column {c!r} in the header (columns: {', '.join(header)}); "
                                 f"name yours with --option {what}_column=NAME (data.options.{what}_column in a run "
                                 "config)")
    if cuisine_column is None and "cuisine" in col:
        cuisine_column = "cuisine"
    return _CsvLayout(path, len(header), col[ingredients_column], col.get(cuisine_column) if cuisine_column else None,
                      col[id_column] if id_column else None, id_column, sep, delimiter)


def load_csv(path: str | os.PathLike, ingredients_column: str = "ingredients", delimiter: str = ";",
             cuisine_column: str | None = None, id_column: str | None = None, sep: str = ",",
             lenient: bool = False, name: str | None = None) -> RecipeTable:
    """A CSV with a header, one recipe per row; ingredients in one cell separated by ``delimiter``.

    ``cuisine_column``: None uses a ``cuisine`` column when there is one. ``id_column``: None numbers the
    recipes ``"<file stem>:<line>"``. ``sep`` is the CSV field separator.
    """
    path = Path(path)
    check_separators(path, delimiter, sep)
    data, sha = read_data_hashing(path, "CSV file")
    simple = _is_simple_csv(data, sep, delimiter)
    header_end = data.find(b"\n") + 1 or len(data)
    reader = csv.reader(io.StringIO(decode_utf8(data[:header_end] if simple else data, path), newline=""),
                        delimiter=sep, strict=True)
    try:
        header = next(reader)
    except csv.Error as e:
        raise RecipesetError(f"{path}:1: malformed CSV header ({e})") from None
    layout = _csv_layout(path, header, ingredients_column, cuisine_column, id_column, sep, delimiter)
    bad = BadLines(path, lenient)
    if simple:
        parsed = _parse_simple_csv(data, header_end, layout)
        if parsed is not None:
            del data  # the file's bytes are no longer needed while the table is built
            return _simple_csv_table(parsed, layout, bad, name or path.stem, sha())
        reader = csv.reader(io.StringIO(decode_utf8(data, path), newline=""), delimiter=sep, strict=True)
        next(reader)
    rows = _Rows(bad)
    _read_csv_rows(reader, layout, rows)
    return rows.finish(path, name or path.stem, path.stem, sha())


def _read_csv_rows(reader, layout: _CsvLayout, rows: _Rows) -> None:
    """The data rows of ``reader`` (past the header) into ``rows``, malformed ones to ``rows.bad``."""
    stem = layout.path.stem
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            rows.bad(reader.line_num, f"malformed CSV ({e})")
            continue
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != layout.n_fields:
            rows.bad(line, f"expected {layout.n_fields} fields, found {len(row)}")
            continue
        if layout.i_id is not None:
            rid = _record_id(row[layout.i_id])
            if rid is None:
                rows.bad(line, f"empty id in column {layout.id_column!r}")
                continue
        else:
            rid = f"{stem}:{line}"
        cuisine = normalize_cuisine(row[layout.i_cu]) if layout.i_cu is not None else None
        rows.add(line, rid, row[layout.i_ing].split(layout.delimiter), cuisine)


# ---- CSV without quoting: pyarrow string kernels on chunks of lines -------------------------------------
def _is_simple_csv(data: bytes, sep: str, delimiter: str) -> bool:
    """True when every physical line is one record and the ``csv`` module would split it on ``sep`` alone:
    no quote character, no NUL, every carriage return part of a CRLF; valid UTF-8 (else the row-by-row
    reader reports the line)."""
    if len(sep) != 1 or sep in '"\r\n\x00' or not delimiter or "\r" in delimiter:
        return False
    if b'"' in data or b"\x00" in data:
        return False
    cr = data.count(b"\r") if b"\r" in data else 0
    if cr and cr != data.count(b"\r\n"):
        return False
    if data.isascii():
        return True
    try:
        _string_array(pa.py_buffer(data)).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _string_array(buf: pa.Buffer) -> pa.Array:
    """A one-element large_string array over ``buf`` (no copy)."""
    offsets = pa.py_buffer(np.array([0, buf.size], dtype=np.int64))
    return pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, buf])


@dataclass
class _Parsed:
    """What the simple-CSV parser gathers, chunk by chunk, before the table is built."""

    lines: list[np.ndarray] = field(default_factory=list)       # line number of each good row
    lengths: list[np.ndarray] = field(default_factory=list)     # raw pieces per good row
    pieces: list[np.ndarray] = field(default_factory=list)      # index of each piece into its chunk's dict
    distinct: list[list[str]] = field(default_factory=list)     # each chunk's distinct raw pieces
    cuisines: list[np.ndarray] = field(default_factory=list)    # normalised cuisine (object) per good row
    ids: list[pa.Array] = field(default_factory=list)           # stripped ids (id column only)
    bad: list[tuple[int, str]] = field(default_factory=list)    # (line, message) of every rejected row

    def reject(self, lines: np.ndarray, messages: list[str]) -> None:
        self.bad.extend(zip(lines.tolist(), messages, strict=True))

    @classmethod
    def merge(cls, parts: Iterable[_Parsed]) -> _Parsed:
        """The chunks of ``parts``, one after another."""
        out = cls()
        for part in parts:
            for f in fields(cls):
                getattr(out, f.name).extend(getattr(part, f.name))
        return out


def _parse_simple_csv(data: bytes, start: int, layout: _CsvLayout) -> _Parsed | None:
    """The data lines of ``data`` from byte ``start`` (line 2): all at once by ``pyarrow.csv`` when every
    one is a well-formed row (:func:`_parse_csv_arrow`), else ~8 MiB at a time by string kernels that find,
    number and report the bad ones; None when a line is longer than the ``csv`` module's field limit (then
    its reader has the last word)."""
    parsed = _parse_csv_arrow(data, layout)
    if parsed is not None:
        pa.default_memory_pool().release_unused()  # pyarrow's table, back to the system
        return parsed
    parsed = _Parsed()
    buf = pa.py_buffer(data)
    crlf = b"\r" in data
    line_no, pos = 2, start
    while pos < len(data):
        end = data.find(b"\n", min(pos + CHUNK_BYTES, len(data)) - 1) + 1 or len(data)
        lines = pc.split_pattern(_string_array(buf.slice(pos, end - pos)), "\n").flatten()
        if data[end - 1:end] == b"\n":
            lines = lines.slice(0, len(lines) - 1)  # the piece after the chunk's last newline
        if crlf:
            lines = pc.utf8_rtrim(lines, characters="\r")
        if len(lines) and pc.max(pc.binary_length(lines)).as_py() > csv.field_size_limit():
            return None
        _parse_lines(lines, line_no, layout, parsed)
        line_no, pos = line_no + len(lines), end
    pa.default_memory_pool().release_unused()  # the chunks' buffers, back to the system
    return parsed


def _parse_csv_arrow(data: bytes, layout: _CsvLayout) -> _Parsed | None:
    """The data lines parsed by ``pyarrow.csv`` (multi-threaded, ~8 MiB blocks) when every one is a row of the
    header's width and no field is longer than the ``csv`` module's limit, else None. Its rows are then the
    lines 2, 3, ... An empty line (skipped by the csv module) is a row of empty fields to pyarrow, so files
    with such a row go line by line, as do one-column files (where a line of whitespace is a row)."""
    if layout.n_fields < 2 or not layout.sep.isascii():
        return None
    names = [str(i) for i in range(layout.n_fields)]
    read = pacsv.ReadOptions(skip_rows=1, column_names=names, block_size=CHUNK_BYTES)
    parse = pacsv.ParseOptions(delimiter=layout.sep, quote_char=False, ignore_empty_lines=False)
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.large_string()), strings_can_be_null=False)
    try:
        table = pacsv.read_csv(pa.py_buffer(data), read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid:
        return None
    sizes = [pc.binary_length(c) for c in table.columns]
    if any((pc.max(n).as_py() or 0) > csv.field_size_limit() for n in sizes) or \
            pc.any(pc.equal(functools.reduce(pc.add, sizes), 0)).as_py():
        return None
    batches = table.to_batches()
    first_lines = np.cumsum([2] + [b.num_rows for b in batches]).tolist()
    with ThreadPoolExecutor(max_workers=pa.cpu_count()) as pool:  # numpy and pyarrow kernels release the GIL
        return _Parsed.merge(pool.map(_parse_batch, batches, first_lines, itertools.repeat(layout)))


def _parse_batch(batch: pa.RecordBatch, first_line: int, layout: _CsvLayout) -> _Parsed:
    """The rows of one block that ``pyarrow.csv`` read (lines ``first_line``, ...)."""
    parsed = _Parsed()
    _parse_rows(batch.column, np.arange(first_line, first_line + batch.num_rows, dtype=np.int64), layout, parsed)
    return parsed


def _column(fields: pa.ListArray, i: int) -> pa.Array:
    """Field ``i`` of every row of ``fields`` (each row has more than ``i``): a take, ~15x ``list_element``."""
    return fields.values.take(pc.add(fields.offsets.slice(0, len(fields)), i))


def _parse_lines(lines: pa.Array, first_line: int, layout: _CsvLayout, out: _Parsed) -> None:
    """One chunk of lines: blank lines skipped, rows of the wrong width rejected, the rest to :func:`_parse_rows`."""
    numbers = np.arange(first_line, first_line + len(lines), dtype=np.int64)
    fields = pc.split_pattern(lines, layout.sep)
    width = pc.list_value_length(fields).to_numpy()
    blank = width == 1  # of these, the lines of whitespace only (csv.reader: [] or one blank field)
    if blank.any():
        one_field = pc.match_substring_regex(lines.filter(pa.array(blank)), f"^{_WS}*$")
        blank[blank] = one_field.to_numpy(zero_copy_only=False)
    wrong = (width != layout.n_fields) & ~blank
    out.reject(numbers[wrong], [f"expected {layout.n_fields} fields, found {k}" for k in width[wrong].tolist()])
    good = ~blank & ~wrong
    fields = fields.filter(pa.array(good))
    _parse_rows(lambda i: _column(fields, i), numbers[good], layout, out)


def _parse_rows(column: Callable[[int], pa.Array], numbers: np.ndarray, layout: _CsvLayout, out: _Parsed) -> None:
    """Rows of the right width (``column(i)``: their field ``i``; ``numbers``: their lines): empty ids rejected,
    ingredient cells into dictionary-encoded raw pieces (:func:`_encode_cells`), cuisines normalised once per
    label."""
    cells = column(layout.i_ing)
    labels = column(layout.i_cu) if layout.i_cu is not None else None
    if layout.i_id is not None:
        ids = pc.replace_substring_regex(column(layout.i_id), f"^{_WS}+|{_WS}+$", "")
        empty = (pc.binary_length(ids).to_numpy() == 0)
        out.reject(numbers[empty], [f"empty id in column {layout.id_column!r}"] * int(empty.sum()))
        if empty.any():
            keep = pa.array(~empty)
            ids, cells, numbers = ids.filter(keep), cells.filter(keep), numbers[~empty]
            labels = labels.filter(keep) if labels is not None else None
        out.ids.append(ids)
    out.lines.append(numbers)
    lengths, indices, distinct = _encode_cells(cells, layout.delimiter)
    out.lengths.append(lengths)
    out.pieces.append(indices)
    out.distinct.append(distinct)
    if labels is None:
        out.cuisines.append(np.full(len(numbers), None, dtype=object))
    else:
        labels = pc.dictionary_encode(labels)
        normal = np.array([normalize_cuisine(x) for x in labels.dictionary.to_pylist()] + [None], dtype=object)
        out.cuisines.append(normal[labels.indices.to_numpy()])


def _encode_cells(cells: pa.Array, delimiter: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(pieces per cell, index of each piece into the distinct pieces, the distinct pieces)`` of cells cut at
    every ``delimiter`` as ``str.split`` cuts them.

    A one-byte delimiter is found by numpy in the cells' bytes, and the pieces are views of those bytes that
    keep it at their end (each but a cell's last): it is trimmed from the distinct pieces only. Longer ones go
    through ``split_pattern``."""
    if len(delimiter.encode()) != 1 or cells.null_count:
        split = pc.split_pattern(cells, delimiter)
        encoded = pc.dictionary_encode(split.flatten())
        return (pc.list_value_length(split).to_numpy(), encoded.indices.to_numpy(),
                encoded.dictionary.to_pylist())
    _, offsets, data = cells.buffers()
    data = data if data is not None else pa.py_buffer(b"")
    bounds = np.frombuffer(offsets, np.int64 if pa.types.is_large_string(cells.type) else np.int32)
    bounds = bounds[cells.offset:cells.offset + len(cells) + 1]
    ends = np.flatnonzero(np.frombuffer(data, np.uint8)[bounds[0]:bounds[-1]] == ord(delimiter))
    ends = ends.astype(bounds.dtype) + (bounds[0] + 1)  # where a piece ends, past its delimiter
    starts = np.concatenate([bounds, ends])
    starts.sort(kind="stable")  # two sorted runs: a merge
    encoded = pc.dictionary_encode(pa.Array.from_buffers(cells.type, len(starts) - 1,
                                                         [None, pa.py_buffer(starts), data]))
    lengths = np.diff(np.searchsorted(ends, bounds, side="right")) + 1
    return lengths, encoded.indices.to_numpy(), pc.utf8_rtrim(encoded.dictionary, characters=delimiter).to_pylist()


def _simple_csv_table(parsed: _Parsed, layout: _CsvLayout, bad: BadLines, name: str, sha: str) -> RecipeTable:
    """The table of the parsed chunks: duplicate ids rejected, rejected rows reported in line order."""
    lines = np.concatenate([np.zeros(0, dtype=np.int64), *parsed.lines])
    if layout.i_id is not None:
        ids = pa.concat_arrays([pa.array([], pa.large_string()), *parsed.ids]).to_numpy(zero_copy_only=False)
        repeated = pd.Series(ids, dtype=object).duplicated().to_numpy()
        parsed.reject(lines[repeated], [f"duplicate recipe id {r!r}" for r in ids[repeated].tolist()])
    else:
        numbers = pc.cast(pa.array(lines), pa.string())
        ids = pc.binary_join_element_wise(f"{layout.path.stem}:", numbers, "").to_numpy(zero_copy_only=False)
        repeated = np.zeros(len(ids), dtype=bool)
    for line, message in sorted(parsed.bad, key=lambda b: b[0]):
        bad(line, message)
    base = np.cumsum([0] + [len(d) for d in parsed.distinct])
    indices = np.concatenate([np.zeros(0, dtype=np.int32)]
                             + [p + np.int32(b) for p, b in zip(parsed.pieces, base[:-1].tolist(), strict=True)])
    coded = CodedSets.from_raw([x for d in parsed.distinct for x in d], np.concatenate([lines[:0], *parsed.lengths]),
                               indices=indices)
    keep = np.flatnonzero(~repeated)
    cuisines = np.concatenate([np.zeros(0, dtype=object), *parsed.cuisines])
    return _finish(layout.path, name, layout.path.stem, ids[keep], coded.take(keep), cuisines[keep], sha, bad)


# ---- JSON Lines --------------------------------------------------------------------------------------
def load_jsonl(path: str | os.PathLike, ingredients_column: str = "ingredients", delimiter: str = ";",
               cuisine_column: str | None = None, id_column: str | None = None, lenient: bool = False,
               name: str | None = None) -> RecipeTable:
    """One JSON object per line; ingredients a list of strings or a ``delimiter``-separated string.

    ``cuisine_column``: None reads ``cuisine`` when an object has it. Blank lines are ignored.
    """
    path = Path(path)
    check_separators(path, delimiter)
    text, sha = read_text(path, "JSON Lines file")
    bad = BadLines(path, lenient)
    rows = _Rows(bad)
    stem = path.stem
    cu_key = cuisine_column or "cuisine"
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = parse_json(raw)
        except json.JSONDecodeError as e:
            bad(line, f"not valid JSON ({e.msg})")
            continue
        _add_object(rows, bad, line, obj, ingredients_column, delimiter, cu_key, id_column, f"{stem}:{line}")
    return rows.finish(path, name or stem, stem, sha)


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
    check_separators(path, delimiter)
    text, sha = read_text(path, "JSON file")
    try:
        data = parse_json(text)
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
    return rows.finish(path, name or stem, source or stem, sha)
