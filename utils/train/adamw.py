"""AdamW for a stack of models: torch.optim.AdamW's update applied to weights [M, ...], each model with its own
learning rate, weight decay and betas, saving and loading each model's state in torch's own format."""
from __future__ import annotations

from pathlib import Path

import torch

from utils.train.config import TrainConfig
from utils.train.store import check_optimizer_state

__all__ = ["BatchedAdamW", "ADAM_EPS"]

ADAM_EPS = 1e-8  # torch.optim.AdamW's default, which `train` uses


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
        check_optimizer_state(saved, {k: v[i] for k, v in self.params.items()}, step, path, run_dir)
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

