"""Checks for chapter 1 (training): the dataset, the model's configuration, the loss and one training step."""
from __future__ import annotations

import copy
import numbers
import random
from collections.abc import Callable

import numpy as np
import torch

from utils.checks.compare import Mistakes, expect_tensor
from utils.checks.harness import call, describe, fail, guarded, none_hint, passed
from utils.checks.inputs import logit_cases, tiny_setup
from utils.data import make_dataset
from utils.model import HookedTransformerConfig, model_config
from utils.metrics import loss_fn as reference_loss_fn

__all__ = ["check_make_dataset", "check_model_config", "check_loss_fn", "check_train_step"]


@guarded("make_dataset")
def check_make_dataset(fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]]) -> None:
    """fn(p) -> (tokens [p², 3] int64, row a·p + b = (a, b, p); labels [p²] int64 = (a + b) mod p)."""
    __tracebackhide__ = True
    name = "make_dataset"
    moduli = [113, 3, 10, random.Random(0).choice([5, 11, 17, 23, 31, 53])]  # the paper's, the smallest, a non-prime
    for p in moduli:
        on = f"p = {p}"
        want_tokens, want_labels = make_dataset(p)
        got = call(name, fn, p, on=on, names=["p"])
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(name, f"should return a pair (tokens, labels); got {describe(got)}.", on,
                 none_hint(got) or "end with `return tokens, labels`.")
        a, b, equals = want_tokens[:, 0], want_tokens[:, 1], want_tokens[:, 2:]
        token_mistakes = [
            ("row a·p + b must hold (a, b); yours holds (b, a): a changes slowest (repeat_interleave), b fastest "
             "(repeat).", lambda: torch.stack([b, a, a * 0 + p], 1)),
            ("the last token is `=`, which is token p (one past the numbers 0…p-1), not p - 1.",
             lambda: torch.cat([want_tokens[:, :2], equals - 1], 1)),
            ("the last token is `=`, which is token p (one past the numbers 0…p-1), not 0.",
             lambda: torch.cat([want_tokens[:, :2], equals * 0], 1)),
        ]
        expect_tensor(name, got[0], want_tokens, what="the tokens (the first value returned)", on=on,
                      mistakes=token_mistakes)
        label_mistakes = [("labels are (a + b) mod p: you forgot the `% p`.", lambda: a + b),
                          ("labels are (a + b) mod p; yours are (a − b) mod p.", lambda: (a - b) % p),
                          ("labels are (a + b) mod p; yours are (a × b) mod p.", lambda: (a * b) % p)]
        expect_tensor(name, got[1], want_labels, what="the labels (the second value returned)", on=on,
                      mistakes=label_mistakes)
    passed(f"make_dataset matches utils.data for p = {', '.join(map(str, moduli))}: every (a, b, =) in order, "
           "labelled (a + b) mod p, as int64.")


