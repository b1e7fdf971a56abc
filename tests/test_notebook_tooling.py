"""tools.notebooks: solutions/ → chapters/ generation, normalisation and the freshness check.

Most tests build a throwaway course root (a copy of _config.yml and requirements.txt plus a solutions/
folder of synthetic notebooks); the last ones check the real repository's notebooks.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from tools import notebooks, same_code
from tools.notebooks import NotebookError

ROOT = Path(__file__).resolve().parent.parent
BADGE_LINK = re.compile(r"\[!\[Open in Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
                        r"\((?P<url>[^)\s]+)\)")

STUB_AND_SOLUTION = """\
import torch

def square(x):
    # EXERCISE
    # # Return x squared, elementwise.
    # return ...
    # END EXERCISE

    # SOLUTION
    return x * x
    # END SOLUTION

assert square(torch.tensor(3)) == 9"""

RATED_HEADING = "### Exercise: `square`\n**Difficulty** ●○○ · **Importance** ●●○ · about 5 minutes\n\nSquare x."
HINT_CELL = '<details class="course-hint"><summary>Hint</summary>\n\nMultiply `x` by itself.\n\n</details>'


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A throwaway course root: the real _config.yml and requirements.txt, an empty solutions/."""
    for name in ("_config.yml", "requirements.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "solutions").mkdir()
    return tmp_path


def code(source: str, **kwargs) -> nbformat.NotebookNode:
    """A code cell (nbformat gives it a random id, as Jupyter does)."""
    return nbformat.v4.new_code_cell(source, **kwargs)


def markdown(source: str) -> nbformat.NotebookNode:
    """A markdown cell."""
    return nbformat.v4.new_markdown_cell(source)


def exercise(source: str = STUB_AND_SOLUTION, **kwargs) -> list:
    """An exercise as the convention wants it: rated heading, hint cell, then the code cell."""
    return [markdown(RATED_HEADING), markdown(HINT_CELL), code(source, **kwargs)]


def write_solution(root: Path, name: str, cells: list, title: str | None = "A test chapter",
                   metadata: dict | None = None) -> Path:
    """Store a solutions notebook the way an author's Jupyter would."""
    nb = nbformat.v4.new_notebook(cells=cells, metadata=dict(metadata or {}))
    if title is not None:
        nb.metadata["course"] = {"title": title}
    path = root / "solutions" / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def read(path: Path) -> nbformat.NotebookNode:
    """A stored notebook."""
    return nbformat.read(path, as_version=4)


def author_cells(nb: nbformat.NotebookNode) -> list:
    """The cells after the generated header and setup cells."""
    return nb.cells[2:]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every notebook under root, by relative path."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.ipynb"))}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m tools.notebooks ARGS` from the repository root."""
    return subprocess.run([sys.executable, "-m", "tools.notebooks", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def set_repository(root: Path, url: str | None, branch: str | None = "main") -> None:
    """Rewrite the tmp root's _config.yml `repository` section."""
    config = yaml.safe_load((root / "_config.yml").read_text())
    config["repository"] = {key: value for key, value in (("url", url), ("branch", branch)) if value is not None}
    (root / "_config.yml").write_text(yaml.safe_dump(config))


def setup_repository(source: str) -> tuple:
    """What the setup cell assigns to `REPO_URL, BRANCH, FOLDER`, however the generator lays it out."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "(REPO_URL, BRANCH, FOLDER)":
            return ast.literal_eval(node.value)
    raise AssertionError(f"no `REPO_URL, BRANCH, FOLDER = ...` in the setup cell:\n{source}")


def badge_url(nb: nbformat.NotebookNode) -> str:
    """The Colab badge's target in a notebook's header cell."""
    match = BADGE_LINK.search(nb.cells[0].source)
    assert match, f"no Colab badge in the first cell: {nb.cells[0].source!r}"
    return match["url"]


# ------------------------------------------------------------------------------------------ markers
def test_exercise_version_keeps_the_uncommented_stub_and_drops_the_solution():
    exercise = notebooks.exercise_source(STUB_AND_SOLUTION)
    assert exercise == ("import torch\n\ndef square(x):\n    # Return x squared, elementwise.\n    return ...\n\n"
                        "assert square(torch.tensor(3)) == 9")


def test_several_exercise_solution_pairs_in_one_cell_are_all_replaced():
    source = ("# EXERCISE\n# a = ...\n# END EXERCISE\n# SOLUTION\na = 1\n# END SOLUTION\n"
              "middle = 0\n"
              "# EXERCISE\n#b = ...\n#\n# END EXERCISE\n\n\n# SOLUTION\nb = 2\n# END SOLUTION\nend = 3")
    assert notebooks.exercise_source(source) == "a = ...\nmiddle = 0\nb = ...\n\nend = 3"


def test_a_cell_without_markers_is_unchanged():
    source = "x = 1  # EXERCISE is only a marker on a line of its own\n# a plain comment\n\ny = 2"
    assert notebooks.exercise_source(source) == source


MALFORMED = {
    "unclosed exercise": ("# EXERCISE\n# x = ...", "never closed"),
    "unclosed solution": ("# EXERCISE\n# x = ...\n# END EXERCISE\n# SOLUTION\nx = 1", "never closed"),
    "exercise nested in exercise": ("# EXERCISE\n# EXERCISE\n# x = ...\n# END EXERCISE", "cannot nest"),
    "exercise nested in solution": ("# EXERCISE\n# x = ...\n# END EXERCISE\n# SOLUTION\n# EXERCISE\n"
                                    "# END EXERCISE\n# END SOLUTION", "cannot nest"),
    "end exercise without start": ("x = 1\n# END EXERCISE", "without a `# EXERCISE`"),
    "end solution without start": ("x = 1\n# END SOLUTION", "without a `# SOLUTION`"),
    "mismatched end": ("# EXERCISE\n# x = ...\n# END SOLUTION", "closes the EXERCISE block"),
    "solution without stub": ("# SOLUTION\nx = 1\n# END SOLUTION", "without a stub"),
    "code between stub and solution": ("# EXERCISE\n# x = ...\n# END EXERCISE\ny = 2\n# SOLUTION\nx = 1\n"
                                       "# END SOLUTION", "not followed by its `# SOLUTION`"),
    "stub without solution": ("# EXERCISE\n# x = ...\n# END EXERCISE\n\n", "not followed by its `# SOLUTION`"),
    "two stubs in a row": ("# EXERCISE\n# x = ...\n# END EXERCISE\n# EXERCISE\n# y = ...\n# END EXERCISE\n"
                           "# SOLUTION\nx = 1\n# END SOLUTION", "not followed by its `# SOLUTION`"),
    "uncommented stub line": ("# EXERCISE\nx = ...\n# END EXERCISE\n# SOLUTION\nx = 1\n# END SOLUTION",
                              "is not commented"),
    "misspelt marker": ("# EXERCISE\n# x = ...\n# END EXERCISE\n#SOLUTION\nx = 1\n# END SOLUTION",
                        "looks like a marker"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_markers_raise_an_error_naming_notebook_and_cell(root: Path, case: str):
    source, problem = MALFORMED[case]
    write_solution(root, "01_fine", exercise())
    write_solution(root, "02_broken", [markdown("Intro"), *exercise(), *exercise(source)[:2], code(source)])
    with pytest.raises(NotebookError) as error:
        notebooks.generate(root)
    message = str(error.value)
    assert "solutions/02_broken.ipynb" in message
    assert "cell 6 " in message and repr(source.split("\n")[0]) in message
    assert problem in message
    assert not (root / "chapters").exists(), "nothing may be written while any notebook is malformed"


def test_cli_reports_malformed_markers_with_a_nonzero_exit(root: Path):
    write_solution(root, "01_broken", [code("x = 1\n# END SOLUTION")])
    for command in ("generate", "check"):
        result = run_cli(command, "--root", str(root))
        assert result.returncode != 0
        assert "solutions/01_broken.ipynb: cell 0 (first line: 'x = 1')" in result.stderr
        assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------ exercise convention
def test_exercises_are_read_with_their_ratings_minutes_and_hints(root: Path):
    two_hints = HINT_CELL + "\n\n" + HINT_CELL.replace("<summary>Hint<", "<summary>Hint 2<").replace(
        "Multiply `x` by itself.", "`x * x` works elementwise.")
    cells = [markdown("Intro"), markdown(RATED_HEADING.replace("●○○", "●●●")), code("x = 1"),
             markdown(two_hints), code(STUB_AND_SOLUTION)]
    [found] = notebooks.exercises(cells, "solutions/01_x.ipynb")
    assert found == notebooks.Exercise("square", difficulty=3, importance=2, minutes=5,
                                       hints=("Multiply `x` by itself.", "`x * x` works elementwise."))


UNRATED_OR_UNHINTED = {
    "no heading": ([markdown(HINT_CELL), code(STUB_AND_SOLUTION)], "without its heading"),
    "no rating line": ([markdown("### Exercise: `square`\nSquare x."), markdown(HINT_CELL),
                        code(STUB_AND_SOLUTION)], "no rating line"),
    "rating out of 4": ([markdown(RATED_HEADING.replace("●○○", "●○○○")), markdown(HINT_CELL),
                         code(STUB_AND_SOLUTION)], "3 marks"),
    "no minutes": ([markdown(RATED_HEADING.replace(" · about 5 minutes", "")), markdown(HINT_CELL),
                    code(STUB_AND_SOLUTION)], "no rating line"),
    "no hint cell": ([markdown(RATED_HEADING), code(STUB_AND_SOLUTION)], "must hold its hints"),
    "hint not right before the code": ([markdown(RATED_HEADING), markdown(HINT_CELL), code("x = 1"),
                                        code(STUB_AND_SOLUTION)], "must hold its hints"),
    "unfolded hint": ([markdown(RATED_HEADING), markdown("Hint: multiply x by itself."),
                       code(STUB_AND_SOLUTION)], "must hold its hints"),
    "text beside the hints": ([markdown(RATED_HEADING), markdown(HINT_CELL + "\n\nAnd more."),
                               code(STUB_AND_SOLUTION)], "nothing else"),
    "three hints": ([markdown(RATED_HEADING), markdown("\n\n".join([HINT_CELL] * 3)),
                     code(STUB_AND_SOLUTION)], "one or 2"),
    "empty hint": ([markdown(RATED_HEADING), markdown(HINT_CELL.replace("Multiply `x` by itself.", " ")),
                    code(STUB_AND_SOLUTION)], "must hold its hints"),
    "heading without code": ([markdown(RATED_HEADING), code("x = 1")], "no exercise code"),
}


@pytest.mark.parametrize("case", UNRATED_OR_UNHINTED, ids=list(UNRATED_OR_UNHINTED))
def test_an_exercise_without_rating_minutes_or_hints_is_an_error(root: Path, case: str):
    cells, problem = UNRATED_OR_UNHINTED[case]
    write_solution(root, "01_fine", exercise())
    write_solution(root, "02_unrated", [markdown("Intro"), *cells])
    with pytest.raises(NotebookError, match=re.escape(problem)) as error:
        notebooks.generate(root)
    assert "solutions/02_unrated.ipynb: cell " in str(error.value)
    assert not (root / "chapters").exists(), "nothing may be written while any exercise is unrated"


def test_cli_check_fails_on_an_exercise_without_hints(root: Path):
    write_solution(root, "01_a", [markdown(RATED_HEADING), code(STUB_AND_SOLUTION)])
    result = run_cli("check", "--root", str(root))
    assert result.returncode != 0
    assert "solutions/01_a.ipynb: cell 1" in result.stderr and "course-hint" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_book_shows_the_solution_without_the_stub_or_markers():
    shown = notebooks.solution_source(STUB_AND_SOLUTION)
    assert shown == ("import torch\n\ndef square(x):\n\n    return x * x\n\n"
                     "assert square(torch.tensor(3)) == 9")
    assert notebooks.solution_source("x = 1") == "x = 1"
    with pytest.raises(NotebookError, match="never closed"):
        notebooks.solution_source("# EXERCISE\n# x = ...")


# ------------------------------------------------------------------------------------------ generate
def test_generate_writes_an_exercise_twin_with_the_same_cells_and_ids(root: Path):
    write_solution(root, "01_squares", [markdown("Intro"), *exercise(), code("print('plain')")])
    notebooks.generate(root)
    solved, twin = read(root / "solutions/01_squares.ipynb"), read(root / "chapters/01_squares.ipynb")
    assert [cell.id for cell in solved.cells] == [cell.id for cell in twin.cells]
    assert len(solved.cells) == 7
    assert "return x * x" in solved.cells[5].source and "# EXERCISE" in solved.cells[5].source
    assert twin.cells[5].source == notebooks.exercise_source(STUB_AND_SOLUTION)
    assert "return x * x" not in json.dumps(twin)
    assert twin.cells[6].source == solved.cells[6].source == "print('plain')"
    assert twin.cells[3].source == RATED_HEADING and twin.cells[4].source == HINT_CELL, "the twin keeps both"


def test_solution_cells_are_folded_in_solutions_and_unfolded_in_chapters(root: Path):
    write_solution(root, "01_squares", [*exercise(), code("print('plain')")])
    notebooks.generate(root)
    solved, twin = read(root / "solutions/01_squares.ipynb"), read(root / "chapters/01_squares.ipynb")
    assert author_cells(solved)[2].metadata["tags"] == ["hide-input"]
    assert "tags" not in author_cells(solved)[3].metadata
    assert all("hide-input" not in cell.metadata.get("tags", []) for cell in twin.cells)


def test_hide_input_is_removed_only_where_the_tool_added_it(root: Path):
    path = write_solution(root, "01_tags", [
        *exercise(metadata={"tags": ["keep-me"]}),
        code("plot()", metadata={"tags": ["hide-input"]}),  # the author folded this one
    ])
    notebooks.generate(root)
    nb = read(path)
    assert author_cells(nb)[2].metadata["tags"] == ["keep-me", "hide-input"]
    author_cells(nb)[2].source = "square = lambda x: x * x"  # the author drops the exercise
    nb.cells = [cell for cell in nb.cells if cell.cell_type == "code"]  # with its heading and hints
    nbformat.write(nb, path)
    notebooks.generate(root)
    first, second = author_cells(read(path))
    assert first.metadata == {"tags": ["keep-me"]}
    assert second.metadata == {"tags": ["hide-input"]}


def test_generate_strips_outputs_counts_and_transient_metadata(root: Path):
    cell = code("print(1)", execution_count=7, outputs=[nbformat.v4.new_output("stream", text="1\n")],
                metadata={"execution": {"iopub.status.idle": "2024"}, "scrolled": True, "tags": ["mine"]})
    path = write_solution(root, "01_dirty", [cell], metadata={
        "widgets": {"state": {}}, "colab": {"provenance": []},
        "kernelspec": {"display_name": ".venv", "language": "python", "name": "venv-123"},
        "language_info": {"name": "python", "version": "3.11.7", "mimetype": "text/x-python"}})
    notebooks.generate(root)
    for nb in (read(path), read(root / "chapters/01_dirty.ipynb")):
        assert not notebooks.has_outputs(nb)
        assert author_cells(nb)[0].metadata == {"tags": ["mine"]}
        assert set(nb.metadata) == {"course", "kernelspec", "language_info"}
        assert nb.metadata.kernelspec.name == "python3" and nb.metadata.language_info == {"name": "python"}


def test_generate_is_idempotent_and_deterministic(root: Path, tmp_path_factory):
    cells = [markdown("Intro"), *exercise(), code("x = 1"), code("x = 1")]
    for cell in cells:
        del cell["id"]  # an nbformat 4.4 notebook: the tool must derive ids, not draw random ones
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"course": {"title": "Ids"}}, nbformat_minor=4)
    text = json.dumps(nb)
    other = tmp_path_factory.mktemp("other")
    for course in (root, other):
        shutil.copy(ROOT / "_config.yml", course / "_config.yml")
        shutil.copy(ROOT / "requirements.txt", course / "requirements.txt")
        (course / "solutions").mkdir(exist_ok=True)
        (course / "solutions/01_ids.ipynb").write_text(text)
        assert notebooks.generate(course) == ["wrote solutions/01_ids.ipynb", "wrote chapters/01_ids.ipynb"]
    first = snapshot(root)
    assert first == snapshot(other), "the same source must give byte-identical notebooks"
    assert notebooks.generate(root) == []
    assert snapshot(root) == first
    ids = [cell.id for cell in read(root / "solutions/01_ids.ipynb").cells]
    assert len(set(ids)) == len(ids) == 8


