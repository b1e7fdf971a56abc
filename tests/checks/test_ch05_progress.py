"""Chapter 5's checks accept the reference and name plausible mistakes: restricted/excluded loss, Gini, norms."""
from __future__ import annotations

import pytest
import torch

from utils import ablation, checks, progress
from utils.metrics import cross_entropy, loss_fn


def test_restricted_and_excluded_check_accepts_the_reference():
    checks.check_restricted_and_excluded(progress.restricted_and_excluded)


def excluded_on_all(logits, labels, train_idx, freqs):
    restricted, _ = progress.restricted_and_excluded(logits, labels, train_idx, freqs)
    removed = ablation.remove_frequencies(logits, freqs)
    return restricted, torch.stack([loss_fn(x, labels) for x in removed])


def restricted_removed(logits, labels, train_idx, freqs):
    _, excluded = progress.restricted_and_excluded(logits, labels, train_idx, freqs)
    return cross_entropy(ablation.remove_frequencies(logits, freqs), labels), excluded


@pytest.mark.parametrize("wrong, expected", [
    (lambda *args: progress.restricted_and_excluded(*args)[::-1], "(restricted, excluded) in that order"),
    (excluded_on_all, "TRAINING pairs only"),
    (restricted_removed, "you removed them"),
    (lambda *args: tuple(x.float() for x in progress.restricted_and_excluded(*args)), "return float64"),
    (lambda *args: progress.restricted_and_excluded(*args)[0], "should return a pair"),
])
def test_restricted_and_excluded_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_restricted_and_excluded, wrong)


def test_gini_check_accepts_the_reference():
    checks.check_gini(progress.gini)


def gini_sorted(x, descending=False, sort=True):
    n = x.shape[-1]
    ranks = torch.arange(1, n + 1, dtype=x.dtype)
    values = x.sort(-1, descending=descending).values if sort else x
    return (values * (2 * ranks - n - 1)).sum(-1) / (n * x.sum(-1))


@pytest.mark.parametrize("wrong, expected", [
    (lambda x: gini_sorted(x, sort=False), "sort the values first"),
    (lambda x: gini_sorted(x, descending=True), "INCREASING order"),
    (lambda x: 1 - progress.gini(x), "1 - Gini"),
    (lambda x: progress.gini(x) * x.shape[-1] / (x.shape[-1] - 1), "corrected"),
])
def test_gini_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_gini, wrong)


def test_embedding_norms_check_accepts_the_reference():
    checks.check_embedding_norms(progress.embedding_norms)


def norms_with(W_E, constant=False, absolute=False):
    p = W_E.shape[1] - 1
    coeffs = torch.einsum("fx,nxd->nfd", ablation.fourier_basis(p, torch.float64), W_E[:, :p].double())
    if absolute:
        per_row = coeffs.abs().sum(-1)
        return per_row[:, 1::2] + per_row[:, 2::2]
    squared = coeffs.pow(2).sum(-1)
    if constant:
        return torch.cat([squared[:, :1], squared[:, 1::2] + squared[:, 2::2]], -1).sqrt()
    return (squared[:, 1::2] + squared[:, 2::2]).sqrt()


@pytest.mark.parametrize("wrong, expected", [
    (lambda W_E: progress.embedding_norms(W_E) ** 2, "square root"),
    (lambda W_E: norms_with(W_E, constant=True), "drop the constant"),
    (lambda W_E: norms_with(W_E, absolute=True), "absolute values"),
    (lambda W_E: progress.embedding_norms(W_E).float(), "return float64"),
])
def test_embedding_norms_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_embedding_norms, wrong)
