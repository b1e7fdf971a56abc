"""Training: a fast trainer that is exactly the HookedTransformer model, resumable cached runs, and a CLI.

Why the fast path is exact and fast. The loss reads only the last position (the `=` token), and the model has
one layer, so only three things matter: the query at position 2 (a constant: the input there is always `=`),
keys/values at positions 0 and 1 (each depends on one token, so p-row lookup tables hold them all), and the
MLP + unembed at position 2. We build the tables from the weights each step (autograd flows through them),
gather them per pair (the backward sums per token with a one-hot matmul rather than a slow scatter-add), and
run the MLP on one position instead of three. Same parameters, same maths; only
the order of floating-point sums changes (tests/test_train.py checks logits and gradients against
HookedTransformer). Everything else — analysis, hooks, plots — uses the HookedTransformer from `Run.model`.

    python -m utils.train --preset workshop --seed 0 --p 113 --out runs/my_run
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import einops
import pandas as pd
import torch
import torch.nn.functional as F
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from utils import REPO_ROOT
from utils.metrics import loss_fn  # the one loss (re-exported: utils.train.loss_fn)
from utils.data import OPERATIONS, make_dataset, train_test_split
from utils.model import CheckpointError, HookedTransformer, load_tensor_file, make_model, model_config

METRICS = ["step", "train_loss", "test_loss", "train_acc", "test_acc", "elapsed_s"]  # elapsed_s: training wall time
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
# steps of 1%, at most half the pairs) unless frac_train is given. 30% of p² is 1,044 pairs at p = 59, and there
# seed 3 stalled at 99.3% test accuracy up to the 10,000-step cap; with 40% it grokked. From p = 71 on (and for
# the course's p = 113) 30% is already ≥ 1,500 pairs, so nothing changes. results/sweep_presets.json measures it.
MIN_TRAIN_PAIRS = {"workshop": 1500}
# Chapter 6's robustness runs (solutions/06_beyond.ipynb; benchmarks/train_many.py times them): the workshop preset,
# stop rule included, for these moduli and seeds, with a larger lr and weight decay (cleanup comes about twice as
# soon, and the chapter trains 8 runs while the book builds); checkpoints every 100 steps, metrics every 20.
ROBUSTNESS_MODULI, ROBUSTNESS_SEEDS = (97, 113), (0, 1, 2, 3)
ROBUSTNESS_OVERRIDES = dict(lr=3e-3, weight_decay=3.0, checkpoint_every=100, eval_every=20)
P_MAX = 509  # the largest modulus: evaluation holds [p², p] logits (float32, and float64 for the loss), ~1.6 GB here
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a run's label: it becomes part of a folder name


class UnfinishedRunError(CheckpointError):
    """A run directory whose training has not finished: `train(cfg, run_dir)` resumes it."""

    def __init__(self, run_dir: Path, step: int, steps: int):
        self.run_dir, self.step, self.steps = run_dir, step, steps
        super().__init__(f"{run_dir} holds an unfinished run ({step} of at most {steps} steps). Call "
                         "train(cfg, run_dir) (or rerun the CLI with the same --out) to resume it.")


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became NaN or infinite; the run is left unfinished, its last finite state kept."""


# --- configuration -----------------------------------------------------------------------------
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
        """A short hash of every field that affects the weights (the stop rule's only when it is on)."""
        values = {k: v for k, v in self.to_dict().items()
                  if k != "name" and not (k.startswith("stop_") and self.stop_margin == 0)}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]

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
    need(is_int(cfg.stop_margin) and cfg.stop_margin >= 0, "stop_margin", "an integer ≥ 0 (0: no early stop)")
    need(cfg.stop_margin % cfg.eval_every == 0, "stop_margin", f"a multiple of eval_every={cfg.eval_every}")
    need(is_number(cfg.stop_test_acc) and 0 < cfg.stop_test_acc <= 1, "stop_test_acc", "in (0, 1]")
    need(is_number(cfg.stop_loss_fall) and 1 < cfg.stop_loss_fall < math.inf, "stop_loss_fall", "a number > 1")
    need(isinstance(cfg.name, str) and NAME_PATTERN.fullmatch(cfg.name) is not None and ".." not in cfg.name, "name",
         "a plain label of at most 64 letters, digits, '_', '-' or '.' (no path separators, no '..'), "
         "starting with a letter or digit")


# --- the fast, exact forward pass ---------------------------------------------------------------
def trainable_params(model: HookedTransformer) -> dict[str, torch.Tensor]:
    """The weights that train (biases stay frozen at zero), keyed by their HookedTransformer names."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class _Rows(torch.autograd.Function):
    """table[idx] (rows of a lookup table, [p, ...] → [n, ...]) whose backward sums per token by one-hot matmul.

    Autograd's backward of `table[idx]` is a scatter-add, which compiles to atomic adds on CPU: slow (it took
    ~40% of a step) and not deterministic (the order of the additions varies). `onehot(idx)ᵀ @ grad` computes
    the same sums as a matrix product: fast, and the same every run.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.n_rows = table.shape[0]
        return table[idx]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        onehot = F.one_hot(idx, ctx.n_rows).to(grad.dtype)  # [n, p]
        return (onehot.T @ grad.flatten(1)).view(ctx.n_rows, *grad.shape[1:]), None


