"""Chapter 2's checks accept the reference and name plausible mistakes: basis, transforms, shares, key frequencies."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utils import checks, fourier
from utils.checks.inputs import key_frequency_cases


def _rows(p, scale=2 * math.pi, sin_sign=1.0, first=1):
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(first, first + (p - 1) // 2):
        rows += [torch.cos(scale * k * x / p), sin_sign * torch.sin(scale * k * x / p)]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True)


def test_fourier_basis_check_accepts_the_reference():
    checks.check_fourier_basis(fourier.fourier_basis)


@pytest.mark.parametrize("wrong, expected", [
    (lambda p: fourier.fourier_basis(p).float(), "return float64"),
    (lambda p: fourier.fourier_basis(p).T, "transpose"),
    (lambda p: fourier.fourier_basis(p) * torch.tensor([p ** 0.5] + [(p / 2) ** 0.5] * (p - 1),
                                                        dtype=torch.float64)[:, None], "length 1"),
    (lambda p: torch.cat([_rows(p)[:1], _rows(p)[1:].reshape(-1, 2, p).flip(1).reshape(-1, p)]), "sin before cos"),
    (lambda p: _rows(p, scale=math.pi), "π instead of 2π"),
    (lambda p: _rows(p, scale=1.0), "left out the 2π"),
    (lambda p: _rows(p, sin_sign=-1.0), "sin(-2πkx/p)"),
    (lambda p: _rows(p, first=0), "start at k = 0"),
])
def test_fourier_basis_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_fourier_basis, wrong)


def test_fft_checks_accept_the_reference():
    checks.check_fft1d(fourier.fft1d)
    checks.check_fft2d(fourier.fft2d)


@pytest.mark.parametrize("wrong, expected", [
    (lambda x: torch.einsum("fx,f...->x...", fourier.fourier_basis(x.shape[0]), x), "inverse"),
    (lambda x: fourier.fft1d(x).float(), "return float64"),
    (lambda x: torch.einsum("fx,x...->f...", _rows(x.shape[0], sin_sign=-1.0), x), "wrong sign"),
    (lambda x: torch.einsum("fx,x...->f...", fourier.fourier_basis(x.shape[0]) * torch.tensor(
        [x.shape[0] ** 0.5] + [(x.shape[0] / 2) ** 0.5] * (x.shape[0] - 1), dtype=torch.float64)[:, None], x),
     "orthonormal"),
])
def test_fft1d_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_fft1d, wrong)


def _wrong_side(x):
    basis = fourier.fourier_basis(x.shape[0])
    return torch.einsum("fa,bg,ab...->fg...", basis, basis, x)


@pytest.mark.parametrize("wrong, expected", [
    (fourier.fft1d, "transform b too"),
    (lambda x: fourier.fft2d(x).transpose(0, 1), "swapped"),
    (_wrong_side, "x @ basis.T"),
])
def test_fft2d_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_fft2d, wrong)


def _squared(model):
    p = model.cfg.d_vocab_out
    return fourier.fft1d(model.W_E[:p].detach().double()).pow(2).sum(-1)


def test_embedding_frequency_norms_check_accepts_the_reference():
    checks.check_embedding_frequency_norms(fourier.embedding_frequency_norms)


@pytest.mark.parametrize("wrong, expected", [
    (lambda m: fourier.embedding_frequency_norms(m).float(), "return float64"),
    (lambda m: fourier.frequency_norms(fourier.fft1d(m.W_E[:m.cfg.d_vocab_out].detach().double())), "shares"),
    (lambda m: (lambda s: torch.cat([s[:1], s[1::2] + s[2::2]]) / s.sum())(_squared(m)), "constant"),
    (lambda m: (lambda s: (s[0:-1:2] + s[1::2]) / (s[0:-1:2] + s[1::2]).sum())(_squared(m)), "off by one"),
    (lambda m: (lambda c: (c[1::2] + c[2::2]) / (c[1::2] + c[2::2]).sum())(
        fourier.fft1d(m.W_E[:m.cfg.d_vocab_out].detach().double()).abs().sum(-1)), "absolute values"),
    (lambda m: fourier.frequency_norms(fourier.fft1d(m.W_E[:m.cfg.d_vocab_out].double()))
     / fourier.frequency_norms(fourier.fft1d(m.W_E[:m.cfg.d_vocab_out].double())).sum(), "requires_grad"),
])
def test_embedding_frequency_norms_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_embedding_frequency_norms, wrong)


# --- key frequencies ------------------------------------------------------------------------------
def test_the_planted_circuits_tell_every_wrong_rule_apart_from_the_rule():
    wants = [fourier.key_frequencies(m) for _, m in key_frequency_cases()]
    embedding = [fourier.largest_gap(fourier.embedding_frequency_norms(m)) for _, m in key_frequency_cases()]
    fixed = [fourier.significant_frequencies(fourier.output_frequency_norms(m), 0.1) for _, m in key_frequency_cases()]
    assert all(set(e) > set(w) for e, w in zip(embedding, wants))  # every embedding holds an echo above its gap
    assert any(f != w for f, w in zip(fixed, wants))


def test_key_frequencies_check_accepts_the_reference():
    checks.check_key_frequencies(fourier.key_frequencies)


def _gap(shares, top_half=True, ratio=True):
    order = shares.argsort(descending=True)
    s = shares[order].clamp_min(1e-300)
    top = len(s) // 2 if top_half else len(s) - 1
    drops = s[:top] / s[1:top + 1] if ratio else s[:top] - s[1:top + 1]
    return [int(i) + 1 for i in order[:int(drops.argmax()) + 1]]


@pytest.mark.parametrize("wrong, expected", [
    (lambda m: _gap(fourier.embedding_frequency_norms(m)), "echoes (here k = 28 (2·14))"),
    (lambda m: fourier.significant_frequencies(fourier.output_frequency_norms(m), 0.1), "fixed 10%"),
    (lambda m: [k - 1 for k in fourier.key_frequencies(m)], "0-based"),
    (lambda m: sorted(fourier.key_frequencies(m)), "wrong order"),
    (lambda m: torch.tensor(fourier.key_frequencies(m)), "list of Python ints"),
    (lambda m: [np.int64(k) for k in fourier.key_frequencies(m)], "int(k)"),
    (lambda m: tuple(fourier.key_frequencies(m)), "list(...)"),
    (lambda m: _gap(fourier.output_frequency_norms(m), top_half=False), "whole tail"),
    (lambda m: _gap(fourier.output_frequency_norms(m), ratio=False), "not the largest difference"),
])
def test_key_frequencies_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_key_frequencies, wrong)
