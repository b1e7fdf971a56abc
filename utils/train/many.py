"""Many runs at once: `train_many` (into directories) and `get_runs` (the cache), batched.

Several configurations train together: their weights are stacked along a leading model axis [M, ...], one
forward/backward pass (utils.forward.logits) computes every model's loss (the models never interact: the total loss
is a sum, so each model's gradient is its own), and a batched AdamW updates them all. Configurations may differ in
seed, lr, weight decay, betas, warm-up, data, operation, attention rate and gradient knobs; training sets of different
sizes are padded to a common length with zero-weight rows. Each run is written to its own directory by the same
RunWriter as `train`, so `load_run`, `get_run` and `train` (to resume) all work on it.

On a CPU the work is compute-bound, so batching saves the per-step overheads but not the arithmetic: it pays for
small models, whose many small operations it merges, and loses for larger ones, whose stacked tensors no longer
fit the caches. So on a CPU only models whose MLP product is small (CPU_BATCH_WORK) are batched by default, and
larger ones train one after another (benchmarks/train_many.py measures chapter 6's set both ways;
results/train_many.json). On a GPU, where one small model leaves the device mostly idle, everything compatible is
batched. torch.compile is off by default here: on the course's CPU it made the batched step slower (the same
benchmark measures it).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock

from utils.data import make_dataset
from utils.forward import all_pairs, logits
from utils.train.adamw import BatchedAdamW
from utils.train.config import TrainConfig
from utils.train.loop import (Compiled, GradientKnobs, check_device, check_finite, loop, measure, should_stop,
                              train_loss)
from utils.train.lock import acquire
from utils.train.store import (METRICS, Run, RunWriter, TrainingDivergedError, UnfinishedRunError,
                               check_cached, commit_together, finish_pending_commits, finished, load_run, params_for,
                               prepare_dir, read_config, read_state, runs_dir, start_weights)

__all__ = ["train_many", "get_runs", "batches", "BATCH_FIELDS", "CPU_BATCH_WORK"]

# What must be equal for two configurations to train in the same batch (the tensors' shapes and the loop).
BATCH_FIELDS = ("p", "d_model", "n_heads", "d_mlp", "steps", "checkpoint_every", "eval_every", "loss")
# On a CPU, by default, models are batched only if n_train · d_model · d_mlp (one MLP product's multiply-adds) is at
# most this. Measured on the course's 2-core machine, batched against one after another: chapter 6's map (p = 53,
# d_model 64, d_mlp 256; up to 3.2e7) 1.3x faster; chapter 9's runs (p = 59, 1.0e8) 1.1x slower; chapter 8's runs
# (1.8e8) 1.26x and chapter 6's robustness set (1.6e8 and 1.9e8) 1.2x slower.
CPU_BATCH_WORK = 2 ** 26  # 6.7e7


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

    Configs that agree on BATCH_FIELDS train together, at most max_models at a time (default: all of them, but one
    at a time on a CPU for models above CPU_BATCH_WORK), and only with training sets at least (1 - max_padding) times
    the largest in their batch (padding rows cost as much as real ones; 1 pads anything). Each run_dirs[i] ends up exactly as train(cfgs[i], run_dirs[i]) would leave it, up to float rounding:
    with a stop rule each run stops on its own (its files are final, and it leaves the batch); finished runs are
    loaded, never retrained. Holds every directory's lock while it works. If some runs diverge, the others finish
    and then a TrainingDivergedError names those that did.
    """
    cfgs, dirs = _check_many(cfgs, run_dirs)
    if dirs is None:
        return get_runs(cfgs, device=device, compile=compile, progress=progress, max_models=max_models,
                        max_padding=max_padding)
    _check_batching(max_models, max_padding)
    device = check_device(device)
    for cfg, run_dir in zip(cfgs, dirs):  # refuse a directory holding another run before any work
        if (run_dir / "config.json").exists() and read_config(run_dir) != cfg:
            raise ValueError(f"{run_dir} already holds a run with a different configuration; "
                             "choose another output directory or delete that one.")
    held = []
    try:
        for run_dir in sorted(dirs, key=lambda d: str(d.resolve())):  # a fixed order: no deadlock
            held.append(acquire(run_dir))
        finish_pending_commits([d for d in dirs if d.is_dir()])  # before any directory drops its temporaries
        groups = _unfinished_groups(cfgs, dirs)
        diverged: list[str] = []
        for members in groups:
            limit = max_models or _default_max_models([cfgs[i] for i in members], device)
            for chunk in _chunks(members, [cfgs[i].n_train() for i in members], limit, max_padding):
                diverged += _Batch([cfgs[i] for i in chunk], [dirs[i] for i in chunk], device, compile).train(progress)
        if diverged:
            raise TrainingDivergedError(f"{len(diverged)} run(s) diverged (the others finished):\n" + "\n".join(diverged))
        return [load_run(d) for d in dirs]
    finally:
        for lock in held:
            lock.release()


