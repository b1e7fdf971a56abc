"""Comparing a learner's answer with the reference, and naming the mistake when it matches a known wrong one.

- `expect_tensor` / `expect_number` / `expect_int_list` check type, layout, device, dtype, shape, finite values, then
  the values; a match with a known wrong answer (`mistakes`) names the mistake, a float32-precision answer is told
  to compute in float64 (the course's one dtype convention for analysis).
- `explaining_mistake` finds the plausible mistake that explains the answers to *every* case of a check, so a hint
  is only given for its own mistake (not because one case happens to coincide with it).
"""
from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch

from utils.checks.harness import describe, fail, none_hint

__all__ = ["Mistakes", "FLOAT64_HINT", "expect_tensor", "expect_number", "expect_int_list", "explaining_mistake"]

Mistakes = Sequence[tuple[str, Callable[[], object]]]  # (hint, thunk returning the wrong answer it explains)
FLOAT64_HINT = ("return float64: the course analyses in float64 end to end (call .double() on weights and inputs "
                "before computing, and build new tensors with dtype=torch.float64).")


def _shape_hint(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    """Name the likely cause of a shape mismatch: transposed, an extra/missing size-1 axis, off by one."""
    if len(got) == len(want) and sorted(got) == sorted(want):
        return "the axes look swapped (transposed): check the order of your dimensions."
    if tuple(s for s in got if s != 1) == tuple(s for s in want if s != 1):
        return "an extra or missing axis of size 1: use .squeeze(...) or [:, None] as needed."
    if len(got) == len(want) and sum(g != w for g, w in zip(got, want)) == 1:
        g, w = next((g, w) for g, w in zip(got, want) if g != w)
        if abs(g - w) == 1:
            return f"off by one along an axis ({g} instead of {w}): check a range's end or a slice."
    axes = "a single axis" if len(want) == 1 else f"{len(want)} axes"
    return f"expected {axes} of sizes {tuple(want)}." if want else "expected a single number (a 0-d tensor)."


def _first_difference(got: torch.Tensor, want: torch.Tensor, close: torch.Tensor) -> str:
    """'at index (i, j): expected x, got y' for the first element that is not close."""
    if not close.ndim:
        return f"expected {want.item():.6g}, got {got.item():.6g}"
    index = tuple(int(i) for i in torch.nonzero(~close)[0])
    return f"at index {index}: expected {want[index].item():.6g}, got {got[index].item():.6g}"


def _close(got: torch.Tensor, wrong: object, rtol: float, atol: float) -> bool:
    """Whether got equals a (wrong) answer: same shape, values close."""
    if not isinstance(wrong, torch.Tensor) or wrong.shape != got.shape:
        return False
    return bool(torch.isclose(got.double(), wrong.detach().double().cpu(), rtol=rtol, atol=atol).all())


def _dtype_problem(got: torch.Tensor, want: torch.Tensor, dtype: str) -> str | None:
    """The hint for a wrong dtype, or None. dtype: "exact" (want's), "float" (any floating dtype)."""
    if not want.is_floating_point():
        if got.dtype == want.dtype:
            return None
        if got.is_floating_point():
            return (f"indices and labels are int64 (torch.long): torch.arange gives int64; avoid float division "
                    f"(use // and %, not /), or convert with .long().")
        return f"use int64 (torch.long, what torch.arange gives), not {got.dtype}: convert with .long()."
    if not got.is_floating_point():
        return "the values are real numbers: compute in floating point (float64), not with integers."
    if dtype == "exact" and got.dtype != want.dtype:
        return FLOAT64_HINT if want.dtype == torch.float64 else f"convert with .to({want.dtype})."
    return None


def _unusable(got: object, want: torch.Tensor, what: str) -> tuple[str, str | None] | None:
    """(problem, hint) when got is not a dense, real tensor with values, or None."""
    if not isinstance(got, torch.Tensor):
        hint = none_hint(got) or ("convert it with torch.from_numpy(...)." if isinstance(got, np.ndarray)
                                  else f"{what} should be a torch tensor.")
        return f"{what} should be {describe(want)}; got {describe(got)}.", hint
    if got.layout != torch.strided:
        return f"{what} is a {got.layout} tensor.", "return an ordinary (dense) tensor: .to_dense()."
    if got.device.type == "meta":
        return f"{what} is on the meta device (a shape without values).", "create your tensors without device='meta'."
    if got.is_complex():
        return f"{what} has the complex dtype {got.dtype}.", ("the answer is real: build it from cos and sin (or "
                                                               "take .real), not from complex exponentials.")
    return None


def expect_tensor(name: str, got: object, want: torch.Tensor, *, what: str, on: str, rtol: float = 0.0,
                  atol: float = 0.0, dtype: str = "exact", mistakes: Mistakes = (),
                  diagnoses: Sequence[tuple[str, Callable[[torch.Tensor], bool]]] = (),
                  detached: bool = False, dtype_hint: str | None = None) -> None:
    """Fail unless got is a tensor like want: type, layout, dtype, shape, finite values, then the values.

    dtype "exact" wants want's dtype (float64 for the analysis), "float" any floating dtype. `diagnoses` are
    (hint, test on got) for mistakes that show before the values can be compared (e.g. NaN from a zero row);
    `mistakes` (hint, wrong answer) name a mistake whose answer got matches; dtype_hint replaces the generic dtype
    hint. (Over 40 lines: one short step per property, in the order a learner should fix them.)
    """
    __tracebackhide__ = True
    unusable = _unusable(got, want, what)
    if unusable:
        fail(name, unusable[0], on, unusable[1])
    if got.shape != want.shape:
        fail(name, f"{what}: shape {tuple(got.shape)}; expected {tuple(want.shape)}.", on,
             _shape_hint(tuple(got.shape), tuple(want.shape)))
    problem = _dtype_problem(got, want, dtype)
    if problem:
        fail(name, f"{what}: dtype {got.dtype}; expected {want.dtype}.", on, dtype_hint or problem)
    tracks_gradients, got = got.requires_grad, got.detach().cpu()
    for hint, test in diagnoses:
        if test(got):
            fail(name, f"{what}: wrong values.", on, hint)
    if got.is_floating_point() and not torch.isfinite(got).all():
        fail(name, f"{what} {'is' if got.ndim == 0 else 'contains'} {'NaN' if got.isnan().any() else 'inf'}.", on,
             "an exp() overflowed (torch.log_softmax subtracts the maximum first, so it cannot), a log() saw 0, or "
             "something was divided by 0.")
    close = torch.isclose(got.double(), want.detach().double().cpu(), rtol=rtol, atol=atol)
    if close.all():
        if detached and tracks_gradients:
            fail(name, f"{what} still tracks gradients (requires_grad=True).", on,
                 "use the weights' .detach() (as in model.W_E.detach().double()): later cells call .numpy().")
        return
    scale = float(want.detach().double().abs().max()) if want.numel() else 1.0
    loose = dict(rtol=max(rtol, 1e-4), atol=max(atol, 1e-4 * scale))
    problem = (f"{what} = {got.item():.6g}; expected {want.item():.6g}." if got.ndim == 0 else
               f"wrong values in {what}: {int((~close).sum())} of {close.numel()} differ; the first "
               f"{_first_difference(got, want, close)}.")
    for hint, wrong in mistakes:
        if _close(got, wrong(), **loose):
            fail(name, problem, on, hint)
    if want.dtype == torch.float64 and got.is_floating_point() and _close(got, want, rtol=1e-4, atol=1e-4 * scale):
        fail(name, problem, on, "your values are right only to float32 precision (about 7 digits): "
             + FLOAT64_HINT)
    sorted_same = (got.ndim and not got.is_floating_point()
                   and torch.equal(got.flatten().sort().values, want.flatten().sort().values))
    fail(name, problem, on, "the right values in the wrong order: check how you lay them out." if sorted_same else None)


def expect_number(name: str, got: object, want: float, *, what: str, on: str, atol: float,
                  python_float: bool = True) -> float:
    """Fail unless got is a real number within atol of want (a Python float if python_float); returns it."""
    __tracebackhide__ = True
    if python_float and isinstance(got, (torch.Tensor, np.ndarray)) and got.size and np.prod(got.shape) == 1:
        fail(name, f"{what} should be a Python float; got {describe(got)}.", on,
             "finish with .item() to turn a one-element tensor into a float.")
    if isinstance(got, np.generic):
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        fail(name, f"{what} should be a number (a float); got {describe(got)}.", on,
             none_hint(got) or "return a Python float, e.g. with .item() on a one-element tensor.")
    got = float(got)
    if not np.isfinite(got):
        fail(name, f"{what} is {got}.", on, "a division by zero? Check what you divide by.")
    if abs(got - want) > atol:
        fail(name, f"{what} = {got:.6g}; expected {want:.6g}.", on)
    return got


def expect_int_list(name: str, got: object, *, what: str, on: str) -> list[int]:
    """Fail unless got is a list of Python ints (bool excluded); returns it."""
    __tracebackhide__ = True
    if isinstance(got, (torch.Tensor, np.ndarray)):
        fail(name, f"{what} should be a list of Python ints; got {describe(got)}.", on,
             "convert with .tolist() (or [int(k) for k in ...]): later cells index lists and print them.")
    if not isinstance(got, list):
        fail(name, f"{what} should be a list of Python ints; got {describe(got)}.", on,
             none_hint(got) or "wrap it in list(...).")
    odd = next((k for k in got if isinstance(k, bool) or type(k) is not int), None)
    if odd is not None or any(isinstance(k, bool) for k in got):
        fail(name, f"{what} should hold Python ints; it holds {describe(odd)}.", on,
             "convert each item with int(k) (a numpy or torch integer is not a Python int).")
    return got


def explaining_mistake(answers: Sequence[object], variants: Sequence[tuple[str, Sequence[object]]],
                       same: Callable[[object, object], bool]) -> str | None:
    """The hint of the first variant whose answers match the learner's on every case, or None."""
    for hint, wrong_answers in variants:
        if all(same(got, wrong) for got, wrong in zip(answers, wrong_answers, strict=True)):
            return hint
    return None
