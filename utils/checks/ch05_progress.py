"""Checks for chapter 5 (progress measures): restricted and excluded loss, the Gini coefficient, and the Fourier
norms of a stack of embeddings."""
from __future__ import annotations

from collections.abc import Callable

import torch

from utils import ablation as _ablation, progress as _progress
from utils.metrics import cross_entropy
from utils.checks.compare import Mistakes, expect_tensor
from utils.checks.harness import call, describe, fail, guarded, none_hint, passed
from utils.checks.inputs import memorising_logits

__all__ = ["check_restricted_and_excluded", "check_gini", "check_embedding_norms"]


def _loss_mistakes(logits, labels, train_idx, freqs) -> tuple[Mistakes, Mistakes]:
    """Plausible wrong (restricted, excluded) losses, each with the hint that explains it."""
    p = logits.shape[-1]
    kept, removed = _ablation.keep_frequencies(logits, freqs), _ablation.remove_frequencies(logits, freqs)
    test_idx = torch.tensor(sorted(set(range(p * p)) - set(train_idx.tolist())))
    loss = lambda x, idx=None: cross_entropy(x, labels, idx)  # noqa: E731
    restricted = [
        ("the restricted loss keeps the key directions; you removed them.", lambda: loss(removed)),
        ("the restricted loss is measured on ALL inputs; you used the training pairs only.",
         lambda: loss(kept, train_idx)),
        ("the restricted loss is measured on ALL inputs; you used the test pairs only.", lambda: loss(kept, test_idx)),
        ("keep each answer's constant (its mean over the inputs) as well as the directions.",
         lambda: loss(_ablation.frequency_component(logits, freqs))),
        ("these look like the excluded losses: return (restricted, excluded) in that order.",
         lambda: loss(removed, train_idx)),
    ]
    excluded = [
        ("the excluded loss is measured on the TRAINING pairs only (what memorisation could have learnt).",
         lambda: loss(removed)),
        ("the excluded loss is measured on the TRAINING pairs; you used the test pairs.", lambda: loss(removed, test_idx)),
        ("the excluded loss removes the key directions; you kept only them.", lambda: loss(kept, train_idx)),
        ("remove only the key directions; you also removed each answer's constant.",
         lambda: loss(removed - logits.mean(-2, keepdim=True), train_idx)),
    ]
    return restricted, excluded


@guarded("restricted_and_excluded")
def check_restricted_and_excluded(fn: Callable) -> None:
    """fn(logits [n, p², p], labels, train_idx, freqs) -> (restricted loss [n] on all inputs, excluded loss [n] on
    the training pairs), both float64."""
    __tracebackhide__ = True
    name = "restricted_and_excluded"
    for p, n, seed, freqs in [(13, 4, 7, [1, 3]), (7, 2, 8, [1]), (11, 3, 9, [3, 1, 2])]:
        logits, labels, train_idx = memorising_logits(p, n, seed)
        on = (f"{n} stacked models' logits (float64), p = {p}: cosines at frequencies 1 and 3 plus a memorised table "
              f"on the {len(train_idx)} training pairs; freqs = {freqs}")
        want_r, want_x = _progress.restricted_and_excluded(logits, labels, train_idx, freqs)
        got = call(name, fn, logits, labels, train_idx, list(freqs), on=on,
                   names=["logits", "labels", "train_idx", "freqs"])
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(name, f"should return a pair (restricted, excluded); got {describe(got)}.", on,
                 none_hint(got) or "end with `return restricted, excluded`.")
        r_mistakes, x_mistakes = _loss_mistakes(logits, labels, train_idx, freqs)
        expect_tensor(name, got[0], want_r, what="the restricted loss (first value)", on=on, rtol=1e-7, atol=1e-9,
                      mistakes=r_mistakes)
        expect_tensor(name, got[1], want_x, what="the excluded loss (second value)", on=on, rtol=1e-7, atol=1e-9,
                      mistakes=x_mistakes)
    passed("restricted_and_excluded measures the key directions alone (all inputs) and everything but them "
           "(training pairs) for a whole stack of checkpoints, in float64.")


def _gini_mistakes(x: torch.Tensor, want: torch.Tensor) -> Mistakes:
    """Plausible wrong Gini coefficients, each with the hint that explains it."""
    n = x.shape[-1]
    weights = 2 * torch.arange(1, n + 1, dtype=torch.float64) - n - 1
    return [
        ("sort the values first (x.sort(-1).values): the formula weights the i-th SMALLEST value by 2i - n - 1.",
         lambda: (x * weights).sum(-1) / (n * x.sum(-1))),
        ("sort in INCREASING order (x.sort(-1).values): sorted in decreasing order the formula gives -G.",
         lambda: -want),
        ("divide by n·Σx, not by Σx alone.", lambda: want * n),
        ("that is the 'corrected' Gini (× n/(n-1)); use the plain one, whose largest value is 1 - 1/n.",
         lambda: want * n / (n - 1)),
        ("that is 1 - Gini: equal values should give 0 and one-hot values the most.", lambda: 1 - want),
    ]


