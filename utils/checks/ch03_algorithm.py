"""Checks for chapter 3 (the algorithm): the cosine form's variance explained, W_L in the Fourier basis, the additive
share of attention's output, neuron fits, output-frequency shares, and the Fourier multiplication algorithm (shared
with chapter 6's subtraction)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from utils import fourier as _fourier, mechanism as _mechanism
from utils.checks.compare import Mistakes, expect_number, expect_tensor, explaining_mistake
from utils.checks.harness import CheckFailed, call, fail, guarded, passed
from utils.checks.inputs import cosine_logits, planted_neurons, random_model, sum_and_products

__all__ = ["check_cosine_variance_explained", "check_W_L_fourier", "check_additive_share", "check_neuron_fit_r2",
           "check_output_frequency_shares", "check_fourier_multiplication"]


# --- the cosine form ----------------------------------------------------------------------------------------------
def _ve_with(logits: torch.Tensor, freqs: Sequence[int], *, sign_c: float = -1.0, scale: float = 2 * np.pi,
             centre: str = "answers", unexplained: bool = False) -> float:
    """Variance explained with one knob per plausible mistake (the defaults give the reference's value)."""
    p = logits.shape[-1]
    x = torch.arange(p, dtype=torch.float64)
    phase = x[:, None, None] + x[None, :, None] + sign_c * x
    X = torch.stack([torch.cos(scale * k * phase / p) for k in freqs]).reshape(len(freqs), -1).T  # [p³, K]
    centred = logits - logits.mean(-1, keepdim=True)
    fit = (X @ torch.linalg.lstsq(X, centred.reshape(-1, 1)).solution).reshape(logits.shape)
    measured = {"answers": centred, "none": logits, "all": logits - logits.mean()}[centre]
    share = float(1 - (measured - fit).pow(2).sum() / measured.pow(2).sum())
    return 1 - share if unexplained else share


_VE_MISTAKES = [  # (hint, knobs of _ve_with)
    ("that is the share NOT explained (residual / total): return 1 minus it.", dict(unexplained=True)),
    ("centre the logits over the answers c (logits - logits.mean(-1, keepdim=True)) before measuring: an offset "
     "shared by every answer changes nothing after the softmax, so it is not variance to explain.", dict(centre="none")),
    ("centre each input's logits over the answers c (mean over the last axis), not over everything at once.",
     dict(centre="all")),
    ("the waves are cos(w_k(a + b - c)): yours use a + b + c (check the sign of c).", dict(sign_c=1.0)),
    ("the waves are cos(w_k(a + b - c)) with w_k = 2πk/p: you left out the 2π.", dict(scale=1.0)),
    ("w_k = 2πk/p: you used π instead of 2π.", dict(scale=np.pi)),
]


@guarded("cosine_variance_explained")
def check_cosine_variance_explained(fn: Callable) -> None:
    """fn(logits [p, p, p], freqs) -> the share (a Python float) of the logits' variance, centred over c, that the
    least-squares Σ α_k cos(w_k(a+b-c)) explains."""
    __tracebackhide__ = True
    name = "cosine_variance_explained"
    cases = [(f"logits Σ α_k cos(w_k(a+b-c)) for k = {freqs} (α = {alphas}) + {extra}·cos(w_{freqs[0]}(a+b+c)) "
              f"+ a per-input offset + noise {noise}, p = {p}", cosine_logits(p, freqs, alphas, extra, noise, seed),
              freqs) for seed, (p, freqs, alphas, extra, noise) in enumerate([
                  (13, [2, 5], [2.0, 0.5], 0.0, 0.5), (23, [3, 7], [1.5, 1.0], 0.8, 0.3),
                  (113, [14, 41], [3.0, 1.0], 0.0, 1.0)])]
    wants = [_mechanism.variance_explained(logits, _mechanism.fit_cosine_logits(logits, freqs)[1])
             for _, logits, freqs in cases]
    answers = [expect_number(name, call(name, fn, logits, list(freqs), on=on, names=["logits", "freqs"]), want,
                             what="the variance explained", on=on, atol=math.inf)
               for (on, logits, freqs), want in zip(cases, wants)]
    for (on, logits, freqs), got, want in zip(cases, answers, wants):
        if abs(got - want) > 1e-6:
            variants = [(hint, [_ve_with(lg, fr, **knobs) for _, lg, fr in cases]) for hint, knobs in _VE_MISTAKES]
            hint = explaining_mistake(answers, variants, lambda g, w: abs(g - w) <= 1e-6)
            if hint is None and abs(got - want) < 1e-3:
                hint = "right only to float32 precision: build the waves and the design matrix in float64."
            fail(name, f"the variance explained = {got:.6g}; expected {want:.6g}.", on, hint)
    passed("cosine_variance_explained fits Σ α_k cos(w_k(a+b-c)) by least squares and measures it on centred logits.")


# --- W_L ----------------------------------------------------------------------------------------------------------
@guarded("W_L_fourier")
def check_W_L_fourier(fn: Callable) -> None:
    """fn(model) -> W_L = W_out @ W_U with its output axis in the Fourier basis: [d_mlp, p] float64."""
    __tracebackhide__ = True
    name = "W_L_fourier"
    for seed, (p, d_mlp) in enumerate([(13, 24), (23, 16), (7, 40)]):
        model, on = random_model(p, seed, d_mlp), f"a random model with p = {p}, d_model 16, d_mlp {d_mlp}"
        want, W, basis = _mechanism.W_L_fourier(model), _mechanism.W_L(model), _fourier.fourier_basis(p)
        W_in = model.W_in[0].detach().T.double() @ model.W_U.detach().double()
        flipped = basis * torch.tensor([1.0] + [1.0, -1.0] * ((p - 1) // 2), dtype=torch.float64)[:, None]
        mistakes = [
            ("that is W_L itself: now put its output axis (the answers c) in the Fourier basis: W_L @ basis.T.",
             lambda: W),
            ("transform the output axis with the basis' rows: W_L @ basis.T (not W_L @ basis).", lambda: W @ basis),
            ("W_L starts at the neurons' OUTPUT weights: W_out (neurons → residual stream), not W_in.",
             lambda: W_in @ basis.T),
            ("the sin columns have the wrong sign: use chapter 2's basis, whose sin rows are sin(+2πkx/p).",
             lambda: W @ flipped.T),
        ]
        got = call(name, fn, model, on=on, names=["model"])
        expect_tensor(name, got, want, what="W_L in the Fourier basis", on=on, rtol=1e-7, atol=1e-9, detached=True,
                      mistakes=mistakes)
    passed("W_L_fourier is W_out @ W_U in float64 with the answers' axis in the Fourier basis.")


# --- attention: a sum f(a) + g(b)? ----------------------------------------------------------------------------
def _share_with(x: torch.Tensor, *, fit: str = "both", centre: str = "grid", pooled: bool = True,
                unexplained: bool = False) -> float:
    """The additive share with one knob per plausible mistake (the defaults give the reference's value)."""
    row, col, grand = x.mean(1, keepdim=True), x.mean(0, keepdim=True), x.mean((0, 1), keepdim=True)
    fitted = {"both": row + col - grand, "no grand mean": row + col, "a only": row,
              "swapped": x.mean(1)[None] + x.mean(0)[:, None] - grand}[fit]
    mean = {"grid": grand, "none": 0.0, "all": x.mean()}[centre]
    residual, total = (x - fitted).pow(2).sum((0, 1)), (x - mean).pow(2).sum((0, 1))  # [d]
    share = float(1 - residual.sum() / total.sum()) if pooled else float((1 - residual / total).mean())
    return 1 - share if unexplained else share


_SHARE_MISTAKES = [  # (hint, knobs of _share_with)
    ("that is the share NOT explained (residual / total): return 1 minus it.", dict(unexplained=True)),
    ("the total is the variance around the MEAN: centre each feature over the grid, x - x.mean((0, 1)), before "
     "squaring (not sum(x²)).", dict(centre="none")),
    ("centre each feature over the (a, b) grid, x.mean((0, 1)), not everything at once with x.mean(): the "
     "features have different means.", dict(centre="all")),
    ("row means + column means counts the grand mean twice: subtract x.mean((0, 1), keepdim=True) once.",
     dict(fit="no grand mean")),
    ("fit f(a) AND g(b): the row means alone are the best f(a), without g(b).", dict(fit="a only")),
    ("x.mean(1) (the mean over b) is a function of a, so it varies down the rows: keep the axes with "
     "keepdim=True (yours are swapped).", dict(fit="swapped")),
    ("pool the features: add up every feature's squared residual and every feature's variance, then divide "
     "once (not the mean of per-feature shares).", dict(pooled=False)),
]


@guarded("additive_share")
def check_additive_share(fn: Callable) -> None:
    """fn(x [p, p, d]) -> the share (a Python float) of x's variance, pooled over the d features, that the
    least-squares f(a) + g(b) explains."""
    __tracebackhide__ = True
    name = "additive_share"
    plans = [(13, 4, 0.5, 0.2), (23, 3, 0.0, 0.0), (113, 6, 0.3, 0.1), (7, 2, 2.0, 0.0)]
    cases = [(f"x = f(a) + g(b) + {product}·u(a)·v(b) + noise {noise} over a {p} × {p} grid, {d} features of "
              "different means and scales", sum_and_products(p, d, product, noise, seed))
             for seed, (p, d, product, noise) in enumerate(plans)]
    wants = [_mechanism.additive_share(x) for _, x in cases]
    answers = [expect_number(name, call(name, fn, x, on=on, names=["x"]), want, what="the additive share", on=on,
                             atol=math.inf) for (on, x), want in zip(cases, wants)]
    for (on, x), got, want in zip(cases, answers, wants):
        if abs(got - want) > 1e-6:
            variants = [(hint, [_share_with(case, **knobs) for _, case in cases]) for hint, knobs in _SHARE_MISTAKES]
            hint = explaining_mistake(answers, variants, lambda g, w: abs(g - w) <= 1e-6)
            if hint is None and abs(got - want) < 1e-3:
                hint = "right only to float32 precision: compute in float64 (x.double())."
            fail(name, f"the additive share = {got:.6g}; expected {want:.6g}.", on, hint)
    passed("additive_share fits the best f(a) + g(b) and measures the share of the variance it explains.")


# --- neurons ------------------------------------------------------------------------------------------------------
def _r2_mistakes(acts: torch.Tensor, k: int, quadratic: bool) -> Mistakes:
    """Plausible wrong R² values for the planted neurons, each with the hint that explains it."""
    p = acts.shape[0]
    y = acts.reshape(p * p, -1)
    centred = (y - y.mean(0)).pow(2).sum(0)

    def r2_with(X: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
        residual = y - X @ torch.linalg.lstsq(X, y).solution
        if total is not None:  # a wrong total: no special case for constant neurons either
            return 1 - residual.pow(2).sum(0) / total
        return (1 - residual.pow(2).sum(0) / centred.clamp_min(1e-30)) * (centred > 0)

    features = _mechanism.neuron_features(p, k, quadratic).reshape(p * p, -1)
    same_kind = [0, 1, 2, 3, 4, 5, 8] if quadratic else list(range(5))  # cos·cos and sin·sin only
    scaled = lambda s: _mechanism.neuron_features(p, k * s / (2 * np.pi), quadratic).reshape(p * p, -1)  # noqa: E731
    return [
        ("include the constant term 1 among the features: the neurons' means are not zero.",
         lambda: r2_with(features[:, 1:])),
        ("R² divides by the variance around the MEAN: sum((y - y.mean())²), not sum(y²).",
         lambda: r2_with(features, y.pow(2).sum(0))),
        ("that is 1 - R² (the share left unexplained).", lambda: 1 - _mechanism.neuron_fit_r2(acts, k, quadratic)),
        ("quadratic=False means only 1, cos/sin(w a) and cos/sin(w b): leave the products out.",
         lambda: _mechanism.neuron_fit_r2(acts, k, True)),
        ("quadratic=True adds all four products cos·cos, cos·sin, sin·cos and sin·sin of an a-term and a b-term.",
         lambda: r2_with(features[:, same_kind])),
        ("frequency k means w = 2πk/p: you left out the 2π.", lambda: r2_with(scaled(1.0))),
        ("frequency k means w = 2πk/p: you used π instead of 2π.", lambda: r2_with(scaled(np.pi))),
    ]


@guarded("neuron_fit_r2")
def check_neuron_fit_r2(fn: Callable) -> None:
    """fn(acts [p, p, n], k, quadratic) -> [n] float64: R² of each neuron's least-squares fit by frequency k's terms."""
    __tracebackhide__ = True
    name = "neuron_fit_r2"
    for seed, (p, k) in enumerate([(23, 3), (113, 14), (11, 1)]):
        acts = planted_neurons(p, k, seed)
        for quadratic in (False, True):
            on = (f"quadratic={quadratic}; 6 neurons over a {p} × {p} grid: two ReLUs of frequency-{k} waves, a "
                  "product, a linear one, noise, a constant (R² 0)")
            want = _mechanism.neuron_fit_r2(acts, k, quadratic)
            got = call(name, fn, acts, k, quadratic, on=on, names=["acts", "k", "quadratic"])
            if (isinstance(got, torch.Tensor) and got.shape == want.shape and got.is_floating_point()
                    and not torch.isfinite(got[-1]) and torch.isfinite(got[:-1]).all()):
                fail(name, f"the constant neuron (the last one) gets R² = {got[-1].item()}; expected 0.", on,
                     "a neuron with no variance divides 0 by 0: give it R² = 0, e.g. "
                     "torch.where(variance > 0, r2, 0.0).")
            expect_tensor(name, got, want, what="the R² values", on=on, rtol=1e-6, atol=1e-8,
                          mistakes=_r2_mistakes(acts, k, quadratic))
    passed("neuron_fit_r2 fits every neuron at once, with and without the product terms.")


@guarded("output_frequency_shares")
def check_output_frequency_shares(fn: Callable) -> None:
    """fn(W_L_fourier [d_mlp, p], neurons) -> [(p-1)/2] float64: those neurons' share of W_L's squared norm at
    each output frequency (the constant column left out)."""
    __tracebackhide__ = True
    name = "output_frequency_shares"
    g = torch.Generator().manual_seed(7)
    for p, d_mlp, neurons in [(113, 40, [0, 3, 4, 17]), (13, 20, list(range(20))), (7, 9, [5])]:
        fourier = torch.randn(d_mlp, p, generator=g, dtype=torch.float64)
        fourier[:, 0] *= 5  # a large constant component: it must not count
        on = f"a random W_L in the Fourier basis, p = {p}, d_mlp {d_mlp}, neurons {neurons}"
        rows, absolute, all_rows = fourier[neurons].pow(2).sum(0), fourier[neurons].abs().sum(0), fourier.pow(2).sum(0)
        share = lambda s: (s[1::2] + s[2::2]) / (s[1::2] + s[2::2]).sum()  # noqa: E731
        want = share(rows)
        mistakes = [
            ("return shares: divide by the total over the frequencies so they sum to 1.",
             lambda: rows[1::2] + rows[2::2]),
            ("leave the constant component (column 0) out of the total.", lambda: (rows[1::2] + rows[2::2]) / rows.sum()),
            ("use only the listed neurons' rows: W_L_fourier[neurons].", lambda: share(all_rows)),
            ("square the components before adding them up (a norm², not a sum of signed values).",
             lambda: share(fourier[neurons].sum(0))),
            ("square the components (.pow(2)); you added their absolute values.", lambda: share(absolute)),
            ("each frequency has a cos AND a sin column (2k-1 and 2k): add both.", lambda: rows[1::2] / rows[1::2].sum()),
            ("pair columns 2k-1 and 2k (cos k, sin k): yours are off by one (columns 2k-2 and 2k-1).",
             lambda: (rows[0:-1:2] + rows[1::2]) / (rows[0:-1:2] + rows[1::2]).sum()),
        ]
        got = call(name, fn, fourier, torch.tensor(neurons), on=on, names=["W_L_hat", "neurons"])
        expect_tensor(name, got, want, what="the shares", on=on, rtol=1e-7, atol=1e-9, mistakes=mistakes)
    passed("output_frequency_shares gives each output frequency's share of a group of neurons' W_L norm.")


# --- the algorithm ------------------------------------------------------------------------------------------------
class _Traced(torch.Tensor):
    """A tensor that remembers which of the inputs a, b it was computed from, and logs the inputs of cos/sin/exp."""
    trig_inputs: list[frozenset] = []  # reset before each traced call

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tags: set = set()

        def visit(x: object) -> None:
            if isinstance(x, _Traced):
                tags.update(getattr(x, "tags", ()))
            elif isinstance(x, (list, tuple)):
                for item in x:
                    visit(item)

        visit(args), visit(list(kwargs.values()))
        if getattr(func, "__name__", "").rstrip("_") in ("cos", "sin", "exp", "polar", "cis"):
            cls.trig_inputs.append(frozenset(tags))
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        return _tag(out, frozenset(tags))


def _tag(out: object, tags: frozenset) -> object:
    if isinstance(out, (tuple, list)):
        return type(out)(_tag(o, tags) for o in out)
    if isinstance(out, torch.Tensor):
        out = out if isinstance(out, _Traced) else out.as_subclass(_Traced)
        out.tags = tags
    return out


def _uses_identities(fn: Callable, p: int, freqs: list[int], alphas: torch.Tensor) -> bool | None:
    """Whether fn takes cos/sin of a and of b separately (True), of a ± b together (False), or can't tell (None)."""
    a, b = (torch.tensor(v).as_subclass(_Traced) for v in ([1, 5, 2], [3, 0, 6]))
    a.tags, b.tags = frozenset("a"), frozenset("b")
    _Traced.trig_inputs = []
    try:
        call("fourier_multiplication", fn, a, b, p, list(freqs), alphas, on="traced", names=["a", "b", "p", "freqs",
                                                                                               "coeffs"])
    except CheckFailed:  # e.g. .numpy() on the traced tensors: then we cannot tell
        return None
    seen = set(_Traced.trig_inputs)
    if frozenset("ab") in seen:
        return False
    return True if {frozenset("a"), frozenset("b")} <= seen else None


def _algorithm_mistakes(a, b, p, freqs, alpha, op: str) -> Mistakes:
    """Plausible wrong logits for Σ α_k cos(w_k(a ± b - c)), each with the hint that explains it."""
    s, pm = _mechanism.SIGNS[op], "+" if op == "add" else "-"
    c = torch.arange(p, dtype=torch.float64)
    k = torch.tensor(freqs, dtype=torch.float64)

    def waves(phase: Callable, scale: torch.Tensor = alpha, w_scale: float = 2 * np.pi, f=torch.cos) -> torch.Tensor:
        angle = w_scale * k / p * phase(a.double()[:, None, None], b.double()[:, None, None], c[None, :, None])
        return (scale * f(angle)).sum(-1)

    other = "subtraction's" if op == "add" else "addition's"
    return [
        (f"logits(c) = Σ α_k cos(w_k(a {pm} b - c)): yours is cos(w_k(a {pm} b + c)); use cos(x - y) = "
         "cos x cos y + sin x sin y.", lambda: waves(lambda a, b, c: a + s * b + c)),
        (f"that is {other} algorithm, cos(w_k(a {'-' if op == 'add' else '+'} b - c)): check the sign in the "
         f"identities for cos(w(a {pm} b)) and sin(w(a {pm} b)).", lambda: waves(lambda a, b, c: a - s * b - c)),
        ("multiply each frequency's wave by its coefficient α_k.",
         lambda: waves(lambda a, b, c: a + s * b - c, torch.ones_like(alpha))),
        ("the coefficients go with the frequencies in order: α_k with freqs[k] (yours are reversed).",
         lambda: waves(lambda a, b, c: a + s * b - c, alpha.flip(0))),
        ("w_k = 2πk/p: you left out the 2π.", lambda: waves(lambda a, b, c: a + s * b - c, w_scale=1.0)),
        ("w_k = 2πk/p: you used π instead of 2π.", lambda: waves(lambda a, b, c: a + s * b - c, w_scale=np.pi)),
        (f"read out with cos(x - y) = cos x cos y + sin x sin y; you mixed sin and cos, which gives "
         f"sin(w(a {pm} b + c)).", lambda: waves(lambda a, b, c: a + s * b + c, f=torch.sin)),
        (f"the logits are a cosine, peaking at the right answer: yours are sin(w_k(a {pm} b - c)).",
         lambda: waves(lambda a, b, c: a + s * b - c, f=torch.sin)),
        (f"sin(w(a {pm} b)) = sin wa cos wb {pm} cos wa sin wb: check that sign in your sin identity.",
         lambda: _one_sign_flipped(a, b, p, k, alpha, s)),
    ]


def _one_sign_flipped(a, b, p, k, alpha, s) -> torch.Tensor:
    """The algorithm with the sign inside the sin identity flipped (the cos identity right)."""
    w = 2 * np.pi * k / p
    wa, wb = w * a.double()[:, None], w * b.double()[:, None]
    cos_ab = torch.cos(wa) * torch.cos(wb) - s * torch.sin(wa) * torch.sin(wb)
    sin_ab = torch.sin(wa) * torch.cos(wb) - s * torch.cos(wa) * torch.sin(wb)
    wc = w[:, None] * torch.arange(p, dtype=torch.float64)
    return (cos_ab * alpha) @ torch.cos(wc) + (sin_ab * alpha) @ torch.sin(wc)


def check_fourier_algorithm(fn: Callable, op: str, seed: int) -> None:
    """fn(a [n], b [n], p, freqs, coeffs) -> logits [n, p] = Σ_k α_k cos(w_k(a ± b - c)); ± from op (add/subtract)."""
    __tracebackhide__ = True
    name, pm = ("fourier_multiplication", "+") if op == "add" else ("fourier_subtraction", "-")
    g = torch.Generator().manual_seed(seed)
    cases = [(113, [14, 35, 41], [1.0, 2.0, 0.5], 50), (7, [1, 3], [1.0, 1.5], 49), (23, [5], [2.5], 10)]
    for p, freqs, coeffs, n in cases:
        a, b = torch.randint(p, (n,), generator=g), torch.randint(p, (n,), generator=g)
        on = f"p = {p}, freqs {freqs}, coeffs {coeffs}, {n} random pairs (a, b)"
        alpha = torch.tensor(coeffs, dtype=torch.float64)
        want = _mechanism.fourier_multiplication(a, b, p, freqs, alpha, op)
        got = call(name, fn, a, b, p, list(freqs), alpha, on=on, names=["a", "b", "p", "freqs", "coeffs"])
        expect_tensor(name, got, want, what="the logits", on=on, rtol=1e-7, atol=1e-9, dtype="float",
                      mistakes=_algorithm_mistakes(a, b, p, freqs, alpha, op))
    identities = _uses_identities(fn, 7, [1, 3], torch.tensor([1.0, 1.5], dtype=torch.float64))
    if identities is False:
        fail(name, f"the logits are right, but you took cos/sin of w(a {pm} b - c) directly.",
             "p = 7, freqs [1, 3], a = [1, 5, 2], b = [3, 0, 6]",
             f"build cos(w(a {pm} b)) and sin(w(a {pm} b)) from cos(w a), sin(w a), cos(w b), sin(w b) with the "
             "identities, the way the model does: that is the point of the exercise.")
    how = ("from cos and sin of w_k a and w_k b, by the trig identities" if identities
           else "on every input (the check could not see whether you used the identities)")
    passed(f"{name} computes Σ_k α_k cos(w_k(a {pm} b - c)) {how}.")


@guarded("fourier_multiplication")
def check_fourier_multiplication(fn: Callable) -> None:
    """fn(a [n], b [n], p, freqs, coeffs) -> logits [n, p] = Σ_k α_k cos(w_k(a + b - c)) for c = 0 … p-1."""
    __tracebackhide__ = True
    check_fourier_algorithm(fn, "add", seed=8)