def test_header_and_setup_cells_are_refreshed_not_duplicated(root: Path):
    path = write_solution(root, "01_header", [code("x = 1")])
    notebooks.generate(root)
    nb = read(path)
    header, setup, rest = nb.cells[0], nb.cells[1], nb.cells[2:]
    header.source = "# An outdated title"
    header.metadata = {}  # and lost its tag: its id still marks it as generated
    nb.cells = [*rest, setup, header]  # the author moved them around
    nbformat.write(nb, path)
    notebooks.generate(root)
    cells = read(path).cells
    assert [cell.id for cell in cells] == ["course-header", "course-setup", rest[0].id]
    assert cells[0].source.startswith("# A test chapter\n")
    assert cells[0].metadata.tags == ["course-header"]
    assert set(cells[1].metadata.tags) == {"course-setup", "remove-cell"}
    assert cells[1].source.startswith("# ")  # a comment line saying what it does


def test_missing_title_is_an_error_that_says_where_to_set_it(root: Path):
    write_solution(root, "01_untitled", [code("x = 1")], title=None)
    with pytest.raises(NotebookError, match=r"solutions/01_untitled\.ipynb: no chapter title.*course"):
        notebooks.generate(root)


def test_orphaned_chapters_are_reported_and_removed(root: Path):
    (root / "chapters").mkdir()
    (root / "chapters/09_gone.ipynb").write_text("{}")
    assert notebooks.check(root) == ["chapters/09_gone.ipynb: has no solutions/09_gone.ipynb (a leftover)"]
    notebooks.generate(root)
    assert not (root / "chapters/09_gone.ipynb").exists()