@guarded("gini")
def check_gini(fn: Callable) -> None:
    """fn(x [..., n]) -> the Gini coefficient along the last axis [...]: 0 for equal values, 1 - 1/n for one-hot."""
    __tracebackhide__ = True
    name = "gini"
    g = torch.Generator().manual_seed(5)
    cases = [("one value holds everything: [0, 0, 0, 5]", torch.tensor([0.0, 0, 0, 5], dtype=torch.float64)),
             ("all equal: [1, 1, 1, 1]", torch.ones(4, dtype=torch.float64)),
             ("[3, 1, 2] (not sorted)", torch.tensor([3.0, 1, 2], dtype=torch.float64)),
             ("a batch of 4 rows of 56 random values", torch.rand(4, 56, generator=g, dtype=torch.float64) ** 3)]
    for on, x in cases:
        want = _progress.gini(x)
        got = call(name, fn, x, on=f"{on} (float64)", names=["x"])
        expect_tensor(name, got, want, what="the Gini coefficient", on=on, rtol=1e-7, atol=1e-10,
                      mistakes=_gini_mistakes(x, want))
    passed("gini is 0 for equal values, 1 - 1/n when one value holds everything, and works on a batch of rows.")


def _norm_mistakes(W_E: torch.Tensor, want: torch.Tensor) -> Mistakes:
    """Plausible wrong per-frequency norms, each with the hint that explains it."""
    p = W_E.shape[1] - 1
    coeffs = torch.einsum("fx,nxd->nfd", _ablation.fourier_basis(p), W_E[:, :p].double())
    squared, absolute = coeffs.pow(2).sum(-1), coeffs.abs().sum(-1)  # [n, p]
    return [
        ("take the square root: the norm is sqrt(‖cos k‖² + ‖sin k‖²), not its square.", lambda: want ** 2),
        ("return the norms themselves, not each frequency's share of their total.",
         lambda: want / want.sum(-1, keepdim=True)),
        ("return the norms themselves, not each frequency's share of the squared norm.",
         lambda: want ** 2 / (want ** 2).sum(-1, keepdim=True)),
        ("square the coefficients before adding them (a norm), rather than adding their absolute values.",
         lambda: (absolute[:, 1::2] + absolute[:, 2::2])),
        ("pair rows 2k-1 and 2k (cos k, sin k): your columns are off by one (rows 2k-2 and 2k-1).",
         lambda: (squared[:, 0:-1:2] + squared[:, 1::2]).sqrt()),
        ("leave out the last token, `=` (row p of W_E): it is not a number, so it has no Fourier transform.",
         lambda: _progress.embedding_norms(torch.cat([W_E[:, 1:], W_E[:, :1]], 1))),
    ]


@guarded("embedding_norms")
def check_embedding_norms(fn: Callable) -> None:
    """fn(W_E [n, p+1, d_model]) -> [n, (p-1)/2] float64: norm of each frequency's cos and sin components."""
    __tracebackhide__ = True
    name = "embedding_norms"
    g = torch.Generator().manual_seed(6)
    for n, p, d in ((3, 113, 16), (1, 7, 4), (5, 13, 8)):
        on, W_E = f"{n} stacked float32 embeddings, p = {p}, d_model = {d}", torch.randn(n, p + 1, d, generator=g)
        want = _progress.embedding_norms(W_E)
        got = call(name, fn, W_E, on=on, names=["W_E"])
        k = want.shape[-1]
        if isinstance(got, torch.Tensor) and got.shape[:-1] == want.shape[:-1] and got.shape[-1] != k:
            hints = {k + 1: "drop the constant component (basis row 0): frequencies are 1 … (p-1)/2.",
                     2 * k: "combine each frequency's cos and sin rows: sqrt(cos² + sin²).",
                     2 * k + 1: "combine each frequency's cos and sin rows (and drop the constant, row 0)."}
            fail(name, f"returned {got.shape[-1]} values per embedding; expected {k}, one per frequency.", on,
                 hints.get(got.shape[-1]))
        expect_tensor(name, got, want, what="the frequency norms", on=on, rtol=1e-7, atol=1e-9,
                      mistakes=_norm_mistakes(W_E, want))
    passed("embedding_norms gives each frequency's Fourier norm for a whole stack of embeddings at once, in float64.")
