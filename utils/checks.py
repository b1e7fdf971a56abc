"""Exercise checks: `check_<exercise>(fn)` runs a learner's function on fixed, seeded-random and edge inputs,
compares it with the reference in utils, and either prints one line of praise or raises `CheckFailed` with a
plain-English message: which input, expected vs got, and a hint about the likely mistake.

Adding a check for a new exercise: call the learner's code through `_call`, compare tensors with `_expect_tensor`
(give it the plausible wrong answers as `mistakes`, so a match names the mistake), and finish with `_passed`.
Every helper sets `__tracebackhide__` (pytest, IPython) and `CheckFailed` renders itself in Jupyter without the
checker's frames, so the learner sees their own cell and the message, nothing else.
"""
from __future__ import annotations

import copy
import numbers
import random
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from utils import ablation as _ablation, fourier as _fourier, mechanism as _mechanism, outcomes as _outcomes
from utils import progress as _progress
from utils.data import make_dataset, train_test_split
from utils.fourier import cos_sin_rows as _cos_sin_rows, fourier_basis as _fourier_basis
from utils.model import HookedTransformerConfig, make_model, model_config
from utils.train import loss_fn as reference_loss_fn

__all__ = ["CheckFailed", "check_make_dataset", "check_model_config", "check_loss_fn", "check_train_step",
           # chapters 4–5
           "check_sum_directions", "check_remove_frequencies", "check_keep_frequencies",
           "check_project_onto_frequency", "check_ablate_neurons", "check_gini", "check_embedding_norms",
           "check_restricted_and_excluded",
           # chapters 2–3
           "check_fourier_basis", "check_fft1d", "check_fft2d", "check_embedding_frequency_norms",
           "check_key_frequencies", "check_cosine_variance_explained", "check_W_L_fourier", "check_neuron_fit_r2",
           "check_output_frequency_shares", "check_fourier_multiplication",
           # chapter 6
           "check_outcome", "check_difference_waves", "check_fourier_subtraction"]

Mistakes = Sequence[tuple[str, Callable[[], object]]]  # (hint, thunk returning the wrong answer it explains)


class CheckFailed(AssertionError):
    """A learner's function disagrees with the reference; the message says on which input and how."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback: the message alone, in red."""
        return [f"\x1b[1;31mCheckFailed\x1b[0m: {self}"]


# --- shared machinery ------------------------------------------------------------------------------
def _fail(name: str, problem: str, on: str | None = None, hint: str | None = None) -> None:
    """Raise CheckFailed: '<name>: <problem>', then the input and a hint on their own lines."""
    __tracebackhide__ = True
    lines = [f"{name}: {problem}"]
    if on:
        lines.append(f"  input: {on}")
    if hint:
        lines.append(f"  hint:  {hint}")
    raise CheckFailed("\n".join(lines)) from None


def _passed(message: str) -> None:
    """The one line a learner sees when a check passes."""
    print(f"✅ {message}")


def _describe(x: object) -> str:
    """A short description of a value: type, and shape/dtype for arrays."""
    if x is None:
        return "None"
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}, dtype {x.dtype}"
    if isinstance(x, np.ndarray):
        return f"a numpy array of shape {x.shape}, dtype {x.dtype}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)} item(s)"
    return f"a {type(x).__name__} ({x!r:.60})" if isinstance(x, (numbers.Number, str)) else f"a {type(x).__name__}"


def _where_in_learner_code(err: BaseException) -> str:
    """' (line N: `code`)' for the deepest traceback frame outside utils/ and site-packages, or ''."""
    here = Path(__file__).resolve().parent
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "site-packages" not in f.filename and Path(f.filename).resolve().parent != here]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at line {frame.lineno} of your code: `{(frame.line or '').strip()}`)"


def _call(name: str, fn: Callable, *args, on: str) -> object:
    """fn(*args), turning an exception raised by the learner's code into a CheckFailed that says where."""
    __tracebackhide__ = True
    if not callable(fn):
        _fail(name, f"expected a function, got {_describe(fn)}.",
              hint=f"pass the function itself, e.g. check_{name}({name}), without calling it.")
    try:
        return fn(*args)
    except NotImplementedError:
        _fail(name, "raised NotImplementedError: the exercise is not filled in yet.", on,
              "replace the `raise NotImplementedError` line with your code, run that cell, then this one.")
    except Exception as err:  # the learner's bug: report it as a failed check, naming the line
        message = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        where = _where_in_learner_code(err)
        _fail(name, f"your function raised {type(err).__name__}: {message}{where}.", on,
              f"{'fix that line' if where else 'read the error message'}; printing the shapes and dtypes of "
              "the tensors involved often shows the problem.")


def _none_hint(got: object) -> str | None:
    return "did you forget the `return` statement at the end of your function?" if got is None else None


def _shape_hint(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    """Name the likely cause of a shape mismatch: transposed, an extra/missing size-1 axis, off by one."""
    if len(got) == len(want) and sorted(got) == sorted(want):
        return "the axes look swapped (transposed): check the order of your dimensions."
    if tuple(s for s in got if s != 1) == tuple(s for s in want if s != 1):
        return "an extra or missing axis of size 1: use .squeeze(...) or [:, None] as needed."
    if len(got) == len(want) and sum(g != w for g, w in zip(got, want)) == 1:
        g, w = next((g, w) for g, w in zip(got, want) if g != w)
        if abs(g - w) == 1:
            return f"off by one along an axis ({g} instead of {w}): check a range's end or a slice."
    return f"expected {len(want)} axes of sizes {tuple(want)}."


def _first_difference(got: torch.Tensor, want: torch.Tensor, close: torch.Tensor) -> str:
    """'at index (i, j): expected x, got y' for the first element that is not close."""
    if not close.ndim:
        return f"expected {want.item():.6g}, got {got.item():.6g}"
    index = tuple(int(i) for i in torch.nonzero(~close)[0])
    return f"at index {index}: expected {want[index].item():.6g}, got {got[index].item():.6g}"


def _matches(got: torch.Tensor, wrong: object, rtol: float, atol: float) -> bool:
    """Whether got equals a known wrong answer (same shape, values close)."""
    if not isinstance(wrong, torch.Tensor) or wrong.shape != got.shape:
        return False
    return bool(torch.isclose(got.detach().double(), wrong.detach().double(), rtol=rtol, atol=atol).all())


def _expect_tensor(name: str, got: object, want: torch.Tensor, *, what: str, on: str, rtol: float = 0.0,
                   atol: float = 0.0, exact_dtype: bool = True, mistakes: Mistakes = ()) -> None:
    """Fail unless got is a tensor like want: type, shape, dtype, finite values, then the values themselves."""
    __tracebackhide__ = True
    if not isinstance(got, torch.Tensor):
        hint = _none_hint(got) or ("convert it with torch.from_numpy(...)." if isinstance(got, np.ndarray)
                                   else f"{what} should be a torch tensor.")
        _fail(name, f"{what} should be {_describe(want)}; got {_describe(got)}.", on, hint)
    if got.shape != want.shape:
        _fail(name, f"{what} has shape {tuple(got.shape)}; expected {tuple(want.shape)}.", on,
              _shape_hint(tuple(got.shape), tuple(want.shape)))
    if exact_dtype and got.dtype != want.dtype:
        hint = ("tokens and labels are indices: use an integer dtype (torch.arange gives int64; avoid float division)."
                if not want.is_floating_point() else f"convert with .to({want.dtype}).")
        _fail(name, f"{what} has dtype {got.dtype}; expected {want.dtype}.", on, hint)
    if not exact_dtype and got.is_floating_point() != want.is_floating_point():
        _fail(name, f"{what} has dtype {got.dtype}; expected a {'floating' if want.is_floating_point() else 'integer'}"
              " dtype.", on)
    if got.is_floating_point() and not torch.isfinite(got).all():
        _fail(name, f"{what} {'is' if got.ndim == 0 else 'contains'} {'NaN' if torch.isnan(got).any() else 'inf'}.", on,
              "an exp() overflowed or a log() saw 0: use torch.log_softmax, which subtracts the maximum first.")
    close = torch.isclose(got.detach().double().cpu(), want.detach().double().cpu(), rtol=rtol, atol=atol)
    if close.all():
        return
    for hint, wrong in mistakes:
        if _matches(got, wrong(), rtol, atol):
            _fail(name, f"{what} is wrong ({_first_difference(got, want, close)}).", on, hint)
    sorted_same = (got.ndim and not got.is_floating_point()
                   and torch.equal(got.flatten().sort().values, want.flatten().sort().values))
    _fail(name, f"{what} is wrong: {int((~close).sum())} of {close.numel()} values differ, the first "
          f"{_first_difference(got, want, close)}.", on,
          "the right values in the wrong order: check how you lay them out." if sorted_same else None)


# --- chapter 1: training ---------------------------------------------------------------------------
def check_make_dataset(fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]]) -> None:
    """fn(p) -> (tokens [p², 3] int64, row a·p + b = (a, b, p); labels [p²] int64 = (a + b) mod p)."""
    __tracebackhide__ = True
    name = "make_dataset"
    moduli = [113, 3, 10, random.Random(0).choice([5, 11, 17, 23, 31, 53])]  # the paper's, the smallest, a non-prime
    for p in moduli:
        on = f"p = {p}"
        got = _call(name, fn, p, on=on)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            _fail(name, f"should return a pair (tokens, labels); got {_describe(got)}.", on,
                  _none_hint(got) or "end with `return tokens, labels`.")
        tokens, labels = got
        want_tokens, want_labels = make_dataset(p)
        a, b = want_tokens[:, 0], want_tokens[:, 1]
        equals = want_tokens[:, 2:]
        token_mistakes = [
            ("row a·p + b must hold (a, b); yours holds (b, a): a changes slowest "
             "(repeat_interleave), b fastest (repeat).", lambda: torch.stack([b, a, a * 0 + p], 1)),
            ("the last token is `=`, which is token p (one past the numbers 0…p-1), not p - 1.",
             lambda: torch.cat([want_tokens[:, :2], equals - 1], 1)),
            ("the last token is `=`, which is token p (one past the numbers 0…p-1), not 0.",
             lambda: torch.cat([want_tokens[:, :2], equals * 0], 1)),
        ]
        _expect_tensor(name, tokens, want_tokens, what="tokens (the first value returned)", on=on,
                       mistakes=token_mistakes)
        label_mistakes = [("labels are (a + b) mod p: you forgot the `% p`.", lambda: a + b),
                          ("labels are (a + b) mod p; yours are (a − b) mod p.", lambda: (a - b) % p),
                          ("labels are (a + b) mod p; yours are (a × b) mod p.", lambda: (a * b) % p)]
        _expect_tensor(name, labels, want_labels, what="labels (the second value returned)", on=on,
                       mistakes=label_mistakes)
    _passed(f"make_dataset matches utils.data for p = {', '.join(map(str, moduli))}: every (a, b, =) in order, "
            "labelled (a + b) mod p.")


