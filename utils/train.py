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
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import einops
import pandas as pd
import torch
import torch.nn.functional as F
from filelock import FileLock
from tqdm.auto import tqdm

from utils import REPO_ROOT
from utils.data import OPERATIONS, make_dataset, train_test_split
from utils.model import CheckpointError, HookedTransformer, _load_tensor_file, make_model, model_config

METRICS = ["step", "train_loss", "test_loss", "train_acc", "test_acc", "elapsed_s"]  # elapsed_s: training wall time
PRESETS = {
    # The paper's mainline run (COURSE.md §6): groks around 10k–25k steps depending on the seed.
    "paper": dict(lr=1e-3, weight_decay=1.0, frac_train=0.3, steps=40_000, checkpoint_every=100),
    # Groks in about a minute on a 2-core CPU after a clear plateau (seed 0: memorised by step ~120, test accuracy
    # < 20% until ~800, ≥ 99.9% by ~1,350); trained on to step 3,000 so that cleanup is over. Chosen from a
    # sweep over lr, weight decay and data fraction (see README, "Choosing the workshop preset").
    "workshop": dict(lr=2e-3, weight_decay=2.0, frac_train=0.3, steps=3_000, checkpoint_every=25),
}


# --- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run's weights (and so its cache key)."""

    p: int = 113
    frac_train: float = 0.3
    seed: int = 0  # seeds the initialisation and the train/test split
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 10
    steps: int = 40_000
    checkpoint_every: int = 100
    eval_every: int = 10
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    op: str = "add"
    name: str = field(default="custom", compare=False)  # a label for the run (its preset): not in the cache key

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        _validate(self)

    @classmethod
    def preset(cls, name: str = "workshop", **overrides) -> "TrainConfig":
        """A named preset ("workshop" or "paper"), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        return cls.from_dict({**PRESETS[name], "name": name, **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict, refusing unknown fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    def key(self) -> str:
        """A short hash of every field that affects the weights."""
        values = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]

    def run_name(self) -> str:
        return f"{self.name}-{self.op}-p{self.p}-seed{self.seed}-{self.key()}"


def _validate(cfg: TrainConfig) -> None:
    """Raise a ValueError naming the first invalid field and its valid range."""
    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"TrainConfig.{name} must be {rule}, got {getattr(cfg, name)!r}")

    def is_int(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    need(is_int(cfg.p) and cfg.p >= 3, "p", "an integer ≥ 3")
    need(isinstance(cfg.frac_train, (int, float)) and 0 < cfg.frac_train < 1, "frac_train", "in the open interval (0, 1)")
    need(is_int(cfg.seed), "seed", "an integer")
    need(isinstance(cfg.lr, (int, float)) and 0 < cfg.lr < math.inf, "lr", "a positive number")
    need(isinstance(cfg.weight_decay, (int, float)) and 0 <= cfg.weight_decay < math.inf, "weight_decay", "≥ 0")
    need(len(cfg.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in cfg.betas),
         "betas", "two numbers in [0, 1)")
    for name in ("steps", "checkpoint_every", "eval_every", "d_model", "n_heads", "d_mlp"):
        need(is_int(getattr(cfg, name)) and getattr(cfg, name) > 0, name, "a positive integer")
    need(is_int(cfg.warmup_steps) and cfg.warmup_steps >= 0, "warmup_steps", "an integer ≥ 0")
    need(cfg.d_model % cfg.n_heads == 0, "d_model", f"divisible by n_heads={cfg.n_heads}")
    need(cfg.op in OPERATIONS, "op", f"one of {sorted(OPERATIONS)}")


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


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in float64: losses fall to ~1e-7, below what float32 log-softmax resolves.

    logits: [n, p] (the last position) or [n, pos, p] (the last position is taken).
    """
    if logits.ndim == 3:
        logits = logits[:, -1]
    log_probs = logits.to(torch.float64).log_softmax(dim=-1)
    return -log_probs.gather(-1, labels[:, None]).mean()


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


