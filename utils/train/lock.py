"""One writer per run directory: a file lock next to it (run_dir + ".lock", shared by every process that trains
or caches that run) and a note saying which process holds it, so a second writer can say whom it waits for."""
from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["acquire", "holding", "LOCK_NOTICE_S"]

LOCK_NOTICE_S = 3.0  # how long to wait for a run directory's lock before saying who holds it


def _lock(run_dir: Path) -> FileLock:
    """run_dir's lock: one object per path in this process (so holding it twice is fine), shared with get_run."""
    return FileLock(str(run_dir) + ".lock", is_singleton=True)


def _owner_file(run_dir: Path) -> Path:
    return Path(str(run_dir) + ".lock.owner")


def acquire(run_dir: Path) -> FileLock:
    """Take run_dir's lock; if another process holds it, say which (after LOCK_NOTICE_S seconds) and wait."""
    lock = _lock(run_dir)
    try:
        lock.acquire(timeout=LOCK_NOTICE_S)
    except Timeout:
        try:
            holder = _owner_file(run_dir).read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        print(f"{run_dir} is in use: waiting for process {holder} to release it (it is training or reading "
              "this run; stop that process to go on) …", file=sys.stderr, flush=True)
        lock.acquire()
    if lock.lock_counter == 1:  # the first hold in this process: say who holds it
        try:
            _owner_file(run_dir).write_text(f"{os.getpid()} on {socket.gethostname()}\n")
        except OSError:
            pass
    return lock


@contextmanager
def holding(run_dir: Path) -> Iterator[None]:
    lock = acquire(run_dir)
    try:
        yield
    finally:
        lock.release()
