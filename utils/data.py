"""The task: all p² pairs (a, b, =) labelled (a + b) mod p, and a seeded train/test split."""
from __future__ import annotations

import torch

OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "subtract": lambda a, b, p: (a - b) % p,
}


def check_p(p: int) -> None:
    """Raise a ValueError unless p is an integer ≥ 3."""
    if isinstance(p, bool) or not isinstance(p, int) or p < 3:
        raise ValueError(f"p must be an integer ≥ 3 (the modulus), got {p!r}")


def make_dataset(p: int, op: str = "add") -> tuple[torch.Tensor, torch.Tensor]:
    """Every input (a, b, =) with its label; row a·p + b holds the pair (a, b).

    Returns tokens [p², 3] (int64; the `=` token is p) and labels [p²] (int64).
    """
    check_p(p)
    if op not in OPERATIONS:
        raise ValueError(f"op must be one of {sorted(OPERATIONS)}, got {op!r}")
    a = torch.arange(p).repeat_interleave(p)  # [p²]: 0,0,…,0,1,1,…
    b = torch.arange(p).repeat(p)  # [p²]: 0,1,…,p-1,0,1,…
    equals = torch.full_like(a, p)
    tokens = torch.stack([a, b, equals], dim=1)
    return tokens, OPERATIONS[op](a, b, p)


def train_test_split(p: int, frac_train: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training and test pairs: a seeded random permutation of range(p²), cut at frac_train."""
    check_p(p)
    if not 0 < frac_train < 1:
        raise ValueError(f"frac_train must be strictly between 0 and 1, got {frac_train!r}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(p * p, generator=generator)
    n_train = int(round(frac_train * p * p))
    if n_train == 0 or n_train == p * p:
        raise ValueError(f"frac_train={frac_train} leaves an empty train or test set for p={p}")
    return order[:n_train].sort().values, order[n_train:].sort().values
