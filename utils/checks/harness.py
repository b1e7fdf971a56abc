"""The checks' machinery: call the learner's function safely, compare its answer, name the mistake, word the message.

- `call(name, fn, *args, on=…, names=…)` runs the learner's function on *copies* of its inputs (cloned tensors,
  deep-copied models and tables), within a time limit, and turns whatever goes wrong (an exception, `sys.exit()`,
  an endless loop, an input changed in place) into a `CheckFailed` that says what happened and where.
- `fail` / `passed` word the two outcomes; utils.checks.compare compares an answer with the reference.

The time limit (`set_time_limit`, default 30 s). On Unix, in the main thread (where Jupyter and pytest run a cell),
the call runs under `signal.setitimer`: when time is up a `_TimedOut` (a BaseException, so a learner's `except
Exception` cannot swallow it) is raised in the learner's code at the next Python instruction; the kernel stays
usable. Its limit: a single long C operation (one huge matmul) is interrupted only when it returns. Elsewhere (a
worker thread, Windows) the call runs in a daemon thread joined with a timeout: the check fails on time, but the
stuck function keeps running in the background until the kernel restarts (Python cannot kill a thread).

Every function here sets `__tracebackhide__` (pytest, IPython), and `CheckFailed` renders itself in Jupyter without
the checker's frames, so the learner sees their own cell and the message, nothing else.
"""
from __future__ import annotations

import copy
import functools
import numbers
import signal
import threading
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import torch

__all__ = ["CheckFailed", "set_time_limit", "time_limit", "fail", "passed", "describe", "none_hint", "call",
           "call_given", "guarded"]

_TIME_LIMIT_S = [30.0]
_HERE = Path(__file__).resolve().parent


class CheckFailed(AssertionError):
    """A learner's function disagrees with the reference; the message says on which input and how."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback: the message alone, in red."""
        return [f"\x1b[1;31mCheckFailed\x1b[0m: {self}"]


class _TimedOut(BaseException):
    """Raised inside the learner's function when its time is up (a BaseException: `except Exception` misses it)."""


def set_time_limit(seconds: float | None) -> None:
    """How long one call of a learner's function may take (None or 0: no limit). The default is 30 s."""
    if seconds is not None and (not isinstance(seconds, numbers.Real) or seconds < 0):
        raise ValueError(f"the time limit must be a number of seconds ≥ 0 (or None), got {seconds!r}")
    _TIME_LIMIT_S[0] = float(seconds or 0)


def time_limit() -> float:
    """The current time limit in seconds (0: none)."""
    return _TIME_LIMIT_S[0]


# --- messages -------------------------------------------------------------------------------------------------
def fail(name: str, problem: str, on: str | None = None, hint: str | None = None) -> NoReturn:
    """Raise CheckFailed: '<name>: <problem>', then the input and a hint on their own lines."""
    __tracebackhide__ = True
    lines = [f"{name}: {problem}"]
    if on:
        lines.append(f"  input: {on}")
    if hint:
        lines.append(f"  hint:  {hint}")
    raise CheckFailed("\n".join(lines)) from None


def passed(message: str) -> None:
    """The one line a learner sees when a check passes."""
    print(f"✅ {message}")


def describe(x: object) -> str:
    """A short description of a value: type, and shape/dtype for arrays."""
    if x is None:
        return "None"
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}, dtype {x.dtype}"
    if isinstance(x, np.ndarray):
        return f"a numpy array of shape {x.shape}, dtype {x.dtype}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)} item(s)"
    if isinstance(x, (numbers.Number, str)):
        return f"a {type(x).__name__} ({_safe_repr(x)[:60]})"
    return f"a {type(x).__name__}"


def none_hint(got: object) -> str | None:
    return "did you forget the `return` statement at the end of your function?" if got is None else None


def _safe_str(err: BaseException) -> str:
    """str(err), or a note when even that fails (an exception whose __str__ raises)."""
    try:
        text = str(err).strip()
    except BaseException:  # noqa: BLE001 (learner code: anything may happen)
        return "(its message could not be printed)"
    return text.splitlines()[0][:300] if text else ""


def _safe_repr(x: object) -> str:
    try:
        return repr(x)
    except BaseException:  # noqa: BLE001
        return f"<{type(x).__name__}>"


def _where_in_learner_code(err: BaseException) -> str:
    """' (at line N of your code: `code`)' for the deepest frame outside utils/checks and site-packages, or ''."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "site-packages" not in f.filename and Path(f.filename).resolve().parent != _HERE
              and not f.filename.endswith(("threading.py",))]
    if not frames:
        return ""
    frame, code = frames[-1], (frames[-1].line or "").strip()
    return f" (at line {frame.lineno} of your code: `{code}`)" if code else f" (at line {frame.lineno} of your code)"


# --- calling the learner's function ---------------------------------------------------------------------------
def _copy(x: object) -> object:
    """A copy the learner may change freely: tensors cloned (keeping requires_grad), models and tables deep-copied."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone().requires_grad_(x.requires_grad)
    if isinstance(x, pd.DataFrame):
        return x.copy(deep=True)
    if isinstance(x, (torch.nn.Module, list, dict, tuple)):
        return copy.deepcopy(x)
    return x


