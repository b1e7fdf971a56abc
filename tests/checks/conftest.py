"""Shared by the checks' tests: `failure(check, fn)` returns the CheckFailed message and records it for the guide."""
from __future__ import annotations

import pytest

from tools.records import record_check_message
from utils.checks import CheckFailed


def _failure(check, fn) -> str:
    """The message of the CheckFailed that check(fn) raises (recorded: the instructor guide lists these)."""
    with pytest.raises(CheckFailed) as info:
        check(fn)
    record_check_message(check.__name__, str(info.value))
    return str(info.value)


@pytest.fixture
def failure():
    return _failure
