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

    torch.set_flush_denormal(True)  # late in training gradients go subnormal: steps get ~3x slower without
    bar = tqdm(total=cfg.steps, initial=start, desc=cfg.run_name(), disable=not progress, dynamic_ncols=True)
    try:
        if start == 0:
            record(0)
            checkpoint(0)
        for step in range(start, cfg.steps):
            for group in optimizer.param_groups:  # linear warm-up, then constant
                group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
            optimizer.zero_grad(set_to_none=True)
            step_loss(params, a_tr, b_tr, y_tr).backward()
            optimizer.step()
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.steps:
                record(done)
                bar.update(done - bar.n)
                bar.set_postfix(train_loss=f"{history['train_loss'][-1]:.2e}", test_loss=f"{history['test_loss'][-1]:.2e}",
                                train_acc=f"{history['train_acc'][-1]:.1%}", test_acc=f"{history['test_acc'][-1]:.1%}")
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint(done)
    finally:
        bar.close()
        torch.set_flush_denormal(False)
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