# ------------------------------------------------------------------------------------------ header, setup
def test_badges_follow_the_repository_in_config(root: Path):
    write_solution(root, "03_badges", [code("x = 1")])
    set_repository(root, "https://github.com/someone/a-fork.git", "workshop-2025")
    notebooks.generate(root)
    for folder in ("solutions", "chapters"):
        nb = read(root / folder / "03_badges.ipynb")
        assert badge_url(nb) == ("https://colab.research.google.com/github/someone/a-fork/blob/workshop-2025/"
                                 "chapters/03_badges.ipynb")
        assert ("https://colab.research.google.com/github/someone/a-fork/blob/workshop-2025/"
                "solutions/03_badges.ipynb") in nb.cells[0].source
        assert setup_repository(nb.cells[1].source) == (
            "https://github.com/someone/a-fork", "workshop-2025", "a-fork")
    set_repository(root, "https://github.com/other/course", "main")
    assert sorted(notebooks.check(root)) == ["chapters/03_badges.ipynb: stale (not what solutions/03_badges.ipynb "
                                             "generates)", "solutions/03_badges.ipynb: not normalised (metadata, "
                                             "header/setup cells, cell ids or tags)"]
    notebooks.generate(root)
    assert badge_url(read(root / "chapters/03_badges.ipynb")).startswith(
        "https://colab.research.google.com/github/other/course/blob/main/")