def _train_loss(params: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return loss_fn(_FlushSubnormalGrad.apply(fast_logits(params, a, b)), labels)


class _Compiled:
    """torch.compile(fn), falling back to plain fn (same results, slower) if compiling fails on first use."""

    def __init__(self, fn, enabled: bool):
        self.fn, self.compiled = fn, None
        if enabled:
            try:
                self.compiled = torch.compile(fn, dynamic=False)
            except Exception as err:  # e.g. an unsupported platform
                self._give_up(err)

    def _give_up(self, err: Exception) -> None:
        warnings.warn(f"torch.compile unavailable ({type(err).__name__}: {str(err)[:150]}); "
                      "training without it: same results, about 2x slower.", RuntimeWarning, stacklevel=3)
        self.compiled = None

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
def _atomic_save(obj: object, path: Path) -> None:
    """Write with torch.save to a temporary file, fsync, then rename: a reader sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}.pt"


def _read_checkpoint(path: Path, run_dir: Path) -> dict:
    """Load a tensor-only file, or raise a CheckpointError telling the user to delete the run directory."""
    try:
        return _load_tensor_file(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err} To retrain this run, delete the run directory {run_dir}.") from None


def _params_for(model: HookedTransformer, saved: dict, path: Path, run_dir: Path) -> None:
    """Copy saved weights into model, checking names and shapes."""
    params = trainable_params(model)
    if not isinstance(saved, dict) or set(saved) != set(params) or any(
            not isinstance(saved[k], torch.Tensor) or saved[k].shape != v.shape for k, v in params.items()):
        raise CheckpointError(f"{path}: the saved weights do not match the run's configuration. "
                              f"Delete the run directory {run_dir} and train it again.")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


@dataclass
class Run:
    """A finished run: its config, metrics table, final model and checkpoints."""

    config: TrainConfig
    run_dir: Path
    metrics: pd.DataFrame
    checkpoint_steps: list[int]
    model: HookedTransformer = field(repr=False)

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
        return _model_from_file(self.config, _checkpoint_path(self.run_dir, step), self.run_dir)


def _model_from_file(cfg: TrainConfig, path: Path, run_dir: Path) -> HookedTransformer:
    model = make_model(_model_cfg(cfg))
    _params_for(model, _read_checkpoint(path, run_dir), path, run_dir)
    return model


def _model_cfg(cfg: TrainConfig, device: str = "cpu"):
    return model_config(p=cfg.p, d_model=cfg.d_model, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, seed=cfg.seed, device=device)


def _read_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.json"
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json). "
                                "Train one with `python -m utils.train --out DIR`.") from None
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is unreadable or invalid ({err}). Delete the run directory {run_dir} "
                              "and train it again.") from None


def _read_state(run_dir: Path) -> dict | None:
    path = run_dir / "state.pt"
    if not path.exists():
        return None
    state = _read_checkpoint(path, run_dir)
    if not isinstance(state, dict) or not {"step", "params", "optimizer", "metrics"} <= set(state):
        raise CheckpointError(f"{path} is not a training state written by utils.train. "
                              f"Delete the run directory {run_dir} and train it again.")
    return state


def load_run(run_dir: str | Path) -> Run:
    """Open a finished run directory (see `train`)."""
    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    state = _read_state(run_dir)
    if state is None or state["step"] != cfg.steps:
        done = 0 if state is None else state["step"]
        raise CheckpointError(f"{run_dir} holds an unfinished run ({done} of {cfg.steps} steps). "
                              "Call train(cfg, run_dir) (or rerun the CLI with the same --out) to resume it.")
    metrics = pd.DataFrame({k: state["metrics"][k].numpy() for k in METRICS}).astype({"step": int})
    steps = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt"))
    model = make_model(_model_cfg(cfg))
    _params_for(model, state["params"], run_dir / "state.pt", run_dir)
    return Run(config=cfg, run_dir=run_dir, metrics=metrics, checkpoint_steps=steps, model=model)


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


def _loop(cfg: TrainConfig, start: int, label: str, progress: bool, update: Callable[[int], None],
          record: Callable[[int], None], checkpoint: Callable[[int], None], postfix: Callable[[], dict]) -> None:
    """Steps start … cfg.steps: update(step) takes one, record(step) evaluates and checkpoint(step) saves on schedule.

    Subnormal numbers are flushed meanwhile (late in training gradients go subnormal: steps get ~3x slower without).
    The progress bar redraws at most once a second: in a notebook every redraw is a message to the front end, and a
    kernel that sends thousands of them during one cell can drop some (nbval then times out waiting for the cell).
    """
    torch.set_flush_denormal(True)
    bar = tqdm(total=cfg.steps, initial=start, desc=label, disable=not progress, dynamic_ncols=True, mininterval=1.0)
    try:
        if start == 0:
            record(0)
            checkpoint(0)
        for step in range(start, cfg.steps):
            update(step)
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.steps:
                record(done)
                bar.set_postfix(postfix(), refresh=False)  # drawn by update, at most once a second
                bar.update(done - bar.n)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint(done)
    finally:
        bar.close()
        torch.set_flush_denormal(False)


def train(cfg: TrainConfig | None = None, run_dir: str | Path | None = None, *, device: str | None = None,
          compile: bool | None = None, progress: bool = True) -> Run:
    """Train (or resume) the run `cfg` in `run_dir` and return it. Without run_dir, use the cache (`get_run`).

    Writes run_dir/config.json, run_dir/checkpoints/step_NNNNNN.pt every cfg.checkpoint_every steps and at the
    end, and run_dir/state.pt (everything needed to resume) with each checkpoint — all atomically.
    """
    cfg = cfg or TrainConfig.preset("workshop")
    if run_dir is None:
        return get_run(cfg, device=device, compile=compile, progress=progress)
    run_dir = Path(run_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    compile = _compile_default() if compile is None else compile
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if (run_dir / "config.json").exists():
        if _read_config(run_dir) != cfg:
            raise ValueError(f"{run_dir} already holds a run with a different configuration; "
                             "choose another output directory or delete that one.")
    else:
        _atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))

    model = make_model(_model_cfg(cfg, device))
    params = trainable_params(model)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  fused=True)
    history = {k: [] for k in METRICS}
    state = _read_state(run_dir)
    start = 0
    if state is not None:  # resume exactly where the last checkpoint left off
        _params_for(model, state["params"], run_dir / "state.pt", run_dir)
        optimizer.load_state_dict(state["optimizer"])
        history = {k: state["metrics"][k].tolist() for k in METRICS}
        start = state["step"]

    tokens, labels = (t.to(device) for t in make_dataset(cfg.p, cfg.op))
    train_idx, test_idx = (t.to(device) for t in train_test_split(cfg.p, cfg.frac_train, cfg.seed))
    a, b = tokens[:, 0], tokens[:, 1]
    a_tr, b_tr, y_tr = a[train_idx], b[train_idx], labels[train_idx]
    step_loss, eval_logits = _Compiled(_train_loss, compile), _Compiled(fast_logits, compile)

    clock = time.perf_counter() - (history["elapsed_s"][-1] if history["elapsed_s"] else 0.0)

    def record(step: int) -> None:
        values = {"step": step, **_evaluate(params, a, b, labels, train_idx, test_idx, eval_logits),
                  "elapsed_s": time.perf_counter() - clock}
        for k, v in values.items():
            history[k].append(v)

    def checkpoint(step: int) -> None:
        cpu = {k: v.detach().cpu().clone() for k, v in params.items()}
        _atomic_save(cpu, _checkpoint_path(run_dir, step))
        _atomic_save({"step": step, "params": cpu, "optimizer": optimizer.state_dict(),
                      "metrics": {k: torch.tensor(v, dtype=torch.float64) for k, v in history.items()}},
                     run_dir / "state.pt")

    def update(step: int) -> None:
        for group in optimizer.param_groups:  # linear warm-up, then constant
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
        optimizer.zero_grad(set_to_none=True)
        step_loss(params, a_tr, b_tr, y_tr).backward()
        optimizer.step()

    def postfix() -> dict[str, str]:
        return {"train_loss": f"{history['train_loss'][-1]:.2e}", "test_loss": f"{history['test_loss'][-1]:.2e}",
                "train_acc": f"{history['train_acc'][-1]:.1%}", "test_acc": f"{history['test_acc'][-1]:.1%}"}

    _loop(cfg, start, cfg.run_name(), progress, update, record, checkpoint, postfix)
    (run_dir / "metrics.csv").write_text(pd.DataFrame(history).to_csv(index=False))
    return load_run(run_dir)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def runs_dir() -> Path:
    """Where cached runs live: $GROKKING_RUNS_DIR, or runs/ at the repository root."""
    return Path(os.environ.get("GROKKING_RUNS_DIR") or REPO_ROOT / "runs")


def get_run(cfg: TrainConfig | None = None, *, device: str | None = None, compile: bool | None = None,
            progress: bool = True) -> Run:
    """The cached run for cfg (default: the workshop preset), training or resuming it if needed.

    A file lock makes concurrent callers (two notebooks at once) train it once and share it.
    """
    cfg = cfg or TrainConfig.preset("workshop")
    run_dir = runs_dir() / cfg.run_name()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(run_dir) + ".lock"):
        state_file = run_dir / "state.pt"
        if state_file.exists():
            try:
                return load_run(run_dir)
            except CheckpointError as err:
                if "unfinished run" not in str(err):
                    raise
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


def _many_train_loss(params: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
                     weights: torch.Tensor) -> torch.Tensor:
    """The sum over models of each model's mean float64 cross-entropy; padding rows have weight 0. [M, n] inputs."""
    log_probs = _FlushSubnormalGrad.apply(many_logits(params, a, b)).to(torch.float64).log_softmax(-1)
    nll = -log_probs.gather(-1, labels[..., None])[..., 0]  # [M, n]
    return ((nll * weights).sum(-1) / weights.sum(-1)).sum()


class _BatchedAdamW:
    """torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments) for stacked weights [M, ...],
    with a learning rate, weight decay and betas per model. Saves and loads each model's state in torch's format."""

    def __init__(self, params: dict[str, torch.Tensor], cfgs: list[TrainConfig]):
        self.params, self.cfgs = params, cfgs
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
        self.steps = 0  # updates done so far (the same for every model of a batch)
        device = next(iter(params.values())).device
        self._per_model = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731

    def lrs(self, step: int) -> list[float]:
        """Each model's learning rate at `step` (0-based): linear warm-up, then constant, as in `train`."""
        return [c.lr * min(1.0, (step + 1) / max(c.warmup_steps, 1)) for c in self.cfgs]

    @torch.no_grad()
    def step(self, lrs: list[float]) -> None:
        self.steps += 1
        t = self.steps
        decay = self._per_model([1 - lr * c.weight_decay for lr, c in zip(lrs, self.cfgs)])
        # (1 - beta) in double precision, then rounded, as torch does with its Python-float arguments
        one_minus_beta1 = self._per_model([1 - c.betas[0] for c in self.cfgs])
        beta2 = self._per_model([c.betas[1] for c in self.cfgs])
        one_minus_beta2 = self._per_model([1 - c.betas[1] for c in self.cfgs])
        step_size = self._per_model([lr / (1 - c.betas[0] ** t) for lr, c in zip(lrs, self.cfgs)])
        bc2_sqrt = self._per_model([(1 - c.betas[1] ** t) ** 0.5 for c in self.cfgs])
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
        """Load model i's moments from a torch AdamW state dict (written by `train` or by `train_many`)."""
        state = saved.get("state", {}) if isinstance(saved, dict) else None
        if step == 0 and state == {}:
            return
        try:
            for j, k in enumerate(self.params):
                self.exp_avg[k][i].copy_(state[j]["exp_avg"])
                self.exp_avg_sq[k][i].copy_(state[j]["exp_avg_sq"])
                if int(state[j]["step"]) != step:
                    raise ValueError("step mismatch")
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError):
            raise CheckpointError(f"{path}: its optimiser state does not match the run's weights. "
                                  f"Delete the run directory {run_dir} and train it again.") from None
        self.steps = step


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
    anything). Each run_dirs[i] ends up exactly as train(cfgs[i], run_dirs[i]) would leave it, up to float rounding.
    """
    cfgs, dirs = _check_many(cfgs, run_dirs)
    if dirs is None:
        return get_runs(cfgs, device=device, compile=compile, progress=progress, max_models=max_models,
                        max_padding=max_padding)
    if max_models is not None and (isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 1):
        raise ValueError(f"max_models must be a positive integer or None, got {max_models!r}")
    if isinstance(max_padding, bool) or not isinstance(max_padding, (int, float)) or not 0 <= max_padding <= 1:
        raise ValueError(f"max_padding must be a number in [0, 1], got {max_padding!r}")
    for cfg, run_dir in zip(cfgs, dirs):  # refuse a directory holding another run before any work
        if (run_dir / "config.json").exists() and _read_config(run_dir) != cfg:
            raise ValueError(f"{run_dir} already holds a run with a different configuration; "
                             "choose another output directory or delete that one.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    todo = []  # (index, step it resumes from)
    for i, (cfg, run_dir) in enumerate(zip(cfgs, dirs)):
        state = _read_state(run_dir)
        if state is None or state["step"] < cfg.steps:
            todo.append((i, 0 if state is None else state["step"]))
    # A batch shares shapes, the loop and the step it starts from (a resumed run joins runs at the same step).
    groups: dict[tuple, list[int]] = {}
    for i, start in todo:
        groups.setdefault((_batch_key(cfgs[i]), start), []).append(i)
    for members in groups.values():
        for chunk in _chunks(members, [_n_train(cfgs[i]) for i in members], max_models, max_padding):
            _train_batch([cfgs[i] for i in chunk], [dirs[i] for i in chunk], device, compile, progress)
    return [load_run(d) for d in dirs]


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


def _train_batch(cfgs: list[TrainConfig], dirs: list[Path], device: str, compile: bool, progress: bool) -> None:
    """Train compatible configs (same BATCH_FIELDS, same saved step) together; see train_many."""
    c0, M = cfgs[0], len(cfgs)
    models = []
    histories, offsets, start = [], [], 0
    for cfg, run_dir in zip(cfgs, dirs):
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if not (run_dir / "config.json").exists():
            _atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
        models.append(make_model(_model_cfg(cfg, device)))
    names = list(trainable_params(models[0]))
    states = [_read_state(d) for d in dirs]
    for model, state, run_dir in zip(models, states, dirs):
        if state is not None:
            _params_for(model, state["params"], run_dir / "state.pt", run_dir)
    params = {k: torch.stack([trainable_params(m)[k].detach() for m in models]).requires_grad_(True) for k in names}
    optimizer = _BatchedAdamW(params, cfgs)
    for i, (state, run_dir) in enumerate(zip(states, dirs)):
        if state is None:
            histories.append({k: [] for k in METRICS})
        else:
            optimizer.load(i, state["optimizer"], state["step"], run_dir / "state.pt", run_dir)
            histories.append({k: state["metrics"][k].tolist() for k in METRICS})
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
    a_all, b_all = tokens[:, 0].expand(M, -1), tokens[:, 1].expand(M, -1)  # every pair, for the metrics
    step_loss = _Compiled(_many_train_loss, compile)
    clock = time.perf_counter()

    def record(step: int) -> None:
        with torch.no_grad():
            logits = many_logits(params, a_all, b_all)  # [M, p², p]
        for i, (tr, te) in enumerate(splits):
            values = {"step": step}
            for split, sel in (("train", tr), ("test", te)):
                values[f"{split}_loss"] = loss_fn(logits[i, sel], labels[i, sel]).item()
                values[f"{split}_acc"] = (logits[i, sel].argmax(-1) == labels[i, sel]).double().mean().item()
            values["elapsed_s"] = offsets[i] + time.perf_counter() - clock
            for k, v in values.items():
                histories[i][k].append(v)

    def checkpoint(step: int) -> None:
        lrs = [c.lr for c in cfgs] if step == 0 else optimizer.lrs(step - 1)  # the lr of the last update
        for i, run_dir in enumerate(dirs):
            cpu = {k: v[i].detach().cpu().clone() for k, v in params.items()}
            _atomic_save(cpu, _checkpoint_path(run_dir, step))
            _atomic_save({"step": step, "params": cpu, "optimizer": optimizer.state_dict(i, lrs[i]),
                          "metrics": {k: torch.tensor(v, dtype=torch.float64) for k, v in histories[i].items()}},
                         run_dir / "state.pt")

    def update(step: int) -> None:
        for w in params.values():
            w.grad = None
        step_loss(params, a_tr, b_tr, y_tr, weights).backward()
        optimizer.step(optimizer.lrs(step))

    def postfix() -> dict[str, str]:
        return {"test_acc": " ".join(f"{h['test_acc'][-1]:.0%}" for h in histories[:8])}

    _loop(c0, start, f"{M} runs (p={c0.p})" if M > 1 else c0.run_name(), progress, update, record, checkpoint, postfix)
    for run_dir, history in zip(dirs, histories):
        (run_dir / "metrics.csv").write_text(pd.DataFrame(history).to_csv(index=False))


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
            lock = FileLock(str(root / name) + ".lock")
            lock.acquire()
            try:
                if (root / name / "state.pt").exists():
                    loaded[name] = load_run(root / name)
            except CheckpointError as err:
                if "unfinished run" not in str(err):
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
    parser.add_argument("--out", type=Path, help="run directory (default: the cache in runs/, see get_run)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (same results, slower)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("name", "betas"):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name not in ("name", "betas") and getattr(args, f.name) is not None}
    try:
        cfg = TrainConfig.preset(args.preset, **overrides)
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    compile = False if args.no_compile else None
    run = train(cfg, args.out, device=args.device, compile=compile) if args.out else get_run(cfg, device=args.device, compile=compile)
    final = run.metrics.iloc[-1]
    print(f"{run.run_dir}: {cfg.steps} steps in {time.perf_counter() - start:.0f} s; final train acc "
          f"{final.train_acc:.2%}, test acc {final.test_acc:.2%}, test loss {final.test_loss:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
