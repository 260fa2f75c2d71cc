"""Small file helpers: atomic writes (never leave a half-written file), checksums, an exclusive file lock, the
file-system errors a user can fix (a full disk, a read-only or unwritable place) as one line, and JSON / TOML
parsing whose every failure is the parser's own decode error."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from recipeset.errors import RecipesetError

# Why a write failed, in words, for the errors the user can fix; any other OSError is a bug and stays one.
WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a directory", errno.EEXIST: "a file of that name exists",
}
VIRTUAL_FILESYSTEMS = (Path("/proc"), Path("/sys"))  # the kernel's views, never storage


@contextlib.contextmanager
def write_errors(what: str, fix: str) -> Iterator[None]:
    """Turn a full disk or a permission problem raised inside the block into one :class:`RecipesetError` line:
    ``<what> (<why>); <fix>``. Any other ``OSError`` passes through unchanged."""
    try:
        yield
    except OSError as e:
        why = WRITE_FAILURES.get(e.errno)
        if why is None:
            raise
        raise RecipesetError(f"{what} ({why}); {fix}") from None


def check_writable_dir(path: str | os.PathLike, what: str, fix: str, min_free_mb: float = 0) -> Path:
    """Prove, before any work is done, that the directory ``path`` can be written (or created) and has
    ``min_free_mb`` MB free; nothing is left behind (a probe file is created and removed in ``path``, or in the
    nearest existing directory above it).

    A path under /proc or /sys, under a regular file, on a read-only file system, without write permission, or
    with too little room is one :class:`RecipesetError` line naming ``what`` and ``path`` and ending with
    ``fix``. Returns the path."""
    path = Path(path)
    real = path.resolve()
    for virtual in VIRTUAL_FILESYSTEMS:
        if real.is_relative_to(virtual):
            raise RecipesetError(f"{what} {path}: {virtual} is the kernel's virtual file system, not storage; {fix}")
    existing = real
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RecipesetError(f"{what} {path}: {existing} is a file, not a directory; {fix}")
    with write_errors(f"{what} {path}: cannot write " + ("there" if existing == real else f"in {existing}"), fix):
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    free_mb = shutil.disk_usage(existing).free / 2**20
    if free_mb < min_free_mb:
        raise RecipesetError(f"{what} {path}: {free_mb:.1f} MB free on its disk, at least {min_free_mb:g} MB needed; "
                             f"free some space or {fix}")
    return path


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a Python file, so a full disk raises ``OSError(ENOSPC)`` (torch's own writer, given
    a path, reports it as an obscure ``RuntimeError``)."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)


def parse_json(text: str) -> Any:
    """``json.loads(text)``, every failure a ``json.JSONDecodeError`` (with its line): also a number longer than
    Python's int-string limit (4300 digits) and nesting deeper than the recursion limit, which ``json.loads``
    raises as ValueError and RecursionError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError:
        raise json.JSONDecodeError(_too_long(), text, _long_number(text)) from None
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, _deepest(text)) from None


def parse_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads(text)``, every failure a ``tomllib.TOMLDecodeError`` ending "(at line N, ...)" as tomllib's
    own: also a number longer than 4300 digits and nesting deeper than the recursion limit."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise
    except ValueError:
        pos, what = _long_number(text), _too_long()
    except RecursionError:
        pos, what = _deepest(text), "nested too deeply"
    raise tomllib.TOMLDecodeError(f"{what} (at line {text.count(chr(10), 0, pos) + 1})")


def _too_long() -> str:
    return f"a number longer than {sys.get_int_max_str_digits()} digits"


def _long_number(text: str) -> int:
    """Where the first run of digits longer than the int-string limit starts (0 if none)."""
    match = re.search(rf"\d{{{sys.get_int_max_str_digits() + 1},}}", text)
    return match.start() if match else 0


def _deepest(text: str) -> int:
    """Where the bracket nesting of ``text`` (outside double-quoted strings) is deepest."""
    depth = best = where = 0
    quoted = escaped = False
    for i, ch in enumerate(text):
        if quoted:
            quoted, escaped = (ch != '"' or escaped), (ch == "\\" and not escaped)
        elif ch == '"':
            quoted = True
        elif ch in "[{":
            depth += 1
            if depth > best:
                best, where = depth, i
        elif ch in "]}":
            depth -= 1
    return where


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_in_background(data: bytes) -> Callable[[], str]:
    """Start hashing ``data`` on a thread (hashlib lets go of the GIL on large buffers, so a parse can run
    meanwhile); the returned function waits for the hex digest."""
    box: list[str] = []
    thread = threading.Thread(target=lambda: box.append(hashlib.sha256(data).hexdigest()), daemon=True,
                              name="recipeset-sha256")
    thread.start()

    def result() -> str:
        thread.join()
        return box[0]

    return result


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_dir(path: Path, fill: Callable[[Path], None]) -> None:
    """Build a directory in a temporary sibling with ``fill(tmpdir)``, then swap it in.

    A crash at any point leaves either the old directory or the new one, never a mixture.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = path.with_name(f".{path.name}.old")
    moved = False
    try:
        fill(tmp)
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            moved = True
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved and not path.exists():  # the swap itself failed: put the old directory back
            os.replace(old, path)
        raise
    if moved:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed, left in place) for the block: processes — and
    threads, each opening the file itself — that take it on the same file run the block one at a time. POSIX
    ``flock``: released by the kernel when the holder dies, so a killed process never leaves it taken."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