@pytest.mark.parametrize("url, branch, problem", [
    (None, "main", "repository.url"),
    ("https://gitlab.com/someone/course", "main", "repository.url"),
    ("https://github.com/only-an-owner", "main", "repository.url"),
    ("https://github.com/someone/course", None, "repository.branch"),
    ("https://github.com/someone/course", "two words", "repository.branch"),
])
def test_bad_repository_config_is_a_clear_error(root: Path, url, branch, problem):
    write_solution(root, "01_x", [code("x = 1")])
    set_repository(root, url, branch)
    with pytest.raises(NotebookError, match=rf"_config\.yml: {re.escape(problem)} must"):
        notebooks.generate(root)


def test_cli_reports_a_bad_repository_url_with_a_nonzero_exit(root: Path):
    set_repository(root, "github.com/someone/course")
    result = run_cli("check", "--root", str(root))
    assert result.returncode != 0
    assert "repository.url must be a GitHub repository URL" in result.stderr and "Traceback" not in result.stderr


def test_setup_cell_pins_come_from_requirements_and_never_include_torch(root: Path):
    requirements = (root / "requirements.txt").read_text()
    edited = re.sub(r"(?m)^einops==\S+", "einops==9.9.9", requirements)
    edited = re.sub(r"(?m)^transformer_lens==", "Transformer-Lens == ", edited)  # as pip spells it, too
    (root / "requirements.txt").write_text(edited)
    pins = notebooks.read_pins(root)
    assert pins["einops"] == "9.9.9"
    assert not any(name.lower() == "torch" for name in pins)
    real = {line.split("==")[0]: line.split("==")[1] for line in requirements.splitlines() if "==" in line}
    assert {name: version for name, version in pins.items() if name != "einops"} == \
           {name: real[name] for name in pins if name != "einops"}
    source = notebooks.setup_source(notebooks.read_repository(root), pins)
    assert '"einops": "9.9.9"' in source
    compile(source, "<setup cell>", "exec")
    with pytest.raises(NotebookError, match="never install torch"):
        notebooks.setup_source(notebooks.read_repository(root), {"torch": "2.13.0"})


