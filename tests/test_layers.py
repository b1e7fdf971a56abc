"""The library's layers, enforced: imports point down (maths → model → training / analysis → plotting → checks →
notebooks), no module reaches into another's private names, and only utils/model.py imports transformer_lens."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {  # top-level name under utils/ → layer; a module may import from its own layer or below
    "data": 0, "metrics": 0, "fourier": 0, "stability": 0,
    "model": 1, "forward": 1,
    "train": 2, "original": 2, "mechanism": 2, "ablation": 2, "progress": 2, "outcomes": 2, "claims": 2, "pizza": 2,
    "why_slow": 2,
    "plotting": 3,
    "checks": 4,
}
TRAINING, PLOTTING = {"train"}, {"plotting"}  # analysis never imports training, and only notebooks draw


def _unit(path: Path) -> str | None:
    """utils/fourier.py → "fourier", utils/checks/ch02.py → "checks"; None outside utils/."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return (parts[1] if len(parts) > 1 and parts[1] != "__init__" else "") if parts[0] == "utils" else None


def _imports(tree: ast.AST) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every import, skipping `if TYPE_CHECKING:` blocks."""
    found, skip = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skip |= {id(inner) for part in node.body for inner in ast.walk(part)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
    return found


def problems(source: str, where: str, unit: str | None) -> list[str]:
    """What is wrong with the imports of one file (a utils unit, or None for tests/notebooks/benchmarks)."""
    out = []
    for module, names, line in _imports(ast.parse(source)):
        parts = module.split(".")
        if parts[0] == "transformer_lens" and where != "utils/model.py":
            out.append(f"{where}:{line}: imports transformer_lens; only utils/model.py may")
        if parts[0] != "utils":
            continue
        target = parts[1] if len(parts) > 1 else None
        targets = [target] if target else names  # `from utils import fourier, plotting`
        for name in targets:
            if name not in LAYERS or name == unit:
                continue
            if unit is not None and (LAYERS[name] > LAYERS[unit] or (name in TRAINING and LAYERS[unit] == 2)
                                     or (unit in TRAINING and LAYERS[name] == 2) or name in PLOTTING):
                out.append(f"{where}:{line}: utils.{unit} imports utils.{name} (an upward or sideways import)")
        if target and target != unit:
            out += [f"{where}:{line}: imports the private name {n} from {module}" for n in names if n.startswith("_")]
    return out


def _sources() -> list[tuple[str, str, str | None]]:
    """(source, path, unit) of every Python file and notebook code cell the layers apply to."""
    found = []
    for path in sorted(ROOT.glob("utils/**/*.py")) + sorted(ROOT.glob("benchmarks/*.py")):
        found.append((path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), _unit(path)))
    for path in sorted(ROOT.glob("solutions/*.ipynb")) + sorted(ROOT.glob("book/*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
        found.append((code, str(path.relative_to(ROOT)), None))
    return found


SOURCES = {where: (source, unit) for source, where, unit in _sources()}


@pytest.mark.parametrize("where", sorted(SOURCES))
def test_imports_point_down_the_layers(where):
    source, unit = SOURCES[where]
    assert not problems(source, where, unit)


def test_every_utils_module_has_a_layer():
    units = {_unit(p) for p in ROOT.glob("utils/**/*.py")} - {""}
    assert units <= set(LAYERS), f"give these a layer in LAYERS: {sorted(units - set(LAYERS))}"


@pytest.mark.parametrize("source, unit, complaint", [
    ("from utils.train import loss_fn", "ablation", "upward or sideways"),  # analysis → training
    ("from utils import mechanism", "fourier", "upward or sideways"),  # maths → analysis
    ("import utils.plotting", "progress", "upward or sideways"),  # analysis → plotting
    ("from utils.model import _load_tensor_file", "train", "private name"),
    ("import transformer_lens", "fourier", "transformer_lens"),
])
def test_a_planted_bad_import_is_caught(source, unit, complaint):
    found = problems(source, f"utils/{unit}.py", unit)
    assert found and complaint in found[0]


def test_imports_for_type_checking_only_do_not_count():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from utils.model import HookedTransformer\n"
    assert not problems(source, "utils/fourier.py", "fourier")


def _long_functions(source: str) -> list[tuple[str, int]]:
    """(name, length) of every function longer than 40 lines that does not say why (a "Long (" comment or "Over
    40 lines" in its docstring)."""
    found, lines = [], source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = "\n".join(lines[node.lineno - 1:node.end_lineno])
            length = node.end_lineno - node.lineno + 1
            if length > 40 and "Long (" not in body and "Over 40 lines" not in body:
                found.append((node.name, length))
    return found


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("utils/**/*.py")))
def test_modules_read_in_one_sitting(path):
    """Modules ≤ 400 lines; functions ≤ 40 lines unless a comment says why."""
    source = (ROOT / path).read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 400, f"{path} has {len(source.splitlines())} lines: split it by concept"
    assert not _long_functions(source), f"{path}: functions over 40 lines without a reason: {_long_functions(source)}"


def test_a_long_function_without_a_reason_is_caught():
    body = "\n".join(f"    x{i} = {i}" for i in range(45))
    assert _long_functions(f"def f():\n{body}\n") == [("f", 46)]
    assert _long_functions(f"def f():\n    # Long (46 lines): a table.\n{body}\n") == []
