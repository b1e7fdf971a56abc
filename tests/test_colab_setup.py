"""The generated setup cell, run in a simulated Google Colab.

"Colab" is a subprocess with a fake `google.colab` package on its path, started in an empty directory;
the "GitHub repository" is a local git repository built from this working tree, which git is told to use
instead of the configured URL through GIT_CONFIG_* environment variables, so the cell itself has no test hook.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import notebooks

ROOT = Path(__file__).resolve().parent.parent
PRETEND_MISSING = "einops"  # the first run sees a Colab without it, so the cell installs it (already in the venv)

# Runs the setup cell twice in one namespace (a re-run in the same kernel), recording the commands it
# starts, then imports the course code and reports where it came from.
DRIVER = """\
import importlib.metadata, json, subprocess, sys

cell = open(sys.argv[1], encoding="utf-8").read()
pretend_missing = sys.argv[2]
real_run, real_version, calls = subprocess.run, importlib.metadata.version, []

def recording_run(command, *args, **kwargs):
    command = [str(part) for part in command]
    call = {"command": command}
    if "--constraint" in command:
        with open(command[command.index("--constraint") + 1]) as constraints:
            call["constraints"] = constraints.read()
    calls.append(call)
    return real_run(command, *args, **kwargs)

def version_in_a_colab_without_it(name):
    if name == pretend_missing:
        raise importlib.metadata.PackageNotFoundError(name)
    return real_version(name)

subprocess.run = recording_run
kernel = {"__name__": "__main__"}
runs = []
for first in (True, False):
    importlib.metadata.version = version_in_a_colab_without_it if first else real_version
    start = len(calls)
    exec(compile(cell, "<setup cell>", "exec"), kernel)
    runs.append(calls[start:])

import utils.data
print(json.dumps({"runs": runs, "in_colab": kernel["IN_COLAB"], "course_dir": kernel.get("COURSE_DIR"),
                  "utils_data": utils.data.__file__, "sys_path": sys.path}))
"""


def git(*args: str, cwd: Path) -> str:
    """Run git with a throwaway identity, failing loudly; its output."""
    return subprocess.run(["git", "-c", "user.name=Course Test", "-c", "user.email=test@example.invalid",
                           "-c", "commit.gpgsign=false", *args], cwd=cwd, check=True, capture_output=True,
                          text=True, timeout=30).stdout


def make_remote(tmp_path: Path, branch: str) -> Path:
    """A local git repository holding this working tree's tracked files (what a clone from GitHub gets: the
    notebooks read files outside utils/, e.g. book/_static/), as they are now, committed on `branch`."""
    remote = tmp_path / "remote"
    remote.mkdir()
    tracked = git("ls-files", "-z", cwd=ROOT).split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is left out, as in the next commit
            (remote / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, remote / name)
    git("init", "--quiet", f"--initial-branch={branch}", cwd=remote)
    git("add", "--all", cwd=remote)
    git("commit", "--quiet", "--message", "the course", cwd=remote)
    return remote


def fake_colab(tmp_path: Path) -> Path:
    """A folder holding an importable `google.colab` (google stays a namespace package, as in Colab)."""
    folder = tmp_path / "fake-colab"
    (folder / "google" / "colab").mkdir(parents=True)
    (folder / "google" / "colab" / "__init__.py").write_text('"""Stands in for Google Colab\'s package."""\n')
    return folder


def run_cell(tmp_path: Path, cell: str, python_path: list[Path], env: dict[str, str]) -> dict:
    """Run the driver on `cell` in a fresh empty working directory (the driver's own folder is not on sys.path:
    python -P); its report."""
    (tmp_path / "setup_cell.py").write_text(cell)
    (tmp_path / "driver.py").write_text(DRIVER)
    workdir = tmp_path / "content"
    workdir.mkdir()
    env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(map(str, python_path)),
           "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "GIT_TERMINAL_PROMPT": "0"}
    result = subprocess.run([sys.executable, "-P", str(tmp_path / "driver.py"), str(tmp_path / "setup_cell.py"),
                             PRETEND_MISSING], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"the setup cell failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def repository() -> notebooks.Repository:
    """The repository configured in _config.yml."""
    return notebooks.read_repository(ROOT)


@pytest.fixture(scope="module")
def cell(repository) -> str:
    """The setup cell's code, as generated for this repository."""
    return notebooks.setup_source(repository, notebooks.read_pins(ROOT))


def test_setup_cell_in_colab_clones_installs_only_what_is_missing_and_reruns_harmlessly(tmp_path, repository, cell):
    remote = make_remote(tmp_path, repository.branch)
    report = run_cell(tmp_path, cell, [fake_colab(tmp_path)], {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"url.{remote.as_uri()}.insteadOf",
        "GIT_CONFIG_VALUE_0": repository.url,
    })
    clone = tmp_path / "content" / repository.name
    assert report["in_colab"] is True
    assert (clone / ".git").is_dir() and (clone / "utils" / "data.py").is_file()

    first, second = report["runs"]
    commands = [call["command"] for call in first]
    assert commands[0][:2] == ["git", "clone"] and "--depth" in commands[0]
    assert commands[0][-2:] == [repository.url, repository.name]
    assert commands[0][commands[0].index("--branch") + 1] == repository.branch
    pins = notebooks.read_pins(ROOT)
    assert len(first) == 2 and commands[1][1:4] == ["-m", "pip", "install"]
    assert commands[1][0] == sys.executable
    requirements = [arg for arg in commands[1][4:] if not arg.startswith("-") and "==" in arg]
    assert requirements == [f"{PRETEND_MISSING}=={pins[PRETEND_MISSING]}"], "install only what is missing"
    assert first[1]["constraints"] == f"torch=={importlib.metadata.version('torch')}\n"
    assert second == [], "a re-run must neither clone again nor reinstall"

    data_file = Path(report["utils_data"]).resolve()
    assert data_file == (clone / "utils" / "data.py").resolve()
    assert ROOT not in data_file.parents
    assert report["sys_path"].count(report["course_dir"]) == 1
    assert Path(report["course_dir"]).resolve() == clone.resolve()


def test_setup_cell_outside_colab_installs_nothing_and_puts_the_course_one_folder_up_on_the_path(tmp_path, cell):
    (tmp_path / "utils").mkdir()  # a local checkout: the notebook runs in a folder beside utils/
    (tmp_path / "utils" / "__init__.py").write_text("")
    (tmp_path / "utils" / "data.py").write_text("")
    elsewhere = tmp_path / "elsewhere"  # the package is importable from here only once the cell has run
    elsewhere.mkdir()
    report = run_cell(tmp_path, cell, [elsewhere], {})
    assert report["in_colab"] is False
    assert report["runs"] == [[], []]
    assert Path(report["course_dir"]).resolve() == tmp_path.resolve()
    assert report["sys_path"].count(report["course_dir"]) == 1  # run twice, added once
    assert Path(report["utils_data"]).resolve() == (tmp_path / "utils" / "data.py").resolve()
    assert list((tmp_path / "content").iterdir()) == []
