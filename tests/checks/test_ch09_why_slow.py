"""Chapter 9's checks accept the reference and name plausible mistakes: collapse, StableMax, ⊥Grad, Grokfast."""
from __future__ import annotations

import pytest
import torch

from utils import checks, stability
from utils.checks.ch09_why_slow import collapse_cases


# --- collapsed_share ------------------------------------------------------------------------------------------
def reference_share(logits, labels):
    return stability.collapsed_share(logits, labels).item()


def test_check_collapsed_share_accepts_the_reference():
    checks.check_collapsed_share(reference_share)


def test_the_collapse_cases_hold_collapsed_and_live_inputs_and_float64_would_see_fewer():
    for _, logits, labels in collapse_cases():
        share = stability.collapsed_share(logits, labels).item()
        in_float64 = (logits.softmax(-1).gather(-1, labels[:, None]) == 1).double().mean().item()
        assert 0.1 < share < 0.9 and in_float64 < share


@pytest.mark.parametrize("wrong, expected", [
    (lambda x, y: (x.softmax(-1).gather(-1, y[:, None]) == 1).double().mean().item(), "in float32"),
    (lambda x, y: (x.argmax(-1) == y).double().mean().item(), "that is the accuracy"),
    (lambda x, y: (x.float().softmax(-1).gather(-1, y[:, None]) > 0.999).double().mean().item(),
     "not close to 1"),
    (lambda x, y: (x.float().softmax(-1).amax(-1) == 1).double().mean().item(), "probability of the ANSWER"),
    (lambda x, y: (x.float().softmax(-1).gather(-1, y[:, None]) == 1).double().sum().item() / x.numel(),
     "divides the share by p"),
    (lambda x, y: stability.collapsed_share(x, y), "Python float"),
])
def test_check_collapsed_share_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_collapsed_share, wrong)


# --- stablemax ------------------------------------------------------------------------------------------------
def _s(x, pos=lambda v: v + 1, neg=lambda v: 1 / (1 - v)):
    return torch.where(x >= 0, pos(x), neg(x.clamp(max=0)))


def test_check_stablemax_accepts_the_reference():
    checks.check_stablemax(stability.stablemax)


@pytest.mark.parametrize("wrong, expected", [
    (lambda x: x.softmax(-1), "that is softmax"),
    (lambda x: _s(x), "normalise"),
    (lambda x: _s(x, pos=lambda v: v) / _s(x, pos=lambda v: v).sum(-1, keepdim=True), "the +1"),
    (lambda x: _s(x) / _s(x).sum(0, keepdim=True), "LAST axis"),
    (lambda x: (x + 1) / (x + 1).sum(-1, keepdim=True), "1 / (1 − x)"),
    (lambda x: _s(x, neg=lambda v: 1 / (1 + v)) / _s(x, neg=lambda v: 1 / (1 + v)).sum(-1, keepdim=True),
     "blows up"),
    (lambda x: stability.stablemax(x).float(), "float64"),
])
def test_check_stablemax_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_stablemax, wrong)


# --- orthogonal_gradient --------------------------------------------------------------------------------------
def _project(grad, weight, denominator=lambda w: (w * w).sum()):
    along = (grad * weight).sum() / denominator(weight) * weight
    return grad - along


def _rescaled(out, grad):
    return out * grad.norm() / out.norm()


def test_check_orthogonal_gradient_accepts_the_reference():
    checks.check_orthogonal_gradient(stability.orthogonal_gradient)


def rowwise(grad, weight):
    along = (grad * weight).sum(-1, keepdim=True) / (weight * weight).sum(-1, keepdim=True) * weight
    out = grad - along
    return out * grad.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("wrong, expected", [
    (lambda g, w: _project(g, w), "rescale: multiply"),
    (lambda g, w: _rescaled((g * w).sum() / (w * w).sum() * w, g), "keeps the component ALONG"),
    (lambda g, w: _rescaled(_project(g, w, denominator=lambda v: v.norm()), g), "not divided by ‖w‖ alone"),
    (lambda g, w: _project(g, w) * w.norm() / _project(g, w).norm(), "GRADIENT's norm"),
    (rowwise, "each row separately"),
    (lambda g, w: stability.orthogonal_gradient(g, w).float(), "float64"),
    (lambda g, w: g.sub_((g * w).sum() / (w * w).sum() * w), "changed its input `grad` in place"),
])
def test_check_orthogonal_gradient_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_orthogonal_gradient, wrong)


# --- grokfast_filter ------------------------------------------------------------------------------------------
def loop_filter(grads, alpha, lamb, *, start_zero=False, swapped=False, add=True, lagged=False, averaged=False):
    """A learner's loop with one mistake switched on."""
    out, h = [], None
    for g in grads:
        previous = h
        if h is None:
            h = (1 - alpha) * g if start_zero else g.clone()
        elif swapped:
            h = (1 - alpha) * h + alpha * g
        else:
            h = alpha * h + (1 - alpha) * g
        used = (torch.zeros_like(g) if previous is None else previous) if lagged else h
        f = g + lamb * used if add else lamb * used
        out.append(f / (1 + lamb) if averaged else f)
    return torch.stack(out)


def test_check_grokfast_filter_accepts_the_reference_and_a_plain_loop():
    checks.check_grokfast_filter(stability.grokfast_filter)
    checks.check_grokfast_filter(loop_filter)


@pytest.mark.parametrize("mistake, expected", [
    (dict(start_zero=True), "not at zero"),
    (dict(swapped=True), "alpha weighs the OLD average"),
    (dict(add=False), "ADDS the amplified average"),
    (dict(lagged=True), "with the NEW h_t"),
    (dict(averaged=True), "does not divide by 1 + λ"),
])
def test_check_grokfast_filter_names_the_mistake(mistake, expected, failure):
    def wrong(grads, alpha, lamb):
        return loop_filter(grads, alpha, lamb, **mistake)
    assert expected in failure(checks.check_grokfast_filter, wrong)


def test_check_grokfast_filter_refuses_a_list_instead_of_a_tensor(failure):
    assert "should be" in failure(checks.check_grokfast_filter, lambda grads, a, l: list(grads))
