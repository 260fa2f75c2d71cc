"""The README stays true where it can be derived: its "what runs with what" table is the registries', and the
outputs its first examples show are what the main job's model answers."""

from __future__ import annotations

import ast
import io
import re
import shlex
import tokenize
from pathlib import Path

import pytest
from helpers import ok

from recipeset.registry import what_runs_with_what

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_the_registries():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- what-runs-with-what:[^\n]*-->\n(.*?)\n<!-- /what-runs-with-what -->", text, re.S)
    assert block is not None, "README lost its generated 'what runs with what' block"
    assert block.group(1) == what_runs_with_what(), "regenerate it with: python -m recipeset.registry"


def code_block(after: str, lang: str) -> str:
    """The first ```lang block of the README after the line starting with ``after``."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n" + after)
    match = re.compile(rf"^```{lang}\n(.*?)^```", re.S | re.M).search(text, start)
    assert match is not None, f"no ```{lang} block after {after!r}"
    return match.group(1)


def commented_statements(source: str) -> list[tuple[ast.stmt, str | None]]:
    """The top-level statements of ``source``, each with the comment on its last line, else on a line of its own
    right after it (None without one)."""
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}

    def comment(stmt: ast.stmt) -> str | None:
        below = stmt.end_lineno + 1
        alone = below <= len(lines) and lines[below - 1].lstrip().startswith("#")
        return comments.get(stmt.end_lineno) or (comments.get(below) if alone else None)

    return [(stmt, comment(stmt)) for stmt in ast.parse(source).body]


def run_python_block(source: str) -> int:
    """Run the block statement by statement; an expression statement's comment must begin with the repr of its
    value (then two spaces before any remark). Returns how many values were checked."""
    namespace: dict = {}
    checked = 0
    for stmt, comment in commented_statements(source):
        code = ast.unparse(stmt)
        if not isinstance(stmt, ast.Expr):
            exec(compile(code, "README.md", "exec"), namespace)
            continue
        value = eval(compile(code, "README.md", "eval"), namespace)
        assert comment is not None, f"{code}: the README shows no result for it"
        assert repr(value) == comment.split("  ")[0], f"{code}: the README says {comment!r}, it gives {value!r}"
        checked += 1
    return checked


@pytest.mark.slow  # trains the main job: a minute or more
def test_readme_first_examples_are_what_the_main_job_answers(mlflow_uri):
    """`recipeset train` as the README's first command runs it, then the commands and the Python block shown
    after it, in the run's working directory: each shows what the README says it shows."""
    ok("train")
    commands = [shlex.split(line)[1:] for line in code_block("After `recipeset train`:", "bash").splitlines()
                if line.startswith(".venv/bin/recipeset complete")]
    assert len(commands) == 2
    shown = "".join(ok(*args).stdout for args in commands)
    assert shown == code_block("After `recipeset train`:", "text")
    assert run_python_block(code_block("The same from Python:", "python")) >= 5