def test_a_pinned_package_missing_from_requirements_is_an_error(root: Path):
    requirements = (root / "requirements.txt").read_text()
    (root / "requirements.txt").write_text(re.sub(r"(?m)^circuitsvis==.*$", "circuitsvis", requirements))
    with pytest.raises(NotebookError, match=r"requirements\.txt: .*circuitsvis"):
        notebooks.read_pins(root)


# ------------------------------------------------------------------------------------------ check
def test_check_reports_outputs_and_stale_twins_without_writing(root: Path):
    write_solution(root, "01_a", exercise())
    write_solution(root, "02_b", [code("y = 2")])
    notebooks.generate(root)
    assert notebooks.check(root) == []

    executed = read(root / "solutions/01_a.ipynb")
    author_cells(executed)[2].outputs = [nbformat.v4.new_output("stream", text="9\n")]
    author_cells(executed)[2].execution_count = 1
    nbformat.write(executed, root / "solutions/01_a.ipynb")
    edited = read(root / "solutions/02_b.ipynb")
    author_cells(edited)[0].source = "y = 3"
    nbformat.write(edited, root / "solutions/02_b.ipynb")
    before = snapshot(root)

    problems = notebooks.check(root)
    assert problems == ["solutions/01_a.ipynb: stored with outputs or execution counts",
                        "chapters/02_b.ipynb: stale (not what solutions/02_b.ipynb generates)"]
    assert snapshot(root) == before
    result = run_cli("check", "--root", str(root))
    assert result.returncode == 1
    assert "make notebooks" in result.stderr and "solutions/01_a.ipynb" in result.stderr
    assert snapshot(root) == before

    assert run_cli("generate", "--root", str(root)).returncode == 0
    assert notebooks.check(root) == []
    result = run_cli("check", "--root", str(root))
    assert result.returncode == 0, result.stderr


