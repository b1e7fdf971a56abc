"""Check that a notebook edit is layout only: every changed code cell parses to the same Python as before.

    python -m tools.same_code solutions/03_algorithm.ipynb            # against the last commit (HEAD)
    python -m tools.same_code --against main solutions/*.ipynb book/*.ipynb

Useful after breaking long lines: comments, line breaks, parentheses and split string literals (adjacent
literals fold into one) leave the syntax tree unchanged. Both the solved cell and its exercise version
(stubs uncommented, see tools/notebooks.py) are compared, so a reflowed stub must stay valid Python.
A docstring whose text alone changed is reported as such; any other difference is an error (exit 1).
"""
from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys

from tools.notebooks import NotebookError, exercise_source

DOCSTRING_OWNERS = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def tree(source: str, drop_docstrings: bool = False) -> str:
    """ast.dump of a cell, IPython magics and shell lines (`%…`, `!…`) left out."""
    lines = [line for line in source.split("\n") if not line.lstrip().startswith(("%", "!"))]
    parsed = ast.parse("\n".join(lines))
    if drop_docstrings:
        for node in ast.walk(parsed):
            body = getattr(node, "body", None)
            if (isinstance(node, DOCSTRING_OWNERS) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                body[0] = ast.Pass()
    return ast.dump(parsed)


def same_code(before: str, after: str, drop_docstrings: bool = False) -> bool:
    """Whether two versions of a cell, solved and as exercise, have the same syntax tree."""
    try:
        return all(tree(old, drop_docstrings) == tree(new, drop_docstrings) for old, new in
                   ((before, after), (exercise_source(before), exercise_source(after))))
    except (SyntaxError, NotebookError):
        return False


def code_cells(text: str) -> dict[str, str]:
    """{cell id: source} of a stored notebook's code cells."""
    cells = json.loads(text)["cells"]
    return {cell["id"]: "".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"}


def compare(before: dict[str, str], after: dict[str, str], where: str) -> tuple[int, list[str], list[str]]:
    """(changed cells, docstring-only notes, errors) between two versions of a notebook's code cells."""
    if before.keys() != after.keys():
        return 0, [], [f"{where}: code cells added or removed: {sorted(before.keys() ^ after.keys())}"]
    changed = [cell for cell in before if before[cell] != after[cell]]
    notes, errors = [], []
    for cell in changed:
        if same_code(before[cell], after[cell]):
            continue
        if same_code(before[cell], after[cell], drop_docstrings=True):
            notes.append(f"{where}: cell {cell}: only a docstring's text changed")
        else:
            errors.append(f"{where}: cell {cell}: the code changed, not just its layout")
    return len(changed), notes, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", default="HEAD", help="git revision to compare with (default: HEAD)")
    parser.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    total, all_errors = 0, []
    for path in args.notebooks:
        old = subprocess.run(["git", "show", f"{args.against}:{path}"], capture_output=True, text=True)
        if old.returncode != 0:
            all_errors.append(f"{path}: not in {args.against}: {old.stderr.strip()}")
            continue
        with open(path, encoding="utf-8") as f:
            changed, notes, errors = compare(code_cells(old.stdout), code_cells(f.read()), path)
        total += changed
        all_errors += errors
        print(f"{path}: {changed} changed code cell(s), {len(errors)} with different code", *notes, *errors,
              sep="\n", flush=True)
    print(f"{total} changed code cell(s) in all; {len(all_errors)} problem(s)")
    return 1 if all_errors else 0


if __name__ == "__main__":
    sys.exit(main())
