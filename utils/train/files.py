"""Files written so that a kill never leaves half of one: atomic saves, and several runs' saves committed as one.

A file is written to a synced temporary next to its place and renamed onto it (a reader sees the old or the new
file, never a part). A batch of runs (utils.train.many) stages every run's files first and renames them together;
a record of the renames, in each run directory while they happen, lets a resume finish them after a kill.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from utils.model import CheckpointError

__all__ = ["atomic_save", "atomic_write_text", "commit_together", "finish_pending_commits", "PENDING"]


def atomic_save(obj: object, path: Path, staged: Path | None = None) -> None:
    """Write with torch.save to a temporary file, fsync, then rename: a reader sees the old or the new file.
    With `staged` (a temporary already holding obj: _save_temporary), only the rename is left to do."""
    os.replace(staged or _save_temporary(obj, path), path)


def _save_temporary(obj: object, path: Path) -> Path:
    """torch.save obj to a synced temporary file next to path (renaming it onto path is the commit)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def atomic_write_text(path: Path, text: str) -> None:
    os.replace(_text_temporary(path, text), path)


def _text_temporary(path: Path, text: str) -> Path:
    """text written to a temporary file next to path (renaming it onto path is the commit)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    return tmp


# In every run directory of a batch while the batch renames its staged files: the renames, for all its runs.
PENDING = ".batch-commit.json"


def commit_together(commits: list[Callable[[], None]], run_dirs: list[Path]) -> None:
    """Run several runs' commits (RunWriter.stage) as one: a record of all their renames goes into each run directory
    first and is removed after. A kill between two runs' renames would leave them saved at different steps (they
    would then resume in separate batches, which round differently); a resume that finds a record completes the
    renames instead (finish_pending_commits), so every run ends up at the new step."""
    if len(commits) == 1:
        commits[0]()
        return
    record = json.dumps({"moves": [(str(tmp), str(path)) for c in commits for tmp, path in c.moves]})
    for run_dir in run_dirs:
        atomic_write_text(run_dir / PENDING, record)
    for commit in commits:
        commit()
    for run_dir in run_dirs:
        (run_dir / PENDING).unlink()


def finish_pending_commits(run_dirs: list[Path]) -> None:
    """Complete a batch commit that a kill interrupted: the renames in any record found in run_dirs, for the files
    of run_dirs (whose locks the caller holds; another directory completes its own when it is opened)."""
    held = {d.resolve() for d in run_dirs}
    records = [d / PENDING for d in run_dirs if (d / PENDING).exists()]
    for record in records:
        try:
            moves = [(Path(tmp), Path(path)) for tmp, path in json.loads(record.read_text())["moves"]]
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{record} is damaged ({err}); it records an unfinished save of several runs. "
                                  f"Delete {record} and the run resumes from its last complete save.") from None
        for tmp, path in moves:
            if tmp.exists() and path.resolve().parent in held | {d / "checkpoints" for d in held}:
                os.replace(tmp, path)
    for record in records:
        record.unlink()


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete half-written files left by a writer that died (only call while holding the run's lock)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
