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
import torch

from utils.data import make_dataset, train_test_split
from utils.model import HookedTransformerConfig, make_model, model_config
from utils.train import loss_fn as reference_loss_fn

__all__ = ["CheckFailed", "check_make_dataset", "check_model_config", "check_loss_fn", "check_train_step"]

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
