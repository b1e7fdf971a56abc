"""Checks for chapter 6 (beyond): what became of a run, and subtraction's waves and algorithm."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from utils import mechanism as _mechanism, outcomes as _outcomes
from utils.checks.ch03_algorithm import check_fourier_algorithm
from utils.checks.compare import expect_tensor, explaining_mistake
from utils.checks.harness import call, describe, fail, guarded, none_hint, passed
from utils.checks.inputs import outcome_cases

__all__ = ["check_outcome", "check_difference_waves", "check_fourier_subtraction"]


def _outcome_rule(metrics: pd.DataFrame, *, strict_fit: bool = False, best_test: bool = False, half: float = 0.5,
                  strict_plateau: bool = False, factor: float = 2.0) -> str:
    """utils.outcomes.outcome's rule with one knob per plausible mistake (the defaults give the rule itself)."""
    fitted = metrics.train_acc > 0.99 if strict_fit else metrics.train_acc >= 0.99
    if not fitted.any():
        return "not fitted"
    memorised = int(metrics.step[fitted].iloc[0])
    if (metrics.test_acc.max() if best_test else metrics.test_acc.iloc[-1]) < 0.99:
        return "memorised only"
    reached = metrics.step[metrics.test_acc >= half]
    h = int(reached.iloc[0]) if len(reached) else metrics.step.iloc[-1] + 1
    at_once = h < factor * memorised if strict_plateau else h <= factor * memorised
    return "generalised at once" if at_once else "grokked"


_OUTCOME_MISTAKES = [  # (hint, the rule with that mistake)
    ("'reached 99%' means ≥ 0.99 (an accuracy of exactly 0.99 counts).", dict(strict_fit=True)),
    ("judge generalisation by the FINAL test accuracy (metrics.test_acc.iloc[-1]), not by its best value.",
     dict(best_test=True)),
    ("h is the first step with test accuracy ≥ 50% (not 99%).", dict(half=0.99)),
    ("the rule says h ≤ 2m is 'generalised at once': at exactly 2m use ≤, not <.", dict(strict_plateau=True)),
    ("compare h with TWICE the memorisation step: h ≤ 2m.", dict(factor=1.0)),
]


@guarded("outcome")
def check_outcome(fn: Callable[[pd.DataFrame], str]) -> None:
    """fn(metrics) -> one of utils.outcomes.OUTCOMES, by the rule in utils.outcomes.outcome."""
    __tracebackhide__ = True
    name, cases = "outcome", outcome_cases()
    wants, answers = [_outcomes.outcome(metrics) for _, metrics, _ in cases], []
    for (on, metrics, _), want in zip(cases, wants):
        got = call(name, fn, metrics, on=on, names=["metrics"])
        if not isinstance(got, str) or got not in _outcomes.OUTCOMES:
            fail(name, f"returned {describe(got)}; expected one of the strings {list(_outcomes.OUTCOMES)}.", on,
                 none_hint(got) or f"return exactly one of those strings, e.g. {want!r}.")
        answers.append(got)
    for (on, metrics, hint), got, want in zip(cases, answers, wants):
        if got != want:
            variants = [(text, [_outcome_rule(m, **knobs) for _, m, _ in cases]) for text, knobs in _OUTCOME_MISTAKES]
            fail(name, f"returned {got!r}; expected {want!r}.", on,
                 explaining_mistake(answers, variants, lambda g, w: g == w) or hint)
    passed(f"outcome classifies all {len(cases)} runs like the rule: grokked, generalised at once, memorised only, "
           "not fitted, and the edge cases.")


def _waves(p: int, freqs: Sequence[int], phase: Callable, w_scale: float = 2 * np.pi, fn=torch.cos) -> torch.Tensor:
    """fn(w_k · phase(a, b, c)) with w_k = w_scale·k/p: [K, p, p, p] (for the plausible mistakes)."""
    x = torch.arange(p, dtype=torch.float64)
    w = w_scale * torch.tensor(list(freqs), dtype=torch.float64) / p
    return fn(w[:, None, None, None] * phase(x[:, None, None], x[None, :, None], x[None, None, :]))


@guarded("difference_waves")
def check_difference_waves(fn: Callable[[int, Sequence[int]], torch.Tensor]) -> None:
    """fn(p, freqs) -> cos(w_k(a − b − c)) for each k in freqs: [K, p (a), p (b), p (c)] float64, w_k = 2πk/p."""
    __tracebackhide__ = True
    name = "difference_waves"
    for p, freqs in [(7, [1, 3]), (13, [2, 5, 6]), (23, [4])]:
        on = f"p = {p}, freqs {freqs}"
        want = _mechanism.cosine_waves(p, freqs, "subtract")
        mistakes = [
            ("these are ADDITION's waves cos(w_k(a + b − c)); for a − b the phase is a − b − c.",
             lambda: _waves(p, freqs, lambda a, b, c: a + b - c)),
            ("the answer c is subtracted: cos(w_k(a − b − c)), not cos(w_k(a − b + c)).",
             lambda: _waves(p, freqs, lambda a, b, c: a - b + c)),
            ("w_k = 2πk/p: you left out the 2π.", lambda: _waves(p, freqs, lambda a, b, c: a - b - c, 1.0)),
            ("w_k = 2πk/p: you used π instead of 2π.", lambda: _waves(p, freqs, lambda a, b, c: a - b - c, np.pi)),
            ("use the cosine (it peaks at the right answer c), not the sine.",
             lambda: _waves(p, freqs, lambda a, b, c: a - b - c, fn=torch.sin)),
        ]
        got = call(name, fn, p, list(freqs), on=on, names=["p", "freqs"])
        expect_tensor(name, got, want, what="the waves", on=on, rtol=1e-7, atol=1e-9, mistakes=mistakes)
    passed("difference_waves gives cos(w_k(a − b − c)) in float64: for every (a, b) each wave peaks at "
           "c = (a − b) mod p.")


@guarded("fourier_subtraction")
def check_fourier_subtraction(fn: Callable) -> None:
    """fn(a [n], b [n], p, freqs, coeffs) -> logits [n, p] = Σ_k α_k cos(w_k(a - b - c)) for c = 0 … p-1."""
    __tracebackhide__ = True
    check_fourier_algorithm(fn, "subtract", seed=9)
