"""Shared pytest set-up: make the repository's packages (utils, tools) importable from any working directory."""
import sys

import pytest
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture
def interrupt_after(monkeypatch):
    """arm(step): make the trainer stop (KeyboardInterrupt) right after it saved state.pt at `step`; arm returns a
    function that disarms it."""
    import utils.train.store as S
    real_save = S.atomic_save

    def arm(step: int):
        def save_then_stop(obj, path, *staged):
            real_save(obj, path, *staged)
            if path.name == "state.pt" and obj["step"] == step:
                raise KeyboardInterrupt
        monkeypatch.setattr(S, "atomic_save", save_then_stop)
        return lambda: monkeypatch.setattr(S, "atomic_save", real_save)
    return arm
