"""The course on a Colab-like stack: the real setup cell, then every solutions notebook, every check included.

tests/test_colab_setup.py runs the setup cell inside the course's own environment; this test runs it where
Colab would: in a separate environment with Colab's older Python, torch, pandas, numpy and plotly
(tools/colab_stack.py says which and why). Building that environment downloads about 3 GB once, and the
setup cell installs from PyPI, so the heavy tests run only under `make colab-check` (COLAB_CHECK=1).

The runtime is a hard-linked copy of the cached environment, so the setup cell's install really happens on
every run. Each notebook runs top to bottom in a fresh kernel of that runtime, started in an empty folder,
with a fake `google.colab` importable and git told to clone this working tree instead of the configured URL
(as in tests/test_colab_setup.py). The trained runs are copies of those in $GROKKING_RUNS_DIR (or runs/), so
runs saved by the course's torch must load with the older one; a run missing there is trained on the
Colab-like stack (slow on two cores) and kept in its own cache for the next run (tools/colab_stack.py).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import nbformat
import pytest
from nbclient import NotebookClient

from test_colab_setup import fake_colab, make_remote  # tests/ is on sys.path (pytest's rootdir-less import)
from tools import colab_stack, notebooks

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob(notebooks.NOTEBOOK_GLOB))
CELL_TIMEOUT = 900  # seconds; the setup cell's install from PyPI is the slowest cell
CHECK_CALL = re.compile(r"\bchecks\.(check_\w+)\(")
REPORT_MARK = "COLAB-STACK-REPORT"

heavy = pytest.mark.skipif(not os.environ.get("COLAB_CHECK"), reason=(
    "builds a Colab-like environment (about 3 GB once) and installs from PyPI: run `make colab-check`"))

# Appended to each notebook: what the kernel ran on, read back from its output.
REPORT_CELL = f"""\
import importlib.metadata as _metadata, json as _json, sys as _sys
import utils as _utils, utils.checks as _checks
_names = ("torch", "numpy", "pandas", "plotly", "transformer_lens", "circuitsvis", "einops", "tqdm", "filelock")
print({REPORT_MARK!r}, _json.dumps({{
    "python": "%d.%d" % _sys.version_info[:2], "executable": _sys.executable, "utils": _utils.__file__,
    "versions": {{name: _metadata.version(name) for name in _names}},
    "checks": sorted(name for name in dir(_checks) if name.startswith("check_")),
}}))
"""


class ColabRuntime:
    """A Colab-like runtime in `folder`: its environment, kernel spec, content folder and settings."""

    def __init__(self, folder: Path, venv: Path, repository: notebooks.Repository):
        self.folder, self.venv, self.repository = folder, venv, repository
        self.content = folder / "content"  # Colab's working folder; the setup cell clones into it
        self.content.mkdir()
        remote = make_remote(folder, repository.branch)
        runs = colab_runs()
        keep = ("PATH", "HOME", "LANG", "TMPDIR", "GROKKING_COMPILE")
        self.env = {name: os.environ[name] for name in os.environ if name in keep or name.startswith("PIP_")}
        self.env.update({
            "PYTHONPATH": str(fake_colab(folder)),
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"url.{remote.as_uri()}.insteadOf",
            "GIT_CONFIG_VALUE_0": repository.url,
            "GIT_TERMINAL_PROMPT": "0",
            "GROKKING_RUNS_DIR": str(runs),
        })
        kernel = folder / "kernels" / "colab-like"
        kernel.mkdir(parents=True)
        (kernel / "kernel.json").write_text(json.dumps({
            "argv": [str(colab_stack.venv_python(venv)), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Colab-like", "language": "python"}))

    def execute(self, nb: nbformat.NotebookNode) -> dict:
        """Run `nb` in a fresh kernel, in place; the report of its last cell (a REPORT_CELL)."""
        client = NotebookClient(nb, kernel_name="colab-like", timeout=CELL_TIMEOUT, startup_timeout=120,
                                resources={"metadata": {"path": str(self.content)}})
        # nbclient finds the kernel spec through JUPYTER_PATH, and shuts down (or notices the death of) the
        # kernel it started itself.
        with mock.patch.dict(os.environ, {"JUPYTER_PATH": str(self.folder)}):
            client.execute(env=self.env)
        for output in nb.cells[-1].outputs:
            for line in output.get("text", "").splitlines():
                if line.startswith(REPORT_MARK):
                    return json.loads(line[len(REPORT_MARK):])
        raise AssertionError(f"the report cell printed no report: {nb.cells[-1].outputs}")

    def assert_still_colab(self, report: dict) -> None:
        """The kernel ran the course from the clone, on the Colab-like Python, torch, numpy and pandas."""
        clone = (self.content / self.repository.name).resolve()
        assert clone in Path(report["utils"]).resolve().parents, f"utils came from {report['utils']}, not {clone}"
        assert Path(report["executable"]).parent == colab_stack.venv_python(self.venv).parent
        assert report["python"] == colab_stack.PYTHON_VERSION
        for name in ("torch", "numpy", "pandas"):
            assert report["versions"][name] == colab_stack.PINS[name], (
                f"{name} {report['versions'][name]} replaced Colab's {colab_stack.PINS[name]}: the setup cell's "
                f"install must not upgrade what Colab pins")


def colab_runs() -> Path:
    """The runs the notebooks use: those in $GROKKING_RUNS_DIR (or runs/), trained by the course's torch,
    copied over those the Colab-like stack trained itself on an earlier run (kept, so reruns are fast)."""
    runs = colab_stack.cache_root() / f"colab-runs-{colab_stack.stack_key()}"
    source = Path(os.environ.get("GROKKING_RUNS_DIR") or ROOT / "runs")
    if source.is_dir():
        shutil.copytree(source, runs, ignore=shutil.ignore_patterns("*.lock"), dirs_exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    return runs


def setup_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook's generated setup cell."""
    cells = [cell for cell in nb.cells if notebooks.SETUP_TAG in cell.metadata.get("tags", [])]
    assert len(cells) == 1, "every course notebook has exactly one setup cell"
    return cells[0]