def check_model_config(fn: Callable[[int], HookedTransformerConfig]) -> None:
    """fn(p) -> the paper's HookedTransformerConfig (utils.model.model_config(p))."""
    __tracebackhide__ = True
    name = "model_config"
    hints = {
        "n_layers": "the paper's model has a single layer.",
        "n_ctx": "each input is three tokens: a, b and `=`.",
        "d_vocab": "the input vocabulary is the numbers 0…p-1 plus the `=` token: p + 1.",
        "d_vocab_out": "the answers are 0…p-1 (`=` is never an answer): p.",
        "d_model": "the residual stream has width 128.",
        "n_heads": "4 attention heads.",
        "d_head": "each head has d_model / n_heads = 32 dimensions.",
        "d_mlp": "the MLP has 512 neurons (4 × d_model).",
        "act_fn": "the MLP's activation is a ReLU: act_fn='relu'.",
        "normalization_type": "the paper's model has no LayerNorm: normalization_type=None.",
        "attn_only": "the block has an MLP: attn_only=False.",
        "positional_embedding_type": "learned absolute positions: leave positional_embedding_type at 'standard'.",
    }
    moduli = [113, 7, random.Random(1).choice([13, 29, 59, 97])]
    for p in moduli:
        on = f"p = {p}"
        got = _call(name, fn, p, on=on)
        if isinstance(got, dict):
            _fail(name, "returned a dict; expected a HookedTransformerConfig.", on,
                  "build it with HookedTransformerConfig(**your_dict) or pass the values as keyword arguments.")
        if not isinstance(got, HookedTransformerConfig):
            _fail(name, f"expected a HookedTransformerConfig; got {_describe(got)}.", on,
                  _none_hint(got) or "return HookedTransformerConfig(...).")
        want = model_config(p)
        wrong = [f"{k} = {getattr(got, k)!r} (expected {getattr(want, k)!r}): {hint}"
                 for k, hint in hints.items() if getattr(got, k) != getattr(want, k)]
        if wrong:
            _fail(name, f"{len(wrong)} setting(s) differ from the paper's model:\n    " + "\n    ".join(wrong), on)
    _passed(f"model_config gives the paper's architecture for p = {', '.join(map(str, moduli))}: 1 layer, "
            "4 heads of 32, MLP 512 with ReLU, no LayerNorm, vocabulary p + 1 in and p out.")


def _logit_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(description, logits [batch, 3, d_vocab_out], labels [batch]) for the loss checks."""
    g = torch.Generator().manual_seed(0)
    small = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, -1.0], [2.0, 0.5, 0.0]],
                          [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 4.0]]])
    cases = [("2 examples, 3 classes, hand-written logits", small, torch.tensor([2, 0]))]
    for batch, classes, scale in [(16, 113, 3.0), (1, 7, 1.0)]:
        cases.append((f"{batch} example(s), {classes} classes, random logits (scale {scale})",
                      scale * torch.randn(batch, 3, classes, generator=g), torch.randint(classes, (batch,), generator=g)))
    labels = torch.randint(113, (32,), generator=g)
    confident = torch.randn(32, 3, 113, generator=g)
    confident[torch.arange(32), -1, labels] += 20.0  # the right answer wins by ~20: loss ≈ 113·e⁻²⁰, as late in training
    loss = reference_loss_fn(confident, labels).item()
    cases.append((f"32 examples, 113 classes, very confident logits (true loss {loss:.2g}, as late in training)",
                  confident, labels))
    huge = 1000.0 * torch.randn(8, 3, 113, generator=g)  # exp() of these overflows even in float64
    cases.append(("8 examples, 113 classes, huge logits (scale 1000: a naive exp() overflows)", huge,
                  torch.randint(113, (8,), generator=g)))
    return cases


_FLOAT64_HINT = ("late in training the loss is ~1e-7, below what float32 resolves: cast the logits to float64 "
                "(logits.to(torch.float64)) BEFORE log_softmax.")


def check_loss_fn(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """fn(logits [batch, pos, d_vocab_out], labels [batch]) -> mean cross-entropy at the last position, as a 0-d tensor."""
    __tracebackhide__ = True
    name = "loss_fn"
    cases = _logit_cases()
    for on, logits, labels in cases:
        logits = logits.clone().requires_grad_(True)
        got = _call(name, fn, logits, labels, on=on)
        want = reference_loss_fn(logits, labels)
        if isinstance(got, numbers.Number):
            _fail(name, f"returned a Python number ({got!r:.10}); expected a 0-d tensor.", on,
                  "return the tensor itself (no .item()), so that loss.backward() can compute gradients.")
        if isinstance(got, torch.Tensor) and got.numel() == len(labels) and got.numel() > 1:
            _fail(name, f"returned one loss per example (shape {tuple(got.shape)}); expected their mean.", on,
                  "finish with .mean() over the batch.")
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.ndim:
            got = got.reshape(())
        last = logits[:, -1].detach().double()
        log_probs = last.log_softmax(-1)
        mistakes = [
            ("only the last position predicts the answer: use logits[:, -1] (you averaged over every position).",
             lambda: torch.stack([reference_loss_fn(logits[:, i], labels) for i in range(3)]).mean()),
            ("the answer is read at the LAST position (the `=` token): logits[:, -1], not logits[:, 0].",
             lambda: reference_loss_fn(logits[:, 0], labels)),
            ("the answer is read at the last position: logits[:, -1] (you used the one before it).",
             lambda: reference_loss_fn(logits[:, -2], labels)),
            ("take the mean over the batch, not the sum.", lambda: -log_probs.gather(-1, labels[:, None]).sum()),
            ("cross-entropy is MINUS the mean log-probability of the right answer: check the sign.",
             lambda: log_probs.gather(-1, labels[:, None]).mean()),
            ("use log-probabilities (log_softmax), not probabilities (softmax).",
             lambda: -log_probs.exp().gather(-1, labels[:, None]).mean()),
            (_FLOAT64_HINT, lambda: torch.nn.functional.cross_entropy(logits[:, -1].detach().float(), labels)),
        ]
        if (isinstance(got, torch.Tensor) and got.shape == () and want < 1e-5 and torch.isfinite(got)
                and abs(got.item() - want.item()) < 1e-5 and not np.isclose(got.item(), want.item(), rtol=1e-5)):
            _fail(name, f"the loss is {got.item():.3g}; expected {want.item():.3g}.", on, _FLOAT64_HINT)
        _expect_tensor(name, got, want, what="the loss", on=on, rtol=1e-5, atol=1e-12, exact_dtype=False,
                       mistakes=mistakes)
        if not got.requires_grad:
            _fail(name, "the loss is detached from the logits: loss.backward() would not reach the model.", on,
                  "compute it with torch operations on `logits` (no .item(), .detach(), .numpy() or torch.tensor(...)).")
    _passed(f"loss_fn matches the reference on all {len(cases)} inputs, including a loss of "
            f"{reference_loss_fn(*cases[-2][1:]).item():.1g} that float32 cannot resolve and logits that overflow exp().")


def _reference_train_step(model, optimizer, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """One full-batch AdamW step on (tokens, labels); returns the loss before the step."""
    optimizer.zero_grad()
    loss = reference_loss_fn(model(tokens), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def _tiny_setup(seed: int = 0):
    """A small model (p = 11), its AdamW optimiser and its training pairs; the learner's RNG state is left alone."""
    p = 11
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make_model(model_config(p=p, d_model=32, n_heads=4, d_mlp=64, seed=None))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1.0, betas=(0.9, 0.98))
    tokens, labels = make_dataset(p)
    train_idx, _ = train_test_split(p, 0.3, seed)
    return model, optimizer, tokens[train_idx], labels[train_idx]


def _params_after(step: Callable, n_steps: int) -> dict[str, torch.Tensor]:
    """The tiny model's parameters after n_steps calls of a (possibly wrong) step function."""
    model, optimizer, tokens, labels = _tiny_setup()
    for _ in range(n_steps):
        step(model, optimizer, tokens, labels)
    return dict(model.named_parameters())


