"""The one exception type for user-facing errors.

Anything a user can cause (bad file, unknown name, wrong config key, missing dataset) raises
``RecipesetError`` with a one-line message that names the file/line or key and says what to do; the CLI
prints that line and exits non-zero instead of showing a traceback.
"""

# Control characters (C0, DEL, C1 — among them \n, \r, \v, \f, \x1c-\x1e, \x85) and the Unicode line and
# paragraph separators: what str.splitlines() or a terminal would break a message at.
_ESCAPES = {c: repr(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}


def one_line(text: str) -> str:
    """``text`` with line breaks and control characters escaped as Python writes them (``\\n``, ``\\x00``,
    ``\\u2028``), so it prints as one line whatever a file's header, key or value held."""
    return text.translate(_ESCAPES)


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters; never fails (an int too long to print, as
    Python refuses past 4300 digits, is described instead)."""
    try:
        text = repr(value)
    except ValueError:
        return f"<a {type(value).__name__} too long to print>"
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


class RecipesetError(Exception):
    """A user-facing error with a one-line, actionable message (control characters in it are escaped)."""

    exit_code = 1

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(str(message)))
