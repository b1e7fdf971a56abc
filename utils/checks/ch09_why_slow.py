"""Checks for chapter 9 (why grokking is slow): softmax collapse, StableMax, ⊥Grad and Grokfast's filter."""
from __future__ import annotations

from collections.abc import Callable

import torch

from utils import stability as _stability
from utils.checks.compare import expect_number, expect_tensor
from utils.checks.harness import call, fail, guarded, passed

__all__ = ["check_collapsed_share", "check_stablemax", "check_orthogonal_gradient", "check_grokfast_filter"]


# --- softmax collapse -----------------------------------------------------------------------------------------
def collapse_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(description, logits [n, p] float64, labels [n]) with answer margins on both sides of float32's collapse
    (about ln(p - 1) + 16.6), of float64's (about ln(p - 1) + 36.7), and rows where a WRONG answer leads by far."""
    cases = []
    for p, n, seed in [(7, 40, 0), (23, 60, 1)]:
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(n, p, generator=g, dtype=torch.float64)
        labels = torch.randint(p, (n,), generator=g)
        margins = torch.linspace(0.0, 60.0, n, dtype=torch.float64)[torch.randperm(n, generator=g)]
        rows = torch.arange(n)
        logits[rows, labels] = logits.amax(-1) + margins
        wrong = (labels[:4] + 1) % p  # four rows where another answer leads by 50: confidently wrong
        logits[rows[:4], wrong] = logits[rows[:4], labels[:4]] + 50.0
        cases.append((f"{n} inputs, p = {p}, answer margins from 0 to 60 (4 inputs confidently wrong), float64",
                      logits, labels))
    return cases


def _share_variants(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[str, float]]:
    """(hint, the share a plausible mistake gives) for check_collapsed_share."""
    probs32, probs64 = logits.float().softmax(-1), logits.softmax(-1)
    answer32 = probs32.gather(-1, labels[:, None])[:, 0]
    return [
        ("compute the softmax in float32 (logits.float().softmax(-1)): in float64 the answer's probability "
         "reaches exactly 1 only at far larger margins.",
         (probs64.gather(-1, labels[:, None])[:, 0] == 1).double().mean().item()),
        ("that is the accuracy (argmax = label); collapse asks whether the answer's float32 probability is "
         "EXACTLY 1.", (logits.argmax(-1) == labels).double().mean().item()),
        ("'exactly 1' means probs == 1.0, not close to 1 (> 0.999 counts inputs that still have a gradient).",
         (answer32 > 0.999).double().mean().item()),
        ("take the probability of the ANSWER (probs.gather(-1, labels[:, None])), not the largest probability: "
         "a confidently wrong input is not collapsed, it still has a large gradient.",
         (probs32.amax(-1) == 1).double().mean().item()),
        ("average over the inputs only: (probs == 1) over all n × p entries divides the share by p.",
         (probs32.gather(-1, labels[:, None]) == 1).double().sum().item() / probs32.numel()),
    ]


@guarded("collapsed_share")
def check_collapsed_share(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> None:
    """fn(logits [n, p], labels [n]) -> the share of inputs whose float32 softmax gives the answer exactly 1."""
    __tracebackhide__ = True
    name = "collapsed_share"
    for on, logits, labels in collapse_cases():
        want = _stability.collapsed_share(logits, labels).item()
        got = call(name, fn, logits, labels, on=on, names=["logits", "labels"])
        if isinstance(got, (int, float)) and not isinstance(got, bool) and abs(got - want) > 1e-9:
            hint = next((h for h, wrong in _share_variants(logits, labels) if abs(got - wrong) < 1e-9), None)
            fail(name, f"the share = {got:.6g}; expected {want:.6g}.", on, hint)
        expect_number(name, got, want, what="the share", on=on, atol=1e-9)
    passed("collapsed_share counts exactly the inputs whose float32 softmax rounds the answer's probability to 1: "
           "there the float32 loss and its gradient are exactly 0.")


# --- StableMax ------------------------------------------------------------------------------------------------
def _stablemax_variant(x: torch.Tensor, *, pos: Callable | None = None, neg: Callable | None = None,
                       dim: int = -1, normalise: bool = True) -> torch.Tensor:
    """StableMax with one piece swapped for a plausible mistake (the defaults give StableMax itself)."""
    pos = pos or (lambda v: v + 1)
    neg = neg or (lambda v: 1 / (1 - v))
    s = torch.where(x >= 0, pos(x), neg(x.clamp(max=0)))
    return s / s.sum(dim, keepdim=True) if normalise else s


def _stablemax_inputs() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    spread = torch.randn(6, 9, generator=g, dtype=torch.float64) * 20
    edges = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, -0.5, 2.0, -3.0], [40.0, 0.0, -40.0, -0.25]],
                         dtype=torch.float64)
    stack = torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 5
    return [("logits [6, 9] with values from about -40 to 40 (float64)", spread),
            ("logits [3, 4] with zeros, ±0.5 and one row of 40, 0, -40 (float64)", edges),
            ("a stack of logits [2, 3, 5] (float64): StableMax runs over the last axis", stack)]


