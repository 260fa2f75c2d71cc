"""The flavornet corpus (Ahn et al., "Flavor network and the principles of food pairing", Sci. Rep. 2011).

Files (tab-separated, UTF-8): ``allr_recipes.txt`` / ``epic_recipes.txt`` / ``menu_recipes.txt`` hold one
recipe a line (``cuisine<TAB>ingredient<TAB>...``); ``map.txt`` maps the 69 cuisine labels to 11 regions
(``Asian``/``asian`` map to nothing: their 1,193 recipes are dropped by default, leaving the paper's
56,498); ``ingr_info.tsv``, ``comp_info.tsv``, ``ingr_comp.tsv`` give each ingredient's flavor compounds.

The data is CC BY-NC-SA 3.0 and never ships with the package: it is read from a local directory
(``path``, else ``$RECIPESET_FLAVORNET_DIR``, else ``<data dir>/flavornet`` with data dir
``$RECIPESET_DATA_DIR`` or ``./data``) or downloaded there with :func:`download_flavornet`, which checks
every file against the SHA-256 pinned in ``recipeset/resources/flavornet.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path

import numpy as np

from recipeset.data.sources.tabular import BadLines, read_text
from recipeset.data.table import CleaningReport, RecipeTable, combined_sha256, normalize_ingredient
from recipeset.data.vocab import Vocabulary
from recipeset.errors import RecipesetError
from recipeset.io_utils import sha256_file

RECIPE_FILES = {"allr_recipes.txt": ("allr", "allrecipes"),
                "epic_recipes.txt": ("epic", "epicurious"),
                "menu_recipes.txt": ("menu", "menupan")}
MAP_FILE = "map.txt"
COMPOUND_FILES = ("ingr_info.tsv", "comp_info.tsv", "ingr_comp.tsv")
REQUIRED = (*RECIPE_FILES, MAP_FILE)
HINT = ("run `recipeset data download flavornet`, pass --path DIR (path=...) or set RECIPESET_FLAVORNET_DIR "
        "to a directory holding the flavornet files")
OFFLINE_HINT = "pass --path DIR (path=...) or set RECIPESET_FLAVORNET_DIR to a directory that already holds the files"


@functools.cache
def manifest() -> dict:
    """The pinned download locations and SHA-256 of every file (``recipeset/resources/flavornet.json``)."""
    text = resources.files("recipeset").joinpath("resources", "flavornet.json").read_text(encoding="utf-8")
    return json.loads(text)


def data_dir() -> Path:
    """The local data directory: ``$RECIPESET_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get("RECIPESET_DATA_DIR") or "data")


def candidate_dirs(path: str | os.PathLike | None = None) -> list[Path]:
    """Where flavornet is looked for, in order: ``path`` alone if given, else the env var, else the cache."""
    if path is not None:
        return [Path(path)]
    dirs = []
    if os.environ.get("RECIPESET_FLAVORNET_DIR"):
        dirs.append(Path(os.environ["RECIPESET_FLAVORNET_DIR"]))
    dirs.append(data_dir() / "flavornet")
    return dirs


def find_flavornet(path: str | os.PathLike | None = None, files: Iterable[str] = REQUIRED) -> Path:
    """The first candidate directory holding all ``files``; otherwise an error naming what was tried."""
    files = tuple(files)
    tried = []
    for d in candidate_dirs(path):
        missing = [f for f in files if not (d / f).is_file()]
        if not missing:
            return d
        tried.append(f"{d} (missing {', '.join(missing)})" if d.is_dir() else f"{d} (no such directory)")
    raise RecipesetError(f"flavornet data not found; tried {'; '.join(tried)}; {HINT}")


