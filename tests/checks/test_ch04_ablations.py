"""Chapter 4's checks accept the reference and name plausible mistakes: directions, removing and keeping them,
projecting neurons, ablating neurons."""
from __future__ import annotations

import pytest
import torch

from utils import ablation, checks, mechanism
from utils.data import make_dataset


def test_sum_directions_check_accepts_the_reference():
    checks.check_sum_directions(ablation.sum_directions)


def _raw(p, freqs, scale=2 * torch.pi, sign=1.0):
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    return torch.stack([f(scale * k * (a + sign * b) / p) for k in freqs for f in (torch.cos, torch.sin)])


@pytest.mark.parametrize("wrong, expected", [
    (lambda p, freqs: ablation.sum_directions(p, freqs) * p / 2 ** 0.5, "norm 1"),
    (lambda p, freqs: _raw(p, freqs, sign=-1.0) * 2 ** 0.5 / p, "a − b"),
    (lambda p, freqs: _raw(p, freqs, scale=torch.pi) * 2 ** 0.5 / p, "π instead of 2π"),
    (lambda p, freqs: ablation.sum_directions(p, freqs)[0::2], "two per frequency"),
    (lambda p, freqs: torch.cat([ablation.sum_directions(p, freqs)[0::2], ablation.sum_directions(p, freqs)[1::2]]),
     "cosines, then all the sines"),
    (lambda p, freqs: ablation.sum_directions(p, freqs).float(), "return float64"),
])
def test_sum_directions_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_sum_directions, wrong)


def test_frequency_ablation_checks_accept_the_reference():
    checks.check_remove_frequencies(ablation.remove_frequencies)
    checks.check_keep_frequencies(ablation.keep_frequencies)


def only_cos(logits, freqs):
    directions = ablation.sum_directions(logits.shape[-1], freqs)[0::2]
    return logits - directions.T @ (directions @ logits)


def in_place(logits, freqs):
    logits -= ablation.frequency_component(logits, freqs)
    return logits


@pytest.mark.parametrize("wrong, expected", [
    (ablation.frequency_component, "subtracting it"),
    (lambda logits, freqs: ablation.remove_frequencies(logits, freqs) - logits.mean(0, keepdim=True), "constant"),
    (only_cos, "only the cosine"),
    (in_place, "changed its input `logits` in place"),
    (lambda logits, freqs: ablation.remove_frequencies(logits, freqs).float(), "return float64"),
])
def test_remove_frequencies_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_remove_frequencies, wrong)


@pytest.mark.parametrize("wrong, expected", [
    (ablation.frequency_component, "keep the constant too"),
    (lambda logits, freqs: ablation.frequency_component(logits, freqs) + logits.mean(), "not the mean of every logit"),
    (ablation.remove_frequencies, "that removes the directions"),
])
def test_keep_frequencies_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_keep_frequencies, wrong)


def test_project_onto_frequency_check_accepts_the_reference():
    checks.check_project_onto_frequency(ablation.project_onto_frequency)


def projected(acts, freqs, forward="fa,gb,abn->fgn", back="fa,gb,fgn->abn", linear_only=False):
    p = acts.shape[0]
    B = ablation.fourier_basis(p, torch.float64)
    coeffs = torch.einsum(forward, B, B, acts.double())
    out = torch.zeros_like(coeffs)
    for n, k in enumerate(freqs.tolist()):
        rows = torch.tensor([0, 2 * k - 1, 2 * k])
        if linear_only:
            out[rows, 0, n], out[0, rows, n] = coeffs[rows, 0, n], coeffs[0, rows, n]
        else:
            out[rows[:, None], rows[None, :], n] = coeffs[rows[:, None], rows[None, :], n]
    return torch.einsum(back, B, B, out)


@pytest.mark.parametrize("wrong, expected", [
    (lambda acts, freqs: ablation.project_onto_frequency(acts, freqs) - acts.mean((0, 1)), "constant term"),
    (lambda acts, freqs: projected(acts, freqs, linear_only=True), "products"),
    (lambda acts, freqs: projected(acts, freqs, "af,bg,abn->fgn", "af,bg,fgn->abn"), "you used Bᵀ A B"),
    (lambda acts, freqs: projected(acts, freqs, back="af,bg,fgn->abn"), "not B C Bᵀ"),
    (lambda acts, freqs: None, "forget the `return`"),
])
def test_project_onto_frequency_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_project_onto_frequency, wrong)


def test_ablate_neurons_check_accepts_the_reference():
    checks.check_ablate_neurons(ablation.ablate_neurons)


def mean_over_positions(model, neurons, how):
    tokens, _ = make_dataset(model.cfg.d_vocab_out)
    _, cache = model.run_with_cache(tokens, names_filter=mechanism.NEURON_HOOK)
    mean = cache[mechanism.NEURON_HOOK][..., neurons].mean((0, 1))

    def hook(acts, hook):
        acts[:, -1, neurons] = 0 if how == "zero" else mean
        return acts

    return model.run_with_hooks(tokens, fwd_hooks=[(mechanism.NEURON_HOOK, hook)])[:, -1]


def leaves_hook(model, neurons, how):
    model.add_hook(mechanism.NEURON_HOOK, lambda acts, hook: acts * 0)
    tokens, _ = make_dataset(model.cfg.d_vocab_out)
    return model(tokens)[:, -1]


@pytest.mark.parametrize("wrong, expected", [
    (lambda model, neurons, how: ablation.ablate_neurons(model, neurons, "zero"), "you set it to zero"),
    (mean_over_positions, "LAST position only"),
    (leaves_hook, "left a hook"),
    (lambda model, neurons, how: model(make_dataset(model.cfg.d_vocab_out)[0]), "every position"),
])
def test_ablate_neurons_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_ablate_neurons, wrong)