def test_check_reports_a_missing_twin_and_a_hand_edited_chapter(root: Path):
    write_solution(root, "01_a", [code("x = 1")])
    assert "chapters/01_a.ipynb: missing (generated from solutions/01_a.ipynb)" in notebooks.check(root)
    notebooks.generate(root)
    chapter = read(root / "chapters/01_a.ipynb")
    author_cells(chapter)[0].source = "x = 2  # edited by hand"
    nbformat.write(chapter, root / "chapters/01_a.ipynb")
    assert notebooks.check(root) == ["chapters/01_a.ipynb: stale (not what solutions/01_a.ipynb generates)"]


# ------------------------------------------------------------------------------------------ the real repository
def course_notebooks() -> list[Path]:
    """Every notebook of the real course, solutions and chapters."""
    return sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")) + sorted(
        (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def test_every_solutions_notebook_has_an_up_to_date_chapter_twin():
    problems = notebooks.check(ROOT)
    assert not problems, "run `make notebooks` and commit the result:\n" + "\n".join(problems)


def test_no_course_notebook_is_stored_with_outputs():
    dirty = [str(path.relative_to(ROOT)) for path in course_notebooks() if notebooks.has_outputs(read(path))]
    assert not dirty, f"stored with outputs or execution counts: {dirty}; run `make notebooks`"


def test_every_badge_opens_its_own_chapter_on_the_configured_repository():
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    owner_repo = repository["url"].removeprefix("https://github.com/").removesuffix(".git").strip("/")
    wrong = []
    for path in course_notebooks():
        expected = (f"https://colab.research.google.com/github/{owner_repo}/blob/{repository['branch']}/"
                    f"chapters/{path.name}")
        if badge_url(read(path)) != expected:
            wrong.append(f"{path.relative_to(ROOT)}: {badge_url(read(path))} (expected {expected})")
    assert not wrong, "\n".join(wrong)


def test_every_course_exercise_is_rated_and_has_folded_hints():
    total = 0
    for path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")):
        nb = read(path)
        found = notebooks.exercises(nb.cells, str(path.relative_to(ROOT)))
        solution_cells = [cell for cell in nb.cells if cell.cell_type == "code" and notebooks.has_solution(cell.source)]
        assert len(found) == len(solution_cells), f"{path.name}: every exercise needs a rating and hints"
        total += len(found)  # a short chapter (the authors' model) may have none
        for item in found:
            assert 1 <= item.difficulty <= 3 and 1 <= item.importance <= 3 and 1 <= item.minutes <= 60
            assert all(len(hint) > 40 for hint in item.hints), f"{path.name}: {item.name}'s hints are too short to help"
    assert total >= 25, f"only {total} rated exercises in the course"


MAX_CODE_LINE = 88  # characters per code line in a course notebook (the project's limit)


def long_code_lines(nb: nbformat.NotebookNode, limit: int = MAX_CODE_LINE) -> list[str]:
    """Every code line longer than `limit`, as 'cell <id>, line <n> (<length> characters): <line>'."""
    return [f"cell {cell.get('id', index)}, line {number} ({len(line)} characters): {line.strip()}"
            for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for number, line in enumerate(cell.source.split("\n"), start=1) if len(line) > limit]


def test_long_code_lines_are_reported_with_their_cell_and_line():
    nb = nbformat.v4.new_notebook(cells=[code("x = 1\ny = '" + "a" * 90 + "'", id="long-one"),
                                         markdown("m" * 200), code("z = 2", id="short")])
    assert long_code_lines(nb) == [f"cell long-one, line 2 (96 characters): y = '{'a' * 90}'"]


@pytest.mark.parametrize("name", sorted(str(path.relative_to(ROOT)) for path in
                                        course_notebooks() + sorted((ROOT / "book").glob("*.ipynb"))))
def test_course_notebook_code_lines_fit_88_characters(name: str):
    too_long = long_code_lines(read(ROOT / name))
    assert not too_long, (f"{name}: {len(too_long)} code line(s) longer than {MAX_CODE_LINE} characters "
                          "(break them inside parentheses; chapters/ follows solutions/ through "
                          "`python -m tools.notebooks generate`):\n" + "\n".join(too_long))


IMAGE_TARGET = re.compile(r"!\[[^\]]*\]\(\s*<?(?P<md>[^)\s>]+)|<img\b[^>]*\bsrc=[\"'](?P<html>[^\"']+)")


def local_images(nb: nbformat.NotebookNode) -> list[str]:
    """Every image a markdown cell shows from a file next to the notebook (a relative path)."""
    return [f"cell {cell.get('id', index)}: {target}" for index, cell in enumerate(nb.cells)
            if cell.cell_type == "markdown" for match in IMAGE_TARGET.finditer(cell.source)
            for target in [match["md"] or match["html"]]
            if not re.match(r"(https?|data|attachment):", target)]


def test_images_by_relative_path_are_found_in_markdown_and_html():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("![a diagram](../book/_static/d.svg), [a link](../book/glossary.md)",
                                      id="md"),
        nbformat.v4.new_markdown_cell('<img alt="x" src="pic.png"> ![badge](https://example.org/b.svg)',
                                      id="html"),
        code("# ![not markdown](x.svg)", id="code")])
    assert local_images(nb) == ["cell md: ../book/_static/d.svg", "cell html: pic.png"]


