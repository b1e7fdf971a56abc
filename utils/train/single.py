"""One run: `train` (into a directory, resumable) and `get_run` (the cache under runs/, shared between processes).

A run trains in one process with torch's fused AdamW and, by default, a compiled step (utils.forward.logits for a
stack of one model, its weights viewed [1, ...]).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from utils.data import make_dataset
from utils.forward import all_pairs, logits, stacked
from utils.train.config import TrainConfig
from utils.train.loop import (Compiled, GradientKnobs, check_device, check_finite, compile_default, loop, measure,
                              should_stop, train_loss)
from utils.train.lock import holding
from utils.train.store import (METRICS, Run, RunWriter, UnfinishedRunError, check_cached, check_optimizer_state,
                               check_run_dir, finished, load_run, params_for, prepare_dir, read_state,
                               runs_dir, start_weights)

__all__ = ["train", "get_run", "one_run_loss", "one_run_logits"]


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
    run_dir = check_run_dir(run_dir)
    device = check_device(device)
    compile = compile_default(device) if compile is None else compile
    with holding(run_dir):
        prepare_dir(cfg, run_dir)
        if finished(read_state(run_dir, cfg)):
            if progress:
                print(f"{run_dir} is already finished; loading it.", file=sys.stderr)
            return load_run(run_dir)
        _train_locked(cfg, run_dir, device, compile, progress)
        return load_run(run_dir)


def one_run_loss(params: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
                 attention_rate: float = 1.0, loss: str = "cross_entropy") -> torch.Tensor:
    """train_loss of one run: its weights as a stack of one, its inputs [n]."""
    return train_loss(stacked(params), a[None], b[None], labels[None], None, attention_rate, loss)


def one_run_logits(params: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor,
                    attention_rate: float) -> torch.Tensor:
    """utils.forward.logits of one run's weights, as a stack of one: a, b [1, n] → [1, n, p]."""
    return logits(stacked(params), a, b, attention_rate)


def _resume(state: dict, run_dir: Path, params: dict, optimizer: torch.optim.Optimizer) -> None:
    """Load run_dir's saved weights and optimiser state (its state.pt, read) into params and optimizer, checked."""
    params_for(params, state["params"], run_dir / "state.pt", run_dir)
    check_optimizer_state(state["optimizer"], params, state["step"], run_dir / "state.pt", run_dir)
    optimizer.load_state_dict(state["optimizer"])


def _train_locked(cfg: TrainConfig, run_dir: Path, device: str, compile: bool, progress: bool) -> None:
    """train's body: run_dir is prepared and locked. The closures are the loop's four callbacks (see `loop`)."""
    # Long (46 lines): the four closures share the run's state; as functions they would pass eight values around.
    state = read_state(run_dir, cfg)
    params = start_weights(cfg, device, fresh=state is None)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  fused=True)
    if state is not None:
        _resume(state, run_dir, params, optimizer)
    knobs = GradientKnobs([cfg])
    history = {k: [] for k in METRICS} if state is None else state["metrics"]
    start = 0 if state is None else state["step"]
    writer = RunWriter(cfg, run_dir, [] if state is None else list(state.get("compiled", [])))
    a, b = all_pairs(cfg.p, device)
    labels = make_dataset(cfg.p, cfg.op)[1].to(device)
    split = tuple(t.to(device) for t in cfg.split())
    a_tr, b_tr, y_tr = a[split[0]], b[split[0]], labels[split[0]]
    step_loss, eval_logits = Compiled(one_run_loss, compile), Compiled(one_run_logits, compile)
    clock = time.perf_counter() - (history["elapsed_s"][-1] if history["elapsed_s"] else 0.0)

    def evaluate(step: int) -> bool:
        values = {"step": step, **measure(eval_logits, params, a, b, labels[None], [split], cfg.attention_rate)[0],
                  "elapsed_s": time.perf_counter() - clock}
        check_finite(values, cfg.run_name())
        for k, v in values.items():
            history[k].append(v)
        return should_stop(cfg, history)

    def checkpoint(step: int, final: bool) -> None:
        writer.save(step, params, optimizer.state_dict(), history, step_loss.active, final)

    def update(step: int) -> None:
        for group in optimizer.param_groups:  # linear warm-up, then constant
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
        optimizer.zero_grad(set_to_none=True)
        step_loss(params, a_tr, b_tr, y_tr, cfg.attention_rate, cfg.loss).backward()
        if knobs.active:
            grads = knobs(stacked(params), {k: w.grad[None] for k, w in params.items()})
            for k, w in params.items():
                w.grad = grads[k][0]
        optimizer.step()

    def postfix() -> dict[str, str]:
        return {"train_loss": f"{history['train_loss'][-1]:.2e}", "test_loss": f"{history['test_loss'][-1]:.2e}",
                "train_acc": f"{history['train_acc'][-1]:.1%}", "test_acc": f"{history['test_acc'][-1]:.1%}"}

    loop(cfg, start, state is None, cfg.run_name(), progress, update, evaluate, checkpoint, postfix)


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
    with holding(run_dir):
        check_cached(cfg, run_dir)
        if (run_dir / "state.pt").exists():
            try:
                return load_run(run_dir)
            except UnfinishedRunError:
                pass
        return train(cfg, run_dir, device=device, compile=compile, progress=progress)
