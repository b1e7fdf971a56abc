"""Runs on disk: the run directory's files, its lock, the one writer every trainer uses, and reading a run back.

A run directory holds config.json, state.pt (everything needed to resume: weights, optimiser state, metrics, the
config's key; once finished also why it stopped), checkpoints/step_NNNNNN.pt (weights, step and config key) and,
once finished, metrics.csv. Every file is written atomically; every writer holds the directory's file lock (the one
get_run takes), so a reader sees a whole file and a second writer waits. Damaged or foreign files raise a
CheckpointError that says what is wrong and what to delete; nothing is ever unpickled (tensor-only loads).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from utils import REPO_ROOT
from utils.data import make_dataset
from utils.model import (CheckpointError, HookedTransformer, load_tensor_file, make_model, model_config,
                         set_attention_rate, trainable_params)
from utils.train.config import TrainConfig
from utils.train.files import (PENDING, _remove_stale_temporaries, _save_temporary,  # noqa: F401
                               _text_temporary, atomic_save, atomic_write_text, commit_together,
                               finish_pending_commits)

__all__ = ["Run", "load_run", "runs_dir", "RunWriter", "start_weights", "UnfinishedRunError", "TrainingDivergedError", "METRICS",
           "STOP_REASONS", "model_cfg"]

METRICS = ["step", "train_loss", "test_loss", "train_acc", "test_acc", "elapsed_s"]  # elapsed_s: training wall time


class UnfinishedRunError(CheckpointError):
    """A run directory whose training has not finished: `train(cfg, run_dir)` resumes it."""

    def __init__(self, run_dir: Path, step: int, steps: int):
        self.run_dir, self.step, self.steps = run_dir, step, steps
        super().__init__(f"{run_dir} holds an unfinished run ({step} of at most {steps} steps). Call "
                         "train(cfg, run_dir) (or rerun the CLI with the same --out) to resume it.")


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became NaN or infinite; the run is left unfinished, its last finite state kept."""


def diverged(label: str, step: int, values: dict[str, float] | None = None) -> TrainingDivergedError:
    what = f"the loss is {values['train_loss']} (train) / {values['test_loss']} (test)" if values else \
        "the weights hold NaN or infinite values"
    return TrainingDivergedError(f"{label} diverged at step {step}: {what}. The learning rate is probably too "
                                 "large (or the weight decay too strong); the run directory keeps its last finite "
                                 "checkpoint and is not marked finished. Lower lr and train it in a new directory.")


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


def check_run_dir(run_dir: str | Path) -> Path:
    """A usable run directory path: not empty, and not an existing file."""
    if isinstance(run_dir, str) and not run_dir.strip():
        raise ValueError("the run directory is an empty string; give a folder name, e.g. runs/my_run")
    if not isinstance(run_dir, (str, Path)):
        raise TypeError(f"a run directory must be a str or Path, got {type(run_dir).__name__}")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file, not a run directory; choose a folder name (it is created)")
    return run_dir


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}.pt"


def _read_checkpoint(path: Path, run_dir: Path) -> dict:
    """Load a tensor-only file, or raise a CheckpointError telling the user to delete the run directory."""
    try:
        return load_tensor_file(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err} To retrain this run, delete the run directory {run_dir}.") from None


def corrupt(path: Path, run_dir: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}. Delete the run directory {run_dir} and train it again.")


def _check_key(saved: object, cfg: TrainConfig, path: Path, run_dir: Path) -> None:
    """Refuse a file written for another configuration than run_dir/config.json's (edited or copied in)."""
    key = saved.get("config_key") if isinstance(saved, dict) else None
    if key != cfg.key():
        raise corrupt(path, run_dir, f"was written for another configuration (key {key!r}) than "
                       f"{run_dir / 'config.json'} describes (key {cfg.key()!r}): the config was edited or the "
                       "files copied from another run")


