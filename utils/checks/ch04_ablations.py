"""Checks for chapter 4 (ablations): the key directions of the logits, removing or keeping them, projecting neurons
onto their frequency, and ablating neurons through a hook."""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch

from utils import ablation as _ablation
from utils.mechanism import NEURON_HOOK as _NEURON_HOOK, model_logits as _mechanism_model_logits
from utils.mechanism import neuron_activations as _neuron_activations
from utils.checks.compare import Mistakes, expect_tensor
from utils.checks.harness import call, call_given, fail, guarded, passed
from utils.checks.inputs import ch4_logit_cases, grid_ab, random_model, raw_waves
from utils.data import make_dataset
from utils.fourier import cos_sin_rows, fourier_basis

__all__ = ["check_sum_directions", "check_remove_frequencies", "check_keep_frequencies",
           "check_project_onto_frequency", "check_ablate_neurons"]


def _direction_mistakes(p: int, freqs: Sequence[int], want: torch.Tensor) -> Mistakes:
    """Plausible wrong directions, each with the hint that explains it."""
    a, b = grid_ab(p)
    unit = np.sqrt(2) / p
    return [
        ("each row must have norm 1: divide by the norm of cos(w_k(a+b)) over the p² inputs, which is p/√2.",
         lambda: torch.stack(raw_waves(p, freqs, a + b))),
        ("each row must have norm 1; the norm of cos(w_k(a+b)) over the p² inputs is p/√2, not p.",
         lambda: torch.stack(raw_waves(p, freqs, a + b)) / p),
        ("the directions are functions of a + b; yours use a − b.", lambda: torch.stack(raw_waves(p, freqs, a - b)) * unit),
        ("w_k = 2πk/p: you left out the 2π.", lambda: torch.stack(raw_waves(p, freqs, a + b, 1.0)) * unit),
        ("w_k = 2πk/p: you used π instead of 2π.", lambda: torch.stack(raw_waves(p, freqs, a + b, np.pi)) * unit),
        ("the rows go cos k₁, sin k₁, cos k₂, sin k₂, …; yours list all the cosines, then all the sines.",
         lambda: torch.cat([want[0::2], want[1::2]])),
        ("each frequency's rows are cos first, then sin; yours have sin first.",
         lambda: want.reshape(-1, 2, p * p).flip(1).reshape(-1, p * p)),
    ]


@guarded("sum_directions")
def check_sum_directions(fn: Callable) -> None:
    """fn(p, freqs) -> [2·len(freqs), p²] float64: unit rows cos(w_k(a+b)), sin(w_k(a+b)) over the inputs a·p + b."""
    __tracebackhide__ = True
    name = "sum_directions"
    for p, freqs in [(113, [14, 35, 41, 42, 52]), (7, [1, 2, 3]), (13, [random.Random(2).randint(1, 6)])]:
        on = f"p = {p}, freqs = {freqs}"
        want = _ablation.sum_directions(p, freqs)
        got = call(name, fn, p, list(freqs), on=on, names=["p", "freqs"])
        if isinstance(got, torch.Tensor) and got.ndim == 2 and got.shape == (len(freqs), p * p) and len(freqs) > 1:
            fail(name, f"returned one row per frequency (shape {tuple(got.shape)}); expected two per frequency.", on,
                 "each frequency k gives two directions, cos(w_k(a+b)) and sin(w_k(a+b)): stack both.")
        expect_tensor(name, got, want, what="the directions", on=on, rtol=1e-7, atol=1e-10,
                      mistakes=_direction_mistakes(p, freqs, want))
    passed("sum_directions gives orthonormal float64 cos/sin(w_k(a+b)) rows for p = 113, 7 and 13.")