@pytest.mark.parametrize("path", course_notebooks(), ids=lambda path: str(path.relative_to(ROOT)))
def test_course_notebooks_show_no_image_by_a_relative_path(path: Path):
    """Colab opens a notebook alone, without the files beside it; a diagram belongs in a code cell that
    reads it from the course (utils.REPO_ROOT), as chapter 3 shows model-and-algorithm.svg."""
    found = local_images(read(path))
    assert not found, (f"{path.name}: image(s) by a relative path, broken in Colab:\n" + "\n".join(found))


def test_same_code_accepts_a_reflow_and_rejects_a_changed_program_or_a_broken_stub():
    before = {"a": 'x = f(1, 2)  # a long comment\nprint(f"{x} and " "more")',
              "b": STUB_AND_SOLUTION, "c": 'def g():\n    """One line."""\n    return 1'}
    reflowed = {"a": '# a long comment\nx = f(1,\n      2)\nprint(f"{x} "\n      "and more")',
                "b": STUB_AND_SOLUTION, "c": 'def g():\n    """One\n    line."""\n    return 1'}
    assert same_code.compare(before, reflowed, "nb") == (2, ["nb: cell c: only a docstring's text changed"], [])
    changed = reflowed | {"a": "x = f(1, 3)\nprint(x)"}
    assert same_code.compare(before, changed, "nb")[2] == ["nb: cell a: the code changed, not just its layout"]
    broken_stub = reflowed | {"b": STUB_AND_SOLUTION.replace("    # return ...", "    # return (...")}
    assert same_code.compare(before, broken_stub, "nb")[2] == [
        "nb: cell b: the code changed, not just its layout"]