def fast_logits(params: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logits at the last position for inputs (a, b, =): exactly HookedTransformer's, biases zero. [n] → [n, p]."""
    W_E, W_pos = params["embed.W_E"], params["pos_embed.W_pos"]
    W_Q, W_K, W_V, W_O = (params[f"blocks.0.attn.W_{x}"] for x in "QKVO")
    p, d_head = W_E.shape[0] - 1, W_Q.shape[-1]
    x0, x1 = W_E[:p] + W_pos[0], W_E[:p] + W_pos[1]  # [p, d_model]: the residual stream at positions 0, 1
    x2 = W_E[p] + W_pos[2]  # [d_model]: position 2 always holds "="
    q = einops.einsum(x2, W_Q, "d, h d e -> h e")
    keys = [einops.einsum(x, W_K, "... d, h d e -> ... h e") for x in (x0, x1, x2)]
    scores = [einops.einsum(k, q, "... h e, h e -> ... h") / math.sqrt(d_head) for k in keys]  # [p, h] ×2, [h]
    values = [einops.einsum(x, W_V, W_O, "... d, h d e, h e m -> ... h m") for x in (x0, x1, x2)]
    rows = _Rows.apply
    attn = torch.stack([rows(scores[0], a), rows(scores[1], b), scores[2].expand(len(a), -1)], dim=-1).softmax(-1)
    resid = (x2 + einops.einsum(attn[..., 0], rows(values[0], a), "n h, n h m -> n m")  # [n, d_model]
             + einops.einsum(attn[..., 1], rows(values[1], b), "n h, n h m -> n m")
             + einops.einsum(attn[..., 2], values[2], "n h, h m -> n m"))
    hidden = torch.relu(resid @ params["blocks.0.mlp.W_in"])  # [n, d_mlp]
    resid = resid + hidden @ params["blocks.0.mlp.W_out"]
    return resid @ params["unembed.W_U"]  # [n, p]


class _FlushSubnormalGrad(torch.autograd.Function):
    """Identity; its backward zeroes gradients smaller than float32's smallest normal number (1.2e-38).

    Late in training the float64 loss sends back float32 gradients of ~1e-40 for very wrong answers: subnormal
    numbers, which make every matmul after them several times slower. torch.set_flush_denormal only reaches the
    calling thread, not the worker threads, so we zero them at the source; gradients change by < 1.2e-38.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(grad.abs() < torch.finfo(grad.dtype).tiny, 0.0)


def train_loss(params: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return loss_fn(_FlushSubnormalGrad.apply(fast_logits(params, a, b)), labels)


class Compiled:
    """torch.compile(fn), falling back to plain fn (same maths, slower, rounded differently) if compiling fails.

    Whether a run was compiled is not part of its cache key: both compute the same function, but rounding differs
    and training amplifies it (weights ~1% apart after a few hundred steps), so each run's state.pt records which
    way each stretch was trained ("compiled": one bool per training session). A resumed run is bit-identical to
    an uninterrupted one when both are trained the same way.
    """

    def __init__(self, fn, enabled: bool):
        self.fn, self.compiled = fn, None
        if enabled:
            try:
                self.compiled = torch.compile(fn, dynamic=False)
            except Exception as err:  # e.g. an unsupported platform
                self._give_up(err)

    def _give_up(self, err: Exception) -> None:
        warnings.warn(f"torch.compile unavailable ({type(err).__name__}: {str(err)[:150]}); training without it: "
                      "the same maths, about 2x slower, but not bit-identical to compiled training (sums are "
                      "rounded in another order, and training amplifies it: weights differ by ~1% after a few "
                      "hundred steps).", RuntimeWarning, stacklevel=3)
        self.compiled = None

    @property
    def active(self) -> bool:
        """Whether calls run the compiled function (False when off or after falling back)."""
        return self.compiled is not None

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as err:
                self._give_up(err)
        return self.fn(*args)


def _compile_default() -> bool:
    return os.environ.get("GROKKING_COMPILE", "1").lower() not in {"0", "false", "no"}


# --- runs on disk --------------------------------------------------------------------------------
# A run directory holds config.json, state.pt (everything needed to resume: weights, optimiser state, metrics, the
# config's key; once finished also why it stopped) and checkpoints/step_NNNNNN.pt (weights, step and config key).
# Every file is written atomically; every writer holds the directory's file lock (the one get_run takes).
LOCK_NOTICE_S = 3.0  # how long to wait for a run directory's lock before saying who holds it


def _atomic_save(obj: object, path: Path) -> None:
    """Write with torch.save to a temporary file, fsync, then rename: a reader sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete half-written files left by a writer that died (only call while holding the run's lock)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _lock(run_dir: Path) -> FileLock:
    """run_dir's lock: one object per path in this process (so holding it twice is fine), shared with get_run."""
    return FileLock(str(run_dir) + ".lock", is_singleton=True)


def _owner_file(run_dir: Path) -> Path:
    return Path(str(run_dir) + ".lock.owner")


def _acquire(run_dir: Path) -> FileLock:
    """Take run_dir's lock; if another process holds it, say which (after LOCK_NOTICE_S seconds) and wait."""
    lock = _lock(run_dir)
    try:
        lock.acquire(timeout=LOCK_NOTICE_S)
    except Timeout:
        try:
            holder = _owner_file(run_dir).read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        print(f"{run_dir} is in use: waiting for process {holder} to release it (it is training or reading "
              "this run; stop that process to go on) …", file=sys.stderr, flush=True)
        lock.acquire()
    if lock.lock_counter == 1:  # the first hold in this process: say who holds it
        try:
            _owner_file(run_dir).write_text(f"{os.getpid()} on {socket.gethostname()}\n")
        except OSError:
            pass
    return lock


@contextmanager
def _holding(run_dir: Path) -> Iterator[None]:
    lock = _acquire(run_dir)
    try:
        yield
    finally:
        lock.release()


def _check_run_dir(run_dir: str | Path) -> Path:
    """A usable run directory path: not empty, and not an existing file."""
    if isinstance(run_dir, str) and not run_dir.strip():
        raise ValueError("the run directory is an empty string; give a folder name, e.g. runs/my_run")
    if not isinstance(run_dir, (str, Path)):
        raise TypeError(f"a run directory must be a str or Path, got {type(run_dir).__name__}")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file, not a run directory; choose a folder name (it is created)")
    return run_dir


def _checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}.pt"


def _read_checkpoint(path: Path, run_dir: Path) -> dict:
    """Load a tensor-only file, or raise a CheckpointError telling the user to delete the run directory."""
    try:
        return load_tensor_file(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err} To retrain this run, delete the run directory {run_dir}.") from None


def _corrupt(path: Path, run_dir: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}. Delete the run directory {run_dir} and train it again.")


def _check_key(saved: object, cfg: TrainConfig, path: Path, run_dir: Path) -> None:
    """Refuse a file written for another configuration than run_dir/config.json's (edited or copied in)."""
    key = saved.get("config_key") if isinstance(saved, dict) else None
    if key != cfg.key():
        raise _corrupt(path, run_dir, f"was written for another configuration (key {key!r}) than "
                       f"{run_dir / 'config.json'} describes (key {cfg.key()!r}): the config was edited or the "
                       "files copied from another run")


def _params_for(model: HookedTransformer, saved: dict, path: Path, run_dir: Path) -> None:
    """Copy saved weights into model, checking names, shapes and that they are finite."""
    params = trainable_params(model)
    if not isinstance(saved, dict) or set(saved) != set(params) or any(
            not isinstance(saved[k], torch.Tensor) or saved[k].shape != v.shape for k, v in params.items()):
        raise _corrupt(path, run_dir, "the saved weights do not match the run's configuration")
    if not all(torch.isfinite(v).all() for v in saved.values()):
        raise _corrupt(path, run_dir, "the saved weights hold NaN or infinite values")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def _check_optimizer_state(saved: object, params: dict[str, torch.Tensor], step: int, path: Path,
                           run_dir: Path) -> None:
    """Refuse an AdamW state dict (torch's format) whose moments do not fit the weights or the saved step."""
    state = saved.get("state") if isinstance(saved, dict) else None
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    ok = (isinstance(state, dict) and isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
          and groups[0].get("params") == list(range(len(params))))
    if ok and state:
        for j, w in enumerate(params.values()):
            moments = state.get(j)
            ok = ok and isinstance(moments, dict) and all(
                isinstance(moments.get(k), torch.Tensor) and moments[k].shape == w.shape
                for k in ("exp_avg", "exp_avg_sq")) and isinstance(moments.get("step"), torch.Tensor) and int(
                moments["step"]) == step
    if not ok or (step > 0 and not state) or (step == 0 and state):
        raise _corrupt(path, run_dir, f"its optimiser state does not match the run's weights at step {step}")


@dataclass
class Run:
    """A finished run: its config, metrics table, final model and checkpoints.

    stop_reason says how it ended: "grokked" (stopped early by the config's stop rule), "all steps" (no stop rule:
    trained cfg.steps steps) or "step cap" (the stop rule was on, but the run hit cfg.steps without grokking).
    """

    config: TrainConfig
    run_dir: Path
    metrics: pd.DataFrame
    checkpoint_steps: list[int]
    model: HookedTransformer = field(repr=False)
    stop_reason: str = "all steps"

    @property
    def final_step(self) -> int:
        """The number of steps trained."""
        return int(self.metrics.step.iloc[-1])

    @property
    def stopped_at(self) -> int | None:
        """The step at which the stop rule ended training early, or None if it ran to cfg.steps."""
        return self.final_step if self.stop_reason == "grokked" else None

    @property
    def train_idx(self) -> torch.Tensor:
        return train_test_split(self.config.p, self.config.frac_train, self.config.seed)[0]

    @property
    def test_idx(self) -> torch.Tensor:
        return train_test_split(self.config.p, self.config.frac_train, self.config.seed)[1]

    def dataset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All p² inputs and labels (tokens [p², 3], labels [p²])."""
        return make_dataset(self.config.p, self.config.op)

    def model_at(self, step: int) -> HookedTransformer:
        """The model as it was after `step` updates (one of checkpoint_steps)."""
        if step not in self.checkpoint_steps:
            nearest = min(self.checkpoint_steps, key=lambda s: abs(s - step))
            raise ValueError(f"no checkpoint at step {step}; the nearest is {nearest} "
                             f"(checkpoints every {self.config.checkpoint_every} steps: see run.checkpoint_steps)")
        return _model_from_file(self.config, _checkpoint_path(self.run_dir, step), self.run_dir, step)


def _model_from_file(cfg: TrainConfig, path: Path, run_dir: Path, step: int) -> HookedTransformer:
    saved = _read_checkpoint(path, run_dir)
    _check_key(saved, cfg, path, run_dir)
    if saved.get("step") != step:
        raise _corrupt(path, run_dir, f"holds step {saved.get('step')!r}, not {step}")
    model = make_model(model_cfg(cfg))
    _params_for(model, saved.get("params"), path, run_dir)
    return model


def model_cfg(cfg: TrainConfig, device: str = "cpu"):
    return model_config(p=cfg.p, d_model=cfg.d_model, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, seed=cfg.seed, device=device)


def _read_config(run_dir: Path) -> TrainConfig:
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a run directory (a folder holding config.json, state.pt "
                              "and checkpoints/).")
    path = run_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json). "
                                "Train one with `python -m utils.train --out DIR`.")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, RecursionError, ValueError, TypeError) as err:
        message = "too deeply nested" if isinstance(err, RecursionError) else str(err)[:300]
        raise CheckpointError(f"{path} is unreadable or invalid ({type(err).__name__}: {message}). Delete the run "
                              f"directory {run_dir} and train it again.") from None


STOP_REASONS = ("grokked", "all steps", "step cap")


def _read_state(run_dir: Path, cfg: TrainConfig) -> dict | None:
    """run_dir/state.pt checked against cfg (keys, config key, metrics), or None if there is none yet."""
    path = run_dir / "state.pt"
    if not path.exists():
        return None
    state = _read_checkpoint(path, run_dir)
    if not isinstance(state, dict) or not {"step", "params", "optimizer", "metrics", "config_key"} <= set(state):
        raise _corrupt(path, run_dir, "is not a training state written by this version of utils.train")
    _check_key(state, cfg, path, run_dir)
    step = state["step"]
    if not isinstance(step, int) or not 0 <= step <= cfg.steps:
        raise _corrupt(path, run_dir, f"holds an impossible step {step!r}")
    if state.get("stopped", "all steps") not in STOP_REASONS:
        raise _corrupt(path, run_dir, f"holds an unknown stop reason {state.get('stopped')!r}")
    state["metrics"] = _metrics_from_state(state["metrics"], step, path, run_dir)
    return state


def _metrics_from_state(saved: object, step: int, path: Path, run_dir: Path) -> dict[str, list]:
    """The metrics history saved in state.pt as lists, checked: every column, equal lengths, steps increasing up
    to the saved step, finite values."""
    ok = isinstance(saved, dict) and set(saved) == set(METRICS) and all(
        isinstance(v, torch.Tensor) and v.ndim == 1 and v.dtype.is_floating_point for v in saved.values())
    ok = ok and len({len(v) for v in saved.values()}) == 1 and len(saved["step"]) > 0
    if ok:
        history = {k: v.tolist() for k, v in saved.items()}
        steps = history["step"]
        ok = (all(b > a for a, b in zip(steps, steps[1:])) and steps[0] == 0 and steps[-1] <= step
              and all(math.isfinite(x) for v in history.values() for x in v))
    if not ok:
        raise _corrupt(path, run_dir, "its metrics history is damaged (missing columns, unequal lengths, steps "
                       f"that do not run from 0 to at most the saved step {step}, or non-finite values)")
    history["step"] = [int(s) for s in history["step"]]
    return history


def _finished(state: dict | None) -> bool:
    return state is not None and "stopped" in state


def load_run(run_dir: str | Path) -> Run:
    """Open a finished run directory (see `train`); an UnfinishedRunError if its training has not ended."""
    run_dir = _check_run_dir(run_dir)
    cfg = _read_config(run_dir)
    state = _read_state(run_dir, cfg)
    if not _finished(state):
        raise UnfinishedRunError(run_dir, 0 if state is None else state["step"], cfg.steps)
    metrics = pd.DataFrame(state["metrics"]).astype({"step": int})
    steps = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt"))
    model = make_model(model_cfg(cfg))
    _params_for(model, state["params"], run_dir / "state.pt", run_dir)
    return Run(config=cfg, run_dir=run_dir, metrics=metrics, checkpoint_steps=steps, model=model,
               stop_reason=state["stopped"])


# --- the training loop ---------------------------------------------------------------------------
def _evaluate(params: dict, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
              train_idx: torch.Tensor, test_idx: torch.Tensor, logits_fn=fast_logits) -> dict[str, float]:
    """Train/test loss and accuracy on all p² pairs."""
    with torch.no_grad():
        logits = logits_fn(params, a, b)
        out = {}
        for split, idx in (("train", train_idx), ("test", test_idx)):
            out[f"{split}_loss"] = loss_fn(logits[idx], labels[idx]).item()
            out[f"{split}_acc"] = (logits[idx].argmax(-1) == labels[idx]).double().mean().item()
    return out


def should_stop(cfg: TrainConfig, history: dict[str, list]) -> bool:
    """Whether the stop rule (see TrainConfig) ends training at the last evaluated step of `history`."""
    if cfg.stop_margin == 0:
        return False
    steps, acc, loss = history["step"], history["test_acc"], history["test_loss"]
    since = steps[-1] - cfg.stop_margin  # the window's first step
    if since < 0 or since not in steps:
        return False
    j = steps.index(since)
    return (all(x >= cfg.stop_test_acc for x in acc[j:])
            and math.log(loss[j]) - math.log(loss[-1]) < math.log(cfg.stop_loss_fall))


def _diverged(label: str, step: int, values: dict[str, float] | None = None) -> TrainingDivergedError:
    what = f"the loss is {values['train_loss']} (train) / {values['test_loss']} (test)" if values else \
        "the weights hold NaN or infinite values"
    return TrainingDivergedError(f"{label} diverged at step {step}: {what}. The learning rate is probably too "
                                 "large (or the weight decay too strong); the run directory keeps its last finite "
                                 "checkpoint and is not marked finished. Lower lr and train it in a new directory.")


def _check_finite(values: dict[str, float], label: str) -> None:
    """Raise TrainingDivergedError if a recorded loss is NaN or infinite."""
    if not (math.isfinite(values["train_loss"]) and math.isfinite(values["test_loss"])):
        raise _diverged(label, values["step"], values)


def _loop(cfg: TrainConfig, start: int, fresh: bool, label: str, progress: bool, update: Callable[[int], None],
          evaluate: Callable[[int], bool], checkpoint: Callable[[int, bool], None],
          postfix: Callable[[], dict]) -> None:
    """Steps start … cfg.steps: update(step) takes one; evaluate(step) records metrics every eval_every steps and
    says whether to stop; checkpoint(step, final) saves on schedule, when stopping, and at the end.

    A fresh run is evaluated and saved at step 0 first (a resumed one already was).
    Subnormal numbers are flushed meanwhile (late in training gradients go subnormal: steps get ~3x slower without).
    The progress bar redraws at most once a second: in a notebook every redraw is a message to the front end, and a
    kernel that sends thousands of them during one cell can drop some (nbval then times out waiting for the cell).
    """
    torch.set_flush_denormal(True)
    bar = tqdm(total=cfg.steps, initial=start, desc=label, disable=not progress, dynamic_ncols=True, mininterval=1.0)
    try:
        if fresh:
            evaluate(0)
            checkpoint(0, False)
        for step in range(start, cfg.steps):
            update(step)
            done = step + 1
            stop = False
            if done % cfg.eval_every == 0 or done == cfg.steps:
                stop = evaluate(done)
                bar.set_postfix(postfix(), refresh=False)  # drawn by update, at most once a second
                bar.update(done - bar.n)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or stop:
                checkpoint(done, stop or done == cfg.steps)
            if stop:
                break
    finally:
        bar.close()
        torch.set_flush_denormal(False)


def _stop_reason(cfg: TrainConfig, stopped_early: bool) -> str:
    return "grokked" if stopped_early else "all steps" if cfg.stop_margin == 0 else "step cap"


def _announce_end(cfg: TrainConfig, label: str, reason: str, history: dict[str, list]) -> None:
    """Warn when the stop rule was on but the run reached its step cap without meeting it."""
    if reason == "step cap":
        warnings.warn(f"{label}: reached the step cap ({cfg.steps} steps) without meeting the stop rule (test "
                      f"accuracy {history['test_acc'][-1]:.1%}; the rule needs ≥ {cfg.stop_test_acc:.1%} for "
                      f"{cfg.stop_margin} steps and a levelled-off test loss): it has not grokked (or not finished "
                      "cleaning up). Train with more --steps, a larger weight decay or more training data.",
                      RuntimeWarning, stacklevel=3)


def _check_device(device: str | None) -> str:
    """The device to train on (default: cuda when available), refusing unknown or unavailable ones."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                         f"{'built without CUDA' if torch.version.cuda is None else 'no GPU found'}); use 'cpu'")
    return device