def _same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def _no_zero_grad(model, optimizer, tokens, labels) -> float:
    loss = reference_loss_fn(model(tokens), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def _all_positions(model, optimizer, tokens, labels) -> float:
    optimizer.zero_grad()
    logits = model(tokens)
    loss = torch.stack([reference_loss_fn(logits[:, i], labels) for i in range(logits.shape[1])]).mean()
    loss.backward()
    optimizer.step()
    return loss.item()


_STEP_MISTAKES = [  # (hint, a step function that makes that mistake)
    ("gradients pile up from one step to the next: call optimizer.zero_grad() at the start of every step.",
     _no_zero_grad),
    ("the loss averages every position: it must use only the last one (does check_loss_fn(loss_fn) pass?).",
     _all_positions),
]


def check_train_step(fn: Callable) -> None:
    """fn(model, optimizer, tokens, labels) -> float: zero the gradients, full-batch loss, backward, optimiser step."""
    __tracebackhide__ = True
    name = "train_step"
    n_steps = 3
    model, optimizer, tokens, labels = _tiny_setup()
    reference = copy.deepcopy(model)
    ref_optimizer = torch.optim.AdamW(reference.parameters(), **{k: optimizer.defaults[k] for k in
                                                                  ("lr", "weight_decay", "betas")})
    for step in range(1, n_steps + 1):
        on = (f"a small model (p = 11, d_model 32) and its AdamW optimiser, {len(labels)} training pairs; "
              f"step {step} of {n_steps}")
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        got = _call(name, fn, model, optimizer, tokens, labels, on=on)
        want = _reference_train_step(reference, ref_optimizer, tokens, labels)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            _fail(name, f"returned a tensor{' that still holds the autograd graph' if got.requires_grad else ''}; "
                  "expected a Python float.", on, "return loss.item(): a float does not keep the graph alive.")
        if not isinstance(got, numbers.Real):
            _fail(name, f"should return the loss as a float; got {_describe(got)}.", on,
                  _none_hint(got) or "return loss.item().")
        params, want_params = dict(model.named_parameters()), dict(reference.named_parameters())
        if not _same_params(params, want_params):
            if all(torch.equal(v, before[k]) for k, v in params.items()):
                hint = "parameters did not change: call optimizer.step() after loss.backward()."
            else:
                hint = next((text for text, wrong_step in _STEP_MISTAKES
                             if _same_params(params, _params_after(wrong_step, step))),
                            "one step is: optimizer.zero_grad(); loss = loss_fn(model(tokens), labels); "
                            "loss.backward(); optimizer.step(); return loss.item().")
            param_name = next(k for k in params if not _same_params({k: params[k]}, {k: want_params[k]}))
            diff = (params[param_name] - want_params[param_name]).abs().max().item()
            _fail(name, f"after step {step} the parameter {param_name} differs from the reference step's "
                  f"(largest difference {diff:.2g}).", on, hint)
        if not np.isclose(float(got), want, rtol=1e-5, atol=1e-9):
            after = reference_loss_fn(reference(tokens), labels).item()
            hint = ("that is the loss AFTER the step: return the loss you called .backward() on."
                    if np.isclose(float(got), after, rtol=1e-5) else "return the full-batch loss of this step.")
            _fail(name, f"returned {float(got):.6g}; expected the loss {want:.6g}.", on, hint)
    _passed(f"train_step matches a reference AdamW step for {n_steps} steps in a row: same loss, same weights.")


# --- chapters 4–5: ablations and progress measures ----------------------------------------------------------


def _grid_ab(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """a and b over the inputs a·p + b: two [p²] float64 tensors."""
    return (torch.arange(p, dtype=torch.float64).repeat_interleave(p), torch.arange(p, dtype=torch.float64).repeat(p))


def _raw_waves(p: int, freqs: Sequence[int], total, two_pi: bool = True) -> list[torch.Tensor]:
    """Un-normalised [cos, sin] rows of each frequency, as functions of `total` (e.g. a + b)."""
    scale = 2 * np.pi if two_pi else 1.0
    return [f(scale * k * total / p) for k in freqs for f in (torch.cos, torch.sin)]


def check_sum_directions(fn: Callable) -> None:
    """fn(p, freqs) -> [2·len(freqs), p²]: unit rows cos(w_k(a+b)), sin(w_k(a+b)) over the inputs a·p + b."""
    __tracebackhide__ = True
    name = "sum_directions"
    cases = [(113, [14, 35, 41, 42, 52]), (7, [1, 2, 3]), (13, [random.Random(2).randint(1, 6)])]
    for p, freqs in cases:
        on = f"p = {p}, freqs = {freqs}"
        got = _call(name, fn, p, list(freqs), on=on)
        want = _ablation.sum_directions(p, freqs)
        if isinstance(got, torch.Tensor) and got.ndim == 2 and got.shape == (len(freqs), p * p) and len(freqs) > 1:
            _fail(name, f"returned one row per frequency (shape {tuple(got.shape)}); expected two per frequency.", on,
                  "each frequency k gives two directions, cos(w_k(a+b)) and sin(w_k(a+b)): stack both.")
        a, b = _grid_ab(p)
        unit = np.sqrt(2) / p
        mistakes = [
            ("each row must have norm 1: divide by the norm of cos(w_k(a+b)) over the p² inputs, which is p/√2.",
             lambda: torch.stack(_raw_waves(p, freqs, a + b))),
            ("each row must have norm 1; the norm of cos(w_k(a+b)) over the p² inputs is p/√2, not p.",
             lambda: torch.stack(_raw_waves(p, freqs, a + b)) / p),
            ("the directions are functions of a + b; yours use a − b.",
             lambda: torch.stack(_raw_waves(p, freqs, a - b)) * unit),
            ("w_k = 2πk/p: you left out the 2π.", lambda: torch.stack(_raw_waves(p, freqs, a + b, two_pi=False)) * unit),
            ("the rows go cos k₁, sin k₁, cos k₂, sin k₂, …; yours list all the cosines, then all the sines.",
             lambda: torch.cat([want[0::2], want[1::2]])),
            ("each frequency's rows are cos first, then sin; yours have sin first.",
             lambda: want.reshape(-1, 2, p * p).flip(1).reshape(-1, p * p)),
        ]
        _expect_tensor(name, got, want, what="the directions", on=on, rtol=1e-4, atol=1e-6, exact_dtype=False,
                       mistakes=mistakes)
    _passed("sum_directions gives orthonormal cos/sin(w_k(a+b)) rows for p = 113, 7 and 13.")


def _ablation_logits(p: int, seed: int) -> torch.Tensor:
    """Logits [p², p] with planted cosines cos(w_k(a+b-c)) at k = 1, 2, other structure, a constant and noise."""
    g = torch.Generator().manual_seed(seed)
    a, b = _grid_ab(p)
    c = torch.arange(p, dtype=torch.float64)
    logits = sum(amp * torch.cos(2 * np.pi * k * (a[:, None] + b[:, None] - c) / p) for k, amp in ((1, 3.0), (2, 1.5)))
    logits = logits + 0.8 * torch.cos(2 * np.pi * 3 * (a[:, None] - c) / p) + torch.randn(p, generator=g)
    return logits + 0.3 * torch.randn(p * p, p, generator=g, dtype=torch.float64)


def _logit_cases_ch4() -> list[tuple[str, torch.Tensor, list[int]]]:
    return [("p = 11, logits with cosines at frequencies 1 and 2 plus other structure, freqs = [1, 2]",
             _ablation_logits(11, 0), [1, 2]),
            ("p = 7, random logits, freqs = [3]", torch.randn(49, 7, generator=torch.Generator().manual_seed(1),
                                                               dtype=torch.float64), [3]),
            ("p = 23, the same kind of logits, freqs = [2, 9, 1]", _ablation_logits(23, 2), [2, 9, 1])]


def _unnormalised_component(logits: torch.Tensor, freqs: Sequence[int]) -> torch.Tensor:
    """The 'component' computed with raw (un-normalised) cos/sin rows."""
    p = logits.shape[-1]
    a, b = _grid_ab(p)
    raw = torch.stack(_raw_waves(p, freqs, a + b))
    return raw.T @ (raw @ logits)


def _cos_only_component(logits: torch.Tensor, freqs: Sequence[int]) -> torch.Tensor:
    directions = _ablation.sum_directions(logits.shape[-1], freqs)[0::2]
    return directions.T @ (directions @ logits)


def _call_on_logits(name: str, fn: Callable, logits: torch.Tensor, freqs: list[int], on: str) -> object:
    """fn(logits, freqs) on a copy, failing if it changes the logits it was given."""
    __tracebackhide__ = True
    given = logits.clone()
    got = _call(name, fn, given, list(freqs), on=on)
    if not torch.equal(given, logits):
        _fail(name, "changed the logits it was given (in place).", on,
              "work on a new tensor (e.g. logits - component), not with -= on the input.")
    return got


def _check_frequency_ablation(fn: Callable, name: str, reference: Callable, what: str, praise: str,
                              mistakes: Callable[[torch.Tensor, list[int], torch.Tensor, torch.Tensor], Mistakes]) -> None:
    """Run fn(logits, freqs) on chapter 4's cases against reference; mistakes(logits, freqs, want, component) lists
    the plausible wrong answers (component: the logits' part along the cos/sin(w_k(a+b)) directions)."""
    __tracebackhide__ = True
    for on, logits, freqs in _logit_cases_ch4():
        got = _call_on_logits(name, fn, logits, freqs, on)
        want = reference(logits, freqs)
        component = _ablation.frequency_component(logits, freqs)
        _expect_tensor(name, got, want, what=what, on=on, rtol=1e-4, atol=1e-6, exact_dtype=False,
                       mistakes=mistakes(logits, freqs, want, component))
    _passed(praise)


def check_remove_frequencies(fn: Callable) -> None:
    """fn(logits [p², p], freqs) -> the logits minus their components along cos/sin(w_k(a+b)), k in freqs."""
    __tracebackhide__ = True

    def mistakes(logits, freqs, want, component) -> Mistakes:
        return [
            ("that is the part ALONG the directions; removing it means subtracting it: logits - component.",
             lambda: component),
            ("you also removed each answer's mean over the inputs (the constant); remove only the cos/sin directions.",
             lambda: want - logits.mean(0, keepdim=True)),
            ("the projection needs unit directions: with raw cos/sin rows the component is p²/2 times too big.",
             lambda: logits - _unnormalised_component(logits, freqs)),
            ("each frequency has two directions, cos(w_k(a+b)) and sin(w_k(a+b)); you removed only the cosine.",
             lambda: logits - _cos_only_component(logits, freqs)),
        ]
    _check_frequency_ablation(fn, "remove_frequencies", _ablation.remove_frequencies, "the ablated logits",
                              "remove_frequencies removes exactly the cos/sin(w_k(a+b)) components and keeps everything "
                              "else.", mistakes)


def check_keep_frequencies(fn: Callable) -> None:
    """fn(logits [p², p], freqs) -> each answer's mean over the inputs plus the cos/sin(w_k(a+b)) components."""
    __tracebackhide__ = True

    def mistakes(logits, freqs, want, component) -> Mistakes:
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
             lambda: logits.mean(0, keepdim=True) + _unnormalised_component(logits, freqs)),
        ]
    _check_frequency_ablation(fn, "keep_frequencies", _ablation.keep_frequencies, "the restricted logits",
                              "keep_frequencies keeps each answer's constant and the cos/sin(w_k(a+b)) components, "
                              "nothing else.", mistakes)


def _masked_projection(acts: torch.Tensor, freqs: torch.Tensor, keep: Callable[[int, int, int], bool]) -> torch.Tensor:
    """Projection of each neuron [p, p, n] onto the 2-D Fourier components (f, g) with keep(f, g, its k)."""
    p = acts.shape[0]
    basis = _fourier_basis(p, torch.float64)
    coeffs = torch.einsum("fa,gb,abn->fgn", basis, basis, acts.double())
    mask = torch.zeros_like(coeffs)
    for n, k in enumerate(freqs.tolist()):
        for f in range(p):
            for g in range(p):
                mask[f, g, n] = float(keep(f, g, k))
    return torch.einsum("fa,gb,fgn->abn", basis, basis, coeffs * mask)