def _check_batching(max_models: object, max_padding: object) -> None:
    """Refuse a max_models that is not a positive integer (or None) and a max_padding outside [0, 1]."""
    if max_models is not None and (isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 1):
        raise ValueError(f"max_models must be a positive integer or None, got {max_models!r}")
    if isinstance(max_padding, bool) or not isinstance(max_padding, (int, float)) or not 0 <= max_padding <= 1:
        raise ValueError(f"max_padding must be a number in [0, 1], got {max_padding!r}")


def _default_max_models(cfgs: list[TrainConfig], device: str) -> int | None:
    """No limit, except one model at a time on a CPU when the models' MLP products are large (CPU_BATCH_WORK)."""
    c = cfgs[0]  # the group shares its shapes; the largest training set decides
    work = max(cfg.n_train() for cfg in cfgs) * c.d_model * c.d_mlp
    return 1 if torch.device(device).type == "cpu" and work > CPU_BATCH_WORK else None


def _unfinished_groups(cfgs: list[TrainConfig], dirs: list[Path]) -> list[list[int]]:
    """Prepare every (locked) directory and group the unfinished runs that can train together: a batch shares
    shapes, the loop and the step it starts from (a resumed run joins runs saved at the same step)."""
    groups: dict[tuple, list[int]] = {}
    for i, (cfg, run_dir) in enumerate(zip(cfgs, dirs)):
        prepare_dir(cfg, run_dir)
        state = read_state(run_dir, cfg)
        if not finished(state):
            start = -1 if state is None else state["step"]  # -1: a fresh run
            groups.setdefault((_batch_key(cfg), start), []).append(i)
    return list(groups.values())


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