def _prepare_dir(cfg: TrainConfig, run_dir: Path) -> None:
    """Create run_dir (or check that it holds cfg's run), and remove half-written files. Hold its lock."""
    if run_dir.is_dir() and not (run_dir / "config.json").exists() and any(
            not (x.name.startswith(".") and x.name.endswith(".tmp")) for x in run_dir.iterdir()):
        raise ValueError(f"{run_dir} already exists and holds files but no config.json: it is not a run directory. "
                         "Choose a new folder for the run.")
    if (run_dir / "config.json").exists():
        if _read_config(run_dir) != cfg:
            raise ValueError(f"{run_dir} already holds a run with a different configuration; "
                             "choose another output directory or delete that one.")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.json").exists():
        _atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    _remove_stale_temporaries(run_dir)


def _state(cfg: TrainConfig, step: int, params: dict[str, torch.Tensor], optimizer: dict,
           history: dict[str, list], compiled: list[bool], stopped: str | None) -> dict:
    """What state.pt holds (weights on the CPU)."""
    state = {"config_key": cfg.key(), "step": step, "params": params, "optimizer": optimizer,
             "metrics": {k: torch.tensor(v, dtype=torch.float64) for k, v in history.items()},
             "compiled": compiled}
    if stopped is not None:
        state["stopped"] = stopped
    return state