def read_with_report(path: Path) -> nbformat.NotebookNode:
    """The notebook at `path`, with REPORT_CELL appended."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(REPORT_CELL))
    return nb


@pytest.fixture(scope="module")
def runtime() -> ColabRuntime:
    """A fresh Colab-like runtime (a hard-linked copy of the cached environment), removed afterwards."""
    venv = colab_stack.ensure_venv()
    work = Path(tempfile.mkdtemp(prefix="runtime-", dir=colab_stack.cache_root()))  # same disk: hard links
    try:
        copy = colab_stack.fresh_copy(venv, work / "venv")
        yield ColabRuntime(work, copy, notebooks.read_repository(ROOT))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_every_check_is_called_by_a_solutions_notebook():
    from utils import checks

    called = {name for path in SOLUTIONS for cell in nbformat.read(path, as_version=4).cells
              if cell.cell_type == "code" for name in CHECK_CALL.findall(cell.source)}
    defined = {name for name in dir(checks) if name.startswith("check_")}
    assert defined - called == set(), "the Colab-stack test runs a check only where a notebook calls it"


@heavy
def test_setup_cell_installs_the_course_on_a_colab_stack_and_keeps_its_torch_pandas_and_numpy(runtime):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(setup_cell(nbformat.read(SOLUTIONS[0], as_version=4)).source),
                nbformat.v4.new_code_cell(REPORT_CELL)]
    started = time.perf_counter()
    report = runtime.execute(nb)
    print(f"setup cell on the Colab-like stack: {time.perf_counter() - started:.0f} s; "
          f"versions after it: {report['versions']}")
    said = "".join(output.get("text", "") for output in nb.cells[0].outputs)
    assert "Installing" in said and "Ready:" in said, said
    pins = notebooks.read_pins(ROOT)
    for name, pin in pins.items():
        assert report["versions"][name] == pin, f"the setup cell left {name} at {report['versions'][name]}"
    runtime.assert_still_colab(report)


@heavy
@pytest.mark.parametrize("path", SOLUTIONS, ids=[path.stem for path in SOLUTIONS])
def test_solutions_notebook_runs_top_to_bottom_on_a_colab_stack(runtime, path):
    nb = read_with_report(path)
    started = time.perf_counter()
    report = runtime.execute(nb)
    print(f"{path.name} on the Colab-like stack: {time.perf_counter() - started:.0f} s")
    runtime.assert_still_colab(report)
    passed = [line for cell in nb.cells if cell.cell_type == "code" and CHECK_CALL.search(cell.source)
              for output in cell.outputs for line in output.get("text", "").splitlines()
              if line.startswith("✅")]
    calls = sum(len(CHECK_CALL.findall(cell.source)) for cell in nb.cells if cell.cell_type == "code")
    assert len(passed) == calls, f"{calls} checks called, {len(passed)} passed: {passed}"
