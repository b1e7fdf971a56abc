"""The instructor guide's tables, computed from the chapters themselves and from what the test run recorded.

- `chapters()` reads each solutions/NN_*.ipynb: title, learning goals, the author's time estimate ("**Time.**
  About N minutes") and the exercise checks it calls.
- `execution_seconds()` reads book/records/chapter_times.json (written by `make test`, copied by `make record`).
- `check_messages()` reads book/records/check_messages.json: what each check tells a learner for the wrong
  answers in tests/checks/, i.e. the pitfalls it recognises.
- `schedule(...)` lays chapters into a session of a given length, with breaks, in order.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "book" / "records"
GOALS = re.compile(r"\*\*Learning goals\.\*\*[^\n]*\n((?:- .*\n?(?:  .*\n?)*)+)")
TIME = re.compile(r"\*\*Time\.\*\*\s*About (\d+) minutes")
CHECK_CALL = re.compile(r"checks\.(check_\w+)\(")


@dataclass
class Chapter:
    path: str  # e.g. "solutions/01_training.ipynb"
    title: str
    goals: list[str]
    minutes: int  # the author's estimate for a learner doing the exercises
    checks: list[str]  # the exercise checks the chapter calls, in order

    @property
    def number(self) -> int:
        return int(Path(self.path).name[:2])


def chapters() -> list[Chapter]:
    """Every chapter in solutions/, in order, with its goals, time estimate and checks."""
    found = []
    for path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        goals, minutes = GOALS.search(markdown), TIME.search(markdown)
        if not goals or not minutes:
            raise ValueError(f"{path.name}: the introduction needs a '**Learning goals.**' list and "
                             "'**Time.** About N minutes' (the instructor guide reads them)")
        items = [" ".join(item.split()) for item in re.split(r"^- ", goals.group(1), flags=re.M) if item.strip()]
        calls = list(dict.fromkeys(CHECK_CALL.findall(code)))
        found.append(Chapter(str(path.relative_to(ROOT)), nb.metadata["course"]["title"], items,
                             int(minutes.group(1)), calls))
    return found


def _record(name: str, key: str) -> dict:
    path = RECORDS / name
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get(key, {})


def execution_seconds() -> dict[str, float]:
    """Measured execution time of each notebook (seconds), keyed by path, from the last recorded test run."""
    return {nb: entry["seconds"] for nb, entry in _record("chapter_times.json", "notebooks").items()}


def check_messages() -> dict[str, list[str]]:
    """The messages each exercise check gave wrong answers in the recorded test run."""
    return _record("check_messages.json", "checks")


def schedule(session_minutes: int, chapter_list: list[Chapter], seconds: dict[str, float], *,
             opening: int = 15, closing: int = 10, break_every: int = 90, break_minutes: int = 15,
             lunch_after: int | None = None, lunch_minutes: int = 60) -> tuple[list[tuple[str, int]], list[Chapter]]:
    """Lay chapters into a session, in order: [(activity, minutes)], and the chapters that did not fit.

    A chapter's slot is the author's estimate plus its measured execution time (rounded up to whole minutes);
    a break comes after each `break_every` minutes of work, lunch once after `lunch_after` minutes.
    """
    rows, left, used, since_break, worked, lunched = [("Welcome, set-up check, 'Start here'", opening)], [], opening, opening, opening, False
    for chapter in chapter_list:
        slot = chapter.minutes + -(-int(seconds.get(chapter.path, 0)) // 60)
        pause = []
        if lunch_after is not None and not lunched and worked + slot > lunch_after:
            pause, lunched = [("Lunch", lunch_minutes)], True
        elif since_break + slot > break_every + 30:
            pause = [("Break", break_minutes)]
        extra = sum(m for _, m in pause)
        if left or used + extra + slot + closing > session_minutes:
            left.append(chapter)
            continue
        rows += pause
        used += extra + slot
        since_break = 0 if pause else since_break
        rows.append((f"Chapter {chapter.number}: {chapter.title}", slot))
        since_break += slot
        worked += slot
    rows.append(("Wrap-up: discussion questions, what to read next", closing))
    return rows, left


def pitfall_markdown(message: str) -> str:
    """A check's whole message as one Markdown list item: its first line, then every further line
    (`input: …`, `hint: …`, expected and got values, …) as a nested item, none dropped."""
    first, *rest = [line for line in message.splitlines() if line.strip()]
    items = [f"- {_escape(first.split(': ', 1)[-1])}"]
    for line in rest:
        label, sep, text = line.strip().partition(":")
        if sep and label and " " not in label.strip():
            label = "Hint given" if label == "hint" else label.capitalize()
            items.append(f"  - *{label}:* {_escape(text.strip())}")
        else:
            items.append(f"  - {_escape(line.strip())}")
    return "\n".join(items)


def _escape(text: str) -> str:
    """Text shown literally in Markdown: no stray emphasis, roles or math; `code` in a message stays code."""
    parts = re.split(r"(`[^`]+`)", text)  # odd entries: the message's own code spans, already literal
    return "".join(part if i % 2 else re.sub(r"([\\`*_{}\[\]<>$|])", r"\\\1", part)
                   for i, part in enumerate(parts))