@guarded("stablemax")
def check_stablemax(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """fn(logits [..., p]) -> StableMax probabilities s(x_i) / Σ_j s(x_j) over the last axis, same shape and dtype."""
    __tracebackhide__ = True
    name = "stablemax"
    for on, x in _stablemax_inputs():
        want = _stability.stablemax(x)
        mistakes = [
            ("that is softmax (exp); StableMax uses s(x) = x + 1 for x ≥ 0 and 1 / (1 − x) for x < 0.",
             lambda: x.softmax(-1)),
            ("normalise: divide s(x) by its sum over the last axis so each row sums to 1.",
             lambda: _stablemax_variant(x, normalise=False)),
            ("for x ≥ 0, s(x) = x + 1 (the +1 makes s continuous at 0, where 1 / (1 − x) is 1).",
             lambda: _stablemax_variant(x, pos=lambda v: v)),
            ("sum over the LAST axis (the answers), keepdim=True: s / s.sum(-1, keepdim=True).",
             lambda: _stablemax_variant(x, dim=0)),
        ]
        got = call(name, fn, x, on=on, names=["logits"])
        diagnoses = [
            ("for x < 0 use s(x) = 1 / (1 − x): it stays between 0 and 1. x + 1 turns negative below −1, and "
             "1 / (1 + x) blows up at −1.",
             lambda out: bool((out < 0).any()) or not bool(torch.isfinite(out).all())),
        ]
        expect_tensor(name, got, want, what="the probabilities", on=on, rtol=1e-9, atol=1e-12,
                      mistakes=mistakes, diagnoses=diagnoses)
    passed("stablemax gives s(x_i) / Σ_j s(x_j): positive, summing to 1, and growing only linearly in the margin, "
           "so float32 rounds the answer's probability to 1 only at margins beyond about (p − 1)·2^24.")


# --- ⊥Grad ---------------------------------------------------------------------------------------------------
def _orthogonal_variant(grad: torch.Tensor, weight: torch.Tensor, *, rescale: str = "grad", keep: str = "rest",
                        square: bool = True, rows: bool = False) -> torch.Tensor:
    """⊥Grad with one plausible mistake (the defaults give the reference)."""
    g, w = grad.double(), weight.double()
    dims = (-1,) if rows else tuple(range(g.ndim))

    def dot(a, b):
        return (a * b).sum(dims, keepdim=True)

    along = dot(g, w) / (dot(w, w) if square else dot(w, w).sqrt()) * w
    out = g - along if keep == "rest" else along
    if rescale == "none":
        return out
    target = g if rescale == "grad" else w
    return out * target.square().sum(dims, keepdim=True).sqrt() / out.square().sum(dims, keepdim=True).sqrt()


def _orthogonal_inputs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(4)
    w1 = torch.randn(5, 4, generator=g, dtype=torch.float64)
    w2 = torch.randn(3, 6, generator=g, dtype=torch.float64) * 3
    w3 = torch.randn(7, generator=g, dtype=torch.float64)
    return [("a weight matrix [5, 4] and a gradient that partly points along it (float64)",
             0.8 * w1 + torch.randn(5, 4, generator=g, dtype=torch.float64), w1),
            ("a weight [3, 6] of norm about 13 and an unrelated gradient (float64)",
             torch.randn(3, 6, generator=g, dtype=torch.float64), w2),
            ("a bias-like vector [7] with its gradient pointing mostly against it (float64)",
             -2.0 * w3 + 0.3 * torch.randn(7, generator=g, dtype=torch.float64), w3)]


@guarded("orthogonal_gradient")
def check_orthogonal_gradient(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """fn(grad, weight) -> grad without its component along the whole weight, rescaled to grad's norm."""
    __tracebackhide__ = True
    name = "orthogonal_gradient"
    for on, grad, weight in _orthogonal_inputs():
        want = _stability.orthogonal_gradient(grad, weight)
        mistakes = [
            ("rescale: multiply the projected gradient by ‖grad‖ / ‖projected‖, so the step keeps its size.",
             lambda: _orthogonal_variant(grad, weight, rescale="none")),
            ("that keeps the component ALONG the weight (the one that only scales the logits); ⊥Grad removes it: "
             "grad − (⟨grad, w⟩ / ⟨w, w⟩)·w.", lambda: _orthogonal_variant(grad, weight, keep="along")),
            ("the coefficient is ⟨grad, w⟩ / ⟨w, w⟩ = ⟨grad, w⟩ / ‖w‖², not divided by ‖w‖ alone.",
             lambda: _orthogonal_variant(grad, weight, square=False)),
            ("rescale to the GRADIENT's norm ‖grad‖, not the weight's.",
             lambda: _orthogonal_variant(grad, weight, rescale="weight")),
            ("project the whole tensor at once (sum over every axis: (grad * w).sum()), not each row separately.",
             lambda: _orthogonal_variant(grad, weight, rows=True)),
        ]
        got = call(name, fn, grad, weight, on=on, names=["grad", "weight"])
        expect_tensor(name, got, want, what="the projected gradient", on=on, rtol=1e-9, atol=1e-12,
                      mistakes=mistakes)
    passed("orthogonal_gradient removes the gradient's component along the weight and keeps its norm: the update can "
           "no longer just scale the weight (and with it the logits).")


# --- Grokfast ------------------------------------------------------------------------------------------------
def _filter_variant(grads: torch.Tensor, alpha: float, lamb: float, *, start_zero: bool = False,
                    swapped: bool = False, add_grad: bool = True, lagged: bool = False,
                    averaged: bool = False) -> torch.Tensor:
    """Grokfast's filter with one plausible mistake (the defaults give the reference)."""
    keep, take = (1 - alpha, alpha) if swapped else (alpha, 1 - alpha)
    average, out = None, []
    for g in grads.double():
        before = torch.zeros_like(g) if average is None and start_zero else average
        average = g.clone() if before is None else keep * before + take * g
        used = (before if before is not None else torch.zeros_like(g)) if lagged else average
        filtered = g + lamb * used if add_grad else lamb * used
        out.append(filtered / (1 + lamb) if averaged else filtered)
    return torch.stack(out)


def _filter_inputs() -> list[tuple[str, torch.Tensor, float, float]]:
    g = torch.Generator().manual_seed(5)
    t = torch.arange(12, dtype=torch.float64)
    slow_fast = (0.5 + 0.1 * t)[:, None, None] + torch.randn(12, 2, 3, generator=g, dtype=torch.float64)
    return [("12 steps of a [2, 3] gradient: a slow drift plus noise, alpha 0.9, lamb 2", slow_fast, 0.9, 2.0),
            ("6 steps of a [4] gradient that flips sign every step, alpha 0.5, lamb 3",
             torch.tensor([1.0, -1.0] * 3, dtype=torch.float64)[:, None] * torch.arange(1.0, 5.0,
                                                                                      dtype=torch.float64), 0.5, 3.0),
            ("5 steps of a [3] random gradient, alpha 0.98, lamb 2 (Grokfast's defaults)",
             torch.randn(5, 3, generator=g, dtype=torch.float64), 0.98, 2.0)]


@guarded("grokfast_filter")
def check_grokfast_filter(fn: Callable[[torch.Tensor, float, float], torch.Tensor]) -> None:
    """fn(grads [T, ...], alpha, lamb) -> g_t + λ·h_t with h_0 = g_0, h_t = α·h_{t-1} + (1 - α)·g_t."""
    __tracebackhide__ = True
    name = "grokfast_filter"
    for on, grads, alpha, lamb in _filter_inputs():
        want = _stability.grokfast_filter(grads, alpha, lamb)
        mistakes = [
            ("start the average at the first gradient (h_0 = g_0), not at zero: Grokfast's EMA begins with g_0.",
             lambda: _filter_variant(grads, alpha, lamb, start_zero=True)),
            ("alpha weighs the OLD average: h_t = α·h_{t−1} + (1 − α)·g_t (α near 1 means a slow average).",
             lambda: _filter_variant(grads, alpha, lamb, swapped=True)),
            ("Grokfast ADDS the amplified average to the gradient: g_t + λ·h_t, not λ·h_t alone.",
             lambda: _filter_variant(grads, alpha, lamb, add_grad=False)),
            ("update the average with g_t first, then use it: g_t + λ·h_t with the NEW h_t.",
             lambda: _filter_variant(grads, alpha, lamb, lagged=True)),
            ("Grokfast does not divide by 1 + λ: the filtered gradient is g_t + λ·h_t (that larger size is what the "
             "learning-rate control of section 4 is about).", lambda: _filter_variant(grads, alpha, lamb,
                                                                                     averaged=True)),
        ]
        got = call(name, fn, grads, alpha, lamb, on=on, names=["grads", "alpha", "lamb"])
        expect_tensor(name, got, want, what="the filtered gradients", on=on, rtol=1e-9, atol=1e-12,
                      mistakes=mistakes)
    passed("grokfast_filter adds λ × the running average of the gradients to each gradient: slow, consistent "
           "directions are amplified up to 1 + λ times, fast oscillations hardly at all.")