class _Batch:
    """Compatible runs (same BATCH_FIELDS, same saved step) training together; their directories are prepared and
    locked. Its methods are the loop's callbacks (see utils.train.loop.loop). A model that stops by its stop rule or
    diverges is saved (or left unfinished) and leaves the batch: `keep` drops its row from every per-model field."""

    PER_MODEL = ("cfgs", "dirs", "histories", "offsets", "writers", "splits")  # lists with one entry per model

    def __init__(self, cfgs: list[TrainConfig], dirs: list[Path], device: str, compile: bool):
        self.cfgs, self.dirs = list(cfgs), list(dirs)
        states = [read_state(d, c) for d, c in zip(dirs, cfgs)]
        weights = [start_weights(c, device, fresh=state is None) for c, state in zip(cfgs, states)]
        for w, state, run_dir in zip(weights, states, dirs):
            if state is not None:
                params_for(w, state["params"], run_dir / "state.pt", run_dir)
        self.params = {k: torch.stack([w[k].detach() for w in weights]).requires_grad_(True) for k in weights[0]}
        self.optimizer = BatchedAdamW(self.params, self.cfgs)
        self.histories, self.offsets, self.writers, self.start, self.saved = [], [], [], 0, -1
        for i, (cfg, state, run_dir) in enumerate(zip(cfgs, states, dirs)):
            if state is not None:
                self.optimizer.load(i, state["optimizer"], state["step"], run_dir / "state.pt", run_dir)
                self.start = state["step"]
            self.histories.append({k: [] for k in METRICS} if state is None else state["metrics"])
            self.offsets.append(self.histories[-1]["elapsed_s"][-1] if self.histories[-1]["elapsed_s"] else 0.0)
            self.writers.append(RunWriter(cfg, run_dir, [] if state is None else list(state.get("compiled", []))))
        self.fresh = states[0] is None
        self._data(device)
        self.knobs = GradientKnobs(self.cfgs)
        self.step_loss, self.diverged, self.clock = Compiled(train_loss, compile), [], time.perf_counter()

    def _data(self, device: str) -> None:
        """Every pair (for the metrics) and each model's answers, split and padded training set."""
        self.a, self.b = all_pairs(self.cfgs[0].p, device)  # the inputs are the same for every operation …
        self.labels = torch.stack([make_dataset(c.p, c.op)[1] for c in self.cfgs]).to(device)  # … the answers not
        self.splits = [tuple(t.to(device) for t in c.split()) for c in self.cfgs]
        n = max(len(tr) for tr, _ in self.splits)
        self.idx = torch.stack([torch.cat([tr, tr.new_zeros(n - len(tr))]) for tr, _ in self.splits])  # [M, n]
        self.weights = torch.stack([(torch.arange(n, device=device) < len(tr)).double()  # padding weighs 0
                                    for tr, _ in self.splits])
        self.rates = torch.tensor([c.attention_rate for c in self.cfgs], device=device)  # [M]

    def rate(self) -> float | torch.Tensor:
        """The attention rates to pass on: the number 1 when every model has ordinary attention (no mixing)."""
        return 1.0 if bool((self.rates == 1).all()) else self.rates

    def train(self, progress: bool) -> list[str]:
        """Train to the end; a message for each run that diverged (it is left unfinished)."""
        c0 = self.cfgs[0]
        label = f"{len(self.cfgs)} runs (p={c0.p})" if len(self.cfgs) > 1 else c0.run_name()
        loop(c0, self.start, self.fresh, label, progress, self.update, self.evaluate, self.checkpoint, self.postfix)
        return self.diverged

    def update(self, step: int) -> None:
        if not self.cfgs:
            return
        for w in self.params.values():
            w.grad = None
        a, b, y = self.a[self.idx], self.b[self.idx], self.labels.gather(1, self.idx)  # [M, n]
        self.step_loss(self.params, a, b, y, self.weights, self.rate(), self.cfgs[0].loss).backward()
        if self.knobs.active:
            grads = self.knobs(self.params, {k: w.grad for k, w in self.params.items()})
            for k, w in self.params.items():
                w.grad = grads[k]
        self.optimizer.step(self.optimizer.lrs(step))

    def evaluate(self, step: int) -> bool:
        """Record every model's metrics; save and drop those that stop or diverge. True once none is left."""
        done, ok = [], []
        measured = measure(logits, self.params, self.a, self.b, self.labels, self.splits, self.rate())
        for i, values in enumerate(measured):
            values = {"step": step, **values, "elapsed_s": self.offsets[i] + time.perf_counter() - self.clock}
            try:
                check_finite(values, self.cfgs[i].run_name())
            except TrainingDivergedError as err:
                self.diverged.append(str(err))
                continue
            ok.append(i)
            for k, v in values.items():
                self.histories[i][k].append(v)
            if should_stop(self.cfgs[i], self.histories[i]):
                done.append(i)
        staying = [i for i in ok if i not in done]
        if done:
            self.leave(step, done, staying)
        if len(staying) < len(self.cfgs):
            self.keep(staying)
        return not self.cfgs

    def stage(self, i: int, step: int, final: bool, checkpoint: bool = True) -> Callable[[], None]:
        """Model i's files at `step` written as temporaries; the commit that renames them (RunWriter.stage)."""
        lr = self.cfgs[i].lr if step == 0 else self.optimizer.lrs(step - 1)[i]  # the lr of the last update
        return self.writers[i].stage(step, {k: v[i] for k, v in self.params.items()}, self.optimizer.state_dict(i, lr),
                                     self.histories[i], self.step_loss.active, final, checkpoint)

    def leave(self, step: int, done: list[int], staying: list[int]) -> None:
        """Models `done` stop at `step`: their final files and the staying models' state at `step` (a checkpoint
        too if one is due), committed together. A resume then finds the staying models at the step where the batch
        shrank; resumed from an earlier save they would train alone where they had trained together, and a batch of
        another size rounds differently (they would not be bit-identical to a run never interrupted)."""
        c = self.cfgs[0]
        due = step % c.checkpoint_every == 0 or step == c.steps
        order = staying + done
        commit_together([self.stage(i, step, final=i in done, checkpoint=due or i in done) for i in order],
                        [self.dirs[i] for i in order])
        self.saved = step

    def checkpoint(self, step: int, final: bool) -> None:
        """Save every model at `step`: all written first, then all committed, so they resume together."""
        if step == self.saved and not final:  # `leave` saved them at this step already
            return
        commit_together([self.stage(i, step, final) for i in range(len(self.cfgs))], self.dirs)

    def keep(self, rows: list[int]) -> None:
        """Go on with models `rows` only (the others stopped or diverged): they never change again."""
        self.params = {k: v.detach()[rows].requires_grad_(True) for k, v in self.params.items()}
        self.optimizer.keep(rows, self.params)
        self.knobs.keep(rows)
        for name in ("idx", "weights", "labels", "rates"):  # the padded length stays the same
            setattr(self, name, getattr(self, name)[rows])
        for name in self.PER_MODEL:
            setattr(self, name, [getattr(self, name)[r] for r in rows])
        self.optimizer.cfgs = self.cfgs

    def postfix(self) -> dict[str, str]:
        return {"test_acc": " ".join(f"{h['test_acc'][-1]:.0%}" for h in self.histories[:8])}


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
            lock = acquire(root / name)
            try:
                check_cached(cfg, root / name)
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