def check_project_onto_frequency(fn: Callable) -> None:
    """fn(acts [p, p, n], freqs [n]) -> each neuron projected onto {1, cos/sin(w_k a)} × {1, cos/sin(w_k b)}, k its own."""
    __tracebackhide__ = True
    name = "project_onto_frequency"
    g = torch.Generator().manual_seed(3)
    cases = []
    for p, n in ((11, 4), (7, 3), (23, 5)):
        freqs = torch.randint(1, p // 2 + 1, (n,), generator=g)
        acts = torch.relu(torch.randn(p, p, n, generator=g, dtype=torch.float64) + 0.5)
        cases.append((f"p = {p}, {n} neurons with random activations, freqs = {freqs.tolist()}", acts, freqs))
    for on, acts, freqs in cases:
        given = acts.clone()
        got = _call(name, fn, given, freqs.clone(), on=on)
        want = _ablation.project_onto_frequency(acts, freqs)
        own = lambda f, k: f == 0 or f in _cos_sin_rows(k)  # noqa: E731  (component f is const or of frequency k)
        mistakes = [
            ("keep the constant term too (component [0, 0]: the neuron's mean), as the ReLU's output has one.",
             lambda: _masked_projection(acts, freqs, lambda f, g, k: own(f, k) and own(g, k) and (f, g) != (0, 0))),
            ("keep the products cos/sin(w_k a)·cos/sin(w_k b) too: the components with both indices at frequency k.",
             lambda: _masked_projection(acts, freqs, lambda f, g, k: own(f, k) and own(g, k) and (f == 0 or g == 0))),
            ("keep the terms of a alone and b alone too (components [k-rows, 0] and [0, k-rows]), and the constant.",
             lambda: _masked_projection(acts, freqs, lambda f, g, k: own(f, k) and own(g, k) and (f > 0) == (g > 0))),
            ("project onto frequency k in BOTH a and b; you kept every b-component for the a-terms of frequency k.",
             lambda: _masked_projection(acts, freqs, lambda f, g, k: own(f, k))),
        ]
        _expect_tensor(name, got, want, what="the projected activations", on=on, rtol=1e-4, atol=1e-6,
                       exact_dtype=False, mistakes=mistakes)
    _passed("project_onto_frequency keeps each neuron's constant, linear and product terms of its own frequency.")


def _ablation_model(p: int = 11):
    """A small random model for the ablation checks; the learner's RNG state is left alone."""
    with torch.random.fork_rng():
        torch.manual_seed(4)
        return make_model(model_config(p=p, d_model=32, n_heads=4, d_mlp=64, seed=None))


def check_ablate_neurons(fn: Callable) -> None:
    """fn(model, neurons, how) -> logits [p², p] with those neurons set to 0 ("zero") or their mean ("mean")."""
    __tracebackhide__ = True
    name = "ablate_neurons"
    model = _ablation_model()
    tokens, _ = make_dataset(model.cfg.d_vocab_out)
    clean = _ablation.model_logits(model)
    acts = _ablation.neuron_activations(model)  # [p, p, d_mlp] at the last position
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=_ablation.NEURON_HOOK)
    all_positions = cache[_ablation.NEURON_HOOK]  # [p², 3, d_mlp]
    cases = [([0, 3, 7], "mean"), ([0, 3, 7], "zero"), ([12], "mean"), (list(range(64)), "mean"),
             (list(range(64)), "zero")]
    for neurons, how in cases:
        on = f"a small random model (p = 11, 64 neurons), neurons {neurons if len(neurons) < 5 else 'all 64'}, how = {how!r}"
        got = _call(name, fn, model, torch.tensor(neurons), how, on=on)
        after = _ablation.model_logits(model)
        if not torch.allclose(after, clean):
            model.reset_hooks()
            _fail(name, "left a hook on the model: running it afterwards no longer gives its own logits.", on,
                  "use model.run_with_hooks(tokens, fwd_hooks=[(name, hook)]), which removes the hook when it returns.")
        if isinstance(got, torch.Tensor) and got.ndim == 3 and got.shape[1] == 3:
            _fail(name, f"returned logits at every position (shape {tuple(got.shape)}).", on,
                  "the answer is read at the last position: return logits[:, -1].")
        want = _ablation.ablate_neurons(model, neurons, how)
        index = torch.tensor(neurons)

        def replaced(values: torch.Tensor) -> torch.Tensor:
            new = acts.clone()
            new[..., index] = values
            return _ablation.run_with_neurons(model, new)

        mean = acts[..., index].mean((0, 1))
        mistakes = [
            ("how='mean' replaces each neuron by its MEAN over the inputs; you set it to zero.",
             lambda: replaced(torch.zeros_like(mean))),
            ("how='zero' sets the neurons to zero; you used their mean.", lambda: replaced(mean)),
            ("take each neuron's mean over the inputs at the LAST position only (acts[:, -1]); you averaged over "
             "every position.", lambda: replaced(all_positions[..., index].mean((0, 1)))),
            ("average each neuron over the inputs (the batch axis), one mean per neuron; you averaged over the neurons.",
             lambda: replaced(acts[..., index].mean(-1, keepdim=True).expand_as(acts[..., index]))),
        ]
        _expect_tensor(name, got, want, what="the logits", on=on, rtol=1e-4, atol=1e-5, exact_dtype=False,
                       mistakes=mistakes)
    _passed("ablate_neurons zero- and mean-ablates neurons through a hook, and leaves the model as it found it.")


# --- chapter 5: progress measures ------------------------------------------------------------------------
def check_gini(fn: Callable) -> None:
    """fn(x [..., n]) -> the Gini coefficient along the last axis [...]: 0 for equal values, 1 - 1/n for one-hot."""
    __tracebackhide__ = True
    name = "gini"
    g = torch.Generator().manual_seed(5)
    cases = [("all equal: [1, 1, 1, 1]", torch.ones(4, dtype=torch.float64)),
             ("one value holds everything: [0, 0, 0, 5]", torch.tensor([0.0, 0, 0, 5], dtype=torch.float64)),
             ("[3, 1, 2] (not sorted)", torch.tensor([3.0, 1, 2], dtype=torch.float64)),
             ("a batch of 4 rows of 56 random values", torch.rand(4, 56, generator=g, dtype=torch.float64) ** 3)]
    for on, x in cases:
        got = _call(name, fn, x.clone(), on=on)
        want = _progress.gini(x)
        n = x.shape[-1]
        ranks = torch.arange(1, n + 1, dtype=torch.float64)
        mistakes = [
            ("sort the values first (x.sort(-1).values): the formula weights the i-th SMALLEST value by 2i - n - 1.",
             lambda: (x * (2 * ranks - n - 1)).sum(-1) / (n * x.sum(-1))),
            ("divide by n·Σx, not by Σx alone.", lambda: want * n),
            ("that is the 'corrected' Gini (× n/(n-1)); use the plain one, whose largest value is 1 - 1/n.",
             lambda: want * n / (n - 1)),
            ("that is 1 - Gini: equal values should give 0 and one-hot values the most.", lambda: 1 - want),
        ]
        _expect_tensor(name, got, want, what="the Gini coefficient", on=on, rtol=1e-5, atol=1e-8, exact_dtype=False,
                       mistakes=mistakes)
    _passed("gini is 0 for equal values, 1 - 1/n when one value holds everything, and works on a batch of rows.")


def check_embedding_norms(fn: Callable) -> None:
    """fn(W_E [n, p+1, d_model]) -> [n, (p-1)/2]: norm of each frequency's cos and sin components in each embedding."""
    __tracebackhide__ = True
    name = "embedding_norms"
    g = torch.Generator().manual_seed(6)
    cases = [(f"{n} stacked embeddings, p = {p}, d_model = {d}", torch.randn(n, p + 1, d, generator=g))
             for n, p, d in ((3, 113, 16), (1, 7, 4), (5, 13, 8))]
    for on, W_E in cases:
        got = _call(name, fn, W_E.clone(), on=on)
        want = _progress.embedding_norms(W_E)
        k = want.shape[-1]
        if isinstance(got, torch.Tensor) and got.shape[:-1] == want.shape[:-1] and got.shape[-1] != k:
            hints = {k + 1: "drop the constant component (basis row 0): frequencies are 1 … (p-1)/2.",
                     2 * k: "combine each frequency's cos and sin rows: sqrt(cos² + sin²).",
                     2 * k + 1: "combine each frequency's cos and sin rows (and drop the constant, row 0)."}
            _fail(name, f"returned {got.shape[-1]} values per embedding; expected {k}, one per frequency.", on,
                  hints.get(got.shape[-1]))
        mistakes = [
            ("take the square root: the norm is sqrt(‖cos k‖² + ‖sin k‖²), not its square.", lambda: want ** 2),
            ("return the norms themselves, not each frequency's share of their total.",
             lambda: want / want.sum(-1, keepdim=True)),
            ("return the norms themselves, not each frequency's share of the squared norm.",
             lambda: want ** 2 / (want ** 2).sum(-1, keepdim=True)),
            ("leave out the last token, `=` (row p of W_E): it is not a number, so it has no Fourier transform.",
             lambda: _progress.embedding_norms(torch.cat([W_E[:, 1:], W_E[:, :1]], 1))),
        ]
        _expect_tensor(name, got, want, what="the frequency norms", on=on, rtol=1e-4, atol=1e-5, exact_dtype=False,
                       mistakes=mistakes)
    _passed("embedding_norms gives each frequency's Fourier norm for a whole stack of embeddings at once.")