def train(cfg: TrainConfig | None = None, run_dir: str | Path | None = None, *, device: str | None = None,
          compile: bool | None = None, progress: bool = True) -> Run:
    """Train (or resume) the run `cfg` in `run_dir` and return it. Without run_dir, use the cache (`get_run`).

    Writes run_dir/config.json, run_dir/checkpoints/step_NNNNNN.pt every cfg.checkpoint_every steps and at the
    end, and run_dir/state.pt (everything needed to resume) with each checkpoint — all atomically, holding the
    directory's lock throughout (another writer waits). A finished run is returned as it is, never retrained.
    """
    cfg = cfg or TrainConfig.preset("workshop")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if run_dir is None:
        return get_run(cfg, device=device, compile=compile, progress=progress)
    run_dir = _check_run_dir(run_dir)
    device = _check_device(device)
    compile = _compile_default() if compile is None else compile
    with _holding(run_dir):
        _prepare_dir(cfg, run_dir)
        if _finished(_read_state(run_dir, cfg)):
            if progress:
                print(f"{run_dir} is already finished; loading it.", file=sys.stderr)
            return load_run(run_dir)
        _train_locked(cfg, run_dir, device, compile, progress)
        return load_run(run_dir)


def _train_locked(cfg: TrainConfig, run_dir: Path, device: str, compile: bool, progress: bool) -> None:
    """train's body: run_dir is prepared and locked."""
    model = make_model(model_cfg(cfg, device))
    params = trainable_params(model)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  fused=True)
    history: dict[str, list] = {k: [] for k in METRICS}
    state = _read_state(run_dir, cfg)
    start, compiled_before = 0, []
    if state is not None:  # resume exactly where the last checkpoint left off
        _params_for(model, state["params"], run_dir / "state.pt", run_dir)
        _check_optimizer_state(state["optimizer"], params, state["step"], run_dir / "state.pt", run_dir)
        optimizer.load_state_dict(state["optimizer"])
        history, start = state["metrics"], state["step"]
        compiled_before = list(state.get("compiled", []))

    tokens, labels = (t.to(device) for t in make_dataset(cfg.p, cfg.op))
    train_idx, test_idx = (t.to(device) for t in train_test_split(cfg.p, cfg.frac_train, cfg.seed))
    a, b = tokens[:, 0], tokens[:, 1]
    a_tr, b_tr, y_tr = a[train_idx], b[train_idx], labels[train_idx]
    step_loss, eval_logits = Compiled(train_loss, compile), Compiled(fast_logits, compile)
    label = cfg.run_name()

    clock = time.perf_counter() - (history["elapsed_s"][-1] if history["elapsed_s"] else 0.0)

    def evaluate(step: int) -> bool:
        values = {"step": step, **_evaluate(params, a, b, labels, train_idx, test_idx, eval_logits),
                  "elapsed_s": time.perf_counter() - clock}
        _check_finite(values, label)
        for k, v in values.items():
            history[k].append(v)
        return should_stop(cfg, history)

    def checkpoint(step: int, final: bool) -> None:
        cpu = {k: v.detach().cpu().clone() for k, v in params.items()}
        if not all(torch.isfinite(v).all() for v in cpu.values()):
            raise _diverged(label, step)
        stopped = _stop_reason(cfg, step < cfg.steps) if final else None
        _atomic_save({"config_key": cfg.key(), "step": step, "params": cpu}, _checkpoint_path(run_dir, step))
        _atomic_save(_state(cfg, step, cpu, optimizer.state_dict(), history,
                            compiled_before + [step_loss.active], stopped), run_dir / "state.pt")
        if final:
            _announce_end(cfg, label, stopped, history)

    def update(step: int) -> None:
        for group in optimizer.param_groups:  # linear warm-up, then constant
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
        optimizer.zero_grad(set_to_none=True)
        step_loss(params, a_tr, b_tr, y_tr).backward()
        optimizer.step()

    def postfix() -> dict[str, str]:
        return {"train_loss": f"{history['train_loss'][-1]:.2e}", "test_loss": f"{history['test_loss'][-1]:.2e}",
                "train_acc": f"{history['train_acc'][-1]:.1%}", "test_acc": f"{history['test_acc'][-1]:.1%}"}

    _loop(cfg, start, state is None, label, progress, update, evaluate, checkpoint, postfix)
    _atomic_write_text(run_dir / "metrics.csv", pd.DataFrame(history).to_csv(index=False))


