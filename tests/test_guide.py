"""The instructor guide is computed from the chapters and from the test run's records, and stays in step with them."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from tools import guide

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "book" / "instructor_guide.ipynb"


def test_every_chapter_states_its_goals_time_and_checks():
    found = guide.chapters()
    assert [c.path for c in found] == sorted(str(p.relative_to(ROOT)) for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    for chapter in found:
        assert chapter.goals and all(len(goal) > 10 for goal in chapter.goals), chapter.path
        assert 10 <= chapter.minutes <= 180, chapter.path


def test_the_recorded_timings_cover_every_chapter_and_passed():
    """`make test` then `make record` after adding or changing a chapter keeps the guide's schedules true."""
    recorded = json.loads((guide.RECORDS / "chapter_times.json").read_text())["notebooks"]
    for chapter in guide.chapters():
        assert chapter.path in recorded, f"{chapter.path} has no recorded execution time: run `make test` then `make record`"
        assert recorded[chapter.path]["passed"], f"{chapter.path} failed in the recorded run"


def test_every_check_a_chapter_calls_has_recorded_pitfalls():
    messages = guide.check_messages()
    missing = [check for chapter in guide.chapters() for check in chapter.checks if not messages.get(check)]
    assert not missing, f"checks without recorded wrong-answer messages (test them in tests/checks/): {missing}"


def make_chapter(number: int, minutes: int) -> guide.Chapter:
    return guide.Chapter(f"solutions/{number:02d}_x.ipynb", f"chapter {number}", ["do a thing well"], minutes, [])


@pytest.mark.parametrize("session", [120, 210, 450])
def test_a_schedule_keeps_chapter_order_and_fits_the_session(session):
    chapters = [make_chapter(n, m) for n, m in [(1, 60), (2, 75), (3, 70), (4, 50), (5, 45), (6, 60)]]
    seconds = {c.path: 90.0 for c in chapters}  # 1.5 min of execution each → slots of minutes + 2
    rows, left = guide.schedule(session, chapters, seconds, lunch_after=180 if session > 300 else None)
    assert sum(minutes for _, minutes in rows) <= session
    scheduled = [name for name, _ in rows if name.startswith("Chapter")]
    assert scheduled == [f"Chapter {c.number}: {c.title}" for c in chapters[:len(scheduled)]]
    assert left == chapters[len(scheduled):]
    assert all(minutes == c.minutes + 2 for (name, minutes), c in zip([r for r in rows if r[0].startswith("Chapter")], chapters))


def test_a_long_day_gets_breaks_and_one_lunch():
    chapters = [make_chapter(n, 60) for n in range(1, 7)]
    rows, _ = guide.schedule(450, chapters, {}, lunch_after=180)
    names = [name for name, _ in rows]
    assert names.count("Lunch") == 1 and "Break" in names


def test_the_guide_is_stored_without_outputs():
    nb = nbformat.read(GUIDE, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_a_pitfall_shows_every_line_of_a_multi_line_check_message():
    message = ("fft1d: the coefficients is wrong (at index (0,): expected 1, got 2).\n"
               "  input: x of shape [5, 3] * 2\n  expected: tensor([1., 0.])\n  hint:  transform the FIRST axis.")
    shown = guide.pitfall_markdown(message)
    assert shown.startswith("- the coefficients is wrong")
    for text in ("x of shape \\[5, 3\\] \\* 2", "tensor(\\[1., 0.\\])", "*Hint given:* transform the FIRST axis."):
        assert text in shown, shown
    assert len(shown.splitlines()) == 4


def test_the_guide_shows_whole_check_messages():
    nb = nbformat.read(GUIDE, as_version=4)
    assert any("guide.pitfall_markdown(message)" in cell.source for cell in nb.cells if cell.cell_type == "code")


def _write(path: Path, key: str, table: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"how": "test", key: table}))


def test_make_record_keeps_newer_times_and_other_chapters(tmp_path):
    from tools import records
    artifacts, book = tmp_path / "artifacts", tmp_path / "records"
    entry = lambda s, when: {"seconds": s, "cells": 3, "passed": True, "measured_at": when}
    _write(book / records.TIMES, "notebooks", {"a.ipynb": entry(10, "2026-02-01"), "b.ipynb": entry(20, "2026-01-01"),
                                               "c.ipynb": entry(30, "2026-01-01")})
    _write(book / records.MESSAGES, "checks", {"check_a": ["old"], "check_b": ["kept"]})
    _write(artifacts / records.TIMES, "notebooks", {"a.ipynb": entry(99, "2026-01-15"), "b.ipynb": entry(21, "2026-03-01")})
    _write(artifacts / records.MESSAGES, "checks", {"check_a": ["new"]})
    assert records.record(artifacts, book) == ["b.ipynb"]
    times = json.loads((book / records.TIMES).read_text())["notebooks"]
    assert {nb: e["seconds"] for nb, e in times.items()} == {"a.ipynb": 10, "b.ipynb": 21, "c.ipynb": 30}
    assert json.loads((book / records.MESSAGES).read_text())["checks"] == {"check_a": ["new"], "check_b": ["kept"]}


def test_make_record_without_a_test_run_says_what_to_do(tmp_path):
    from tools import records
    with pytest.raises(FileNotFoundError, match="run `make test` first"):
        records.record(tmp_path / "artifacts", tmp_path / "records")
