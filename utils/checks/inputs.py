"""The inputs the checks feed the learner's functions, shared with their tests: tiny models, planted structure.

Everything is seeded and built without touching the learner's random state (`torch.random.fork_rng`), so a check
gives the same verdict every time and leaves the notebook's random numbers alone.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from utils.data import make_dataset, train_test_split
from utils.fourier import cos_sin_rows, fourier_basis
from utils.model import make_model, model_config
from utils.metrics import loss_fn as reference_loss_fn

__all__ = ["grid_ab", "raw_waves", "wave", "random_model", "tiny_setup", "logit_cases", "ablation_logits",
           "ch4_logit_cases", "memorising_logits", "planted_embedding", "embedding_cases", "planted_circuit",
           "key_frequency_cases", "cosine_logits", "planted_neurons", "sum_and_products", "accuracy_table", "ramp",
           "outcome_cases"]


# --- grids and waves ----------------------------------------------------------------------------------------
def grid_ab(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """a and b over the inputs a·p + b: two [p²] float64 tensors."""
    x = torch.arange(p, dtype=torch.float64)
    return x.repeat_interleave(p), x.repeat(p)


def raw_waves(p: int, freqs: Sequence[int], total: torch.Tensor, scale: float = 2 * np.pi) -> list[torch.Tensor]:
    """Un-normalised [cos, sin] rows of each frequency as functions of `total` (e.g. a + b), w_k = scale·k/p."""
    return [f(scale * k * total / p) for k in freqs for f in (torch.cos, torch.sin)]


def wave(p: int, k: int, kind: str) -> torch.Tensor:
    """The unit-norm cos or sin(2πkx/p) over x = 0 … p-1 (float64): a row of the Fourier basis."""
    return fourier_basis(p)[cos_sin_rows(k)[kind == "sin"]]


# --- small models -------------------------------------------------------------------------------------------
def random_model(p: int, seed: int, d_mlp: int = 24, d_model: int = 16, n_heads: int = 2):
    """A small randomly initialised model (the learner's random state untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make_model(model_config(p=p, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, seed=seed))


def tiny_setup(seed: int = 0):
    """A small model (p = 11), its AdamW optimiser and its training pairs (tokens, labels)."""
    p = 11
    model = random_model(p, seed, d_mlp=64, d_model=32, n_heads=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1.0, betas=(0.9, 0.98))
    tokens, labels = make_dataset(p)
    train_idx, _ = train_test_split(p, 0.3, seed)
    return model, optimizer, tokens[train_idx], labels[train_idx]


# --- chapter 1: logits for the loss -------------------------------------------------------------------------
def logit_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(description, logits [batch, 3, d_vocab_out] float32, labels [batch]) for the loss checks."""
    g = torch.Generator().manual_seed(0)
    small = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, -1.0], [2.0, 0.5, 0.0]],
                          [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 4.0]]])
    cases = [("2 examples, 3 classes, hand-written logits", small, torch.tensor([2, 0]))]
    for batch, classes, scale in [(16, 113, 3.0), (1, 7, 1.0)]:
        cases.append((f"{batch} example(s), {classes} classes, random logits (scale {scale})",
                       scale * torch.randn(batch, 3, classes, generator=g),
                       torch.randint(classes, (batch,), generator=g)))
    labels = torch.randint(113, (32,), generator=g)
    confident = torch.randn(32, 3, 113, generator=g)
    confident[torch.arange(32), -1, labels] += 20.0  # the right answer wins by ~20: loss ≈ 113·e⁻²⁰
    loss = reference_loss_fn(confident, labels).item()
    cases.append((f"32 examples, 113 classes, very confident logits (true loss {loss:.2g}, as late in training)",
                  confident, labels))
    huge = 1000.0 * torch.randn(8, 3, 113, generator=g)  # exp() of these overflows even in float64
    cases.append(("8 examples, 113 classes, huge logits (scale 1000: a naive exp() overflows)", huge,
                  torch.randint(113, (8,), generator=g)))
    return cases


# --- chapters 4–5: logits over every input ------------------------------------------------------------------
def ablation_logits(p: int, seed: int) -> torch.Tensor:
    """Logits [p², p]: cos(w_k(a+b-c)) at k = 1, 2, other structure, a per-answer constant and noise (float64)."""
    g = torch.Generator().manual_seed(seed)
    a, b = grid_ab(p)
    c = torch.arange(p, dtype=torch.float64)
    logits = sum(amp * torch.cos(2 * np.pi * k * (a[:, None] + b[:, None] - c) / p) for k, amp in ((1, 3.0), (2, 1.5)))
    logits = logits + 0.8 * torch.cos(2 * np.pi * 3 * (a[:, None] - c) / p) + torch.randn(p, generator=g)
    return logits + 0.3 * torch.randn(p * p, p, generator=g, dtype=torch.float64)


def ch4_logit_cases() -> list[tuple[str, torch.Tensor, list[int]]]:
    """(description, logits [p², p], freqs) for remove_frequencies and keep_frequencies."""
    random_logits = torch.randn(49, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return [("p = 11, logits with cosines at frequencies 1 and 2 plus other structure, freqs = [1, 2]",
             ablation_logits(11, 0), [1, 2]),
            ("p = 7, random logits, freqs = [3]", random_logits, [3]),
            ("p = 23, the same kind of logits, freqs = [2, 9, 1]", ablation_logits(23, 2), [2, 9, 1])]


def memorising_logits(p: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [n, p², p]: cosines at k = 1, 3 plus a memorised table on the training pairs, labels, train_idx)."""
    g = torch.Generator().manual_seed(seed)
    a, b = grid_ab(p)
    c = torch.arange(p, dtype=torch.float64)
    labels = ((a + b) % p).long()
    train_idx = torch.randperm(p * p, generator=g)[: p * p // 3].sort().values
    waves = sum(torch.cos(2 * np.pi * k * (a[:, None] + b[:, None] - c) / p) for k in (1, 3))
    memorised = torch.zeros(p * p, p, dtype=torch.float64)
    memorised[train_idx, labels[train_idx]] = 1.0
    noise = [0.5 * torch.randn(p * p, p, generator=g, dtype=torch.float64) for _ in range(n)]
    stack = torch.stack([s * waves + m * 6 * memorised + e
                         for s, m, e in zip(torch.linspace(0, 4, n), torch.linspace(1, 0, n), noise)])
    return stack, labels, train_idx


# --- chapters 2–3: planted embeddings and circuits ----------------------------------------------------------
def planted_embedding(p: int, freqs: Sequence[int], amplitudes: Sequence[float], seed: int):
    """A small model whose token embedding holds cos/sin waves of the given frequencies plus a little noise."""
    model = random_model(p, seed, d_mlp=16, d_model=12)
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


def embedding_cases() -> list[tuple[str, object]]:
    """(description, model with a planted embedding) for embedding_frequency_norms."""
    plans = [(113, [14, 35, 41, 42, 52], [3.0, 2.5, 2.0, 1.5, 1.2]), (23, [2, 9], [1.0, 2.0]),
             (13, [1, 2, 6], [1.2, 1.2, 3.0]), (31, [7], [1.0])]
    return [(f"a model with p = {p} whose embedding holds frequencies {freqs} (amplitudes {amplitudes}), a "
             "constant and a little noise", planted_embedding(p, freqs, amplitudes, seed))
            for seed, (p, freqs, amplitudes) in enumerate(plans)]


def planted_circuit(p: int, out_shares: dict[int, float], embed_shares: dict[int, float], seed: int = 0,
                    quiet: int | None = None):
    """A model (d_model = d_mlp = 16) whose W_L = W_out·W_U (W_out = I) writes the given squared-norm shares to
    the answer c, and whose embedding holds `embed_shares`; both over a 1e-3 noise floor. `quiet`: a frequency
    with (almost) no noise in W_U, so the tail of W_L's sorted shares holds one huge ratio."""
    model = random_model(p, seed, d_mlp=16, d_model=16)
    g = torch.Generator().manual_seed(seed)

    def planted(shares: dict[int, float]) -> torch.Tensor:  # [16, p]: two rows of waves per frequency
        W = 1e-3 * torch.randn(16, p, generator=g, dtype=torch.float64)
        for i, (k, share) in enumerate(shares.items()):
            W[2 * i] += math.sqrt(share) * wave(p, k, "cos")
            W[2 * i + 1] += math.sqrt(share) * wave(p, k, "sin")
        return W

    W_E, W_U = planted(embed_shares), planted(out_shares)
    if quiet is not None:
        rows = fourier_basis(p)[list(cos_sin_rows(quiet))]  # [2, p]
        W_U -= (W_U @ rows.T) @ rows  # the noise's component at `quiet` removed
    with torch.no_grad():
        model.embed.W_E[:p] = W_E.T.float() + 0.5  # a constant offset is not a frequency
        model.embed.W_E[p] = 10.0  # the "=" token is not a number
        model.blocks[0].mlp.W_out.copy_(torch.eye(16))
        model.unembed.W_U.copy_(W_U.float())
    return model


def key_frequency_cases() -> list[tuple[str, object]]:
    """(description, planted circuit) for key_frequencies: each case tells a different wrong rule apart."""
    plans = [  # p, W_L's shares (the keys), the embedding's extra echo 2·k, quiet frequency
        (113, {35: 0.3, 14: 0.26, 52: 0.24, 41: 0.2}, {28: 0.06}, None),
        (31, {5: 0.85, 12: 0.1, 2: 0.05}, {10: 0.04}, None),
        (23, {3: 0.6, 8: 0.4}, {6: 0.08}, 11),
        (37, {4: 0.5, 9: 0.3, 15: 0.2}, {8: 0.1}, None),
    ]
    cases = []
    for seed, (p, keys, echo, quiet) in enumerate(plans):
        (k2, share), = echo.items()
        described = (f"a model with p = {p} whose W_L writes to frequencies {list(keys)} (shares "
                     f"{list(keys.values())}) and whose embedding also holds the echo {k2} with share {share}")
        cases.append((described, planted_circuit(p, keys, {**keys, **echo}, seed, quiet)))
    return cases


def cosine_logits(p: int, freqs: Sequence[int], alphas: Sequence[float], extra: float, noise: float,
                  seed: int) -> torch.Tensor:
    """Logits [p, p, p] = Σ α_k cos(w_k(a+b-c)) + extra·cos(w_{k1}(a+b+c)) + a per-input offset + noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(p, dtype=torch.float64)
    a, b, c = x[:, None, None], x[None, :, None], x[None, None, :]
    waves = sum(alpha * torch.cos(2 * np.pi * k * (a + b - c) / p) for k, alpha in zip(freqs, alphas))
    mirror = torch.cos(2 * np.pi * freqs[0] * (a + b + c) / p)  # a+b+c: not the form
    offset = 3 * torch.randn(p, p, 1, generator=g, dtype=torch.float64)  # shared by every answer
    return waves + extra * mirror + offset + noise * torch.randn(p, p, p, generator=g, dtype=torch.float64)


def planted_neurons(p: int, k: int, seed: int) -> torch.Tensor:
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


def sum_and_products(p: int, d: int, product: float, noise: float, seed: int) -> torch.Tensor:
    """A grid [p (a), p (b), d]: f(a) + g(b) + product·u(a)·v(b) + noise, with features of different means and
    scales (so pooled and per-feature shares differ, and each feature must be centred on its own)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    scales = torch.linspace(0.5, 3.0, d, dtype=torch.float64)  # [d]
    f, u = rand(p, 1, d), rand(p, 1, d)  # functions of a
    h, v = rand(1, p, d), rand(1, p, d)  # functions of b
    means = 4 * rand(d) + 2.0  # an offset per feature
    return scales * (f + h + product * u * v + noise * rand(p, p, d)) + means


# --- chapter 6: metrics tables ------------------------------------------------------------------------------
def accuracy_table(train_acc: Sequence[float], test_acc: Sequence[float], every: int = 10) -> pd.DataFrame:
    """A metrics table like Run.metrics (evaluated every `every` steps) with the given accuracy curves."""
    steps = np.arange(len(train_acc)) * every
    train, test = np.asarray(train_acc, dtype=float), np.asarray(test_acc, dtype=float)
    return pd.DataFrame({"step": steps, "train_loss": 1 - train, "test_loss": 1 - test, "train_acc": train,
                         "test_acc": test, "elapsed_s": steps * 0.03})


def ramp(n: int, start: int, end: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """n evaluations: `low` until index start, rising linearly to `high` at index end, then flat."""
    return np.interp(np.arange(n), [start, end], [low, high])


def outcome_cases() -> list[tuple[str, pd.DataFrame, str]]:
    """(description, metrics, hint if the learner's answer differs) for check_outcome; eval every 10 steps."""
    n = 120  # steps 0 … 1,190
    memorise = ramp(n, 0, 10)  # train accuracy 100% at step 100
    return [
        ("train accuracy 100% at step 100, test accuracy flat near 5% until step 800, then 100% by step 900",
         accuracy_table(memorise, ramp(n, 80, 90, 0.05)), "a long plateau, then generalisation: that is grokking."),
        ("train and test accuracy rise together: both 100% by step 100",
         accuracy_table(memorise, ramp(n, 0, 10)), "test accuracy reached 50% long before 2 × the memorisation step."),
        ("train accuracy 100% at step 100; test accuracy never above 20%",
         accuracy_table(memorise, ramp(n, 0, 10, 0.0, 0.2)),
         "train accuracy reached 99% but the final test accuracy is below 99%."),
        ("train accuracy stuck at 80%, test accuracy at 10%",
         accuracy_table(ramp(n, 0, 10, 0.0, 0.8), ramp(n, 0, 10, 0.0, 0.1)),
         "train accuracy never reached 99%: check that case first."),
        ("train accuracy 100% at step 100; test accuracy passes 50% at exactly step 200 (= 2 × 100), 100% by step 300",
         accuracy_table(memorise, ramp(n, 10, 30, 0.0, 1.0)),
         "the rule says h ≤ 2m is 'generalised at once': at exactly 2m use ≤, not <."),
        ("train accuracy 100% at step 100; test accuracy 100% from step 800 to 1,100, then 95% at the end",
         accuracy_table(memorise, np.where(np.arange(n) < 115, ramp(n, 70, 80, 0.05), 0.95)),
         "judge generalisation by the FINAL test accuracy (metrics.test_acc.iloc[-1]), not by its best value."),
        ("train accuracy exactly 0.99 from step 100, test accuracy 100% from step 900",
         accuracy_table(ramp(n, 0, 10, 0.0, 0.99), ramp(n, 80, 90, 0.0)),
         "'reached 99%' means ≥ 0.99 (an accuracy of exactly 0.99 counts)."),
        ("train accuracy 100% at step 100; test accuracy 60% at step 150 but 99% only at step 900",
         accuracy_table(memorise, np.minimum(ramp(n, 0, 15, 0.0, 0.6) + ramp(n, 15, 90, 0.0, 0.4), 1.0)),
         "h is the first step with test accuracy ≥ 50% (not 99%): here h = 150 ≤ 2 × 100."),
    ]