_CONFIG_HINTS = {
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


@guarded("model_config")
def check_model_config(fn: Callable[[int], HookedTransformerConfig]) -> None:
    """fn(p) -> the paper's HookedTransformerConfig (utils.model.model_config(p))."""
    __tracebackhide__ = True
    name = "model_config"
    moduli = [113, 7, random.Random(1).choice([13, 29, 59, 97])]
    for p in moduli:
        on, want = f"p = {p}", model_config(p)
        got = call(name, fn, p, on=on, names=["p"])
        if isinstance(got, dict):
            fail(name, "returned a dict; expected a HookedTransformerConfig.", on,
                 "build it with HookedTransformerConfig(**your_dict) or pass the values as keyword arguments.")
        if not isinstance(got, HookedTransformerConfig):
            fail(name, f"expected a HookedTransformerConfig; got {describe(got)}.", on,
                 none_hint(got) or "return HookedTransformerConfig(...).")
        wrong = [f"{k} = {getattr(got, k)!r} (expected {getattr(want, k)!r}): {hint}"
                 for k, hint in _CONFIG_HINTS.items() if getattr(got, k) != getattr(want, k)]
        if wrong:
            fail(name, f"{len(wrong)} setting(s) differ from the paper's model:\n    " + "\n    ".join(wrong), on)
    passed(f"model_config gives the paper's architecture for p = {', '.join(map(str, moduli))}: 1 layer, "
           "4 heads of 32, MLP 512 with ReLU, no LayerNorm, vocabulary p + 1 in and p out.")


_FLOAT64_LOSS = ("late in training the loss is ~1e-7, below what float32 resolves: cast the logits to float64 "
                 "(logits.to(torch.float64)) BEFORE log_softmax.")


def _loss_mistakes(logits: torch.Tensor, labels: torch.Tensor) -> Mistakes:
    """Plausible wrong losses, each with the hint that explains it."""
    log_probs = logits[:, -1].double().log_softmax(-1)
    picked = log_probs.gather(-1, labels[:, None])
    return [
        ("only the last position predicts the answer: use logits[:, -1] (you averaged over every position).",
         lambda: torch.stack([reference_loss_fn(logits[:, i], labels) for i in range(logits.shape[1])]).mean()),
        ("the answer is read at the LAST position (the `=` token): logits[:, -1], not logits[:, 0].",
         lambda: reference_loss_fn(logits[:, 0], labels)),
        ("the answer is read at the last position: logits[:, -1] (you used the one before it).",
         lambda: reference_loss_fn(logits[:, -2], labels)),
        ("take the mean over the batch, not the sum.", lambda: -picked.sum()),
        ("cross-entropy is MINUS the mean log-probability of the right answer: check the sign.", lambda: picked.mean()),
        ("use log-probabilities (log_softmax), not probabilities (softmax).", lambda: -picked.exp().mean()),
        (_FLOAT64_LOSS, lambda: torch.nn.functional.cross_entropy(logits[:, -1].float(), labels)),
    ]


def _loss_shape(name: str, got: object, labels: torch.Tensor, on: str) -> object:
    """got as a 0-d tensor, or a CheckFailed for a Python number or one loss per example."""
    __tracebackhide__ = True
    if isinstance(got, numbers.Number):
        fail(name, f"returned a Python number ({got!r:.10}); expected a 0-d tensor.", on,
             "return the tensor itself (no .item()), so that loss.backward() can compute gradients.")
    if isinstance(got, torch.Tensor) and got.numel() == len(labels) and got.numel() > 1:
        fail(name, f"returned one loss per example (shape {tuple(got.shape)}); expected their mean.", on,
             "finish with .mean() over the batch.")
    return got.reshape(()) if isinstance(got, torch.Tensor) and got.numel() == 1 and got.ndim else got


@guarded("loss_fn")
def check_loss_fn(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """fn(logits [batch, pos, d_vocab_out], labels [batch]) -> mean cross-entropy at the last position: a 0-d
    float64 tensor attached to the logits' graph."""
    __tracebackhide__ = True
    name, cases = "loss_fn", logit_cases()
    for on, logits, labels in cases:
        want = reference_loss_fn(logits, labels)
        logits = logits.requires_grad_(True)  # the learner gets a copy that requires grad too
        got = _loss_shape(name, call(name, fn, logits, labels, on=on, names=["logits", "labels"]), labels, on)
        if (isinstance(got, torch.Tensor) and got.shape == () and want < 1e-5 and torch.isfinite(got)
                and abs(got.item() - want.item()) < 1e-5 and not np.isclose(got.item(), want.item(), rtol=1e-5)):
            fail(name, f"the loss = {got.item():.3g}; expected {want.item():.3g}.", on, _FLOAT64_LOSS)
        expect_tensor(name, got, want, what="the loss", on=on, rtol=1e-5, atol=1e-12, dtype_hint=_FLOAT64_LOSS,
                      mistakes=_loss_mistakes(logits.detach(), labels))
        if not got.requires_grad:
            fail(name, "the loss is detached from the logits: loss.backward() would not reach the model.", on,
                 "compute it with torch operations on `logits` (no .item(), .detach(), .numpy() or torch.tensor(...)).")
    passed(f"loss_fn matches the reference on all {len(cases)} inputs, including a loss of "
           f"{reference_loss_fn(*cases[-2][1:]).item():.1g} that float32 cannot resolve and logits that overflow exp().")


# --- train_step ---------------------------------------------------------------------------------------------------
def _reference_step(model, optimizer, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """One full-batch AdamW step on (tokens, labels); returns the loss before the step."""
    optimizer.zero_grad()
    loss = reference_loss_fn(model(tokens), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


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


def _params_after(step: Callable, n_steps: int) -> dict[str, torch.Tensor]:
    """The tiny model's parameters after n_steps calls of a (possibly wrong) step function."""
    model, optimizer, tokens, labels = tiny_setup()
    for _ in range(n_steps):
        step(model, optimizer, tokens, labels)
    return dict(model.named_parameters())


def _same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def _step_problem(params, want_params, before, step: int) -> tuple[str, str]:
    """(problem, hint) when the learner's step left other weights than the reference's."""
    if all(torch.equal(v, before[k]) for k, v in params.items()):
        hint = "parameters did not change: call optimizer.step() after loss.backward()."
    else:
        hint = next((text for text, wrong in _STEP_MISTAKES if _same_params(params, _params_after(wrong, step))),
                    "one step is: optimizer.zero_grad(); loss = loss_fn(model(tokens), labels); loss.backward(); "
                    "optimizer.step(); return loss.item().")
    key = next(k for k in params if not _same_params({k: params[k]}, {k: want_params[k]}))
    diff = (params[key] - want_params[key]).abs().max().item()
    return f"after step {step} the parameter {key} differs from the reference step's (largest difference {diff:.2g}).", hint


@guarded("train_step")
def check_train_step(fn: Callable) -> None:
    """fn(model, optimizer, tokens, labels) -> float: zero the gradients, full-batch loss, backward, optimiser step."""
    __tracebackhide__ = True
    name, n_steps = "train_step", 3
    model, optimizer, tokens, labels = tiny_setup()
    reference = copy.deepcopy(model)
    ref_optimizer = torch.optim.AdamW(reference.parameters(), **{k: optimizer.defaults[k]
                                                                  for k in ("lr", "weight_decay", "betas")})
    for step in range(1, n_steps + 1):
        on = f"a small model (p = 11, d_model 32), its AdamW optimiser, {len(labels)} training pairs; step {step}"
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        want = _reference_step(reference, ref_optimizer, tokens, labels)
        got = call(name, fn, model, optimizer, tokens, labels, on=on, names=["model", "optimizer", "tokens", "labels"],
                   mutable=("model", "optimizer"))
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            fail(name, f"returned a tensor{' that still holds the autograd graph' if got.requires_grad else ''}; "
                 "expected a Python float.", on, "return loss.item(): a float does not keep the graph alive.")
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            fail(name, f"should return the loss as a float; got {describe(got)}.", on, none_hint(got) or "return loss.item().")
        params, want_params = dict(model.named_parameters()), dict(reference.named_parameters())
        if not _same_params(params, want_params):
            problem, hint = _step_problem(params, want_params, before, step)
            fail(name, problem, on, hint)
        if not np.isclose(float(got), want, rtol=1e-5, atol=1e-9):
            after = reference_loss_fn(reference(tokens), labels).item()
            hint = ("that is the loss AFTER the step: return the loss you called .backward() on."
                    if np.isclose(float(got), after, rtol=1e-5) else "return the full-batch loss of this step.")
            fail(name, f"returned {float(got):.6g}; expected the loss {want:.6g}.", on, hint)
    passed(f"train_step matches a reference AdamW step for {n_steps} steps in a row: same loss, same weights.")
