"""A Colab-like Python environment, built once and cached, for tests/test_colab_stack.py (`make colab-check`).

    python -m tools.colab_stack build   # build (or find) the environment; prints its folder

Google Colab does not run the course's pinned stack: it has its own Python, torch build, pandas and numpy
(google-colab pins those), and an older plotly, and the notebooks' setup cell installs only what Colab lacks
(tools/notebooks.py, COLAB_PACKAGES). This module builds a virtual environment that looks like such a runtime
*before* the setup cell has run, so the test can run the real setup cell and the notebooks against it.

The environment lives in ~/.cache/grokking-course/colab-venv-<hash of the pins> (or $GROKKING_COLAB_CACHE);
it is built in a temporary folder, then renamed, so an interrupted build leaves nothing half-made. Tests use a
hard-linked copy of it (`fresh_copy`), so what the setup cell installs never changes the cached one.

Measured on the course's 2-core machine, shared with other jobs: building the environment took 3.6 minutes
(about 3 GB from PyPI, 5.8 GB on disk); the setup cell's install 65-73 s; chapters 2-5 with their runs
cached 34-148 s each. A run missing from the cache is trained on the older torch, which takes minutes per run.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from filelock import FileLock

# The Colab-like runtime. Python 3.12 as on Colab. torch: the oldest release transformer_lens 3.9.0 accepts
# (its metadata says torch>=2.6); PyPI's Linux x86-64 wheels of it are CUDA builds, so pip also fetches the
# nvidia-* libraries (about 3 GB once; torch imports and runs on the CPU without a GPU, as on a CPU runtime).
# pandas and numpy: the older releases google-colab pins, plotly the older one Colab ships (the setup cell
# upgrades it). tqdm, filelock, ipywidgets: Colab's older releases of packages the course imports but the
# setup cell does not install, so the course must work with them. ipykernel runs the notebooks.
PYTHON_VERSION = "3.12"
PINS = {
    "torch": "2.6.0",
    "numpy": "2.0.2",
    "pandas": "2.2.2",
    "plotly": "5.24.1",
    "tqdm": "4.67.1",
    "filelock": "3.18.0",
    "ipywidgets": "7.7.1",
    "ipykernel": "6.29.5",
}


def cache_root() -> Path:
    """Where built environments are kept: $GROKKING_COLAB_CACHE or ~/.cache/grokking-course."""
    return Path(os.environ.get("GROKKING_COLAB_CACHE") or Path.home() / ".cache" / "grokking-course")


def stack_key(python: str = PYTHON_VERSION, pins: dict[str, str] = PINS) -> str:
    """A short hash of the Python version and the pins: a new pin builds a new environment."""
    text = json.dumps({"python": python, "pins": pins}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def find_python(version: str = PYTHON_VERSION) -> str:
    """An interpreter of `version`: $COLAB_PYTHON, `pythonX.Y` on PATH, or one installed by pyenv."""
    candidates = [os.environ.get("COLAB_PYTHON", ""), shutil.which(f"python{version}") or ""]
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"), reverse=True)
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    raise RuntimeError(f"no Python {version} found (tried $COLAB_PYTHON, python{version} on PATH and "
                       f"{pyenv_root}/versions/): install Python {version} or set COLAB_PYTHON to one")


def venv_python(venv: Path) -> Path:
    """The interpreter of the environment in `venv`."""
    return Path(venv) / "bin" / "python"


def ensure_venv(pins: dict[str, str] = PINS, version: str = PYTHON_VERSION) -> Path:
    """The cached Colab-like environment for `pins`, built first if it is not there yet."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"colab-venv-{stack_key(version, pins)}"
    with FileLock(str(venv) + ".lock"):
        if (venv / "stack.json").is_file():
            return venv
        build = Path(tempfile.mkdtemp(prefix="building-", dir=root)) / venv.name
        try:
            subprocess.run([find_python(version), "-m", "venv", str(build)], check=True)
            requirements = [f"{name}=={pin}" for name, pin in pins.items()]
            subprocess.run([str(venv_python(build)), "-m", "pip", "install", "--quiet", "--no-cache-dir",
                            "--disable-pip-version-check", *requirements], check=True)
            (build / "stack.json").write_text(json.dumps(installed(build), indent=1, sort_keys=True))
            # A venv's scripts name its folder; it is only ever run as `python -m`, so a rename is safe.
            build.rename(venv)
        finally:
            shutil.rmtree(build.parent, ignore_errors=True)
    return venv


def installed(venv: Path) -> dict[str, str]:
    """Every distribution installed in `venv`, name → version."""
    done = subprocess.run([str(venv_python(venv)), "-m", "pip", "list", "--format=json",
                           "--disable-pip-version-check"], check=True, capture_output=True, text=True)
    return {row["name"].lower(): row["version"] for row in json.loads(done.stdout)}


def fresh_copy(venv: Path, destination: Path) -> Path:
    """A hard-linked copy of `venv` at `destination` (seconds, no extra disk): pip replaces files, never
    rewrites them, so installing into the copy leaves the cached environment as it was."""
    subprocess.run(["cp", "-al", str(venv), str(destination)], check=True)
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build"])
    parser.parse_args(argv)
    print(ensure_venv())
    return 0


if __name__ == "__main__":
    sys.exit(main())