def params_for(params: dict[str, torch.Tensor], saved: dict, path: Path, run_dir: Path) -> None:
    """Copy saved weights into params (a model's trainable ones), checking names, shapes and that they are finite."""
    if not isinstance(saved, dict) or set(saved) != set(params) or any(
            not isinstance(saved[k], torch.Tensor) or saved[k].shape != v.shape for k, v in params.items()):
        raise corrupt(path, run_dir, "the saved weights do not match the run's configuration")
    if not all(torch.isfinite(v).all() for v in saved.values()):
        raise corrupt(path, run_dir, "the saved weights hold NaN or infinite values")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def check_optimizer_state(saved: object, params: dict[str, torch.Tensor], step: int, path: Path,
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
        raise corrupt(path, run_dir, f"its optimiser state does not match the run's weights at step {step}")


@dataclass
class Run:
    """A finished run: its config, metrics table, final model and checkpoints.

    stop_reason says how it ended: "grokked" (stopped early by the config's stop rule), "all steps" (no stop rule:
    trained cfg.steps steps) or "step cap" (the stop rule was on, but the run hit cfg.steps without grokking).
    "grokked" includes runs that generalised at once (no plateau): utils.outcomes.outcome(metrics) tells them apart.
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
        return self.config.split()[0]

    @property
    def test_idx(self) -> torch.Tensor:
        return self.config.split()[1]

    def dataset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All p² inputs and labels (tokens [p², 3], labels [p²])."""
        return make_dataset(self.config.p, self.config.op)

    def model_at(self, step: int) -> HookedTransformer:
        """The model as it was after `step` updates (one of checkpoint_steps)."""
        if step not in self.checkpoint_steps:
            nearest = min(self.checkpoint_steps, key=lambda s: abs(s - step))
            raise ValueError(f"no checkpoint at step {step}; the nearest is {nearest} "
                             f"(checkpoints every {self.config.checkpoint_every} steps: see run.checkpoint_steps)")
        return _model_from_file(self.config, checkpoint_path(self.run_dir, step), self.run_dir, step)


def _model_from_file(cfg: TrainConfig, path: Path, run_dir: Path, step: int) -> HookedTransformer:
    saved = _read_checkpoint(path, run_dir)
    _check_key(saved, cfg, path, run_dir)
    if saved.get("step") != step:
        raise corrupt(path, run_dir, f"holds step {saved.get('step')!r}, not {step}")
    model = run_model(cfg)
    params_for(trainable_params(model), saved.get("params"), path, run_dir)
    return model


def model_cfg(cfg: TrainConfig, device: str = "cpu"):
    """The HookedTransformer configuration of cfg's model (its initial weights come from cfg.seed)."""
    return model_config(p=cfg.p, d_model=cfg.d_model, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, seed=cfg.seed, device=device)


def run_model(cfg: TrainConfig, device: str = "cpu") -> HookedTransformer:
    """A freshly initialised model for cfg, with its attention rate (a hook) when that is not 1."""
    return set_attention_rate(make_model(model_cfg(cfg, device)), cfg.attention_rate)


def start_weights(cfg: TrainConfig, device: str, fresh: bool = True) -> dict[str, torch.Tensor]:
    """The trainable weights a run starts from: cfg's initialisation or, for a fresh run with cfg.init_from, the
    final weights of that finished cached run (same architecture required)."""
    params = trainable_params(run_model(cfg, device))
    if fresh and cfg.init_from:
        parent_dir = runs_dir() / cfg.init_from
        if not (parent_dir / "config.json").exists():
            raise FileNotFoundError(f"init_from={cfg.init_from!r}: there is no cached run of that name in {runs_dir()}. "
                                    "Train the parent first (parent = get_run(parent_cfg)) and pass "
                                    "init_from=parent.run_dir.name.")
        parent = load_run(parent_dir)
        shape = ("p", "d_model", "n_heads", "d_mlp")
        if any(getattr(parent.config, k) != getattr(cfg, k) for k in shape):
            raise ValueError(f"init_from={cfg.init_from!r} has another architecture than this run "
                             f"({', '.join(f'{k}={getattr(parent.config, k)}' for k in shape)}): give the run the "
                             "parent's p, d_model, n_heads and d_mlp.")
        params_for(params, trainable_params(parent.model), parent_dir / "state.pt", parent_dir)
    return params


def read_config(run_dir: Path) -> TrainConfig:
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


def read_state(run_dir: Path, cfg: TrainConfig) -> dict | None:
    """run_dir/state.pt checked against cfg (keys, config key, metrics), or None if there is none yet."""
    path = run_dir / "state.pt"
    if not path.exists():
        return None
    state = _read_checkpoint(path, run_dir)
    if not isinstance(state, dict) or not {"step", "params", "optimizer", "metrics", "config_key"} <= set(state):
        raise corrupt(path, run_dir, "is not a training state written by this version of utils.train")
    _check_key(state, cfg, path, run_dir)
    step = state["step"]
    if not isinstance(step, int) or not 0 <= step <= cfg.steps:
        raise corrupt(path, run_dir, f"holds an impossible step {step!r}")
    if state.get("stopped", "all steps") not in STOP_REASONS:
        raise corrupt(path, run_dir, f"holds an unknown stop reason {state.get('stopped')!r}")
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
        raise corrupt(path, run_dir, "its metrics history is damaged (missing columns, unequal lengths, steps "
                       f"that do not run from 0 to at most the saved step {step}, or non-finite values)")
    history["step"] = [int(s) for s in history["step"]]
    return history


def finished(state: dict | None) -> bool:
    return state is not None and "stopped" in state


def load_run(run_dir: str | Path) -> Run:
    """Open a finished run directory (see `train`); an UnfinishedRunError if its training has not ended."""
    run_dir = check_run_dir(run_dir)
    cfg = read_config(run_dir)
    state = read_state(run_dir, cfg)
    if not finished(state):
        raise UnfinishedRunError(run_dir, 0 if state is None else state["step"], cfg.steps)
    metrics = pd.DataFrame(state["metrics"]).astype({"step": int})
    steps = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt"))
    model = run_model(cfg)
    params_for(trainable_params(model), state["params"], run_dir / "state.pt", run_dir)
    return Run(config=cfg, run_dir=run_dir, metrics=metrics, checkpoint_steps=steps, model=model,
               stop_reason=state["stopped"])


def prepare_dir(cfg: TrainConfig, run_dir: Path) -> None:
    """Create run_dir (or check that it holds cfg's run), and remove half-written files. Hold its lock."""
    if run_dir.is_dir() and not (run_dir / "config.json").exists() and any(
            not (x.name.startswith(".") and x.name.endswith(".tmp")) for x in run_dir.iterdir()):
        raise ValueError(f"{run_dir} already exists and holds files but no config.json: it is not a run directory. "
                         "Choose a new folder for the run.")
    if (run_dir / "config.json").exists():
        if read_config(run_dir) != cfg:
            raise ValueError(f"{run_dir} already holds a run with a different configuration; "
                             "choose another output directory or delete that one.")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.json").exists():
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    finish_pending_commits([run_dir])
    _remove_stale_temporaries(run_dir)


class RunWriter:
    """Writes one run's files as it trains, for `train` and `train_many` alike: at each save the checkpoint and
    state.pt; at the final save also the stop reason and metrics.csv (and a warning if it hit its step cap)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, compiled_before: list[bool]):
        self.cfg, self.run_dir, self.compiled_before = cfg, run_dir, compiled_before

    def save(self, step: int, params: dict[str, torch.Tensor], optimizer: dict, history: dict[str, list],
             compiled: bool, final: bool) -> None:
        """Write the run at `step`: weights (on any device), AdamW state in torch's format, metrics so far."""
        self.stage(step, params, optimizer, history, compiled, final)()

    def stage(self, step: int, params: dict[str, torch.Tensor], optimizer: dict, history: dict[str, list],
              compiled: bool, final: bool, checkpoint: bool = True) -> Callable[[], None]:
        """Write the files of `save` as synced temporaries; returns the commit, which renames them into place.
        A batch stages every run before committing any, so a kill while writing leaves every run at the same step
        (runs saved at different steps would resume in separate batches, which round differently); the commit's
        `moves` lists its renames (see commit_together). Without `checkpoint`, only state.pt: a resume point off
        the checkpoint schedule."""
        cfg, run_dir = self.cfg, self.run_dir
        cpu = {k: v.detach().cpu().clone() for k, v in params.items()}
        if not all(torch.isfinite(v).all() for v in cpu.values()):
            raise diverged(cfg.run_name(), step)
        state = {"config_key": cfg.key(), "step": step, "params": cpu, "optimizer": optimizer,
                 "metrics": {k: torch.tensor(v, dtype=torch.float64) for k, v in history.items()},
                 "compiled": self.compiled_before + [compiled]}  # how each training session ran (see Compiled)
        if final:
            state["stopped"] = _stop_reason(cfg, step < cfg.steps)
        files = [(state, run_dir / "state.pt")]
        if checkpoint:  # committed before state.pt, so state.pt never names a checkpoint still missing
            files.insert(0, ({"config_key": cfg.key(), "step": step, "params": cpu}, checkpoint_path(run_dir, step)))
        staged = [(obj, path, _save_temporary(obj, path)) for obj, path in files]
        csv = None
        if final:
            csv = run_dir / "metrics.csv", _text_temporary(run_dir / "metrics.csv",
                                                           pd.DataFrame(history).to_csv(index=False))

        def commit() -> None:
            if csv:  # before state.pt: a finished state.pt always has its metrics.csv
                os.replace(csv[1], csv[0])
            for obj, path, tmp in staged:
                atomic_save(obj, path, tmp)
            if final:
                _announce_end(cfg, cfg.run_name(), state["stopped"], history)
        commit.moves = ([(csv[1], csv[0])] if csv else []) + [(tmp, path) for _, path, tmp in staged]
        return commit


def runs_dir() -> Path:
    """Where cached runs live: $GROKKING_RUNS_DIR, or runs/ at the repository root."""
    return Path(os.environ.get("GROKKING_RUNS_DIR") or REPO_ROOT / "runs")


def check_cached(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse a cache folder that holds something other than cfg's run (copied or hand-edited)."""
    if not (run_dir / "config.json").exists():
        return
    held = read_config(run_dir)
    if held != cfg:
        raise CheckpointError(f"the cache folder {run_dir} holds a run whose config.json does not match its name "
                              f"(config key {held.key()}, asked for {cfg.key()}): it was copied or edited by hand. "
                              f"Delete {run_dir} and it will be trained again.")