def runs_dir() -> Path:
    """Where cached runs live: $GROKKING_RUNS_DIR, or runs/ at the repository root."""
    return Path(os.environ.get("GROKKING_RUNS_DIR") or REPO_ROOT / "runs")


def _check_cached(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse a cache folder that holds something other than cfg's run (copied or hand-edited)."""
    if not (run_dir / "config.json").exists():
        return
    held = _read_config(run_dir)
    if held != cfg:
        raise CheckpointError(f"the cache folder {run_dir} holds a run whose config.json does not match its name "
                              f"(config key {held.key()}, asked for {cfg.key()}): it was copied or edited by hand. "
                              f"Delete {run_dir} and it will be trained again.")


def get_run(cfg: TrainConfig | None = None, *, device: str | None = None, compile: bool | None = None,
            progress: bool = True) -> Run:
    """The cached run for cfg (default: the workshop preset), training or resuming it if needed.

    A file lock makes concurrent callers (two notebooks at once) train it once and share it; a caller that has to
    wait says which process holds the lock.
    """
    cfg = cfg or TrainConfig.preset("workshop")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    run_dir = runs_dir() / cfg.run_name()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with _holding(run_dir):
        _check_cached(cfg, run_dir)
        if (run_dir / "state.pt").exists():
            try:
                return load_run(run_dir)
            except UnfinishedRunError:
                pass
        return train(cfg, run_dir, device=device, compile=compile, progress=progress)


# --- many runs at once ---------------------------------------------------------------------------
# `train_many` trains several configurations together: their weights are stacked along a leading model axis
# [M, ...], one forward/backward pass computes every model's loss (the models never interact: the total
# loss is a sum, so each model's gradient is its own), and a batched AdamW updates them all. Configurations
# may differ in seed, lr, weight decay, betas, warm-up, data fraction and operation; training sets of
# different sizes are padded to a common length with zero-weight rows. Each run is written to its own run
# directory exactly as `train` writes it, so `load_run`, `get_run` and `train` (to resume) all work on it.
#
# On a CPU the work is compute-bound, so batching saves the per-step overheads but not the arithmetic: on the
# course's 2-core machine a batch took 1.0-1.6x as long as the same runs one after another with `train`, whose step
# is compiled (benchmarks/train_many.py measures the ratio). On a GPU, where one small model leaves the device
# mostly idle, a batch should cost little more than one run (not yet measured). torch.compile is off by default
# here: on the same CPU, with torch 2.13, the compiled batched step was 1.1-1.3x slower than the eager one.

# What must be equal for two configurations to train in the same batch (the tensors' shapes and the loop).
BATCH_FIELDS = ("p", "d_model", "n_heads", "d_mlp", "steps", "checkpoint_every", "eval_every")
ADAM_EPS = 1e-8  # torch.optim.AdamW's default, which `train` uses


def _gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table[m, idx[m, i]] for every model m: [M, t, ...], [M, n] → [M, n, ...].

    index_select on the flattened table: its backward is a fast index_add_ (advanced indexing's backward,
    an accumulating index_put, is ~20x slower on a CPU).
    """
    M, t = table.shape[:2]
    flat = (idx + t * torch.arange(M, device=idx.device)[:, None]).reshape(-1)
    return table.reshape(M * t, *table.shape[2:]).index_select(0, flat).reshape(*idx.shape, *table.shape[2:])


def many_logits(params: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`fast_logits` for M models at once: stacked params [M, ...], inputs a, b [M, n] → logits [M, n, p].

    Same maths, arranged for batches: keys and values of each token at positions 0 and 1 come from p-row tables
    as in fast_logits, but values stay per head (d_head wide) until the heads are mixed, and W_O is applied once per
    pair, so the per-pair tensors are 4x smaller than d_model-wide values would be.
    """
    W_E, W_pos = params["embed.W_E"], params["pos_embed.W_pos"]  # [M, p + 1, d], [M, 3, d]
    W_Q, W_K, W_V, W_O = (params[f"blocks.0.attn.W_{x}"] for x in "QKVO")  # [M, h, d, e] ×3, [M, h, e, d]
    p, d_head = W_E.shape[1] - 1, W_Q.shape[-1]
    x = W_E[:, :p, None] + W_pos[:, None, :2]  # [M, p, 2, d]: the residual stream of token t at positions 0, 1
    x2 = W_E[:, p] + W_pos[:, 2]  # [M, d]: position 2 always holds "="
    q = einops.einsum(x2, W_Q, "M d, M h d e -> M h e")
    scores = einops.einsum(einops.einsum(x, W_K, "M t i d, M h d e -> M t i h e"), q,
                           "M t i h e, M h e -> M t i h") / math.sqrt(d_head)
    values = einops.einsum(x, W_V, "M t i d, M h d e -> M t i h e")
    key2 = einops.einsum(x2, W_K, "M d, M h d e -> M h e")
    score2 = einops.einsum(key2, q, "M h e, M h e -> M h") / math.sqrt(d_head)
    value2 = einops.einsum(x2, W_V, "M d, M h d e -> M h e")
    attn = torch.stack([_gather_rows(scores[:, :, 0], a), _gather_rows(scores[:, :, 1], b),
                        score2[:, None].expand(*a.shape, -1)], dim=-1).softmax(-1)  # [M, n, h, 3]
    # Mixing the heads' values with products and sums: an einsum would make n tiny matrix products.
    z = (attn[..., 0, None] * _gather_rows(values[:, :, 0], a) + attn[..., 1, None] * _gather_rows(values[:, :, 1], b)
         + attn[..., 2, None] * value2[:, None])  # [M, n, h, e]
    resid = x2[:, None] + z.flatten(-2) @ W_O.flatten(1, 2)  # [M, n, d]
    hidden = torch.relu(resid @ params["blocks.0.mlp.W_in"])  # [M, n, d_mlp]
    resid = resid + hidden @ params["blocks.0.mlp.W_out"]
    return resid @ params["unembed.W_U"]  # [M, n, p]


def many_train_loss(params: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
                     weights: torch.Tensor) -> torch.Tensor:
    """The sum over models of each model's mean float64 cross-entropy; padding rows have weight 0. [M, n] inputs."""
    log_probs = _FlushSubnormalGrad.apply(many_logits(params, a, b)).to(torch.float64).log_softmax(-1)
    nll = -log_probs.gather(-1, labels[..., None])[..., 0]  # [M, n]
    return ((nll * weights).sum(-1) / weights.sum(-1)).sum()


class BatchedAdamW:
    """torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments) for stacked weights [M, ...],
    with a learning rate, weight decay and betas per model. Saves and loads each model's state in torch's format."""

    def __init__(self, params: dict[str, torch.Tensor], cfgs: list[TrainConfig]):
        self.params, self.cfgs = params, cfgs
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
        self.steps = 0  # updates done so far (the same for every model of a batch)
        self.device = next(iter(params.values())).device

    def _per_model(self, *rows: list[float]) -> tuple[torch.Tensor, ...]:
        """Each row of per-model values as a float32 tensor [M] on the weights' device, all in one copy.

        On a GPU the copy leaves from pinned memory without waiting: a plain copy from a CPU tensor waits until
        the GPU has done all its queued work, which would stall every step (the values change every step)."""
        values = torch.tensor(rows, dtype=torch.float32)  # [rows, M]
        if self.device.type == "cuda":
            values = values.pin_memory().to(self.device, non_blocking=True)
        return values.unbind(0)

    def lrs(self, step: int) -> list[float]:
        """Each model's learning rate at `step` (0-based): linear warm-up, then constant, as in `train`."""
        return [c.lr * min(1.0, (step + 1) / max(c.warmup_steps, 1)) for c in self.cfgs]

    @torch.no_grad()
    def step(self, lrs: list[float]) -> None:
        self.steps += 1
        t = self.steps
        # (1 - beta) in double precision, then rounded, as torch does with its Python-float arguments
        decay, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt = self._per_model(
            [1 - lr * c.weight_decay for lr, c in zip(lrs, self.cfgs)],
            [1 - c.betas[0] for c in self.cfgs],
            [c.betas[1] for c in self.cfgs],
            [1 - c.betas[1] for c in self.cfgs],
            [lr / (1 - c.betas[0] ** t) for lr, c in zip(lrs, self.cfgs)],
            [(1 - c.betas[1] ** t) ** 0.5 for c in self.cfgs])
        for name, w in self.params.items():
            shape = (-1,) + (1,) * (w.ndim - 1)  # broadcast a per-model value over one model's weights
            grad, m, v = w.grad, self.exp_avg[name], self.exp_avg_sq[name]
            w.mul_(decay.view(shape))
            m.lerp_(grad, one_minus_beta1.view(shape).expand_as(m))
            v.mul_(beta2.view(shape)).addcmul_(grad * one_minus_beta2.view(shape), grad)
            denom = (v.sqrt() / bc2_sqrt.view(shape)).add_(ADAM_EPS)
            w.add_(-step_size.view(shape) * m / denom)  # addcdiv's order: (value * m) / denom

    def state_dict(self, i: int, lr: float) -> dict:
        """Model i's state, as torch.optim.AdamW(fused=True).state_dict() holds it (so `train` can resume)."""
        c = self.cfgs[i]
        state = {} if self.steps == 0 else {
            j: {"step": torch.tensor(float(self.steps)), "exp_avg": self.exp_avg[k][i].detach().cpu().clone(),
                "exp_avg_sq": self.exp_avg_sq[k][i].detach().cpu().clone()} for j, k in enumerate(self.params)}
        group = {"lr": lr, "betas": tuple(c.betas), "eps": ADAM_EPS, "weight_decay": c.weight_decay, "amsgrad": False,
                 "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": True,
                 "decoupled_weight_decay": True, "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    @torch.no_grad()
    def load(self, i: int, saved: dict, step: int, path: Path, run_dir: Path) -> None:
        """Load model i's moments from a torch AdamW state dict (written by `train` or by `train_many`), checked."""
        _check_optimizer_state(saved, {k: v[i] for k, v in self.params.items()}, step, path, run_dir)
        if step > 0:
            for j, k in enumerate(self.params):
                self.exp_avg[k][i].copy_(saved["state"][j]["exp_avg"])
                self.exp_avg_sq[k][i].copy_(saved["state"][j]["exp_avg_sq"])
        self.steps = step

    def keep(self, rows: list[int], params: dict[str, torch.Tensor]) -> None:
        """Go on with models `rows` only, whose stacked weights are now `params` (self.cfgs is updated by the
        caller)."""
        self.params = params
        self.exp_avg = {k: v[rows] for k, v in self.exp_avg.items()}
        self.exp_avg_sq = {k: v[rows] for k, v in self.exp_avg_sq.items()}


def _batch_key(cfg: TrainConfig) -> tuple:
    return tuple(getattr(cfg, f) for f in BATCH_FIELDS)


def _check_many(cfgs: object, run_dirs: object) -> tuple[list[TrainConfig], list[Path] | None]:
    """Refuse anything but a non-empty list of TrainConfigs (and as many distinct run directories)."""
    if isinstance(cfgs, TrainConfig) or not isinstance(cfgs, (list, tuple)):
        raise TypeError(f"cfgs must be a list of TrainConfig, got {type(cfgs).__name__}; "
                        "for a single run use train(cfg) or get_run(cfg)")
    if not cfgs:
        raise ValueError("cfgs is empty: pass at least one TrainConfig")
    for i, cfg in enumerate(cfgs):
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfgs[{i}] must be a TrainConfig, got {type(cfg).__name__}")
    if run_dirs is None:
        return list(cfgs), None
    if isinstance(run_dirs, (str, Path)) or len(run_dirs) != len(cfgs):
        raise ValueError(f"run_dirs must be a list with one directory per config ({len(cfgs)}), got {run_dirs!r:.100}")
    dirs = [Path(d) for d in run_dirs]
    resolved = [d.resolve() for d in dirs]
    for i, d in enumerate(resolved):
        if d in resolved[:i]:
            raise ValueError(f"run_dirs[{i}] = {dirs[i]} is used twice: each run needs its own directory")
    return list(cfgs), dirs


def batches(cfgs: list[TrainConfig]) -> list[list[int]]:
    """Indices of cfgs grouped into batches that can train together (equal BATCH_FIELDS), in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(_batch_key(cfg), []).append(i)
    return list(groups.values())


def train_many(cfgs: list[TrainConfig], run_dirs: list[str | Path] | None = None, *, device: str | None = None,
               compile: bool = False, progress: bool = True, max_models: int | None = None,
               max_padding: float = 0.2) -> list[Run]:
    """Train (or resume) several runs, batched, and return them in order. Without run_dirs, use the cache (`get_runs`).

    Configs that agree on BATCH_FIELDS train together, at most max_models at a time, and only with training sets
    at least (1 - max_padding) times the largest in their batch (padding rows cost as much as real ones; 1 pads
    anything). Each run_dirs[i] ends up exactly as train(cfgs[i], run_dirs[i]) would leave it, up to float rounding:
    with a stop rule each run stops on its own (its files are final, and it leaves the batch); finished runs are
    loaded, never retrained. Holds every directory's lock while it works. If some runs diverge, the others finish
    and then a TrainingDivergedError names those that did.
    """
    cfgs, dirs = _check_many(cfgs, run_dirs)
    if dirs is None:
        return get_runs(cfgs, device=device, compile=compile, progress=progress, max_models=max_models,
                        max_padding=max_padding)
    if max_models is not None and (isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 1):
        raise ValueError(f"max_models must be a positive integer or None, got {max_models!r}")
    if isinstance(max_padding, bool) or not isinstance(max_padding, (int, float)) or not 0 <= max_padding <= 1:
        raise ValueError(f"max_padding must be a number in [0, 1], got {max_padding!r}")
    device = _check_device(device)
    for cfg, run_dir in zip(cfgs, dirs):  # refuse a directory holding another run before any work
        if (run_dir / "config.json").exists() and _read_config(run_dir) != cfg:
            raise ValueError(f"{run_dir} already holds a run with a different configuration; "
                             "choose another output directory or delete that one.")
    held = []
    try:
        for run_dir in sorted(dirs, key=lambda d: str(d.resolve())):  # a fixed order: no deadlock
            held.append(_acquire(run_dir))
        todo = []  # (index, step it resumes from)
        for i, (cfg, run_dir) in enumerate(zip(cfgs, dirs)):
            _prepare_dir(cfg, run_dir)
            state = _read_state(run_dir, cfg)
            if not _finished(state):
                todo.append((i, -1 if state is None else state["step"]))  # -1: a fresh run
        # A batch shares shapes, the loop and the step it starts from (a resumed run joins runs at the same step).
        groups: dict[tuple, list[int]] = {}
        for i, start in todo:
            groups.setdefault((_batch_key(cfgs[i]), start), []).append(i)
        diverged: list[str] = []
        for members in groups.values():
            for chunk in _chunks(members, [_n_train(cfgs[i]) for i in members], max_models, max_padding):
                diverged += _train_batch([cfgs[i] for i in chunk], [dirs[i] for i in chunk], device, compile,
                                         progress)
        if diverged:
            raise TrainingDivergedError(f"{len(diverged)} run(s) diverged (the others finished):\n" + "\n".join(diverged))
        return [load_run(d) for d in dirs]
    finally:
        for lock in held:
            lock.release()


def _n_train(cfg: TrainConfig) -> int:
    return int(round(cfg.frac_train * cfg.p * cfg.p))  # as train_test_split counts them


def _chunks(members: list[int], sizes: list[int], max_models: int | None, max_padding: float) -> list[list[int]]:
    """Split members (with training-set sizes) into batches: largest first, each at most max_models long and
    holding only sizes ≥ (1 - max_padding) × its largest."""
    order = sorted(range(len(members)), key=lambda j: -sizes[j])  # stable: equal sizes keep their order
    chunks: list[list[int]] = []
    for j in order:
        current = chunks[-1] if chunks else None
        if (current is None or len(current) == (max_models or len(members))
                or sizes[j] < (1 - max_padding) * sizes[members.index(current[0])]):
            chunks.append([members[j]])
        else:
            current.append(members[j])
    return chunks


def _train_batch(cfgs: list[TrainConfig], dirs: list[Path], device: str, compile: bool, progress: bool) -> list[str]:
    """Train compatible configs (same BATCH_FIELDS, same saved step) together; see train_many. Their directories
    are prepared and locked. Returns a message for each run that diverged (it is left unfinished)."""
    c0 = cfgs[0]
    cfgs, dirs = list(cfgs), list(dirs)
    models = [make_model(model_cfg(cfg, device)) for cfg in cfgs]
    names = list(trainable_params(models[0]))
    states = [_read_state(d, c) for d, c in zip(dirs, cfgs)]
    for model, state, run_dir in zip(models, states, dirs):
        if state is not None:
            _params_for(model, state["params"], run_dir / "state.pt", run_dir)
    params = {k: torch.stack([trainable_params(m)[k].detach() for m in models]).requires_grad_(True) for k in names}
    optimizer = BatchedAdamW(params, cfgs)
    histories, offsets, compiled_before, start = [], [], [], 0
    for i, (state, run_dir) in enumerate(zip(states, dirs)):
        if state is None:
            histories.append({k: [] for k in METRICS})
            compiled_before.append([])
        else:
            optimizer.load(i, state["optimizer"], state["step"], run_dir / "state.pt", run_dir)
            histories.append(state["metrics"])
            compiled_before.append(list(state.get("compiled", [])))
            start = state["step"]
        offsets.append(histories[-1]["elapsed_s"][-1] if histories[-1]["elapsed_s"] else 0.0)

    tokens = make_dataset(c0.p)[0].to(device)  # the inputs are the same for every operation …
    labels = torch.stack([make_dataset(c.p, c.op)[1] for c in cfgs]).to(device)  # … the answers are not: [M, p²]
    splits = [tuple(t.to(device) for t in train_test_split(c.p, c.frac_train, c.seed)) for c in cfgs]
    n = max(len(tr) for tr, _ in splits)
    pad = [torch.cat([tr, tr.new_zeros(n - len(tr))]) for tr, _ in splits]  # row 0 repeated, with weight 0
    idx = torch.stack(pad)  # [M, n]
    weights = torch.stack([(torch.arange(n, device=device) < len(tr)).double() for tr, _ in splits])  # [M, n]
    a_tr, b_tr, y_tr = tokens[idx, 0], tokens[idx, 1], labels.gather(1, idx)
    a_all, b_all = tokens[:, 0], tokens[:, 1]  # every pair, for the metrics
    step_loss = Compiled(many_train_loss, compile)
    clock = time.perf_counter()
    diverged: list[str] = []

    def save(i: int, step: int, final: bool) -> None:
        """Write model i's checkpoint and state at `step` (its final one if `final`)."""
        lr = cfgs[i].lr if step == 0 else optimizer.lrs(step - 1)[i]  # the lr of the last update
        cpu = {k: v[i].detach().cpu().clone() for k, v in params.items()}
        if not all(torch.isfinite(v).all() for v in cpu.values()):
            raise _diverged(cfgs[i].run_name(), step)
        stopped = _stop_reason(cfgs[i], step < cfgs[i].steps) if final else None
        _atomic_save({"config_key": cfgs[i].key(), "step": step, "params": cpu}, _checkpoint_path(dirs[i], step))
        _atomic_save(_state(cfgs[i], step, cpu, optimizer.state_dict(i, lr), histories[i],
                            compiled_before[i] + [step_loss.active], stopped), dirs[i] / "state.pt")
        if final:
            _atomic_write_text(dirs[i] / "metrics.csv", pd.DataFrame(histories[i]).to_csv(index=False))
            _announce_end(cfgs[i], cfgs[i].run_name(), stopped, histories[i])

    def keep(rows: list[int]) -> None:
        """Go on with models `rows` only (the others stopped or diverged): they never change again."""
        nonlocal params, idx, weights, a_tr, b_tr, y_tr, labels
        params = {k: v.detach()[rows].requires_grad_(True) for k, v in params.items()}
        optimizer.keep(rows, params)
        idx, weights, labels = idx[rows], weights[rows], labels[rows]  # the padded length stays the same
        a_tr, b_tr, y_tr = tokens[idx, 0], tokens[idx, 1], labels.gather(1, idx)
        for name in ("cfgs", "dirs", "histories", "offsets", "compiled_before", "splits"):
            values = batch[name]
            values[:] = [values[r] for r in rows]

    batch = dict(cfgs=cfgs, dirs=dirs, histories=histories, offsets=offsets, compiled_before=compiled_before,
                 splits=splits)

    def evaluate(step: int) -> bool:
        M = len(cfgs)
        with torch.no_grad():
            logits = many_logits(params, a_all.expand(M, -1), b_all.expand(M, -1))  # [M, p², p]
        done, ok = [], []
        for i, (tr, te) in enumerate(splits):
            values = {"step": step}
            for split, sel in (("train", tr), ("test", te)):
                values[f"{split}_loss"] = loss_fn(logits[i, sel], labels[i, sel]).item()
                values[f"{split}_acc"] = (logits[i, sel].argmax(-1) == labels[i, sel]).double().mean().item()
            values["elapsed_s"] = offsets[i] + time.perf_counter() - clock
            try:
                _check_finite(values, cfgs[i].run_name())
            except TrainingDivergedError as err:
                diverged.append(str(err))
                continue
            ok.append(i)
            for k, v in values.items():
                histories[i][k].append(v)
            if should_stop(cfgs[i], histories[i]):
                save(i, step, final=True)
                done.append(i)
        if len(ok) - len(done) < len(cfgs):
            keep([i for i in ok if i not in done])
        return not cfgs

    def checkpoint(step: int, final: bool) -> None:
        for i in range(len(cfgs)):
            save(i, step, final)

    def update(step: int) -> None:
        if not cfgs:
            return
        for w in params.values():
            w.grad = None
        step_loss(params, a_tr, b_tr, y_tr, weights).backward()
        optimizer.step(optimizer.lrs(step))

    def postfix() -> dict[str, str]:
        return {"test_acc": " ".join(f"{h['test_acc'][-1]:.0%}" for h in histories[:8])}

    label = f"{len(cfgs)} runs (p={c0.p})" if len(cfgs) > 1 else c0.run_name()
    _loop(c0, start, states[0] is None, label, progress, update, evaluate, checkpoint, postfix)
    return diverged


def get_runs(cfgs: list[TrainConfig], *, device: str | None = None, compile: bool = False,
             progress: bool = True, max_models: int | None = None, max_padding: float = 0.2) -> list[Run]:
    """The cached runs for cfgs (see `get_run`): load those that exist, train the missing ones batched.

    Takes each run's file lock (in a fixed order, so two callers cannot deadlock), releases those already
    finished at once, and holds the others while they train.
    """
    cfgs, _ = _check_many(cfgs, None)
    root = runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    unique = sorted({cfg.run_name(): cfg for cfg in cfgs}.items())  # identical configs train once
    loaded: dict[str, Run] = {}
    held: list[FileLock] = []
    try:
        for name, cfg in unique:
            lock = _acquire(root / name)
            try:
                _check_cached(cfg, root / name)
                if (root / name / "state.pt").exists():
                    loaded[name] = load_run(root / name)
            except UnfinishedRunError:
                pass
            except BaseException:
                lock.release()
                raise
            if name in loaded:
                lock.release()
            else:
                held.append(lock)
        missing = [(name, cfg) for name, cfg in unique if name not in loaded]
        if missing:
            runs = train_many([cfg for _, cfg in missing], [root / name for name, _ in missing], device=device,
                              compile=compile, progress=progress, max_models=max_models, max_padding=max_padding)
            loaded.update({name: run for (name, _), run in zip(missing, runs)})
    finally:
        for lock in held:
            lock.release()
    return [loaded[cfg.run_name()] for cfg in cfgs]


# --- command line --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.train", description="Train a model that groks a + b mod p.")
    parser.add_argument("--preset", default="workshop", help=f"one of {sorted(PRESETS)} (default: workshop)")
    parser.add_argument("--out", help="run directory (default: the cache in runs/, see get_run)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip torch.compile (the same maths, slower; not bit-identical to compiled training)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("name", "betas"):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    parser.add_argument("--betas", type=float, nargs=2, default=None, metavar=("BETA1", "BETA2"))
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name != "name" and getattr(args, f.name) is not None}
    try:  # check everything before any folder is created
        cfg = TrainConfig.preset(args.preset, **overrides)
        out = None if args.out is None else _check_run_dir(args.out)
        device = _check_device(args.device)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    start = time.perf_counter()
    compile = False if args.no_compile else None
    try:
        run = train(cfg, out, device=device, compile=compile) if out else get_run(cfg, device=device, compile=compile)
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume from the last checkpoint.", file=sys.stderr)
        return 130
    except (CheckpointError, TrainingDivergedError, ValueError, FileNotFoundError) as err:
        print(f"python -m utils.train: error: {err}", file=sys.stderr)
        return 1
    final = run.metrics.iloc[-1]
    ending = {"grokked": f"stopped by the stop rule at step {run.final_step} (grokked, cleanup over)",
              "all steps": f"{run.final_step} steps",
              "step cap": f"reached the step cap ({run.final_step} steps) WITHOUT grokking"}[run.stop_reason]
    print(f"{run.run_dir}: {ending}; {time.perf_counter() - start:.0f} s; final train acc "
          f"{final.train_acc:.2%}, test acc {final.test_acc:.2%}, test loss {final.test_loss:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
