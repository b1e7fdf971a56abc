"""A run's configuration: TrainConfig (everything that determines the weights, hence the cache key), its presets,
the checks on every field, and chapter 6's robustness set."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field

import torch

from utils.data import OPERATIONS, train_test_split

__all__ = ["TrainConfig", "PRESETS", "MIN_TRAIN_PAIRS", "preset_fraction", "ROBUSTNESS_MODULI", "ROBUSTNESS_SEEDS",
           "ROBUSTNESS_OVERRIDES", "ROBUSTNESS_STOP", "robustness_config", "P_MAX"]

PRESETS = {
    # The paper's mainline run (Nanda et al. 2023, §3). It trains all 40,000 steps, as the paper did (no early stop).
    "paper": dict(lr=1e-3, weight_decay=1.0, frac_train=0.3, steps=40_000, checkpoint_every=100),
    # Meant to grok on a CPU in minutes for any seed and prime 59 ≤ p ≤ 127, after a plateau several times as long
    # as memorisation, and to stop itself once cleanup is over (see TrainConfig's stop rule; `steps` is only a
    # cap). benchmarks/sweep_presets.py measures that claim (results/sweep_presets.json, README "Training").
    "workshop": dict(lr=2e-3, weight_decay=2.0, frac_train=0.3, steps=10_000, checkpoint_every=25,
                     stop_margin=300, stop_test_acc=0.999, stop_loss_fall=2.0),
}
# A preset's smallest training set, in pairs: for a small modulus its frac_train grows to hold this many (in
# steps of 1%, at most half the pairs) unless frac_train is given. With 30% at p = 59 one seed stalled below
# grokking up to the step cap and with more data it grokked (benchmarks/results/sweep_presets_30pct.json); from
# p = 71 on 30% is already ≥ 1,500 pairs, so nothing changes. benchmarks/results/sweep_presets.json measures it.
MIN_TRAIN_PAIRS = {"workshop": 1500}
# Chapter 6's robustness runs (solutions/06_beyond.ipynb; benchmarks/train_many.py times them): the workshop preset,
# stop rule included, for these moduli and seeds, with a larger lr and weight decay (cleanup comes about twice as
# soon, and the chapter trains 6 runs while the book builds); checkpoints every 100 steps, metrics every 20.
# The chapter stops them sooner than the preset does, with ROBUSTNESS_STOP (chapter 9 keeps the preset's rule).
ROBUSTNESS_MODULI, ROBUSTNESS_SEEDS = (89, 97), (0, 1, 2)
ROBUSTNESS_OVERRIDES = dict(lr=3e-3, weight_decay=3.0, checkpoint_every=100, eval_every=20)
ROBUSTNESS_STOP = dict(stop_margin=200, stop_loss_fall=10.0)  # 200 steps ≥ 99.9%, test loss falling < 10× over them
P_MAX = 509  # the largest modulus: evaluation holds [p², p] logits (float32, and float64 for the loss): ~12·p³ bytes
LATER_FIELDS = {"attention_rate": 1.0, "loss": "cross_entropy", "orthogonal_grad": False, "grokfast_lamb": 0.0,
                "grokfast_alpha": 0.98, "init_from": "", "keep_train": 1.0}  # fields added later: their defaults
LOSSES = ("cross_entropy", "stablemax")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a run's label: it becomes part of a folder name
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # a cached run's folder name (run_name())


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run's weights (and so its cache key).

    The stop rule (off when stop_margin is 0: train exactly `steps` steps). With stop_margin = m > 0, training
    stops at the first evaluated step t ≥ m at which both hold:
    - grokked, and for a while: test accuracy ≥ stop_test_acc at every evaluation from t - m to t;
    - cleanup is over: the test loss fell by less than a factor stop_loss_fall over those m steps (during cleanup
      it falls by orders of magnitude; afterwards it levels off).
    So a stopped run holds the whole collapse of the test loss that `utils.progress.phase_boundaries` calls
    cleanup, plus at least m steps after grokking. `steps` is then a cap: a run that reaches it without
    meeting the rule ends there, with a warning that it did not grok.
    """

    p: int = 113
    frac_train: float = 0.3
    seed: int = 0  # seeds the initialisation and the train/test split
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 10
    steps: int = 40_000  # the number of steps, or with the stop rule the most it may take
    checkpoint_every: int = 100
    eval_every: int = 10
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    op: str = "add"
    # Chapters 8 and 9's knobs (each in the cache key only when it is not at its default; see key()):
    attention_rate: float = 1.0  # α: attention α·softmax + (1 - α)·uniform (1 = ordinary attention)
    loss: str = "cross_entropy"  # the training loss: "cross_entropy" or "stablemax" (metrics stay cross-entropy)
    orthogonal_grad: bool = False  # ⊥Grad: each weight's gradient without its component along the weight
    grokfast_lamb: float = 0.0  # Grokfast: g ← g + λ·EMA_α(g) before each update (0: off)
    grokfast_alpha: float = 0.98  # the EMA's decay α (used when grokfast_lamb > 0)
    init_from: str = ""  # the run name of a finished cached run whose final weights this run starts from
    keep_train: float = 1.0  # the share of the seed's training pairs trained on (the test pairs stay the same)
    stop_margin: int = 0  # 0: no early stop; else the stop rule's window in steps (see above)
    stop_test_acc: float = 0.999  # the test accuracy that counts as grokked
    stop_loss_fall: float = 2.0  # cleanup is over when the test loss falls less than this factor per window
    name: str = field(default="custom", compare=False)  # a label for the run (its preset): not in the cache key

    def __post_init__(self) -> None:
        if isinstance(self.betas, (list, tuple)):
            object.__setattr__(self, "betas", tuple(self.betas))
        _validate(self)

    @classmethod
    def preset(cls, name: str = "workshop", **overrides) -> "TrainConfig":
        """A named preset ("workshop" or "paper"), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        values = {**PRESETS[name], "name": name, **overrides}
        p = values.get("p")
        if name in MIN_TRAIN_PAIRS and "frac_train" not in overrides and type(p) is int and p >= 3:
            values["frac_train"] = preset_fraction(values["frac_train"], p, MIN_TRAIN_PAIRS[name])
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict, refusing unknown fields."""
        if not isinstance(values, dict):
            raise ValueError(f"a TrainConfig needs a dict of fields, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(values) - known))
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    def key(self) -> str:
        """A short hash of every field that affects the weights: the stop rule's only when it is on, and the
        knobs added later only when they are not at their defaults (so the keys made before them stay valid)."""
        values = {k: v for k, v in self.to_dict().items()
                  if k != "name" and not (k.startswith("stop_") and self.stop_margin == 0)
                  and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
        if self.grokfast_lamb == 0:  # the filter is off: its decay changes nothing
            values.pop("grokfast_alpha", None)
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(train_idx, test_idx) into the p² pairs: the seed's split, its training pairs cut to keep_train."""
        train_idx, test_idx = train_test_split(self.p, self.frac_train, self.seed)
        return train_idx[:self.n_train()], test_idx

    def n_train(self) -> int:
        """How many pairs the run trains on."""
        return max(1, round(self.keep_train * round(self.frac_train * self.p ** 2)))

    def run_name(self) -> str:
        return f"{self.name}-{self.op}-p{self.p}-seed{self.seed}-{self.key()}"


def preset_fraction(frac: float, p: int, min_pairs: int) -> float:
    """`frac`, or the smallest whole percentage (at most 50%) whose share of the p² pairs holds `min_pairs`."""
    needed = math.ceil(100 * min_pairs / p ** 2 - 1e-9) / 100
    return frac if needed <= frac else min(needed, 0.5)


def robustness_config(p: int, seed: int, **overrides) -> "TrainConfig":
    """One of chapter 6's robustness runs (ROBUSTNESS_OVERRIDES on the workshop preset), with any field overridden."""
    return TrainConfig.preset("workshop", p=p, seed=seed, **{**ROBUSTNESS_OVERRIDES, **overrides})


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _validate(cfg: TrainConfig) -> None:
    """Raise a ValueError naming the first invalid field and its valid range."""
    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"TrainConfig.{name} must be {rule}, got {getattr(cfg, name)!r}")

    def is_int(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    def is_number(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    # Prime: a + b mod p is then a field's addition, and the Fourier analysis (chapters 2-5) needs odd p.
    need(is_int(cfg.p) and 3 <= cfg.p <= P_MAX and _is_prime(cfg.p), "p",
         f"a prime between 3 and {P_MAX} (an odd prime: the course's Fourier basis needs odd p; at most {P_MAX} "
         "because evaluating all p² pairs holds [p², p] logits, about 12·p³ bytes)")
    need(is_number(cfg.frac_train) and 0 < cfg.frac_train < 1, "frac_train", "in the open interval (0, 1)")
    if is_int(cfg.p):
        n_train = round(cfg.frac_train * cfg.p ** 2)
        need(0 < n_train < cfg.p ** 2, "frac_train", f"large enough for one training pair and small enough "
             f"to leave one test pair out of p² = {cfg.p ** 2}")
    need(is_int(cfg.seed) and 0 <= cfg.seed < 2 ** 32, "seed", "an integer in [0, 2**32)")
    need(is_number(cfg.lr) and 0 < cfg.lr < math.inf, "lr", "a positive number")
    need(is_number(cfg.weight_decay) and 0 <= cfg.weight_decay < math.inf, "weight_decay", "a number ≥ 0")
    need(isinstance(cfg.betas, tuple) and len(cfg.betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in cfg.betas),
         "betas", "two numbers in [0, 1), e.g. (0.9, 0.98)")
    for name in ("steps", "checkpoint_every", "eval_every", "d_model", "n_heads", "d_mlp"):
        need(is_int(getattr(cfg, name)) and getattr(cfg, name) > 0, name, "a positive integer")
    need(is_int(cfg.warmup_steps) and cfg.warmup_steps >= 0, "warmup_steps", "an integer ≥ 0")
    need(cfg.d_model % cfg.n_heads == 0, "d_model", f"divisible by n_heads={cfg.n_heads}")
    need(isinstance(cfg.op, str) and cfg.op in OPERATIONS, "op", f"one of {sorted(OPERATIONS)}")
    _validate_knobs(cfg, need, is_number)
    need(is_int(cfg.stop_margin) and cfg.stop_margin >= 0, "stop_margin", "an integer ≥ 0 (0: no early stop)")
    need(cfg.stop_margin % cfg.eval_every == 0, "stop_margin", f"a multiple of eval_every={cfg.eval_every}")
    need(is_number(cfg.stop_test_acc) and 0 < cfg.stop_test_acc <= 1, "stop_test_acc", "in (0, 1]")
    need(is_number(cfg.stop_loss_fall) and 1 < cfg.stop_loss_fall < math.inf, "stop_loss_fall", "a number > 1")
    need(isinstance(cfg.name, str) and NAME_PATTERN.fullmatch(cfg.name) is not None and ".." not in cfg.name, "name",
         "a plain label of at most 64 letters, digits, '_', '-' or '.' (no path separators, no '..'), "
         "starting with a letter or digit")



def _validate_knobs(cfg: TrainConfig, need, is_number) -> None:
    """The checks on chapters 8 and 9's fields (see _validate)."""
    need(is_number(cfg.attention_rate) and 0 <= cfg.attention_rate <= 1, "attention_rate",
         "a number in [0, 1] (1: ordinary attention, 0: uniform attention)")
    need(cfg.loss in LOSSES, "loss", f"one of {list(LOSSES)}")
    need(isinstance(cfg.orthogonal_grad, bool), "orthogonal_grad", "True or False")
    need(is_number(cfg.grokfast_lamb) and 0 <= cfg.grokfast_lamb < math.inf, "grokfast_lamb", "a number ≥ 0 (0: off)")
    need(is_number(cfg.grokfast_alpha) and 0 <= cfg.grokfast_alpha < 1, "grokfast_alpha", "a number in [0, 1)")
    need(isinstance(cfg.init_from, str) and (cfg.init_from == "" or (
        RUN_NAME_PATTERN.fullmatch(cfg.init_from) is not None and ".." not in cfg.init_from)), "init_from",
         "'' or the run name of a finished cached run (its folder's name under runs/, e.g. run.run_dir.name)")
    need(is_number(cfg.keep_train) and 0 < cfg.keep_train <= 1, "keep_train", "in (0, 1]")
