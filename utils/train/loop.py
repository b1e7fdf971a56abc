"""The training loop's parts that one run and a batch share: the loss, the optional compile, the evaluation on
every pair, the stop rule and the loop itself."""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from utils.forward import logits
from utils.metrics import accuracy, cross_entropy
from utils.stability import GradientEMA, orthogonal_gradient, stablemax_cross_entropy
from utils.train.config import TrainConfig
from utils.train.heap import keep_freed_memory
from utils.train.store import diverged

__all__ = ["train_loss", "LOSSES", "GradientKnobs", "Compiled", "measure", "should_stop", "loop", "check_device"]


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



LOSSES = {"cross_entropy": cross_entropy, "stablemax": stablemax_cross_entropy}  # TrainConfig.loss → function


def train_loss(params: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
               weights: torch.Tensor | None = None, attention_rate: float | torch.Tensor = 1.0,
               loss: str = "cross_entropy") -> torch.Tensor:
    """The sum over a stack of models of each one's mean float64 loss (cross-entropy, or StableMax's) on its inputs
    a, b, labels [M, n] (weights [M, n]: padding rows weigh 0). Tiny gradients are flushed to zero on their way back
    (see above)."""
    out = _FlushSubnormalGrad.apply(logits(params, a, b, attention_rate))
    return LOSSES[loss](out, labels, weights=weights).sum()


class GradientKnobs:
    """Chapter 9's changes to the gradients before each update, for a stack of models [M, ...]: ⊥Grad for the
    models whose config asks for it, then Grokfast's filter (utils.stability). Free when no model uses them.

    The filter's running average is not saved with the run: a resumed Grokfast run starts it again.
    """

    def __init__(self, cfgs: list[TrainConfig]):
        self.orthogonal = torch.tensor([c.orthogonal_grad for c in cfgs])
        lambs = torch.tensor([float(c.grokfast_lamb) for c in cfgs])
        alphas = torch.tensor([float(c.grokfast_alpha) for c in cfgs])
        self.ema = GradientEMA(alphas, lambs) if bool((lambs > 0).any()) else None

    @property
    def active(self) -> bool:
        return bool(self.orthogonal.any()) or self.ema is not None

    @torch.no_grad()
    def __call__(self, weights: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The gradients to update with, for stacked weights and their gradients [M, ...]."""
        out = {}
        for name, g in grads.items():
            if self.orthogonal.any():
                chosen = self.orthogonal.to(g.device).view(-1, *(1,) * (g.ndim - 1))
                g = torch.where(chosen, orthogonal_gradient(g, weights[name], models=1), g)
            out[name] = g if self.ema is None else self.ema(name, g)
        return out

    def keep(self, rows: list[int]) -> None:
        """Go on with the models `rows` only (a batch whose other models stopped)."""
        self.orthogonal = self.orthogonal[rows]
        if self.ema is not None:
            self.ema.alpha, self.ema.lamb = self.ema.alpha[rows], self.ema.lamb[rows]
            self.ema.average = {k: v[rows] for k, v in self.ema.average.items()}


class Compiled:
    """torch.compile(fn), falling back to plain fn (same maths, slower, rounded differently) if compiling fails.

    Whether a run was compiled is not part of its cache key: both compute the same function, but rounding differs
    and training amplifies it (tests/test_train.py compares the two), so each run's state.pt records which
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
                      "the same maths (benchmarks/train_speed.py compares the speeds), but not bit-identical to "
                      "compiled training: sums are rounded in another order, and training amplifies it.",
                      RuntimeWarning, stacklevel=3)
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


def compile_default(device: str) -> bool:
    """Whether training compiles when the caller does not say: $GROKKING_COMPILE if set (0/false/no: never), else
    on a GPU only. On a CPU the eager step is as fast (benchmarks/results/train_speed.json compares them) and skips
    the compile, which takes tens of seconds in every new process."""
    chosen = os.environ.get("GROKKING_COMPILE")
    if chosen is not None:
        return chosen.lower() not in {"0", "false", "no"}
    return torch.device(device).type == "cuda"



def measure(logits_fn: Callable, params: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor,
            labels: torch.Tensor, splits: list[tuple[torch.Tensor, torch.Tensor]],
            attention_rate: float | torch.Tensor = 1.0) -> list[dict[str, float]]:
    """Train/test loss and accuracy of each model of a stack on every pair: a, b [p²], labels [M, p²], splits one
    (train_idx, test_idx) per model. logits_fn is utils.forward.logits (or its compiled twin)."""
    M = len(splits)
    with torch.no_grad():
        out = logits_fn(params, a.expand(M, -1), b.expand(M, -1), attention_rate)  # [M, p², p]
    return [{f"{name}_{what}": fn(out[i], labels[i], idx).item()
             for name, idx in zip(("train", "test"), split) for what, fn in (("loss", cross_entropy), ("acc", accuracy))}
            for i, split in enumerate(splits)]


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



def check_finite(values: dict[str, float], label: str) -> None:
    """Raise TrainingDivergedError if a recorded loss is NaN or infinite."""
    if not (math.isfinite(values["train_loss"]) and math.isfinite(values["test_loss"])):
        raise diverged(label, values["step"], values)


def loop(cfg: TrainConfig, start: int, fresh: bool, label: str, progress: bool, update: Callable[[int], None],
          evaluate: Callable[[int], bool], checkpoint: Callable[[int, bool], None],
          postfix: Callable[[], dict]) -> None:
    """Steps start … cfg.steps: update(step) takes one; evaluate(step) records metrics every eval_every steps and
    says whether to stop; checkpoint(step, final) saves on schedule, when stopping, and at the end.

    A fresh run is evaluated and saved at step 0 first (a resumed one already was).
    Subnormal numbers are flushed meanwhile (late in training gradients go subnormal, and arithmetic on subnormal numbers is several times slower).
    The progress bar redraws at most once a second: in a notebook every redraw is a message to the front end, and a
    kernel that sends thousands of them during one cell can drop some (nbval then times out waiting for the cell).
    """
    keep_freed_memory()  # the next step reuses this step's memory (utils.train.heap)
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



def check_device(device: str | None) -> str:
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