# ---- download ----------------------------------------------------------------------------------------
def _fetch(url: str, dest: Path, expected: str, timeout: float) -> None:
    """Stream ``url`` into a temp file next to ``dest``, check its SHA-256, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    while block := resp.read(1 << 16):
                        h.update(block)
                        out.write(block)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise RecipesetError(f"could not download {url} ({reason}); "
                                     f"check the network, or {OFFLINE_HINT}") from None
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != expected:
            raise RecipesetError(f"{dest.name}: SHA-256 mismatch for {url} (expected {expected}, got {got}); "
                                 f"the download was discarded — delete any partial copy and retry, or {OFFLINE_HINT}")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def download_flavornet(dest_dir: str | os.PathLike | None = None, base_url: str | None = None,
                       files: Iterable[str] | None = None, checksums: Mapping[str, str] | None = None,
                       timeout: float = 60.0, force: bool = False,
                       progress: Callable[[str], None] | None = None) -> Path:
    """Download the flavornet files into ``dest_dir`` (default: the first candidate directory) and verify them.

    Files already present with the pinned SHA-256 are kept (unless ``force``). ``base_url`` (or
    ``$RECIPESET_FLAVORNET_URL``) replaces the pinned mirrors — any URL ``urllib`` opens, e.g. ``file:///dir/``
    or ``http://127.0.0.1:8000/``. ``checksums`` overrides the pinned hashes (tests). Returns ``dest_dir``.
    """
    info = manifest()
    checksums = dict(info["files"] if checksums is None else checksums)
    names = list(checksums) if files is None else list(files)
    unknown = [n for n in names if n not in checksums]
    if unknown:
        raise RecipesetError(f"flavornet has no file(s) {unknown}; known: {', '.join(checksums)}")
    base_url = base_url or os.environ.get("RECIPESET_FLAVORNET_URL")
    bases = [base_url] if base_url else list(info["mirrors"])
    dest = Path(dest_dir) if dest_dir is not None else candidate_dirs()[0]
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecipesetError(f"{dest}: cannot create the download directory ({e.strerror or e})") from None
    for name in names:
        target = dest / name
        if not force and target.is_file() and sha256_file(target) == checksums[name]:
            if progress:
                progress(f"{name}: present, checksum ok")
            continue
        errors: list[RecipesetError] = []
        for base in bases:
            url = base.rstrip("/") + "/" + name
            try:
                _fetch(url, target, checksums[name], timeout)
                break
            except RecipesetError as e:
                errors.append(e)
        else:
            extra = f" ({len(errors) - 1} more mirror(s) failed too)" if len(errors) > 1 else ""
            raise RecipesetError(f"{errors[0]}{extra}")
        if progress:
            progress(f"{name}: downloaded, checksum ok")
    return dest


# ---- parsing -----------------------------------------------------------------------------------------
def verify_files(directory: Path, names: Iterable[str]) -> dict[str, str]:
    """``{name: sha256}``; a file that differs from the pinned hash is an error."""
    pinned = manifest()["files"]
    out = {}
    for name in names:
        got = sha256_file(directory / name)
        if name in pinned and got != pinned[name]:
            raise RecipesetError(f"{directory / name}: SHA-256 mismatch (expected {pinned[name]}, got {got}); "
                                 f"delete it and run `recipeset data download flavornet` again "
                                 "(or, to use a modified copy, --option verify=false / data.options.verify = false "
                                 "in a run config)")
        out[name] = got
    return out


def _parse_map(path: Path, bad: BadLines) -> dict[str, str | None]:
    text, _ = read_text(path, "flavornet map file")
    mapping: dict[str, str | None] = {}
    for line_no, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip():
            bad(line_no, "expected 'cuisine<TAB>region'")
            continue
        # An empty region (``Asian\t``) marks a label the authors deliberately left unmapped.
        mapping[fields[0].strip()] = fields[1].strip() or None
    return mapping


def _parse_recipes(path: Path, prefix: str, bad: BadLines, norm: dict[str, str]
                   ) -> tuple[list[str], list[list[str]], list[str]]:
    text, _ = read_text(path, "flavornet recipe file")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    ids, sets, labels = [], [], []
    for line_no, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\t ")
        if not line.strip():
            bad(line_no, "blank line, expected 'cuisine<TAB>ingredient<TAB>...'")
            continue
        fields = line.split("\t")
        label = fields[0].strip()
        if not label:
            bad(line_no, "empty cuisine field")
            continue
        names = []
        for f in fields[1:]:
            n = norm.get(f)
            if n is None:
                n = norm[f] = normalize_ingredient(f)
            names.append(n)
        if "" in names:
            bad(line_no, "empty ingredient field (two tabs in a row?)")
            continue
        ids.append(f"{prefix}:{line_no}")
        sets.append(names)
        labels.append(label)
    return ids, sets, labels


def load_flavornet(path: str | os.PathLike | None = None, lenient: bool = False, keep_unmapped: bool = False,
                   download: bool = False, verify: bool = True, base_url: str | None = None) -> RecipeTable:
    """The flavornet recipes with cuisines collapsed to the 11 regions of ``map.txt``.

    Default result: 56,498 recipes, 381 ingredients, 11 cuisines; recipe ids ``allr:<line>`` /
    ``epic:<line>`` / ``menu:<line>``; source ``allrecipes`` / ``epicurious`` / ``menupan``.
    ``keep_unmapped`` keeps the 1,193 ``Asian``/``asian`` recipes with cuisine None. ``download`` fetches
    missing files first. ``verify`` checks the files against the pinned SHA-256 (turn off for a modified copy).
    """
    try:
        directory = find_flavornet(path)
    except RecipesetError:
        if not download:
            raise
        directory = download_flavornet(candidate_dirs(path)[0], base_url=base_url,
                                       files=[*REQUIRED, *COMPOUND_FILES])
    hashes = verify_files(directory, REQUIRED) if verify else {n: sha256_file(directory / n) for n in REQUIRED}
    map_bad = BadLines(directory / MAP_FILE, lenient)
    mapping = _parse_map(directory / MAP_FILE, map_bad)
    report = CleaningReport()
    map_bad.add_to(report)
    ids: list[str] = []
    sets: list[list[str]] = []
    labels: list[str] = []
    sources: list[str] = []
    norm: dict[str, str] = {}
    for name, (prefix, source) in RECIPE_FILES.items():
        bad = BadLines(directory / name, lenient)
        i, s, lab = _parse_recipes(directory / name, prefix, bad, norm)
        bad.add_to(report)
        ids += i
        sets += s
        labels += lab
        sources += [source] * len(i)
    if not ids:
        raise RecipesetError(f"{directory}: the flavornet recipe files hold no recipes")
    table = RecipeTable.from_records(sets, labels, ids, source=sources, name="flavornet", normalize=False,
                                     source_path=str(directory), sha256=combined_sha256(hashes), report=report)
    return table.map_cuisines(mapping, keep_unmapped=keep_unmapped, where=MAP_FILE).clean()


def flavornet_compound_features(vocab: Vocabulary, path: str | os.PathLike | None = None) -> np.ndarray:
    """Each vocabulary item's binary flavor-compound profile, float32 ``[len(vocab), n_compounds]``.

    Column ``j`` is compound id ``j`` of ``comp_info.tsv`` (ids sorted). Special tokens and ingredients
    without compounds (or missing from ``ingr_info.tsv``) get zero rows. For the models' feature-input
    embedding (``input_features``).
    """
    directory = find_flavornet(path, COMPOUND_FILES)
    ingr_names: dict[int, str] = {}
    for line_no, fields in _tsv_rows(directory / "ingr_info.tsv", 3):
        try:
            ingr_names[int(fields[0])] = normalize_ingredient(fields[1])
        except ValueError:
            raise RecipesetError(f"{directory / 'ingr_info.tsv'}:{line_no}: ingredient id is not an integer") from None
    comp_ids = []
    for line_no, fields in _tsv_rows(directory / "comp_info.tsv", 3):
        try:
            comp_ids.append(int(fields[0]))
        except ValueError:
            raise RecipesetError(f"{directory / 'comp_info.tsv'}:{line_no}: compound id is not an integer") from None
    column = {c: j for j, c in enumerate(sorted(set(comp_ids)))}
    row_of_name = {name: vocab.num_specials + i for i, name in enumerate(vocab.ingredients)}
    rows, cols = [], []
    for line_no, fields in _tsv_rows(directory / "ingr_comp.tsv", 2):
        try:
            ingr, comp = int(fields[0]), int(fields[1])
        except ValueError:
            raise RecipesetError(f"{directory / 'ingr_comp.tsv'}:{line_no}: ids are not integers") from None
        if comp not in column:
            raise RecipesetError(f"{directory / 'ingr_comp.tsv'}:{line_no}: compound {comp} is not in comp_info.tsv")
        row = row_of_name.get(ingr_names.get(ingr, ""))
        if row is not None:
            rows.append(row)
            cols.append(column[comp])
    features = np.zeros((len(vocab), len(column)), dtype=np.float32)
    features[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = 1.0
    return features


def _tsv_rows(path: Path, n_fields: int) -> Iterable[tuple[int, list[str]]]:
    """``(line number, fields)`` of a ``#``-headed TSV file, checking the field count."""
    text, _ = read_text(path, "flavornet table")
    for line_no, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != n_fields:
            raise RecipesetError(f"{path}:{line_no}: expected {n_fields} tab-separated fields, found {len(fields)}")
        yield line_no, fields