def _component_with(logits: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The part of logits [p², p] along the given rows [f, p²] (treated as if orthonormal)."""
    return directions.T @ (directions @ logits)


def _check_frequency_ablation(fn: Callable, name: str, reference: Callable, what: str, praise: str,
                              mistakes: Callable[[torch.Tensor, list[int], torch.Tensor], Mistakes]) -> None:
    """fn(logits, freqs) on chapter 4's cases against reference; mistakes(logits, freqs, want) lists the plausible
    wrong answers."""
    __tracebackhide__ = True
    for on, logits, freqs in ch4_logit_cases():
        want = reference(logits, freqs)
        got = call(name, fn, logits, list(freqs), on=on, names=["logits", "freqs"])
        expect_tensor(name, got, want, what=what, on=on, rtol=1e-7, atol=1e-9, mistakes=mistakes(logits, freqs, want))
    passed(praise)


def _parts(logits: torch.Tensor, freqs: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(component along the directions, along raw cos/sin rows, along the cos rows only) of the logits."""
    p = logits.shape[-1]
    a, b = grid_ab(p)
    return (_ablation.frequency_component(logits, freqs),
            _component_with(logits, torch.stack(raw_waves(p, freqs, a + b))),
            _component_with(logits, _ablation.sum_directions(p, freqs)[0::2]))


@guarded("remove_frequencies")
def check_remove_frequencies(fn: Callable) -> None:
    """fn(logits [p², p], freqs) -> the logits minus their components along cos/sin(w_k(a+b)), k in freqs."""
    __tracebackhide__ = True

    def mistakes(logits, freqs, want) -> Mistakes:
        component, raw, cos_only = _parts(logits, freqs)
        return [
            ("that is the part ALONG the directions; removing it means subtracting it: logits - component.",
             lambda: component),
            ("you also removed each answer's mean over the inputs (the constant); remove only the cos/sin directions.",
             lambda: want - logits.mean(0, keepdim=True)),
            ("the projection needs unit directions: with raw cos/sin rows the component is p²/2 times too big.",
             lambda: logits - raw),
            ("each frequency has two directions, cos(w_k(a+b)) and sin(w_k(a+b)); you removed only the cosine.",
             lambda: logits - cos_only),
        ]
    _check_frequency_ablation(fn, "remove_frequencies", _ablation.remove_frequencies, "the ablated logits",
                              "remove_frequencies removes exactly the cos/sin(w_k(a+b)) components and keeps "
                              "everything else.", mistakes)


@guarded("keep_frequencies")
def check_keep_frequencies(fn: Callable) -> None:
    """fn(logits [p², p], freqs) -> each answer's mean over the inputs plus the cos/sin(w_k(a+b)) components."""
    __tracebackhide__ = True

    def mistakes(logits, freqs, want) -> Mistakes:
        component, raw, _ = _parts(logits, freqs)
        return [
            ("keep the constant too: add each answer's mean over the inputs, logits.mean(0) (a per-answer bias).",
             lambda: component),
            ("the constant is each answer's own mean over the p² inputs, logits.mean(0, keepdim=True) [1, p], not the "
             "mean of every logit.", lambda: component + logits.mean()),
            ("the constant is the mean over the inputs (axis 0), one per answer; you averaged over the answers.",
             lambda: component + logits.mean(1, keepdim=True)),
            ("that removes the directions; keep only them (and the constant).",
             lambda: _ablation.remove_frequencies(logits, freqs)),
            ("the projection needs unit directions: with raw cos/sin rows the component is p²/2 times too big.",
             lambda: logits.mean(0, keepdim=True) + raw),
        ]
    _check_frequency_ablation(fn, "keep_frequencies", _ablation.keep_frequencies, "the restricted logits",
                              "keep_frequencies keeps each answer's constant and the cos/sin(w_k(a+b)) components, "
                              "nothing else.", mistakes)


def _masked(acts: torch.Tensor, freqs: torch.Tensor, keep: Callable[[int, int, int], bool],
            forward: str = "fa,gb,abn->fgn", back: str = "fa,gb,fgn->abn") -> torch.Tensor:
    """Each neuron [p, p, n] through the 2-D transform `forward`, masked to the components (f, g) with
    keep(f, g, its k), and back through `back` (einsum patterns over the basis B [component, x])."""
    p = acts.shape[0]
    B = fourier_basis(p)
    coeffs = torch.einsum(forward, B, B, acts.double())
    mask = torch.tensor([[[float(keep(f, g, k)) for k in freqs.tolist()] for g in range(p)] for f in range(p)],
                        dtype=torch.float64)
    return torch.einsum(back, B, B, coeffs * mask)


def _own(f: int, k: int) -> bool:
    """Whether component f of the basis is the constant or belongs to frequency k."""
    return f == 0 or f in cos_sin_rows(k)


def _projection_mistakes(acts: torch.Tensor, freqs: torch.Tensor) -> Mistakes:
    """Plausible wrong projections, each with the hint that explains it."""
    both = lambda f, g, k: _own(f, k) and _own(g, k)  # noqa: E731  (the right mask)
    return [
        ("keep the constant term too (component [0, 0]: the neuron's mean), as the ReLU's output has one.",
         lambda: _masked(acts, freqs, lambda f, g, k: both(f, g, k) and (f, g) != (0, 0))),
        ("keep the products cos/sin(w_k a)·cos/sin(w_k b) too: the components with both indices at frequency k.",
         lambda: _masked(acts, freqs, lambda f, g, k: both(f, g, k) and (f == 0 or g == 0))),
        ("keep the terms of a alone and b alone too (components [k-rows, 0] and [0, k-rows]), and the constant.",
         lambda: _masked(acts, freqs, lambda f, g, k: both(f, g, k) and (f > 0) == (g > 0))),
        ("project onto frequency k in BOTH a and b; you kept every b-component for the a-terms of frequency k.",
         lambda: _masked(acts, freqs, lambda f, g, k: _own(f, k))),
        ("the 2-D coefficients are C = B A Bᵀ (B's rows are the basis vectors) and Bᵀ C B goes back; you used Bᵀ A B "
         "(and B C Bᵀ).", lambda: _masked(acts, freqs, both, "af,bg,abn->fgn", "af,bg,fgn->abn")),
        ("going back from the coefficients is Bᵀ C B (the transpose of the forward step), not B C Bᵀ.",
         lambda: _masked(acts, freqs, both, back="af,bg,fgn->abn")),
    ]


@guarded("project_onto_frequency")
def check_project_onto_frequency(fn: Callable) -> None:
    """fn(acts [p, p, n], freqs [n]) -> each neuron projected onto {1, cos/sin(w_k a)} × {1, cos/sin(w_k b)}."""
    __tracebackhide__ = True
    name = "project_onto_frequency"
    g = torch.Generator().manual_seed(3)
    for p, n in ((11, 4), (7, 3), (23, 5)):
        freqs = torch.randint(1, p // 2 + 1, (n,), generator=g)
        acts = torch.relu(torch.randn(p, p, n, generator=g, dtype=torch.float64) + 0.5)
        on = f"p = {p}, {n} neurons with random activations (float64), freqs = {freqs.tolist()}"
        want = _ablation.project_onto_frequency(acts, freqs)
        got = call(name, fn, acts, freqs, on=on, names=["acts", "freqs"])
        expect_tensor(name, got, want, what="the projected activations", on=on, rtol=1e-7, atol=1e-9,
                      mistakes=_projection_mistakes(acts, freqs))
    passed("project_onto_frequency keeps each neuron's constant, linear and product terms of its own frequency.")


def _neuron_mistakes(model, neurons: list[int], acts: torch.Tensor, all_positions: torch.Tensor) -> Mistakes:
    """Plausible wrong ablated logits, each with the hint that explains it."""
    index = torch.tensor(neurons)

    def replaced(values: torch.Tensor) -> torch.Tensor:
        new = acts.clone()
        new[..., index] = values
        return _ablation.run_with_neurons(model, new)

    mean = acts[..., index].mean((0, 1))
    return [
        ("how='mean' replaces each neuron by its MEAN over the inputs; you set it to zero.",
         lambda: replaced(torch.zeros_like(mean))),
        ("how='zero' sets the neurons to zero; you used their mean.", lambda: replaced(mean)),
        ("take each neuron's mean over the inputs at the LAST position only (acts[:, -1]); you averaged over every "
         "position.", lambda: replaced(all_positions[..., index].mean((0, 1)))),
        ("average each neuron over the inputs (the batch axis), one mean per neuron; you averaged over the neurons.",
         lambda: replaced(acts[..., index].mean(-1, keepdim=True).expand_as(acts[..., index]))),
    ]


@guarded("ablate_neurons")
def check_ablate_neurons(fn: Callable) -> None:
    """fn(model, neurons, how) -> logits [p², p] with those neurons set to 0 ("zero") or their mean ("mean")."""
    __tracebackhide__ = True
    name, model = "ablate_neurons", random_model(11, 4, d_mlp=64, d_model=32, n_heads=4)
    tokens, _ = make_dataset(model.cfg.d_vocab_out)
    clean, acts = _mechanism_model_logits(model), _neuron_activations(model)  # acts: [p, p, d_mlp]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=_NEURON_HOOK)
    all_positions = cache[_NEURON_HOOK]  # [p², 3, d_mlp]
    for neurons, how in [([0, 3, 7], "mean"), ([0, 3, 7], "zero"), ([12], "mean"), (list(range(64)), "mean"),
                         (list(range(64)), "zero")]:
        on = f"a small random model (p = 11, 64 neurons), neurons {neurons if len(neurons) < 5 else 'all 64'}, how = {how!r}"
        want = _ablation.ablate_neurons(model, neurons, how)
        got, (given, *_) = call_given(name, fn, model, torch.tensor(neurons), how, on=on,
                                      names=["model", "neurons", "how"])
        if not torch.allclose(_mechanism_model_logits(given), clean):
            fail(name, "left a hook on the model: running it afterwards no longer gives its own logits.", on,
                 "use model.run_with_hooks(tokens, fwd_hooks=[(name, hook)]), which removes the hook when it returns.")
        if isinstance(got, torch.Tensor) and got.ndim == 3 and got.shape[1] == 3:
            fail(name, f"returned logits at every position (shape {tuple(got.shape)}).", on,
                 "the answer is read at the last position: return logits[:, -1].")
        expect_tensor(name, got, want, what="the logits", on=on, rtol=1e-4, atol=1e-5, dtype="float",
                      mistakes=_neuron_mistakes(model, neurons, acts, all_positions))
    passed("ablate_neurons zero- and mean-ablates neurons through a hook, and leaves the model as it found it.")
