"""What a test run records for the instructor guide: each chapter's execution time and each check's messages.

Loaded as a pytest plugin by the root conftest.py. After a test run:
- artifacts/chapter_times.json: per notebook executed by nbval, the wall time of all its cells (kernel start
  included) and whether every cell passed; entries for notebooks not run this time are kept;
- artifacts/check_messages.json: per exercise check, the messages it gave the wrong answers in
  tests/checks/ (recorded through `record_check_message`), i.e. the pitfalls it recognises.
`make record` (`python -m tools.records`) merges both into book/records/, the files the instructor guide's tables
are computed from: a notebook's time is replaced only by a later measurement, so a stale artifacts/ cannot overwrite
newer records, and chapters not run this time keep theirs.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
BOOK_RECORDS = ROOT / "book" / "records"
TIMES, MESSAGES = "chapter_times.json", "check_messages.json"

_seconds: dict[str, float] = defaultdict(float)
_cells: dict[str, int] = defaultdict(int)
_failed: set[str] = set()
_messages: dict[str, list[str]] = defaultdict(list)


def record_check_message(check_name: str, message: str) -> None:
    """Remember a message an exercise check gave a wrong answer (called by tests/checks/)."""
    if message not in _messages[check_name]:
        _messages[check_name].append(message)


def _notebook(nodeid: str) -> str | None:
    """'solutions/01_training.ipynb' for an nbval item id ('solutions/01_training.ipynb::Cell 3'), else None."""
    path = nodeid.split("::", 1)[0]
    return path if path.endswith(".ipynb") else None


def pytest_runtest_logreport(report) -> None:
    notebook = _notebook(report.nodeid)
    if notebook is None:
        return
    _seconds[notebook] += report.duration
    if report.when == "call":
        _cells[notebook] += 1
    if report.failed:
        _failed.add(notebook)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _merge(path: Path, key: str, new: dict, how: str) -> None:
    """Update the `key` table of the JSON record at path with new entries (others are kept)."""
    try:
        old = json.loads(path.read_text()).get(key, {})
    except (OSError, ValueError, AttributeError):
        old = {}
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({
        "how": how, "commit": _commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        key: dict(sorted({**old, **new}.items())),
    }, indent=2, ensure_ascii=False) + "\n")


def pytest_sessionfinish(session) -> None:
    measured = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if _seconds:
        _merge(ARTIFACTS / TIMES, "notebooks", {
            nb: {"seconds": round(s, 1), "cells": _cells[nb], "passed": nb not in _failed, "measured_at": measured}
            for nb, s in _seconds.items()},
            "pytest --nbval-lax (make test) after the book build has trained and cached the runs; "
            "seconds = all cells of the notebook, kernel start included")
    if _messages:
        _merge(ARTIFACTS / MESSAGES, "checks", dict(_messages),
               "the CheckFailed messages each exercise check gave the wrong answers in tests/checks/")


def _table(path: Path, key: str) -> dict:
    """The `key` table of the JSON record at path ({} if the file is missing)."""
    return json.loads(path.read_text())[key] if path.is_file() else {}


def newer_times(old: dict, new: dict) -> dict:
    """Chapter times from both records; for a notebook in both, the later measurement."""
    return dict(sorted({**old, **{nb: entry for nb, entry in new.items()
                                  if nb not in old or entry["measured_at"] >= old[nb]["measured_at"]}}.items()))


def record(artifacts: Path = ARTIFACTS, records: Path = BOOK_RECORDS) -> list[str]:
    """Merge artifacts/'s records into book/records/; returns the notebooks whose time changed."""
    if not ((artifacts / TIMES).is_file() and (artifacts / MESSAGES).is_file()):
        raise FileNotFoundError(f"no records in {artifacts}/: run `make test` first")
    changed = []
    for name, key, merge in ((TIMES, "notebooks", newer_times), (MESSAGES, "checks", lambda a, b: {**a, **b})):
        new = json.loads((artifacts / name).read_text())
        old = _table(records / name, key)
        merged = merge(old, new[key])
        if name == TIMES:
            changed = [nb for nb in merged if old.get(nb) != merged[nb]]
        records.mkdir(parents=True, exist_ok=True)
        (records / name).write_text(json.dumps({**new, key: dict(sorted(merged.items()))}, indent=2,
                                               ensure_ascii=False) + "\n")
    return changed


if __name__ == "__main__":
    try:
        updated = record()
    except (FileNotFoundError, ValueError, KeyError) as error:
        sys.exit(f"make record: {error}")
    print("book/records/ updated; new chapter times for:", ", ".join(updated) or "none")
