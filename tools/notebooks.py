"""Generate the exercise notebooks in chapters/ from the solved ones in solutions/, and check they are fresh.

    python -m tools.notebooks generate   # normalise solutions/NN_*.ipynb, (re)write chapters/NN_*.ipynb
    python -m tools.notebooks check      # exit 1 if a notebook has outputs or `generate` would change it

A solutions notebook is the single source of a chapter. Inside its code cells:

    # EXERCISE
    # def loss(logits, labels):     <- the stub: every line commented; learners get it uncommented
    #     ...
    # END EXERCISE
    # SOLUTION
    def loss(logits, labels):       <- the solution: kept in solutions/, removed from chapters/
        return ...
    # END SOLUTION

Every exercise is three cells in a row, and `check` fails on one that lacks a part:

    ### Exercise: `loss`                                  <- markdown: the heading, then the rating line
    **Difficulty** ●●○ · **Importance** ●●● · about 10 minutes
    What to write …

    <details class="course-hint"><summary>Hint 1</summary>   <- markdown: one or two folded hints, nothing else

    Name the function, the einops pattern or the pitfall.

    </details>

    # EXERCISE … # END SOLUTION                           <- code: the stub and the solution

Other cells may stand between the heading cell and the hint cell, never between the hint and the code.
Both versions keep the heading and the hints; the book shows the hints folded and the solution folded.

Both versions start with a generated header cell (title, "Open in Colab" badge, link to the solved
version) and a generated setup cell (in Colab it fetches the course; locally it puts the course on sys.path). The chapter title comes from the
notebook metadata `course.title`; the repository URL and branch come from _config.yml alone.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
NOTEBOOK_NAME = re.compile(r"^\d\d_[A-Za-z0-9_.-]+$")  # NN_topic (safe inside a URL)

# Packages Colab lacks (or ships too old: plotly) that the course needs; their versions come from
# requirements.txt. Never torch (Colab's build matches its GPU) nor Colab's own pandas/numpy (google-colab
# pins them); transformer_lens pulls its own dependencies (jaxtyping, …) as needed.
COLAB_PACKAGES = ("transformer_lens", "circuitsvis", "plotly", "einops")

HEADER_TAG, SETUP_TAG, SOLUTION_TAG = "course-header", "course-setup", "hide-input"
HEADER_TAGS, SETUP_TAGS = [HEADER_TAG], [SETUP_TAG, "remove-cell"]
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"

# What a stored notebook keeps: everything else (outputs, timings, widget state, UI state) is transient.
NOTEBOOK_METADATA = ("course", "kernelspec", "language_info", "mystnb", "jupytext")
CELL_METADATA = ("tags", "mystnb", "editable", "deletable", "slideshow", "course")
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
LANGUAGE_INFO = {"name": "python"}

MARKER_STARTS = {"# EXERCISE": "EXERCISE", "# SOLUTION": "SOLUTION"}
MARKER_ENDS = {"# END EXERCISE": "EXERCISE", "# END SOLUTION": "SOLUTION"}
NEAR_MARKER = re.compile(r"^#+\s*(END\s*)?(EXERCISE|SOLUTION)S?\b")  # e.g. "#SOLUTION", "# END SOLUTIONS"
CELL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# The exercise convention (see the module docstring): a rated heading, folded hints, then the code.
EXERCISE_HEADING = re.compile(r"^###\s+Exercise:\s*(?P<name>.+?)\s*$", re.M)
RATING = re.compile(r"^\*\*Difficulty\*\*\s+(?P<difficulty>●+○*)\s+·\s+\*\*Importance\*\*\s+"
                    r"(?P<importance>●+○*)\s+·\s+about\s+(?P<minutes>\d+)\s+minutes\s*$")
RATING_EXAMPLE = "**Difficulty** ●●○ · **Importance** ●●● · about 10 minutes"
HINT = re.compile(r'<details class="course-hint"><summary>(?P<title>Hint(?: \d)?)</summary>\n\n'
                  r"(?P<body>.*?)\n\n</details>", re.S)
HINT_EXAMPLE = '<details class="course-hint"><summary>Hint 1</summary>\n\nWhat to try…\n\n</details>'
MAX_HINTS = 2

SETUP_TEMPLATE = '''\
# Set-up: put the course's code on sys.path. In Colab, fetch it first and
# install what Colab lacks; locally, the course is the folder above this one.
import sys

try:
    import google.colab  # noqa: F401  (importable only inside Google Colab)
    IN_COLAB = True
except ImportError:
    IN_COLAB = False

if IN_COLAB:
    import importlib.metadata, os, subprocess, tempfile

    REPO_URL, BRANCH, FOLDER = (
@REPOSITORY@
    )
    # What Colab lacks, pinned as in requirements.txt
    # (never torch: Colab's build matches its GPU).
    PINS = {
@PINS@
    }

    def _run(*command):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed:\\n"
                               f"{done.stdout}{done.stderr}")

    def _installed(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    if not os.path.isdir(FOLDER):
        print(f"Fetching the course ({BRANCH}) into {FOLDER}/ …")
        _run("git", "clone", "--quiet", "--depth", "1", "--branch", BRANCH,
             REPO_URL, FOLDER)
    missing = [f"{name}=={pin}" for name, pin in PINS.items()
               if _installed(name) != pin]
    if missing:
        print("Installing", ", ".join(missing), "…")
        # a pip constraints file that keeps Colab's own torch
        keep_torch = os.path.join(tempfile.gettempdir(), "keep-colab-torch.txt")
        with open(keep_torch, "w") as f:
            f.write(f"torch=={_installed('torch')}\\n")
        _run(sys.executable, "-m", "pip", "install", "--quiet",
             "--constraint", keep_torch, *missing)
    COURSE_DIR = os.path.abspath(FOLDER)
    if COURSE_DIR not in sys.path:
        sys.path.insert(0, COURSE_DIR)
    print("Ready: the course code is importable from", COURSE_DIR)
else:
    from pathlib import Path

    COURSE_DIR = str(Path("..").resolve())
    if Path("../utils/__init__.py").is_file() and COURSE_DIR not in sys.path:
        sys.path.insert(0, COURSE_DIR)  # opened from chapters/ or solutions/
'''


class NotebookError(Exception):
    """A notebook or the course configuration is malformed; the message says where and what to do."""


@dataclass(frozen=True)
class Repository:
    """Where the course lives on GitHub, as configured in _config.yml."""

    owner: str
    name: str
    branch: str

    @property
    def url(self) -> str:
        """The canonical https URL, as given to `git clone`."""
        return f"https://github.com/{self.owner}/{self.name}"

    def colab_url(self, path: str) -> str:
        """The URL that opens `path` (relative to the repository root) in Google Colab."""
        return f"https://colab.research.google.com/github/{self.owner}/{self.name}/blob/{self.branch}/{path}"


# ---------------------------------------------------------------------------------------- configuration
def read_repository(root: Path) -> Repository:
    """The repository URL and branch from `root/_config.yml` (`repository.url`, `repository.branch`)."""
    config_path = Path(root) / "_config.yml"
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise NotebookError(f"cannot read {config_path}: {error}") from error
    repository = config.get("repository") if isinstance(config, dict) else None
    repository = repository if isinstance(repository, dict) else {}
    url, branch = repository.get("url"), repository.get("branch")
    match = re.fullmatch(r"https://github\.com/([A-Za-z0-9-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?", str(url or ""))
    if not match:
        raise NotebookError(
            f"{config_path}: repository.url must be a GitHub repository URL like "
            f"https://github.com/OWNER/REPO (the Colab badges and setup cell are built from it), got {url!r}")
    if not isinstance(branch, str) or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or ".." in branch:
        raise NotebookError(f"{config_path}: repository.branch must name the branch learners get "
                            f"(e.g. `branch: main`), got {branch!r}")
    return Repository(owner=match[1], name=match[2], branch=branch)


def read_pins(root: Path, packages: tuple[str, ...] = COLAB_PACKAGES) -> dict[str, str]:
    """The `name==version` pins of `packages` in `root/requirements.txt`, in the order of `packages`."""
    path = Path(root) / "requirements.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise NotebookError(f"cannot read {path}: {error}") from error
    pins: dict[str, str] = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([A-Za-z0-9_.+!-]+)\s*(#.*)?", line)
        if match:
            pins[_canonical(match[1])] = match[2]
    missing = [name for name in packages if _canonical(name) not in pins]
    if missing:
        raise NotebookError(f"{path}: the Colab setup cell needs an exact pin (`name==version`) for "
                            f"{', '.join(missing)}; add it to requirements.txt")
    return {name: pins[_canonical(name)] for name in packages}


def _canonical(name: str) -> str:
    """A package name normalised as pip does (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# -------------------------------------------------------------------------------------- markers
def has_solution(source: str) -> bool:
    """Whether a code cell's source holds a `# SOLUTION` block."""
    return any(line.strip() == "# SOLUTION" for line in source.split("\n"))


def exercise_source(source: str, where: str = "cell") -> str:
    """The learner's version of a cell: stubs uncommented, solutions and marker lines removed.

    Raises NotebookError (prefixed with `where`) on malformed markers.
    """
    out: list[str] = []
    open_kind, open_line = None, 0  # the block we are inside, and the line it started on
    stub_end = 0  # line of the last `# END EXERCISE` whose solution has not started yet

    def fail(lineno: int, problem: str) -> NotebookError:
        return NotebookError(f"{where}, line {lineno}: {problem}")

    for lineno, line in enumerate(source.split("\n"), start=1):
        key = line.strip()
        if key in MARKER_STARTS:
            kind = MARKER_STARTS[key]
            if open_kind:
                raise fail(lineno, f"`{key}` inside the {open_kind} block opened on line {open_line}; "
                                   f"blocks cannot nest: close it with `# END {open_kind}` first")
            if kind == "SOLUTION" and not stub_end:
                raise fail(lineno, "`# SOLUTION` block without a stub right before it: put the learner's "
                                   "stub (`# EXERCISE` … `# END EXERCISE`, every line commented) just above it")
            if kind == "EXERCISE" and stub_end:
                raise _stub_without_solution(fail, stub_end)
            open_kind, open_line, stub_end = kind, lineno, 0
        elif key in MARKER_ENDS:
            kind = MARKER_ENDS[key]
            if open_kind is None:
                raise fail(lineno, f"`{key}` without a `# {kind}` above it")
            if kind != open_kind:
                raise fail(lineno, f"`{key}` closes the {open_kind} block opened on line {open_line}; "
                                   f"close it with `# END {open_kind}`")
            stub_end = lineno if kind == "EXERCISE" else 0
            open_kind = None
        elif NEAR_MARKER.match(key):
            raise fail(lineno, f"{key!r} looks like a marker but is not one: write exactly `# EXERCISE`, "
                               "`# END EXERCISE`, `# SOLUTION` or `# END SOLUTION` on its own line")
        elif stub_end:
            if key:
                raise _stub_without_solution(fail, stub_end)
        elif open_kind == "EXERCISE":
            if key and not key.startswith("#"):
                raise fail(lineno, f"stub line {line!r} is not commented: every line between `# EXERCISE` "
                                   "and `# END EXERCISE` starts with `#` (learners get it uncommented)")
            out.append(re.sub(r"^(\s*)# ?", r"\1", line))
        elif open_kind is None:
            out.append(line)
    if open_kind:
        raise fail(open_line, f"`# {open_kind}` is never closed: add `# END {open_kind}` after the block")
    if stub_end:
        raise _stub_without_solution(fail, stub_end)
    return "\n".join(out)


def _stub_without_solution(fail, stub_end: int) -> NotebookError:
    """The error for an EXERCISE stub that no SOLUTION block follows."""
    return fail(stub_end, "the EXERCISE stub ending here is not followed by its `# SOLUTION` … `# END SOLUTION` "
                          "block (only blank lines may come between them)")


# -------------------------------------------------------------------------------------- exercises
@dataclass(frozen=True)
class Exercise:
    """One exercise of a notebook: its name, ratings (1–3), the author's time estimate and its hints."""

    name: str
    difficulty: int
    importance: int
    minutes: int
    hints: tuple[str, ...]


def hints_of(source: str) -> tuple[str, ...] | None:
    """The hints of a hint cell (its whole source is one or two folded hint blocks), else None."""
    blocks = list(HINT.finditer(source.strip()))
    rest = HINT.sub("", source.strip()).strip()
    if not blocks or rest or len(blocks) > MAX_HINTS or not all(b["body"].strip() for b in blocks):
        return None
    return tuple(b["body"].strip() for b in blocks)


def _rating(heading_source: str, where: str) -> tuple[str, int, int, int]:
    """The exercise's name, difficulty, importance and minutes from its heading cell."""
    heading = EXERCISE_HEADING.search(heading_source)
    name = heading["name"].strip("` ")
    after = heading_source[heading.end():].lstrip("\n").split("\n", 1)[0]
    rating = RATING.match(after)
    if not rating:
        raise NotebookError(f"{where}: exercise {name!r} has no rating line right under its heading; "
                            f"add one like `{RATING_EXAMPLE}` (difficulty and importance out of 3, "
                            f"● for each point), got {after!r}")
    scores = []
    for field in ("difficulty", "importance"):
        marks = rating[field]
        if len(marks) != 3:
            raise NotebookError(f"{where}: exercise {name!r}: {field} must be 3 marks (● filled, then ○), "
                                f"as in `{RATING_EXAMPLE}`, got {marks!r}")
        scores.append(marks.count("●"))
    minutes = int(rating["minutes"])
    if not 1 <= minutes <= 120:
        raise NotebookError(f"{where}: exercise {name!r}: 'about {minutes} minutes' is not a time a learner "
                            "could spend on one exercise; estimate 1 to 120 minutes")
    return name, scores[0], scores[1], minutes


def exercises(cells: list, where: str) -> list[Exercise]:
    """The exercises in `cells`, in order; raises NotebookError where one lacks its rating or hints."""
    found: list[Exercise] = []
    heading: tuple[int, str] | None = None  # the last exercise heading not yet matched to its code
    for index, cell in enumerate(cells):
        source = cell.get("source", "")
        if cell.get("cell_type") == "markdown" and EXERCISE_HEADING.search(source):
            if heading:
                raise NotebookError(f"{where}: cell {heading[0]} has an exercise heading but no exercise "
                                    f"code (`# EXERCISE` … `# END SOLUTION`) follows before the next one "
                                    f"in cell {index}")
            if len(EXERCISE_HEADING.findall(source)) > 1:
                raise NotebookError(f"{where}: cell {index} has several `### Exercise:` headings; give each "
                                    "exercise its own cell")
            heading = (index, source)
        elif cell.get("cell_type") == "code" and has_solution(source):
            first_line = source.split("\n", 1)[0]
            here = f"{where}: cell {index} (first line: {first_line!r})"
            if heading is None:
                raise NotebookError(f"{here}: an exercise without its heading: put a markdown cell with "
                                    f"`### Exercise: `name`` and `{RATING_EXAMPLE}` above it")
            previous = cells[index - 1] if index else {}
            hints = hints_of(previous.get("source", "")) if previous.get("cell_type") == "markdown" else None
            if hints is None:
                raise NotebookError(f"{here}: the cell right before an exercise's code must hold its hints and "
                                    f"nothing else: one or {MAX_HINTS} blocks like {HINT_EXAMPLE!r}")
            name, difficulty, importance, minutes = _rating(heading[1], f"{where}: cell {heading[0]}")
            found.append(Exercise(name, difficulty, importance, minutes, hints))
            heading = None
    if heading:
        raise NotebookError(f"{where}: cell {heading[0]} has an exercise heading but no exercise code "
                            "(`# EXERCISE` … `# END SOLUTION`) follows it")
    return found


def solution_source(source: str, where: str = "cell") -> str:
    """What the book shows of a solution cell: the solution without the stub and the marker lines."""
    exercise_source(source, where)  # validates the markers
    out, skipping = [], False
    for line in source.split("\n"):
        key = line.strip()
        if key == "# EXERCISE":
            skipping = True
        elif key == "# END EXERCISE":
            skipping = False
        elif not skipping and key not in ("# SOLUTION", "# END SOLUTION"):
            out.append(line)
    return "\n".join(out)


# -------------------------------------------------------------------------------------- generated cells
def header_source(title: str, name: str, repo: Repository) -> str:
    """Markdown of the header cell: title, Colab badge for the exercises, link to the solved version."""
    exercises, solved = repo.colab_url(f"chapters/{name}.ipynb"), repo.colab_url(f"solutions/{name}.ipynb")
    return (f"# {title}\n\n"
            f"[![Open in Colab]({COLAB_BADGE})]({exercises})\n\n"
            f"Do the exercises in Colab with the badge above, or open the [solved version in Colab]({solved}).")


def setup_source(repo: Repository, pins: dict[str, str]) -> str:
    """Python of the setup cell: in Colab, clone the course, install what Colab lacks, extend sys.path."""
    if any(_canonical(name) == "torch" for name in pins):
        raise NotebookError("the Colab setup cell must never install torch: remove it from COLAB_PACKAGES")
    # One value a line, so that the cell's lines stay within 88 characters.
    repository = "".join(f"        {json.dumps(value)},\n"
                         for value in (repo.url, repo.branch, repo.name))
    pin_text = "".join(f"        {json.dumps(name)}: {json.dumps(version)},\n"
                       for name, version in pins.items())
    return (SETUP_TEMPLATE.replace("@REPOSITORY@\n", repository).replace("@PINS@\n", pin_text)
            .rstrip("\n"))


def _generated_cells(title: str, name: str, repo: Repository, pins: dict[str, str]) -> list:
    """The header and setup cells that open every course notebook."""
    header = nbformat.v4.new_markdown_cell(header_source(title, name, repo), id=HEADER_TAG)
    header.metadata = {"tags": list(HEADER_TAGS)}
    setup = nbformat.v4.new_code_cell(setup_source(repo, pins), id=SETUP_TAG)
    setup.metadata = {"tags": list(SETUP_TAGS)}
    return [header, setup]


# -------------------------------------------------------------------------------------- notebooks
def read_notebook(path: Path, where: str) -> nbformat.NotebookNode:
    """A notebook as stored (nothing repaired, no random ids added)."""
    try:
        nb = nbformat.v4.reads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise NotebookError(f"{where}: cannot read the notebook: {error}") from error
    if nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{where}: not an nbformat 4 notebook; open and save it in Jupyter first")
    return nb


def notebook_text(nb: nbformat.NotebookNode) -> str:
    """The stored form of a notebook (nbformat's JSON: sorted keys, one-space indent, final newline)."""
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as error:
        raise NotebookError(f"generated an invalid notebook: {error}") from error
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def title_of(nb: nbformat.NotebookNode, where: str) -> str:
    """The chapter title from the notebook metadata `course.title`."""
    course = nb.metadata.get("course")
    title = course.get("title") if isinstance(course, dict) else None
    if not isinstance(title, str) or not title.strip():
        raise NotebookError(
            f'{where}: no chapter title: add "course": {{"title": "…"}} to the notebook metadata '
            "(JupyterLab: Property Inspector → Notebook metadata; or edit the .ipynb JSON)")
    return title.strip()


def normalise(nb: nbformat.NotebookNode, name: str, repo: Repository, pins: dict[str, str],
              where: str) -> nbformat.NotebookNode:
    """The solutions notebook as stored: clean, with fresh header/setup cells and solution cells folded."""
    title = title_of(nb, where)
    metadata = {key: copy.deepcopy(nb.metadata[key]) for key in NOTEBOOK_METADATA if key in nb.metadata}
    metadata.update(kernelspec=dict(KERNELSPEC), language_info=dict(LANGUAGE_INFO))
    cells = _generated_cells(title, name, repo, pins)
    taken = {cell.id for cell in cells}
    for index, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if HEADER_TAG in tags or SETUP_TAG in tags or cell.get("id") in (HEADER_TAG, SETUP_TAG):
            continue  # regenerated above
        cell = _clean_cell(cell)
        if cell.cell_type == "code":
            first_line = cell.source.split("\n", 1)[0]
            exercise_source(cell.source, f"{where}: cell {index} (first line: {first_line!r})")  # validates
            _set_solution_tag(cell, has_solution(cell.source))
        cell.id = _cell_id(cell, index, name, taken)
        taken.add(cell.id)
        cells.append(cell)
    exercises(nb.cells, where)  # every exercise rated and hinted (cell numbers as the author sees them)
    return nbformat.from_dict({"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5})


def _clean_cell(cell: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of a cell without outputs, execution count or transient metadata."""
    cell = copy.deepcopy(cell)
    cell.metadata = {key: value for key, value in cell.get("metadata", {}).items() if key in CELL_METADATA}
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    return cell


def _set_solution_tag(cell: nbformat.NotebookNode, solution: bool) -> None:
    """Fold cells holding a solution (`hide-input`); unfold cells the tool folded that no longer hold one."""
    tags = list(cell.metadata.get("tags", []))
    course = dict(cell.metadata.get("course", {}))
    added = list(course.get("added_tags", []))
    if solution and SOLUTION_TAG not in tags:
        tags.append(SOLUTION_TAG)
        added.append(SOLUTION_TAG)
    elif not solution and SOLUTION_TAG in added:
        tags = [tag for tag in tags if tag != SOLUTION_TAG]
        added.remove(SOLUTION_TAG)
    _set_or_drop(cell.metadata, "tags", tags)
    _set_or_drop(course, "added_tags", added)
    _set_or_drop(cell.metadata, "course", course)


def _set_or_drop(mapping: dict, key: str, value) -> None:
    """mapping[key] = value, or no key at all when value is empty."""
    if value:
        mapping[key] = value
    else:
        mapping.pop(key, None)


def _cell_id(cell: nbformat.NotebookNode, index: int, name: str, taken: set[str]) -> str:
    """The cell's own id if valid and unused; else one derived from its notebook, position and source."""
    current = cell.get("id")
    if isinstance(current, str) and CELL_ID.match(current) and current not in taken:
        return current
    seed = f"{name}\0{index}\0{cell.source}"
    while True:
        candidate = hashlib.sha1(seed.encode("utf-8")).hexdigest()[:8]
        if candidate not in taken:
            return candidate
        seed += "\0"


def exercise_notebook(solved: nbformat.NotebookNode, where: str) -> nbformat.NotebookNode:
    """The chapters/ twin of a normalised solutions notebook: same cells and ids, solutions removed."""
    nb = copy.deepcopy(solved)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            first_line = cell.source.split("\n", 1)[0]
            cell.source = exercise_source(cell.source, f"{where}: cell {index} (first line: {first_line!r})")
        _set_or_drop(cell.metadata, "tags", [tag for tag in cell.metadata.get("tags", []) if tag != SOLUTION_TAG])
        cell.metadata.pop("course", None)
    return nb


def has_outputs(nb: nbformat.NotebookNode) -> bool:
    """Whether any code cell is stored with outputs or an execution count."""
    return any(cell.get("outputs") or cell.get("execution_count") is not None
               for cell in nb.cells if cell.get("cell_type") == "code")


# -------------------------------------------------------------------------------------- commands
def planned_files(root: Path) -> dict[Path, str]:
    """Every course notebook (solutions/ and chapters/) with the text `generate` gives it."""
    root = Path(root)
    repo, pins = read_repository(root), read_pins(root)
    planned: dict[Path, str] = {}
    for path in sorted((root / "solutions").glob(NOTEBOOK_GLOB)):
        name, where = path.stem, f"solutions/{path.name}"
        if not NOTEBOOK_NAME.match(name):
            raise NotebookError(f"{where}: rename it to NN_topic.ipynb using letters, digits, `_`, `-` only "
                                "(the name goes into the Colab URL)")
        solved = normalise(read_notebook(path, where), name, repo, pins, where)
        planned[path] = notebook_text(solved)
        planned[root / "chapters" / path.name] = notebook_text(exercise_notebook(solved, where))
    return planned


def orphan_chapters(root: Path) -> list[Path]:
    """chapters/ notebooks whose solutions/ source no longer exists."""
    root = Path(root)
    return [path for path in sorted((root / "chapters").glob(NOTEBOOK_GLOB))
            if not (root / "solutions" / path.name).exists()]


def generate(root: Path = ROOT) -> list[str]:
    """Normalise solutions/, rewrite chapters/; return what changed (paths relative to root)."""
    root = Path(root)
    planned = planned_files(root)  # everything is validated before anything is written
    changed = []
    for path, text in planned.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
            changed.append(f"wrote {path.relative_to(root)}")
    for path in orphan_chapters(root):
        path.unlink()
        changed.append(f"removed {path.relative_to(root)} (no solutions/{path.name})")
    return changed


def check(root: Path = ROOT) -> list[str]:
    """Every problem `generate` would fix, one line per notebook; empty when all is fresh. Writes nothing."""
    root = Path(root)
    problems = []
    for path, text in planned_files(root).items():
        where = str(path.relative_to(root))
        if not path.exists():
            problems.append(f"{where}: missing (generated from solutions/{path.name})")
            continue
        stored = path.read_text(encoding="utf-8")
        if has_outputs(read_notebook(path, where)):
            problems.append(f"{where}: stored with outputs or execution counts")
        elif stored != text and path.parent.name == "chapters":
            problems.append(f"{where}: stale (not what solutions/{path.name} generates)")
        elif stored != text:
            problems.append(f"{where}: not normalised (metadata, header/setup cells, cell ids or tags)")
    problems += [f"{path.relative_to(root)}: has no solutions/{path.name} (a leftover)"
                 for path in orphan_chapters(root)]
    return problems


def main(argv: list[str] | None = None) -> int:
    """The command line: `generate` or `check`."""
    parser = argparse.ArgumentParser(prog="python -m tools.notebooks", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["generate", "check"],
                        help="generate: normalise solutions/ and write chapters/; check: report stale notebooks")
    parser.add_argument("--root", type=Path, default=ROOT, help="the course repository (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            changes = generate(args.root)
            print("\n".join(changes) if changes else "notebooks already up to date")
            return 0
        problems = check(args.root)
    except NotebookError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if problems:
        print("These notebooks need regenerating; run `make notebooks` "
              "(python -m tools.notebooks generate) and commit the result:", file=sys.stderr)
        print("\n".join(f"  {problem}" for problem in problems), file=sys.stderr)
        return 1
    print("notebooks up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
