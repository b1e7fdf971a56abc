"""`make book` from a fresh clone, timed: set-up, the default run, every chapter with an empty run cache, in total.

    .venv/bin/python benchmarks/book_build.py            # clone HEAD into a temporary folder, run `make book` there
    .venv/bin/python benchmarks/book_build.py --log FILE --commit REV  # read a timed log written earlier (see below)
    .venv/bin/python benchmarks/book_build.py --readme   # write results/book_build.json's figures into README.md

`make book` installs the pinned requirements, trains the workshop run, then builds the book, executing every
notebook (`execute_notebooks: force`); only the workshop run is in the cache by then, so every other run a chapter
uses is trained while the book builds: each chapter's time is its time with an empty run cache (chapter 1 excepted:
its workshop run was just trained). The phases come from the log: each line is stamped with the seconds since the
start (`ts -s`'s format, "HH:MM:SS line"), make echoes its commands, and myst-nb logs "<notebook>: Executed notebook
in S seconds". Writes benchmarks/results/book_build.json.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import replace_block  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "book_build.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- book_build figures: begin (benchmarks/book_build.py --readme) -->", "<!-- book_build figures: end -->"
BUDGET_S = {"make book": 12 * 60, "chapter": 3 * 60, "chapter that trains many models": 5 * 60}  # issue #17
MANY_MODELS = ("06_", "08_", "09_")  # chapters that train many models (batched): their budget is 5 minutes
_STAMP = re.compile(r"^(\d+):(\d\d):(\d\d) (.*)$")
_EXECUTED = re.compile(r"(\S+?\.(?:ipynb|md)): Executed notebook in ([\d.]+) seconds")


def _seconds(stamp: re.Match) -> int:
    return int(stamp[1]) * 3600 + int(stamp[2]) * 60 + int(stamp[3])


def parse_log(text: str) -> dict:
    """Phases and per-notebook execution seconds from a stamped `make book` log."""
    train_at = build_at = end = None
    notebooks = {}
    for line in text.splitlines():
        stamp = _STAMP.match(line)
        if not stamp:
            continue
        at, body = _seconds(stamp), stamp[4]
        end = at
        if train_at is None and "-m utils.train --preset workshop" in body:
            train_at = at
        elif build_at is None and "jupyter-book build" in body:
            build_at = at
        elif executed := _EXECUTED.search(body):
            path = Path(executed[1])
            key = f"{path.parent.name}/{path.name}" if path.parent.name in ("solutions", "book") else path.name
            notebooks[key] = float(executed[2])
    if None in (train_at, build_at, end):
        raise ValueError("not a stamped `make book` log: the workshop run's or the book build's command is missing")
    return {"phases_s": {"install": train_at, "workshop run": build_at - train_at, "book build": end - build_at},
            "total_s": end, "notebooks_s": dict(sorted(notebooks.items()))}


def _later(result: dict) -> list[str]:
    """The notebooks of chapters added after issue #17 (7 on): each brings its own budget."""
    return [n for n in result["notebooks_s"] if re.match(r"(solutions/)?(0[7-9]|[1-9]\d)_", n)]


def chapters_1_to_6_s(result: dict) -> float:
    """make book's time without the later chapters' execution: what the 12-minute budget is about."""
    return result["total_s"] - sum(result["notebooks_s"][n] for n in _later(result))


def within_budget(result: dict) -> dict[str, bool]:
    """Each measured item against its budget (seconds)."""
    verdict = {"make book": result["total_s"] <= BUDGET_S["make book"] + _added_budget(result),
               "make book, chapters 1-6": chapters_1_to_6_s(result) <= BUDGET_S["make book"]}
    for name, s in result["notebooks_s"].items():
        many = Path(name).name.startswith(MANY_MODELS)
        verdict[name] = s <= BUDGET_S["chapter that trains many models" if many else "chapter"]
    return verdict


def _added_budget(result: dict) -> int:
    """make book's 12 minutes are for chapters 1-6; each later chapter adds its own budget."""
    return sum(BUDGET_S["chapter that trains many models" if Path(n).name.startswith(MANY_MODELS) else "chapter"]
               for n in _later(result))


def _stamp(seconds: float, line: str) -> str:
    at = int(seconds)
    return f"{at // 3600:02d}:{at // 60 % 60:02d}:{at % 60:02d} {line.rstrip()}"


def run_make_book(commit: str, into: Path | None = None) -> str:
    """Clone the repository at `commit` into `into` (kept) or a temporary folder, run `make book` there; the log,
    stamped."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = str(into or Path(tmp) / "repo")
        subprocess.run(["git", "clone", "--quiet", str(ROOT), repo], check=True)
        subprocess.run(["git", "-C", repo, "checkout", "--quiet", commit], check=True)
        start, lines = time.monotonic(), []
        with subprocess.Popen(["make", "book"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as make:
            for line in make.stdout:
                lines.append(_stamp(time.monotonic() - start, line))
        lines.append(_stamp(time.monotonic() - start, "done"))
        if make.returncode:
            sys.exit("make book failed:\n" + "\n".join(lines[-40:]))
    return "\n".join(lines)


def readme_block(result: dict) -> str:
    """The README's figures: phases, each chapter against its budget."""
    ok = within_budget(result)
    rows = [f"| {name} | {s:.0f} s | {'✓' if ok[name] else '✗ over budget'} |"
            for name, s in result["notebooks_s"].items()]
    phases = ", ".join(f"{name} {s:.0f} s" for name, s in result["phases_s"].items())
    budget = (BUDGET_S["make book"] + _added_budget(result)) / 60
    return "\n".join([
        f"Measured by `benchmarks/book_build.py` (results/book_build.json, commit {result['commit']}, "
        f"{result['machine']}): `make book` from a fresh clone took **{result['total_s'] / 60:.1f} min** "
        f"(budget {budget:.0f} min: 12 for chapters 1-6, plus each later chapter's own): {phases}. Without "
        f"chapters 7 on it took {chapters_1_to_6_s(result) / 60:.1f} min (budget 12 min).",
        "", "| notebook, executed while the book builds (empty run cache) | seconds | budget (3 min; 5 for "
        "chapters 6, 8, 9, which train many models) |", "|---|---:|---|", *rows])


def readme_with_figures(text: str, result: dict) -> str:
    return replace_block(text, BEGIN, END, readme_block(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, help="a stamped `make book` log to read instead of running it")
    parser.add_argument("--commit", default="HEAD", help="the commit to build (or that the log built)")
    parser.add_argument("--machine", default="2-core VM (the CI kind), no other job running",
                        help="the machine, in words, for the README")
    parser.add_argument("--into", type=Path, help="clone into this new folder and keep it (e.g. to run make test after); the log is written next to it")
    parser.add_argument("--readme", action="store_true", help="only write the results' figures into README.md")
    args = parser.parse_args()
    if args.readme:
        README.write_text(readme_with_figures(README.read_text(), json.loads(RESULTS.read_text())))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", args.commit], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    text = args.log.read_text() if args.log else run_make_book(commit, args.into)
    if args.into and not args.log:
        args.into.with_suffix(".log").write_text(text + "\n")  # next to the kept clone
    result = {"commit": commit, "machine": args.machine, **parse_log(text)}
    result["within_budget"] = within_budget(result)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(readme_block(result))


if __name__ == "__main__":
    main()
