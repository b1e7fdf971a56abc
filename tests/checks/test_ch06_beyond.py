"""Chapter 6's checks accept the reference and name plausible mistakes: outcomes, difference waves, subtraction."""
from __future__ import annotations

import pytest
import torch

from utils import checks, mechanism, outcomes


def test_check_outcome_accepts_the_rule():
    checks.check_outcome(outcomes.outcome)


def _outcome_variant(*, strict: bool = False, best: bool = False, half: float = 0.5, strict_plateau: bool = False):
    """outcomes.outcome with one plausible mistake."""
    def outcome(metrics):
        train_ok = metrics.train_acc > 0.99 if strict else metrics.train_acc >= 0.99
        if not train_ok.any():
            return "not fitted"
        m = int(metrics.step[train_ok].iloc[0])
        if (metrics.test_acc.max() if best else metrics.test_acc.iloc[-1]) < 0.99:
            return "memorised only"
        h = int(metrics.step[metrics.test_acc >= half].iloc[0])
        return "generalised at once" if (h < 2 * m if strict_plateau else h <= 2 * m) else "grokked"
    return outcome


def drops_a_column(metrics):
    metrics.drop(columns="test_loss", inplace=True)
    return outcomes.outcome(metrics)


@pytest.mark.parametrize("wrong, expected", [
    (_outcome_variant(strict=True), "exactly 0.99 counts"),
    (_outcome_variant(best=True), "FINAL test accuracy"),
    (_outcome_variant(half=0.99), "first step with test accuracy ≥ 50%"),
    (_outcome_variant(strict_plateau=True), "use ≤, not <"),
    (lambda metrics: "grokked" if metrics.test_acc.iloc[-1] >= 0.99 else "memorised only", "rise together"),
    (lambda metrics: "Grokked", "one of the strings"),
    (lambda metrics: None, "return"),
    (drops_a_column, "changed its input `metrics` in place"),
])
def test_check_outcome_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_outcome, wrong)


def _waves(p, freqs, phase, fn=torch.cos, scale=2 * torch.pi):
    x = torch.arange(p, dtype=torch.float64)
    w = scale * torch.tensor(freqs, dtype=torch.float64) / p
    return fn(w[:, None, None, None] * phase(x[:, None, None], x[None, :, None], x[None, None, :]))


def test_check_difference_waves_accepts_the_reference():
    checks.check_difference_waves(lambda p, freqs: mechanism.cosine_waves(p, freqs, "subtract"))


@pytest.mark.parametrize("wrong, expected", [
    (lambda p, f: _waves(p, f, lambda a, b, c: a + b - c), "ADDITION's waves"),
    (lambda p, f: _waves(p, f, lambda a, b, c: a - b + c), "not cos(w_k(a − b + c))"),
    (lambda p, f: _waves(p, f, lambda a, b, c: a - b - c, torch.sin), "not the sine"),
    (lambda p, f: _waves(p, f, lambda a, b, c: a - b - c, scale=torch.pi), "π instead of 2π"),
    (lambda p, f: _waves(p, f, lambda a, b, c: a - b - c).permute(1, 2, 3, 0), "shape"),
    (lambda p, f: mechanism.cosine_waves(p, f, "subtract").float(), "return float64"),
])
def test_check_difference_waves_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_difference_waves, wrong)


def test_check_fourier_subtraction_accepts_the_reference():
    checks.check_fourier_subtraction(
        lambda a, b, p, freqs, coeffs: mechanism.fourier_multiplication(a, b, p, freqs, coeffs, "subtract"))


def _subtraction_variant(sin_sign: float = -1.0, cos_sign: float = 1.0):
    """fourier_subtraction with the sign of one identity's second term flipped."""
    def fn(a, b, p, freqs, coeffs):
        w = 2 * torch.pi * torch.tensor(freqs, dtype=torch.float64) / p
        wa, wb = w * a.double()[:, None], w * b.double()[:, None]
        cos_part = torch.cos(wa) * torch.cos(wb) + cos_sign * torch.sin(wa) * torch.sin(wb)
        sin_part = torch.sin(wa) * torch.cos(wb) + sin_sign * torch.cos(wa) * torch.sin(wb)
        wc = w[:, None] * torch.arange(p, dtype=torch.float64)
        return (cos_part * coeffs) @ torch.cos(wc) + (sin_part * coeffs) @ torch.sin(wc)
    return fn


def direct_difference(a, b, p, freqs, coeffs):
    w = 2 * torch.pi * torch.tensor(freqs, dtype=torch.float64) / p
    phase = (a[:, None] - b[:, None] - torch.arange(p)).double()
    return (coeffs * torch.cos(w * phase[..., None])).sum(-1)


@pytest.mark.parametrize("wrong, expected", [
    (_subtraction_variant(sin_sign=1.0, cos_sign=-1.0), "addition's algorithm"),
    (_subtraction_variant(sin_sign=1.0), "sin(w(a - b)) = sin wa cos wb - cos wa sin wb"),
    (lambda a, b, p, freqs, coeffs: mechanism.fourier_multiplication(a, b, p, freqs, torch.ones_like(coeffs),
                                                                     "subtract"), "coefficient"),
    (direct_difference, "directly"),
])
def test_check_fourier_subtraction_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_fourier_subtraction, wrong)
