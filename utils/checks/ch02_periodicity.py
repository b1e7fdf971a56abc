"""Checks for chapter 2 (periodicity): the Fourier basis, 1-D and 2-D transforms, the embedding's frequencies and
the key frequencies (W_L's output frequencies above the largest gap)."""
from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch

from utils import fourier as _fourier
from utils.checks.compare import Mistakes, expect_int_list, expect_tensor, explaining_mistake
from utils.checks.harness import call, fail, guarded, passed
from utils.checks.inputs import embedding_cases, key_frequency_cases

__all__ = ["check_fourier_basis", "check_fft1d", "check_fft2d", "check_embedding_frequency_norms",
           "check_key_frequencies"]


def _odd_moduli(seed: int) -> list[int]:
    """113 (the course's p), the smallest odd modulus, and a seeded-random prime."""
    return [113, 3, random.Random(seed).choice([7, 11, 13, 23, 31, 59])]


def _basis(n: int, scale: float = 2 * np.pi, sin_sign: float = 1.0, first: int = 1) -> torch.Tensor:
    """Rows const, cos k, sin k for k = first, first+1, … over x = 0 … n-1, w_k = scale·k/n, unnormalised: [n, n]."""
    x = torch.arange(n, dtype=torch.float64)
    k = torch.arange(first, first + (n - 1) // 2, dtype=torch.float64)[:, None]
    waves = torch.stack([torch.cos(scale * k * x / n), sin_sign * torch.sin(scale * k * x / n)], 1).reshape(-1, n)
    return torch.cat([torch.ones(1, n, dtype=torch.float64), waves])


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=1, keepdim=True)


def _basis_mistakes(p: int) -> Mistakes:
    """Plausible wrong Fourier bases, each with the hint that explains it."""
    raw, unit = _basis(p), _unit(_basis(p))
    return [
        ("normalise every row to length 1: the constant row is 1/√p, the others are cos or sin times √(2/p).",
         lambda: raw),
        ("one basis vector per ROW (basis[component, x]); yours are in the columns: transpose it.", lambda: unit.T),
        ("row 2k-1 is cos(2πkx/p) and row 2k is sin(2πkx/p): you have sin before cos.",
         lambda: torch.cat([unit[:1], unit[1:].reshape(-1, 2, p).flip(1).reshape(-1, p)])),
        ("interleave the rows (const, cos 1, sin 1, cos 2, sin 2, …): yours has all the cosines, then all the sines.",
         lambda: torch.cat([unit[:1], unit[1::2], unit[2::2]])),
        ("frequency k is cos(2πkx/p): you left out the 2π.", lambda: _unit(_basis(p, 1.0))),
        ("frequency k is cos(2πkx/p): you used π instead of 2π (those waves do not repeat every p).",
         lambda: _unit(_basis(p, np.pi))),
        ("the sin rows have the wrong sign: use sin(+2πkx/p), not sin(-2πkx/p) (the e^(-iωx) convention of FFTs).",
         lambda: _unit(_basis(p, sin_sign=-1.0))),
        ("the constant row is 1/√p (its length must be 1, like every other row).",
         lambda: torch.cat([unit[:1] * np.sqrt(2), unit[1:]])),
    ]


def _starts_at_zero(got: torch.Tensor) -> bool:
    """Row 1 constant (cos 0·x) or rows of NaN (sin 0·x normalised): frequencies counted from 0."""
    return got.shape[0] > 2 and (bool(got[1].isnan().all() or got[2].isnan().all())
                                 or float(torch.nan_to_num(got[1]).std()) < 1e-9)


@guarded("fourier_basis")
def check_fourier_basis(fn: Callable[[int], torch.Tensor]) -> None:
    """fn(p) -> [p, p] float64: orthonormal rows const, cos 1, sin 1, cos 2, sin 2, … over x = 0 … p-1."""
    __tracebackhide__ = True
    name, moduli = "fourier_basis", _odd_moduli(2)
    for p in moduli:
        want = _fourier.fourier_basis(p, torch.float64)
        got = call(name, fn, p, on=f"p = {p}", names=["p"])
        zero_hint = ("frequencies go k = 1 … (p-1)/2: yours start at k = 0, whose cos is the constant again and "
                     "whose sin is all zeros.")
        expect_tensor(name, got, want, what="the basis", on=f"p = {p}", atol=1e-9, mistakes=_basis_mistakes(p),
                      diagnoses=[(zero_hint, _starts_at_zero)])
    passed(f"fourier_basis is orthonormal with rows const, cos 1, sin 1, … for p = {', '.join(map(str, moduli))}.")


def _random_inputs(shapes: list[tuple[int, ...]], seed: int) -> list[tuple[str, torch.Tensor]]:
    """(description, seeded random float64 tensor) for each shape."""
    g = torch.Generator().manual_seed(seed)
    return [(f"a random float64 tensor of shape {shape}", torch.randn(*shape, generator=g, dtype=torch.float64))
            for shape in shapes]


