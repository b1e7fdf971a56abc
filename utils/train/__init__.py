"""Training: a fast trainer that is exactly the HookedTransformer model, resumable cached runs, batches of runs and
a command line (`python -m utils.train --preset workshop --seed 0 --p 113 --out runs/my_run`).

  config   TrainConfig, its presets and checks          store   run directories: writer, lock, Run, load_run
  loop     loss, compile, evaluation, stop rule, loop   adamw   AdamW for a stack of models
  single   train, get_run (one run)                     many    train_many, get_runs (batched)
  cli      the command line

The model's maths is utils.forward.logits (one implementation for one run, many runs and the progress measures);
everything else (analysis, hooks, plots) uses the HookedTransformer from `Run.model`.
"""
from utils.metrics import loss_fn  # the one loss, as utils.train.loss_fn too
from utils.model import trainable_params
from utils.train.cli import main
from utils.train.config import (MIN_TRAIN_PAIRS, P_MAX, PRESETS, ROBUSTNESS_MODULI, ROBUSTNESS_OVERRIDES,
                                ROBUSTNESS_SEEDS, ROBUSTNESS_STOP, TrainConfig, preset_fraction, robustness_config)
from utils.train.loop import Compiled, should_stop, train_loss
from utils.train.many import BATCH_FIELDS, batches, get_runs, train_many
from utils.train.single import get_run, train
from utils.train.store import (METRICS, STOP_REASONS, Run, TrainingDivergedError, UnfinishedRunError, load_run,
                               model_cfg, run_model, runs_dir)

__all__ = ["TrainConfig", "PRESETS", "MIN_TRAIN_PAIRS", "P_MAX", "preset_fraction", "ROBUSTNESS_MODULI",
           "ROBUSTNESS_SEEDS", "ROBUSTNESS_OVERRIDES", "ROBUSTNESS_STOP", "robustness_config", "train", "get_run",
           "train_many", "get_runs", "batches", "BATCH_FIELDS", "load_run", "Run", "runs_dir", "model_cfg", "run_model",
           "METRICS", "STOP_REASONS", "UnfinishedRunError", "TrainingDivergedError", "should_stop", "train_loss",
           "Compiled", "trainable_params", "loss_fn", "main"]