def _change(original: object, given: object) -> str | None:
    """How `given` (the learner's copy) differs from `original` after the call, or None if it does not."""
    if isinstance(original, torch.Tensor):
        if given.shape != original.shape or given.dtype != original.dtype:
            return f"now shape {tuple(given.shape)}, dtype {given.dtype}"
        differ = ~((given.detach() == original.detach()) | (given.isnan() & original.isnan())
                   if original.is_floating_point() else given.detach() == original.detach())
        return f"{int(differ.sum())} of {differ.numel()} values changed" if differ.any() else None
    if isinstance(original, torch.nn.Module):
        now = given.state_dict()
        for key, value in original.state_dict().items():
            if key not in now or _change(value, now[key]):
                return f"its weight {key} changed"
        return None
    if isinstance(original, pd.DataFrame):
        return None if original.equals(given) else "the table's contents changed"
    if isinstance(original, (list, dict, tuple)):
        try:
            return None if given == original else "its items changed"
        except Exception:  # noqa: BLE001 (e.g. lists of tensors: compare item by item)
            pairs = zip(original, given) if not isinstance(original, dict) else zip(original.values(), given.values())
            return next((change for o, g in pairs if (change := _change(o, g))), None)
    return None


def _run_with_alarm(fn: Callable, args: tuple, seconds: float) -> object:
    """fn(*args) with a SIGALRM timer that raises _TimedOut inside it (Unix, main thread only)."""
    def on_alarm(signum, frame):
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:  # someone else's timer was running: give it back what is left of it
            left = max(outer_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def _run_in_thread(fn: Callable, args: tuple, seconds: float) -> object:
    """fn(*args) in a daemon thread, waiting at most `seconds` (a stuck function keeps running in the background)."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 (re-raised in the caller's thread)
            box["error"] = err

    worker = threading.Thread(target=target, daemon=True, name="learner-function")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise _TimedOut
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _run_limited(fn: Callable, args: tuple) -> object:
    seconds = time_limit()
    if not seconds:
        return fn(*args)
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        return _run_with_alarm(fn, args, seconds)
    return _run_in_thread(fn, args, seconds)


def _raise_for(name: str, err: BaseException, on: str) -> NoReturn:
    """Turn what the learner's code raised into a CheckFailed that says what and where."""
    __tracebackhide__ = True
    where = _where_in_learner_code(err)
    if isinstance(err, NotImplementedError):
        fail(name, "raised NotImplementedError: the exercise is not filled in yet.", on,
             "replace the `raise NotImplementedError` line with your code, run that cell, then this one.")
    if isinstance(err, _TimedOut):
        fail(name, f"your function did not return within {time_limit():g} s{where}.", on,
             "an endless loop (a `while` whose condition never changes)? The reference takes well under a second; "
             "if yours is just slow, `checks.set_time_limit(120)` allows more time.")
    if isinstance(err, SystemExit):
        fail(name, f"your function called sys.exit() or exit() (SystemExit){where}.", on,
             "return the answer instead of exiting; exit() would stop the notebook's kernel.")
    if isinstance(err, KeyboardInterrupt):
        fail(name, f"your function was interrupted (KeyboardInterrupt) before it returned{where}.", on)
    kind = "an exception" if isinstance(err, Exception) else "a BaseException"
    fail(name, f"your function raised {type(err).__name__}: {_safe_str(err)}{where}.", on,
         f"{'fix that line' if where else 'read the error message'}; printing the shapes and dtypes of the tensors "
         f"involved often shows the problem." if kind == "an exception" else None)


def call_given(name: str, fn: Callable, *args, on: str, names: Sequence[str],
               mutable: Collection[str] = ()) -> tuple[object, tuple]:
    """(fn(*copies of args), the copies): in a time limit, failing clearly on any exception or in-place change.

    names: what the exercise calls each argument (for the message); arguments named in `mutable` (a model the
    function must train, its optimiser) are passed as they are and not compared.
    """
    __tracebackhide__ = True
    if not callable(fn):
        fail(name, f"expected a function, got {describe(fn)}.",
             hint=f"pass the function itself, e.g. check_{name}({name}), without calling it.")
    given = tuple(arg if label in mutable else _copy(arg) for arg, label in zip(args, names, strict=True))
    try:
        got = _run_limited(fn, given)
    except BaseException as err:  # noqa: BLE001 (everything the learner's code raises becomes a CheckFailed)
        _raise_for(name, err, on)
    for original, copied, label in zip(args, given, names):
        change = None if label in mutable else _change(original, copied)
        if change:
            fail(name, f"your function changed its input `{label}` in place ({change}).", on,
                 "compute on a copy or avoid in-place operations like `zero_()`, `+=`, `-=` or `x[i] = …` on the "
                 "inputs: later cells reuse them.")
    return got, given


def call(name: str, fn: Callable, *args, on: str, names: Sequence[str], mutable: Collection[str] = ()) -> object:
    """fn(*copies of args), as `call_given`, without the copies."""
    __tracebackhide__ = True
    return call_given(name, fn, *args, on=on, names=names, mutable=mutable)[0]


def guarded(name: str) -> Callable[[Callable], Callable]:
    """Decorate a check: an unexpected error while it reads the learner's answer becomes a clear CheckFailed."""
    def decorate(check: Callable) -> Callable:
        @functools.wraps(check)
        def wrapper(fn: Callable) -> None:
            __tracebackhide__ = True
            try:
                return check(fn)
            except CheckFailed:
                raise
            except Exception as err:  # noqa: BLE001 (an answer of an odd type broke a comparison)
                fail(name, f"the check could not use your function's answer ({type(err).__name__}: "
                     f"{_safe_str(err)}).", hint="return exactly the type, shape and dtype the exercise asks for.")
        return wrapper
    return decorate