@guarded("fft1d")
def check_fft1d(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """fn(x [p, ...]) -> its Fourier coefficients along the first axis, [p, ...], in x's dtype (float64 here)."""
    __tracebackhide__ = True
    name = "fft1d"
    x = torch.arange(11, dtype=torch.float64)
    cases = _random_inputs([(113,), (113, 7), (13, 13), (5, 2, 3)], seed=3) + [
        ("x ↦ cos(2π·3x/11) over x = 0 … 10 (all its weight is in row 5, cos 3)", torch.cos(2 * np.pi * 3 * x / 11))]
    for on, x in cases:
        p, flat = x.shape[0], x.reshape(x.shape[0], -1)
        basis, want = _fourier.fourier_basis(p), _fourier.fft1d(x)
        last = x.shape[-1]
        mistakes = [
            ("that is the inverse transform (basis.T @ x): the coefficients are basis @ x, one per basis row.",
             lambda: (basis.T @ flat).reshape(x.shape)),
            ("transform the FIRST axis (the input x), not the last one.",
             lambda: x @ _fourier.fourier_basis(last).T if last % 2 else None),
            ("use the orthonormal basis (unit rows): your coefficients are scaled.",
             lambda: (_basis(p) @ flat).reshape(x.shape)),
            ("the sin coefficients have the wrong sign: the basis' sin rows are sin(+2πkx/p).",
             lambda: (_unit(_basis(p, sin_sign=-1.0)) @ flat).reshape(x.shape)),
        ]
        got = call(name, fn, x, on=on, names=["x"])
        expect_tensor(name, got, want, what="the coefficients", on=on, rtol=1e-7, atol=1e-9, mistakes=mistakes)
    passed("fft1d gives the coefficients along the first axis, for vectors and for batches of them, in float64.")


@guarded("fft2d")
def check_fft2d(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """fn(x [p, p, ...]) -> Fourier coefficients over both of the first two axes (a and b), [p, p, ...]."""
    __tracebackhide__ = True
    name = "fft2d"
    a = torch.arange(13, dtype=torch.float64)
    cases = _random_inputs([(113, 113), (7, 7, 3), (5, 5)], seed=4) + [
        ("x[a, b] = cos(2π·2a/13)·sin(2π·5b/13) (all its weight is at (cos 2, sin 5): index (3, 10))",
         torch.cos(2 * np.pi * 2 * a / 13)[:, None] * torch.sin(2 * np.pi * 5 * a / 13)[None, :])]
    for on, x in cases:
        basis, want = _fourier.fourier_basis(x.shape[0]), _fourier.fft2d(x)
        mistakes = [
            ("transform b too: so far only the first axis (a) is transformed.",
             lambda: torch.einsum("fa,a...->f...", basis, x)),
            ("transform a too: so far only the second axis (b) is transformed.",
             lambda: torch.einsum("gb,ab...->ag...", basis, x)),
            ("the output's first axis is the component of a, the second that of b: yours are swapped.",
             lambda: want.transpose(0, 1)),
            ("both axes are transformed by basis @ (one axis): for b that is x @ basis.T, not x @ basis.",
             lambda: torch.einsum("bg,fb...->fg...", basis, torch.einsum("fa,a...->f...", basis, x))),
        ]
        got = call(name, fn, x, on=on, names=["x"])
        expect_tensor(name, got, want, what="the 2-D coefficients", on=on, rtol=1e-7, atol=1e-9, mistakes=mistakes)
    passed("fft2d transforms a and b, keeping any further axes (e.g. one grid per neuron).")


def _share_mistakes(model, p: int) -> Mistakes:
    """Plausible wrong embedding shares, each with the hint that explains it."""
    W = model.W_E.detach().double()
    coeffs = _fourier.fft1d(W[:p])  # [p, d_model]
    squared, absolute = coeffs.pow(2).sum(-1), coeffs.abs().sum(-1)  # [p]
    share = lambda n: n / n.sum()  # noqa: E731
    with_equals = (_unit(_basis(p + 1)) @ W).pow(2).sum(-1)  # [p + 1]: the "=" row transformed too
    return [
        ("return shares: divide by the total over the frequencies so they sum to 1.",
         lambda: squared[1::2] + squared[2::2]),
        ("use SQUARED norms (cos² + sin², summed over d_model), then the shares.",
         lambda: share((squared[1::2] + squared[2::2]).sqrt())),
        ("square the coefficients (.pow(2)); you added their absolute values.",
         lambda: share(absolute[1::2] + absolute[2::2])),
        ("a frequency's norm adds its cos row AND its sin row.", lambda: share(squared[1::2])),
        ("pair rows 2k-1 and 2k (cos k, sin k) for frequency k: your columns are off by one (rows 2k-2 and 2k-1).",
         lambda: share(squared[0:-1:2] + squared[1::2])),
        ("divide by the total over frequencies 1 … (p-1)/2 only (leave the constant out of the total too).",
         lambda: (squared[1::2] + squared[2::2]) / squared.sum()),
        ("leave out the last row of W_E, the `=` token (W_E[:p]): it is not a number.",
         lambda: share(with_equals[1:-1:2] + with_equals[2::2])),
    ]


@guarded("embedding_frequency_norms")
def check_embedding_frequency_norms(fn: Callable) -> None:
    """fn(model) -> [(p-1)/2] float64: each frequency's share of the embedding's squared norm (no "=", no constant)."""
    __tracebackhide__ = True
    name = "embedding_frequency_norms"
    for on, model in embedding_cases():
        p = model.cfg.d_vocab_out
        want = _fourier.embedding_frequency_norms(model)
        got = call(name, fn, model, on=on, names=["model"])
        k = (p - 1) // 2
        if isinstance(got, torch.Tensor) and got.ndim == 1 and got.shape[0] in (k + 1, p, 2 * k):
            fail(name, f"returned {got.shape[0]} values; expected {k}, one per frequency 1 … (p-1)/2.", on,
                 "leave out the constant component (row 0 of the coefficients): it is not a frequency."
                 if got.shape[0] == k + 1 else "add each frequency's cos and sin rows together (rows 2k-1 and 2k).")
        expect_tensor(name, got, want, what="the shares", on=on, rtol=1e-7, atol=1e-9, detached=True,
                      mistakes=_share_mistakes(model, p))
    passed("embedding_frequency_norms finds the planted frequencies' shares in float64, ignoring `=` and the constant.")


# --- key frequencies --------------------------------------------------------------------------------------------
def _gap_rule(shares: torch.Tensor, *, top_half: bool = True, ratio: bool = True) -> list[int]:
    """utils.fourier.largest_gap with one knob per plausible mistake (the defaults give the rule itself)."""
    order = shares.argsort(descending=True, stable=True)
    s = shares[order].clamp_min(torch.finfo(torch.float64).tiny)
    top = max(1, len(s) // 2) if top_half else len(s) - 1
    drops = s[:top] / s[1:top + 1] if ratio else s[:top] - s[1:top + 1]
    return [int(i) + 1 for i in order[:int(drops.argmax()) + 1]]


def _key_variants(model) -> list[tuple[str, list[int]]]:
    """(hint, the answer of a plausible wrong rule) for one planted model."""
    out, emb = _fourier.output_frequency_norms(model), _fourier.embedding_frequency_norms(model)
    want = _gap_rule(out)
    return [
        ("use W_L's output frequencies (utils.fourier.output_frequency_norms(model)), not the embedding's: the "
         "embedding also holds echoes (here {echo}) that no output direction uses.", _gap_rule(emb)),
        ("cut at the largest GAP (the largest ratio between consecutive sorted shares), not at a fixed 10% of the "
         "largest share: a fixed cut drops a small but clear tier.", _fourier.significant_frequencies(out, 0.1)),
        ("use W_L's output shares and cut at the largest gap: you used the embedding with a fixed 10% cut.",
         _fourier.significant_frequencies(emb, 0.1)),
        ("frequencies start at 1: entry i of the shares is frequency i + 1 (you returned 0-based indices).",
         [k - 1 for k in want]),
        ("look for the gap in the top half of the sorted shares only: among the tail's near-zero shares a ratio "
         "can be huge by chance (you looked at the whole tail).", _gap_rule(out, top_half=False)),
        ("the gap is the largest RATIO s_j / s_(j+1) between consecutive sorted shares, not the largest difference.",
         _gap_rule(out, ratio=False)),
    ]


def _echoes(got: list[int], want: list[int], p: int) -> str:
    """'k = 28 (2·14)' for the frequencies in got but not in want, described by their relation to the keys."""
    names = {}
    for i, k1 in enumerate(want):
        names.setdefault(_fourier.fold(2 * k1, p), f"2·{k1}")
        for k2 in want[i + 1:]:
            names.setdefault(_fourier.fold(k1 + k2, p), f"{k1}+{k2}")
    extra = [k for k in got if k not in want]
    return ", ".join(f"k = {k}" + (f" ({names[k]})" if k in names else "") for k in extra) or "none"


@guarded("key_frequencies")
def check_key_frequencies(fn: Callable) -> None:
    """fn(model) -> W_L's output frequencies above the largest gap of their sorted shares: a list of ints, largest
    share first (utils.fourier.key_frequencies)."""
    __tracebackhide__ = True
    name, cases = "key_frequencies", key_frequency_cases()
    wants = [_fourier.key_frequencies(model) for _, model in cases]
    answers = [expect_int_list(name, call(name, fn, model, on=on, names=["model"]), what="the key frequencies", on=on)
               for on, model in cases]
    for (on, model), got, want in zip(cases, answers, wants):
        if got == want:
            continue
        variants = [list(v) for v in zip(*[_key_variants(m) for _, m in cases])]  # per variant: (hint, answer)…
        hint = explaining_mistake(answers, [(v[0][0], [a for _, a in v]) for v in variants], lambda g, w: g == w)
        if hint is None and sorted(got) == sorted(want):
            hint = "the right frequencies in the wrong order: largest share first (sort by share, descending)."
        p = model.cfg.d_vocab_out
        fail(name, f"returned {got}; expected {want}.", on, hint and hint.format(echo=_echoes(got, want, p)))
    passed("key_frequencies finds W_L's output frequencies above the largest gap, largest share first, and "
           "leaves out the embedding's echoes.")