def _memorising_logits(p: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A stack [n, p², p] of logits: cosines at frequencies 1 and 3 plus a memorised table on the training pairs."""
    g = torch.Generator().manual_seed(seed)
    a, b = _grid_ab(p)
    c = torch.arange(p, dtype=torch.float64)
    labels = ((a + b) % p).long()
    train_idx = torch.randperm(p * p, generator=g)[: p * p // 3].sort().values
    waves = sum(torch.cos(2 * np.pi * k * (a[:, None] + b[:, None] - c) / p) for k in (1, 3))
    memorised = torch.zeros(p * p, p, dtype=torch.float64)
    memorised[train_idx, labels[train_idx]] = 1.0
    stack = torch.stack([s * waves + m * 6 * memorised + 0.5 * torch.randn(p * p, p, generator=g, dtype=torch.float64)
                         for s, m in zip(torch.linspace(0, 4, n), torch.linspace(1, 0, n))])
    return stack, labels, train_idx


def check_restricted_and_excluded(fn: Callable) -> None:
    """fn(logits [n, p², p], labels, train_idx, freqs) -> (restricted loss [n] on all inputs, excluded loss [n] on train)."""
    __tracebackhide__ = True
    name = "restricted_and_excluded"
    cases = [(13, 4, 7, [1, 3]), (7, 2, 8, [1]), (11, 3, 9, [3, 1, 2])]
    for p, n, seed, freqs in cases:
        logits, labels, train_idx = _memorising_logits(p, n, seed)
        on = (f"{n} stacked models' logits, p = {p}: cosines at frequencies 1 and 3 plus a memorised table on the "
              f"{len(train_idx)} training pairs; freqs = {freqs}")
        got = _call(name, fn, logits.clone(), labels, train_idx, list(freqs), on=on)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            _fail(name, f"should return a pair (restricted, excluded); got {_describe(got)}.", on,
                  _none_hint(got) or "end with `return restricted, excluded`.")
        restricted, excluded = got
        want_r, want_x = _progress.restricted_and_excluded(logits, labels, train_idx, freqs)
        kept, removed = _ablation.keep_frequencies(logits, freqs), _ablation.remove_frequencies(logits, freqs)
        test_idx = torch.tensor(sorted(set(range(p * p)) - set(train_idx.tolist())))
        loss = lambda x, idx=None: _progress._losses(x, labels, idx)  # noqa: E731
        r_mistakes = [
            ("the restricted loss keeps the key directions; you removed them.", lambda: loss(removed)),
            ("the restricted loss is measured on ALL inputs; you used the training pairs only.",
             lambda: loss(kept, train_idx)),
            ("the restricted loss is measured on ALL inputs; you used the test pairs only.", lambda: loss(kept, test_idx)),
            ("keep each answer's constant (its mean over the inputs) as well as the directions.",
             lambda: loss(_ablation.frequency_component(logits, freqs))),
            ("these look like the excluded losses: return (restricted, excluded) in that order.",
             lambda: loss(removed, train_idx)),
        ]
        _expect_tensor(name, restricted, want_r, what="the restricted loss (first value)", on=on, rtol=1e-5,
                       atol=1e-8, exact_dtype=False, mistakes=r_mistakes)
        x_mistakes = [
            ("the excluded loss is measured on the TRAINING pairs only (what memorisation could have learnt).",
             lambda: loss(removed)),
            ("the excluded loss is measured on the TRAINING pairs; you used the test pairs.",
             lambda: loss(removed, test_idx)),
            ("the excluded loss removes the key directions; you kept only them.", lambda: loss(kept, train_idx)),
            ("remove only the key directions; you also removed each answer's constant.",
             lambda: loss(removed - logits.mean(-2, keepdim=True), train_idx)),
        ]
        _expect_tensor(name, excluded, want_x, what="the excluded loss (second value)", on=on, rtol=1e-5, atol=1e-8,
                       exact_dtype=False, mistakes=x_mistakes)
    _passed("restricted_and_excluded measures the key directions alone (all inputs) and everything but them "
            "(training pairs) for a whole stack of checkpoints.")


# --- end of chapters 4–5 ----------------------------------------------------------------------------------


# --- chapters 2–3: periodicity and the algorithm ----------------------------------------------------------


def _expect_number(name: str, got: object, want: float, *, what: str, on: str, atol: float,
                   mistakes: Sequence[tuple[str, Callable[[], float]]] = ()) -> None:
    """Fail unless got is a real number within atol of want; a match with a known wrong answer names the mistake."""
    __tracebackhide__ = True
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    elif isinstance(got, np.ndarray) and got.size == 1:
        got = got.item()
    if isinstance(got, np.generic):
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        _fail(name, f"{what} should be a number (a float); got {_describe(got)}.", on,
              _none_hint(got) or "return a Python float, e.g. with .item() on a one-element tensor.")
    if not np.isfinite(got):
        _fail(name, f"{what} is {got}.", on, "a division by zero? Check what you divide by.")
    if abs(got - want) <= atol:
        return
    for hint, wrong in mistakes:
        if abs(got - wrong()) <= atol:
            _fail(name, f"{what} is {got:.6g}; expected {want:.6g}.", on, hint)
    _fail(name, f"{what} is {got:.6g}; expected {want:.6g}.", on)


def _odd_moduli(seed: int) -> list[int]:
    """113 (the course's p), the smallest odd modulus, and a seeded-random prime."""
    return [113, 3, random.Random(seed).choice([7, 11, 13, 23, 31, 59])]


def _raw_basis(p: int) -> torch.Tensor:
    """The Fourier basis' rows const, cos 1, sin 1, … without normalisation (a mistake): [p, p]."""
    return _fourier.fourier_basis(p, torch.float64) * _fourier.fourier_basis(p, torch.float64).new_tensor(
        [np.sqrt(p)] + [np.sqrt(p / 2)] * (p - 1))[:, None]


def _basis_variants(p: int) -> dict[str, torch.Tensor]:
    """Plausible wrong Fourier bases, keyed by the hint that explains them."""
    x = torch.arange(p, dtype=torch.float64)
    k = torch.arange(1, (p - 1) // 2 + 1, dtype=torch.float64)[:, None]
    cos, sin = torch.cos(2 * np.pi * k * x / p), torch.sin(2 * np.pi * k * x / p)  # [(p-1)/2, p] each
    one = torch.ones(1, p, dtype=torch.float64)
    raw = torch.cat([one, torch.stack([cos, sin], 1).reshape(-1, p)])  # the right rows, not normalised
    unit = raw / raw.norm(dim=1, keepdim=True)
    no_two_pi = torch.cat([one, torch.stack([torch.cos(k * x / p), torch.sin(k * x / p)], 1).reshape(-1, p)])
    return {
        "normalise every row to length 1: the constant row is 1/√p, the others are cos or sin times √(2/p).": raw,
        "one basis vector per ROW (basis[component, x]); yours are in the columns: transpose it.": unit.T,
        "row 2k-1 is cos(2πkx/p) and row 2k is sin(2πkx/p): you have sin before cos.":
            torch.cat([unit[:1], unit[1:].reshape(-1, 2, p).flip(1).reshape(-1, p)]),
        "interleave the rows (const, cos 1, sin 1, cos 2, sin 2, …): yours has all the cosines, then all the sines.":
            torch.cat([unit[:1], unit[1::2], unit[2::2]]),
        "frequency k is cos(2πkx/p): you left out the 2π.": no_two_pi / no_two_pi.norm(dim=1, keepdim=True),
        "the constant row is 1/√p (its length must be 1, like every other row).":
            torch.cat([one / np.sqrt(p / 2), unit[1:]]),
    }


def check_fourier_basis(fn: Callable[[int], torch.Tensor]) -> None:
    """fn(p) -> [p, p]: orthonormal rows const, cos 1, sin 1, cos 2, sin 2, … over x = 0 … p-1."""
    __tracebackhide__ = True
    name = "fourier_basis"
    moduli = _odd_moduli(2)
    for p in moduli:
        on = f"p = {p}"
        got = _call(name, fn, p, on=on)
        mistakes = [(hint, lambda wrong=wrong: wrong) for hint, wrong in _basis_variants(p).items()]
        _expect_tensor(name, got, _fourier.fourier_basis(p, torch.float64), what="the basis", on=on, atol=1e-5,
                       exact_dtype=False, mistakes=mistakes)
    _passed(f"fourier_basis is orthonormal with rows const, cos 1, sin 1, … for p = {', '.join(map(str, moduli))}.")


def _random_inputs(shapes: Sequence[tuple[int, ...]], seed: int) -> list[tuple[str, torch.Tensor]]:
    """(description, seeded random float64 tensor) for each shape."""
    g = torch.Generator().manual_seed(seed)
    return [(f"a random tensor of shape {shape}", torch.randn(*shape, generator=g, dtype=torch.float64))
            for shape in shapes]


def check_fft1d(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """fn(x [p, ...]) -> its Fourier coefficients along the first axis, [p, ...]."""
    __tracebackhide__ = True
    name = "fft1d"
    cases = _random_inputs([(113,), (113, 7), (13, 13), (5, 2, 3)], seed=3)
    x = torch.arange(11, dtype=torch.float64)
    cases.append(("x ↦ cos(2π·3x/11) over x = 0 … 10 (all its weight is in row 5, cos 3)", torch.cos(2 * np.pi * 3 * x / 11)))
    for on, x in cases:
        p = x.shape[0]
        got = _call(name, fn, x.clone(), on=on)
        basis = _fourier.fourier_basis(p, torch.float64)
        flat = x.reshape(p, -1)
        mistakes = [
            ("that is the inverse transform (basis.T @ x): the coefficients are basis @ x, one per basis row.",
             lambda: (basis.T @ flat).reshape(x.shape)),
            ("transform the FIRST axis (the input x), not the last one.",
             lambda: x @ _fourier.fourier_basis(x.shape[-1], torch.float64).T if x.shape[-1] % 2 else None),
            ("use the orthonormal basis (unit rows): your coefficients are scaled.",
             lambda: (_raw_basis(p) @ flat).reshape(x.shape)),
        ]
        _expect_tensor(name, got, _fourier.fft1d(x), what="the coefficients", on=on, rtol=1e-5, atol=1e-6,
                       exact_dtype=False, mistakes=mistakes)
    _passed("fft1d gives the coefficients along the first axis, for vectors and for batches of them.")


def check_fft2d(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """fn(x [p, p, ...]) -> Fourier coefficients over both of the first two axes (a and b), [p, p, ...]."""
    __tracebackhide__ = True
    name = "fft2d"
    cases = _random_inputs([(113, 113), (7, 7, 3), (5, 5)], seed=4)
    a = torch.arange(13, dtype=torch.float64)
    cases.append(("x[a, b] = cos(2π·2a/13)·sin(2π·5b/13) (all its weight is at (cos 2, sin 5): index (3, 10))",
                  torch.cos(2 * np.pi * 2 * a / 13)[:, None] * torch.sin(2 * np.pi * 5 * a / 13)[None, :]))
    for on, x in cases:
        basis = _fourier.fourier_basis(x.shape[0], torch.float64)
        got = _call(name, fn, x.clone(), on=on)
        want = _fourier.fft2d(x)
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
        _expect_tensor(name, got, want, what="the 2-D coefficients", on=on, rtol=1e-5, atol=1e-6, exact_dtype=False,
                       mistakes=mistakes)
    _passed("fft2d transforms a and b, keeping any further axes (e.g. one grid per neuron).")


def _planted_model(p: int, freqs: Sequence[int], amplitudes: Sequence[float], seed: int):
    """A small model whose token embedding holds cos/sin waves of the given frequencies plus a little noise."""
    with torch.random.fork_rng():
        model = make_model(model_config(p=p, d_model=12, n_heads=2, d_mlp=16, seed=seed))
        g = torch.Generator().manual_seed(seed)
        x = torch.arange(p, dtype=torch.float64)
        W = 0.01 * torch.randn(p, 12, generator=g, dtype=torch.float64)
        for k, amplitude in zip(freqs, amplitudes):
            directions = torch.linalg.qr(torch.randn(12, 2, generator=g, dtype=torch.float64))[0].T  # 2 unit rows
            W += amplitude * (torch.cos(2 * np.pi * k * x / p)[:, None] * directions[0]
                              + torch.sin(2 * np.pi * k * x / p)[:, None] * directions[1])
        with torch.no_grad():
            model.embed.W_E[:p] = W.float() + 0.3  # + a constant: it must not count as a frequency
            model.embed.W_E[p] = 5.0  # the "=" token, large: it must be left out
    return model


def _planted_cases() -> list[tuple[str, object, list[int]]]:
    """(description, model, planted frequencies sorted by amplitude) for the embedding checks."""
    plans = [(113, [14, 35, 41, 42, 52], [3.0, 2.5, 2.0, 1.5, 1.2]), (23, [2, 9], [1.0, 2.0]),
             (13, [1, 2, 6], [1.2, 1.2, 3.0]), (31, [7], [1.0])]
    cases = []
    for seed, (p, freqs, amplitudes) in enumerate(plans):
        order = sorted(range(len(freqs)), key=lambda i: -amplitudes[i])
        description = (f"a model with p = {p} whose embedding holds frequencies {freqs} "
                       f"(amplitudes {amplitudes}), a constant and a little noise")
        cases.append((description, _planted_model(p, freqs, amplitudes, seed), [freqs[i] for i in order]))
    return cases


def check_embedding_frequency_norms(fn: Callable) -> None:
    """fn(model) -> [(p-1)/2]: each frequency's share of the embedding's squared norm (no "=", no constant)."""
    __tracebackhide__ = True
    name = "embedding_frequency_norms"
    for on, model, _ in _planted_cases():
        p = model.cfg.d_vocab_out
        got = _call(name, fn, model, on=on)
        want = _fourier.embedding_frequency_norms(model)
        coeffs = _fourier.fft1d(model.W_E[:p].detach().double())  # [p, d_model]
        squared = coeffs.pow(2).sum(-1)  # [p]
        k = (p - 1) // 2
        if isinstance(got, torch.Tensor) and got.ndim == 1 and got.shape[0] == k + 1:
            _fail(name, f"returned {k + 1} values; expected {k}, one per frequency 1 … (p-1)/2.", on,
                  "leave out the constant component (row 0 of the coefficients): it is not a frequency.")
        if isinstance(got, torch.Tensor) and got.ndim == 1 and got.shape[0] in (p, 2 * k):
            _fail(name, f"returned {got.shape[0]} values; expected {k}, one per frequency.", on,
                  "add each frequency's cos and sin rows together (rows 2k-1 and 2k), and leave out the constant.")
        mistakes = [
            ("return shares: divide by the total over the frequencies so they sum to 1.",
             lambda: squared[1::2] + squared[2::2]),
            ("use SQUARED norms (cos² + sin², summed over d_model), then the shares.",
             lambda: (lambda n: n / n.sum())(squared[1::2].sqrt() + squared[2::2].sqrt())),
            ("use SQUARED norms (cos² + sin², summed over d_model), then the shares.",
             lambda: (lambda n: n / n.sum())((squared[1::2] + squared[2::2]).sqrt())),
            ("a frequency's norm adds its cos row AND its sin row.", lambda: squared[1::2] / squared[1::2].sum()),
            ("divide by the total over frequencies 1 … (p-1)/2 only (leave the constant out of the total too).",
             lambda: (squared[1::2] + squared[2::2]) / squared.sum()),
        ]
        _expect_tensor(name, got, want, what="the shares", on=on, rtol=1e-4, atol=1e-6, exact_dtype=False,
                       mistakes=mistakes)
    _passed("embedding_frequency_norms finds the planted frequencies' shares, ignoring `=` and the constant.")


def check_key_frequencies(fn: Callable) -> None:
    """fn(model) -> the frequencies whose share is at least 10% of the largest (a list of ints, largest first)."""
    __tracebackhide__ = True
    name = "key_frequencies"
    for on, model, planted in _planted_cases():
        got = _call(name, fn, model, on=on)
        if isinstance(got, torch.Tensor) and got.ndim <= 1 and not got.is_floating_point():
            got = got.flatten().tolist()
        if not isinstance(got, (list, tuple)) or not all(isinstance(k, numbers.Integral) for k in got):
            _fail(name, f"should return a list of ints; got {_describe(got)}.", on,
                  _none_hint(got) or "e.g. [int(k) for k in ...]; frequencies are whole numbers 1 … (p-1)/2.")
        want = _fourier.key_frequencies(model)
        if sorted(got) == sorted(want):
            continue
        if sorted(k + 1 for k in got) == sorted(want):
            hint = "frequencies start at 1: entry i of the norms is frequency i + 1 (you returned indices)."
        elif set(got) <= {row for k in want for row in (2 * k - 1, 2 * k)}:
            hint = "return frequencies k = 1 … (p-1)/2, not rows of the basis (row 2k-1 is cos k, row 2k sin k)."
        elif set(got) < set(want):
            hint = "keep EVERY frequency whose share is at least 10% of the largest share (not a fixed number)."
        elif set(got) > set(want):
            hint = "keep only the frequencies whose share is at least 10% of the LARGEST share (0.1 × max)."
        else:
            hint = None
        _fail(name, f"returned {list(got)}; expected {want} (in any order).", on, hint)
    _passed("key_frequencies recovers the planted frequencies: two, three, one or five of them.")


def _cosine_logits(p: int, freqs: Sequence[int], alphas: Sequence[float], extra: float, noise: float,
                   seed: int) -> torch.Tensor:
    """Logits [p, p, p] = Σ α_k cos(w_k(a+b-c)) + extra·cos(w(a+b+c)) + a per-input offset + noise."""
    g = torch.Generator().manual_seed(seed)
    waves = _mechanism.cosine_waves(p, freqs)
    x = torch.arange(p, dtype=torch.float64)
    mirror = torch.cos(2 * np.pi * freqs[0] * (x[:, None, None] + x[None, :, None] + x) / p)  # a+b+c: not the form
    offset = 3 * torch.randn(p, p, 1, generator=g, dtype=torch.float64)  # shared by every answer: softmax ignores it
    return (_weighted_sum(torch.tensor(alphas, dtype=torch.float64), waves) + extra * mirror + offset
            + noise * torch.randn(p, p, p, generator=g, dtype=torch.float64))


def _weighted_sum(alphas: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
    """Σ_k alphas[k] · waves[k]."""
    return (alphas[:, None, None, None] * waves).sum(0)


def check_cosine_variance_explained(fn: Callable) -> None:
    """fn(logits [p, p, p], freqs) -> the share of the logits' variance (centred over c) that Σ α_k cos(w_k(a+b-c)) explains."""
    __tracebackhide__ = True
    name = "cosine_variance_explained"
    cases = [
        ("logits exactly 2·cos(w_2(a+b-c)) + 0.5·cos(w_5(a+b-c)) + a per-input offset, p = 13", 13, [2, 5], [2.0, 0.5],
         0.0, 0.0),
        ("logits Σ α_k cos(w_k(a+b-c)) for k = 3, 7 plus a cos(w_3(a+b+c)) term, an offset and noise, p = 23", 23,
         [3, 7], [1.5, 1.0], 0.8, 0.3),
        ("logits 3·cos(w_14(a+b-c)) + cos(w_41(a+b-c)) plus noise and an offset, p = 113", 113, [14, 41], [3.0, 1.0],
         0.0, 1.0),
    ]
    for seed, (on, p, freqs, alphas, extra, noise) in enumerate(cases):
        logits = _cosine_logits(p, freqs, alphas, extra, noise, seed)
        got = _call(name, fn, logits.clone(), list(freqs), on=on)
        fit = _mechanism.fit_cosine_logits(logits, freqs)[1]
        want = _mechanism.variance_explained(logits, fit)
        plain = logits - logits.mean()
        mistakes = [
            ("that is the share NOT explained (residual / total): return 1 minus it.", lambda: 1 - want),
            ("centre the logits over the answers c (logits - logits.mean(-1, keepdim=True)) before measuring: an "
             "offset shared by every answer changes nothing after the softmax, so it is not variance to explain.",
             lambda: float(1 - (logits - fit).pow(2).sum() / logits.pow(2).sum())),
            ("centre each input's logits over the answers c (mean over the last axis), not over everything at once.",
             lambda: float(1 - (plain - fit).pow(2).sum() / plain.pow(2).sum())),
            ("the waves are cos(w_k(a + b - c)), with w_k = 2πk/p: check the sign of c.",
             lambda: _reference_ve_with(logits, lambda x: x[:, None, None] + x[None, :, None] + x, freqs)),
            ("the waves are cos(w_k(a + b - c)) with w_k = 2πk/p: you left out the 2π/p.",
             lambda: _reference_ve_with(logits, lambda x: (x[:, None, None] + x[None, :, None] - x) * p / (2 * np.pi),
                                        freqs)),
        ]
        _expect_number(name, got, want, what="the variance explained", on=on, atol=1e-6, mistakes=mistakes)
    _passed("cosine_variance_explained fits Σ α_k cos(w_k(a+b-c)) by least squares and measures it on centred logits.")


def _reference_ve_with(logits: torch.Tensor, phase: Callable, freqs: Sequence[int]) -> float:
    """Variance explained when the waves are cos(w_k · phase(x)) instead of cos(w_k(a+b-c)) (for mistakes)."""
    p = logits.shape[-1]
    x = torch.arange(p, dtype=torch.float64)
    waves = torch.stack([torch.cos(2 * np.pi * k * phase(x) / p) for k in freqs])
    centred = logits - logits.mean(-1, keepdim=True)
    X = waves.reshape(len(freqs), -1).T
    fit = (X @ torch.linalg.lstsq(X, centred.flatten()[:, None]).solution).reshape(logits.shape)
    return _mechanism.variance_explained(logits, fit)


def _random_model(p: int, seed: int, d_mlp: int = 24):
    """A small randomly initialised model (the learner's random state untouched)."""
    with torch.random.fork_rng():
        return make_model(model_config(p=p, d_model=16, n_heads=2, d_mlp=d_mlp, seed=seed))


def check_W_L_fourier(fn: Callable) -> None:
    """fn(model) -> W_L = W_out @ W_U with its output axis in the Fourier basis: [d_mlp, p]."""
    __tracebackhide__ = True
    name = "W_L_fourier"
    for seed, (p, d_mlp) in enumerate([(13, 24), (23, 16), (7, 40)]):
        model = _random_model(p, seed, d_mlp)
        on = f"a random model with p = {p}, d_model 16, d_mlp {d_mlp}"
        got = _call(name, fn, model, on=on)
        W = _mechanism.W_L(model)
        basis = _fourier.fourier_basis(p, torch.float64)
        mistakes = [
            ("that is W_L itself: now put its output axis (the answers c) in the Fourier basis: W_L @ basis.T.", lambda: W),
            ("transform the output axis with the basis' rows: W_L @ basis.T (not W_L @ basis).", lambda: W @ basis),
            ("W_L starts at the neurons' OUTPUT weights: W_out (neurons → residual stream), not W_in.",
             lambda: (model.W_in[0].T.double() @ model.W_U.double()) @ basis.T),
        ]
        _expect_tensor(name, got, _mechanism.W_L_fourier(model), what="W_L in the Fourier basis", on=on, rtol=1e-4,
                       atol=1e-5, exact_dtype=False, mistakes=mistakes)
    _passed("W_L_fourier is W_out @ W_U with the answers' axis in the Fourier basis.")


def _planted_neurons(p: int, k: int, seed: int) -> torch.Tensor:
    """Neurons over the (a, b) grid [p, p, 6]: ReLUs of frequency-k waves, a product, a linear one, noise, a constant."""
    g = torch.Generator().manual_seed(seed)
    w, x = 2 * np.pi * k / p, torch.arange(p, dtype=torch.float64)
    a, b = x[:, None], x[None, :]
    phases = 2 * np.pi * torch.rand(4, generator=g, dtype=torch.float64)
    neurons = [torch.relu(torch.cos(w * a + phases[0]) + torch.cos(w * b + phases[1])),
               torch.relu(torch.cos(w * a + phases[2]) + torch.cos(w * b + phases[3]) + 0.5),
               torch.sin(w * a + phases[0]) * torch.cos(w * b + phases[1]) + 1.0,
               2 * torch.cos(w * a) - torch.sin(w * b) + 3.0,
               torch.randn(p, p, generator=g, dtype=torch.float64),
               torch.full((p, p), 2.0, dtype=torch.float64)]
    return torch.stack(neurons, -1)


def check_neuron_fit_r2(fn: Callable) -> None:
    """fn(acts [p, p, n], k, quadratic) -> [n]: R² of each neuron's least-squares fit by frequency k's terms."""
    __tracebackhide__ = True
    name = "neuron_fit_r2"
    for seed, (p, k) in enumerate([(23, 3), (113, 14), (11, 1)]):
        acts = _planted_neurons(p, k, seed)
        for quadratic in (False, True):
            on = (f"quadratic={quadratic}; 6 neurons over a {p} × {p} grid: two ReLUs of frequency-{k} waves, a "
                  "product, a linear one, noise, a constant (R² 0)")
            got = _call(name, fn, acts.clone(), k, quadratic, on=on)
            want = _mechanism.neuron_fit_r2(acts, k, quadratic)
            if (isinstance(got, torch.Tensor) and got.shape == want.shape and got.is_floating_point()
                    and not torch.isfinite(got[-1]) and torch.isfinite(got[:-1]).all()):
                _fail(name, f"the constant neuron (the last one) gets R² = {got[-1].item()}; expected 0.", on,
                      "a neuron with no variance divides 0 by 0: give it R² = 0, e.g. "
                      "torch.where(variance > 0, r2, 0.0).")
            y = acts.reshape(p * p, -1)
            centred = (y - y.mean(0)).pow(2).sum(0)

            def r2_with(X: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
                residual = y - X @ torch.linalg.lstsq(X, y).solution
                if total is not None:  # a wrong total: no special case for constant neurons either
                    return 1 - residual.pow(2).sum(0) / total
                return (1 - residual.pow(2).sum(0) / centred.clamp_min(1e-30)) * (centred > 0)

            features = _mechanism.neuron_features(p, k, quadratic).reshape(p * p, -1)
            same_kind = [0, 1, 2, 3, 4, 5, 8] if quadratic else list(range(5))  # cos·cos and sin·sin only
            mistakes = [
                ("include the constant term 1 among the features: the neurons' means are not zero.",
                 lambda: r2_with(features[:, 1:])),
                ("R² divides by the variance around the MEAN: sum((y - y.mean())²), not sum(y²).",
                 lambda: r2_with(features, y.pow(2).sum(0))),
                ("that is 1 - R² (the share left unexplained).", lambda: 1 - want),
                ("quadratic=False means only 1, cos/sin(w a) and cos/sin(w b): leave the products out.",
                 lambda: _mechanism.neuron_fit_r2(acts, k, True)),
                ("quadratic=True adds all four products cos·cos, cos·sin, sin·cos and sin·sin of an a-term and a "
                 "b-term.", lambda: r2_with(features[:, same_kind])),
                ("frequency k means w = 2πk/p: you left out the 2π/p.",
                 lambda: r2_with(_features_without_two_pi(p, k, quadratic))),
            ]
            _expect_tensor(name, got, want, what="the R² values", on=on, rtol=1e-5, atol=1e-6, exact_dtype=False,
                           mistakes=mistakes)
    _passed("neuron_fit_r2 fits every neuron at once, with and without the product terms.")


def _features_without_two_pi(p: int, k: int, quadratic: bool) -> torch.Tensor:
    """neuron_features with w = k/p instead of 2πk/p (a mistake), flattened: [p², F]."""
    return _mechanism.neuron_features(p, k / (2 * np.pi), quadratic).reshape(p * p, -1)


def check_output_frequency_shares(fn: Callable) -> None:
    """fn(W_L_fourier [d_mlp, p], neurons) -> [(p-1)/2]: share of those neurons' W_L squared norm at each frequency."""
    __tracebackhide__ = True
    name = "output_frequency_shares"
    g = torch.Generator().manual_seed(7)
    for p, d_mlp, neurons in [(113, 40, [0, 3, 4, 17]), (13, 20, list(range(20))), (7, 9, [5])]:
        fourier = torch.randn(d_mlp, p, generator=g, dtype=torch.float64)
        fourier[:, 0] *= 5  # a large constant component: it must not count
        on = f"a random W_L in the Fourier basis, p = {p}, d_mlp {d_mlp}, neurons {neurons}"
        got = _call(name, fn, fourier.clone(), torch.tensor(neurons), on=on)
        rows = fourier[neurons].pow(2).sum(0)  # [p]
        per_freq = rows[1::2] + rows[2::2]
        want = per_freq / per_freq.sum()
        all_rows = fourier.pow(2).sum(0)
        mistakes = [
            ("return shares: divide by the total over the frequencies so they sum to 1.", lambda: per_freq),
            ("leave the constant component (column 0) out of the total.", lambda: per_freq / rows.sum()),
            ("use only the listed neurons' rows: W_L_fourier[neurons].",
             lambda: (all_rows[1::2] + all_rows[2::2]) / (all_rows[1::2] + all_rows[2::2]).sum()),
            ("square the components before adding them up (a norm², not a sum of signed values).",
             lambda: (lambda s: (s[1::2] + s[2::2]) / (s[1::2] + s[2::2]).sum())(fourier[neurons].sum(0))),
            ("each frequency has a cos AND a sin column (2k-1 and 2k): add both.",
             lambda: rows[1::2] / rows[1::2].sum()),
        ]
        _expect_tensor(name, got, want, what="the shares", on=on, rtol=1e-5, atol=1e-7, exact_dtype=False,
                       mistakes=mistakes)
    _passed("output_frequency_shares gives each output frequency's share of a group of neurons' W_L norm.")


def _check_fourier_algorithm(fn: Callable, op: str, seed: int) -> None:
    """fn(a [n], b [n], p, freqs, coeffs) -> logits [n, p] = Σ_k α_k cos(w_k(a ± b - c)); ± from op (add/subtract)."""
    __tracebackhide__ = True
    name, pm = ("fourier_multiplication", "+") if op == "add" else ("fourier_subtraction", "-")
    g = torch.Generator().manual_seed(seed)
    cases = [(113, [14, 35, 41], [1.0, 2.0, 0.5], 50), (7, [1, 3], [1.0, 1.0], 49), (23, [5], [2.5], 10)]
    for p, freqs, coeffs, n in cases:
        a, b = torch.randint(p, (n,), generator=g), torch.randint(p, (n,), generator=g)
        on = f"p = {p}, freqs {freqs}, coeffs {coeffs}, {n} random pairs (a, b)"
        alpha = torch.tensor(coeffs, dtype=torch.float64)
        got = _call(name, fn, a.clone(), b.clone(), p, list(freqs), alpha.clone(), on=on)
        want = _mechanism.fourier_multiplication(a, b, p, freqs, alpha, op)
        w = 2 * np.pi * torch.tensor(freqs, dtype=torch.float64) / p
        c = torch.arange(p, dtype=torch.float64)
        s = _mechanism.SIGNS[op]

        def waves(phase: Callable, scale: torch.Tensor = alpha, w: torch.Tensor = w) -> torch.Tensor:
            return (scale * torch.cos(w * phase(a.double()[:, None, None], b.double()[:, None, None],
                                                c[None, :, None]))).sum(-1)

        mistakes = [
            (f"logits(c) = Σ α_k cos(w_k(a {pm} b - c)): yours is cos(w_k(a {pm} b + c)); use cos(x - y) = "
             "cos x cos y + sin x sin y.", lambda: waves(lambda a, b, c: a + s * b + c)),
            ("multiply each frequency's wave by its coefficient α_k.",
             lambda: waves(lambda a, b, c: a + s * b - c, torch.ones_like(alpha))),
            ("w_k = 2πk/p: you left out the 2π/p.",
             lambda: waves(lambda a, b, c: a + s * b - c, alpha, torch.tensor(freqs, dtype=torch.float64))),
        ]
        if op == "add":
            mistakes.append(("cos(w(a + b)) = cos wa cos wb - sin wa sin wb (minus!): yours gives cos(w(a - b)).",
                             lambda: waves(lambda a, b, c: a - b - c)))
        else:
            wa, wb, wc = w * a.double()[:, None], w * b.double()[:, None], w[:, None] * c  # [n, K], [n, K], [K, p]
            cos_diff = torch.cos(wa) * torch.cos(wb) + torch.sin(wa) * torch.sin(wb)
            sin_sum = torch.sin(wa) * torch.cos(wb) + torch.cos(wa) * torch.sin(wb)
            mistakes += [
                ("that is addition's algorithm, cos(w_k(a + b - c)); for a - b use cos(w(a - b)) = cos wa cos wb + "
                 "sin wa sin wb and sin(w(a - b)) = sin wa cos wb - cos wa sin wb.",
                 lambda: waves(lambda a, b, c: a + b - c)),
                ("sin(w(a - b)) = sin wa cos wb - cos wa sin wb (minus!): yours uses sin(w(a + b)).",
                 lambda: (cos_diff * alpha) @ torch.cos(wc) + (sin_sum * alpha) @ torch.sin(wc)),
            ]
        _expect_tensor(name, got, want, what="the logits", on=on, rtol=1e-5, atol=1e-6, exact_dtype=False,
                       mistakes=mistakes)
    _passed(f"{name} computes Σ_k α_k cos(w_k(a {pm} b - c)) from cos and sin of w_k a and w_k b, by the trig "
            "identities.")


def check_fourier_multiplication(fn: Callable) -> None:
    """fn(a [n], b [n], p, freqs, coeffs) -> logits [n, p] = Σ_k α_k cos(w_k(a + b - c)) for c = 0 … p-1."""
    __tracebackhide__ = True
    _check_fourier_algorithm(fn, "add", seed=8)


# --- end of chapters 2–3 ----------------------------------------------------------------------------------


# --- chapter 6: beyond (outcomes of many runs, subtraction) -------------------------------------------------------

def _accuracy_table(train_acc: Sequence[float], test_acc: Sequence[float], every: int = 10) -> pd.DataFrame:
    """A metrics table like Run.metrics (evaluated every `every` steps) with the given accuracy curves."""
    n = len(train_acc)
    steps = np.arange(n) * every
    return pd.DataFrame({"step": steps, "train_loss": 1 - np.asarray(train_acc), "test_loss": 1 - np.asarray(test_acc),
                         "train_acc": np.asarray(train_acc, dtype=float), "test_acc": np.asarray(test_acc, dtype=float),
                         "elapsed_s": steps * 0.03})


def _ramp(n: int, start: int, end: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """n evaluations: `low` until index start, rising linearly to `high` at index end, then flat."""
    return np.interp(np.arange(n), [start, end], [low, high])


def _outcome_cases() -> list[tuple[str, pd.DataFrame, str]]:
    """(description, metrics, hint if the learner's answer differs) for check_outcome; eval every 10 steps."""
    n = 120  # steps 0 … 1,190
    memorise = _ramp(n, 0, 10)  # train accuracy 100% at step 100
    return [
        ("train accuracy 100% at step 100, test accuracy flat near 5% until step 800, then 100% by step 900",
         _accuracy_table(memorise, _ramp(n, 80, 90, 0.05)), "a long plateau, then generalisation: that is grokking."),
        ("train and test accuracy rise together: both 100% by step 100",
         _accuracy_table(memorise, _ramp(n, 0, 10)), "test accuracy reached 50% long before 2 × the memorisation step."),
        ("train accuracy 100% at step 100; test accuracy never above 20%",
         _accuracy_table(memorise, _ramp(n, 0, 10, 0.0, 0.2)),
         "train accuracy reached 99% but the final test accuracy is below 99%."),
        ("train accuracy stuck at 80%, test accuracy at 10%",
         _accuracy_table(_ramp(n, 0, 10, 0.0, 0.8), _ramp(n, 0, 10, 0.0, 0.1)),
         "train accuracy never reached 99%: check that case first."),
        ("train accuracy 100% at step 100; test accuracy passes 50% at exactly step 200 (= 2 × 100), 100% by step 300",
         _accuracy_table(memorise, _ramp(n, 10, 30, 0.0, 1.0)),
         "the rule says h ≤ 2m is 'generalised at once': at exactly 2m use ≤, not <."),
        ("train accuracy 100% at step 100; test accuracy 100% from step 800 to 1,100, then 95% at the end",
         _accuracy_table(memorise, np.where(np.arange(n) < 115, _ramp(n, 70, 80, 0.05), 0.95)),
         "judge generalisation by the FINAL test accuracy (metrics.test_acc.iloc[-1]), not by its best value."),
        ("train accuracy exactly 0.99 from step 100, test accuracy 100% from step 900",
         _accuracy_table(_ramp(n, 0, 10, 0.0, 0.99), _ramp(n, 80, 90, 0.0)),
         "'reached 99%' means ≥ 0.99 (an accuracy of exactly 0.99 counts)."),
        ("train accuracy 100% at step 100; test accuracy 60% at step 150 but 99% only at step 900",
         _accuracy_table(memorise, np.minimum(_ramp(n, 0, 15, 0.0, 0.6) + _ramp(n, 15, 90, 0.0, 0.4), 1.0)),
         "h is the first step with test accuracy ≥ 50% (not 99%): here h = 150 ≤ 2 × 100."),
    ]


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


def check_outcome(fn: Callable[[pd.DataFrame], str]) -> None:
    """fn(metrics) -> one of utils.outcomes.OUTCOMES, by the rule in utils.outcomes.outcome."""
    __tracebackhide__ = True
    name = "outcome"
    cases = _outcome_cases()
    answers = []
    for on, metrics, _ in cases:
        got = _call(name, fn, metrics.copy(), on=on)
        if got not in _outcomes.OUTCOMES:
            _fail(name, f"returned {_describe(got)}; expected one of the strings {list(_outcomes.OUTCOMES)}.", on,
                  _none_hint(got) or f"return exactly one of those strings, e.g. {_outcomes.outcome(metrics)!r}.")
        answers.append(got)
    for (on, metrics, hint), got in zip(cases, answers):
        want = _outcomes.outcome(metrics)
        if got != want:
            for mistake, knobs in _OUTCOME_MISTAKES:  # a known mistake explains every answer: name it
                if all(_outcome_rule(m, **knobs) == a for (_, m, _), a in zip(cases, answers)):
                    hint = mistake
                    break
            _fail(name, f"returned {got!r}; expected {want!r}.", on, hint)
    _passed(f"outcome classifies all {len(cases)} runs like the rule: grokked, generalised at once, memorised only, "
            "not fitted, and the edge cases.")


def _waves(p: int, freqs: Sequence[int], phase: Callable, w_scale: float = 2 * np.pi, fn=torch.cos) -> torch.Tensor:
    """fn(w_k · phase(a, b, c)) with w_k = w_scale·k/p: [K, p, p, p] (for the plausible mistakes)."""
    x = torch.arange(p, dtype=torch.float64)
    w = w_scale * torch.tensor(list(freqs), dtype=torch.float64) / p
    return fn(w[:, None, None, None] * phase(x[:, None, None], x[None, :, None], x[None, None, :]))


def check_difference_waves(fn: Callable[[int, Sequence[int]], torch.Tensor]) -> None:
    """fn(p, freqs) -> cos(w_k(a − b − c)) for each k in freqs: [K, p (a), p (b), p (c)], w_k = 2πk/p."""
    __tracebackhide__ = True
    name = "difference_waves"
    cases = [(7, [1, 3]), (13, [2, 5, 6]), (random.Random(6).choice([17, 23, 29]), [4])]
    for p, freqs in cases:
        on = f"p = {p}, freqs {freqs}"
        got = _call(name, fn, p, list(freqs), on=on)
        want = _mechanism.cosine_waves(p, freqs, "subtract")
        mistakes = [
            ("these are ADDITION's waves cos(w_k(a + b − c)); for a − b the phase is a − b − c.",
             lambda: _waves(p, freqs, lambda a, b, c: a + b - c)),
            ("the answer c is subtracted: cos(w_k(a − b − c)), not cos(w_k(a − b + c)).",
             lambda: _waves(p, freqs, lambda a, b, c: a - b + c)),
            ("w_k = 2πk/p: you left out the 2π.", lambda: _waves(p, freqs, lambda a, b, c: a - b - c, 1.0)),
            ("use the cosine (it peaks at the right answer c), not the sine.",
             lambda: _waves(p, freqs, lambda a, b, c: a - b - c, fn=torch.sin)),
        ]
        _expect_tensor(name, got, want, what="the waves", on=on, rtol=1e-6, atol=1e-9, exact_dtype=False,
                       mistakes=mistakes)
    _passed("difference_waves gives cos(w_k(a − b − c)): for every (a, b) each wave peaks at c = (a − b) mod p.")


def check_fourier_subtraction(fn: Callable) -> None:
    """fn(a [n], b [n], p, freqs, coeffs) -> logits [n, p] = Σ_k α_k cos(w_k(a - b - c)) for c = 0 … p-1."""
    __tracebackhide__ = True
    _check_fourier_algorithm(fn, "subtract", seed=9)


# --- end of chapter 6 ---------------------------------------------------------------------------------------------
