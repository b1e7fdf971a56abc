"""utils.train.train_many: several runs trained batched equal each run trained alone, and are cached like get_run's."""
import json

import pandas as pd
import pytest
import torch

import utils.train as T
import utils.train.many as M
import utils.train.store as S
from utils.train.adamw import BatchedAdamW
from utils.train import (TrainConfig, UnfinishedRunError, batches, get_run, get_runs, load_run, train,
                         train_many, trainable_params)
from utils.data import make_dataset

TINY = dict(p=17, frac_train=0.5, d_model=32, n_heads=2, d_mlp=64, lr=3e-3, weight_decay=1.0,
            steps=40, checkpoint_every=20, eval_every=10)
SAME = ["step", "train_loss", "test_loss", "train_acc", "test_acc"]  # elapsed_s differs, of course


def tiny(**overrides) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **overrides})


def weights(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainable_params(run.model).items()}


def record_batches(monkeypatch) -> list[list[TrainConfig]]:
    """Make train_many record the configs of each batch it trains (in the order it trains them)."""
    seen = []

    class Recording(M._Batch):
        def __init__(self, cfgs, *args):
            seen.append(list(cfgs))
            super().__init__(cfgs, *args)
    monkeypatch.setattr(M, "_Batch", Recording)
    return seen


def assert_same_run(batched, alone):
    """Same config, checkpoints, weights and metrics, up to float rounding (sums run in another order)."""
    assert batched.config == alone.config and batched.checkpoint_steps == alone.checkpoint_steps
    for name, w in weights(alone).items():
        difference = weights(batched)[name] - w
        assert difference.norm() <= 1e-5 * w.norm() and difference.abs().max() <= 1e-5, name
    pd.testing.assert_frame_equal(batched.metrics[SAME], alone.metrics[SAME], rtol=1e-4, atol=1e-6)


def assert_bit_identical(runs, reference) -> None:
    """The same weights and metrics, bit for bit (a resumed batch against one never interrupted)."""
    for run, ref in zip(runs, reference, strict=True):
        assert all(torch.equal(w, weights(ref)[k]) for k, w in weights(run).items())
        assert run.metrics[SAME].equals(ref.metrics[SAME])


def interrupt_batch(monkeypatch, cfgs: list[TrainConfig], dirs: list, after) -> None:
    """Train cfgs into dirs batched, stopped by a KeyboardInterrupt right after the first rename of a file for
    which after(obj, path) holds (a kill that takes effect when that call returns)."""
    real_save = S.atomic_save

    def save_then_stop(obj, path, *staged):
        real_save(obj, path, *staged)
        if after(obj, path):
            raise KeyboardInterrupt
    monkeypatch.setattr(S, "atomic_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_many(cfgs, dirs, compile=False, progress=False)
    monkeypatch.setattr(S, "atomic_save", real_save)


# --- batched training is training each run alone -------------------------------------------------------
def test_batched_runs_equal_runs_trained_alone_with_their_own_lr_decay_fraction_and_seed(tmp_path):
    # (Moderate learning rates: at lr 1e-2 a ReLU that sits exactly at 0 can switch on in one run and not in the
    # other because of a rounding difference, and Adam turns that into a visible step. That is not a bug.)
    cfgs = [tiny(seed=0), tiny(seed=1, lr=6e-3, weight_decay=0.0), tiny(seed=2, frac_train=0.3, weight_decay=3.0),
            tiny(seed=0, betas=(0.8, 0.99), warmup_steps=3, frac_train=0.7)]
    batched = train_many(cfgs, [tmp_path / f"many{i}" for i in range(len(cfgs))], compile=False, progress=False,
                         max_padding=1.0)  # one batch: the smaller training sets are padded
    for i, (cfg, run) in enumerate(zip(cfgs, batched)):
        alone = train(cfg, tmp_path / f"alone{i}", compile=False, progress=False)
        assert_same_run(run, alone)
        assert run.metrics.train_loss.iloc[-1] < 0.9 * run.metrics.train_loss.iloc[0]  # it learned something
    # the runs really differ from each other (each has its own hyper-parameters)
    assert not torch.allclose(weights(batched[0])["embed.W_E"], weights(batched[3])["embed.W_E"])


def test_batched_run_is_written_exactly_like_a_single_run(tmp_path):
    cfg = tiny(seed=3)
    batched = train_many([cfg, tiny(seed=4)], [tmp_path / "a", tmp_path / "b"], compile=False, progress=False)[0]
    alone = train(cfg, tmp_path / "alone", compile=False, progress=False)
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(batched.run_dir) == files(alone.run_dir)
    assert json.loads((batched.run_dir / "config.json").read_text()) == cfg.to_dict()
    saved, reference = (torch.load(d / "state.pt", weights_only=True) for d in (batched.run_dir, alone.run_dir))
    assert saved.keys() == reference.keys() and saved["step"] == reference["step"]
    assert saved["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    for j, moments in reference["optimizer"]["state"].items():
        assert moments.keys() == saved["optimizer"]["state"][j].keys()
        assert torch.allclose(saved["optimizer"]["state"][j]["exp_avg_sq"], moments["exp_avg_sq"],
                              rtol=1e-3, atol=1e-12)
    csv = pd.read_csv(batched.run_dir / "metrics.csv")
    assert list(csv.columns) == list(pd.read_csv(alone.run_dir / "metrics.csv").columns)
    assert torch.equal(batched.model_at(20).W_E, load_run(batched.run_dir).model_at(20).W_E)


def test_a_batched_run_resumes_with_train_and_a_single_run_with_train_many(tmp_path, monkeypatch, interrupt_after):
    whole = train(tiny(), tmp_path / "whole", compile=False, progress=False)
    for resume, first in ((train, train_many), (train_many, train)):
        half = tmp_path / f"{first.__name__}-then-{resume.__name__}"
        restore = interrupt_after(20)  # a run stopped at step 20
        with pytest.raises(KeyboardInterrupt):
            (train_many([tiny()], [half], compile=False, progress=False) if first is train_many
             else train(tiny(), half, compile=False, progress=False))
        restore()
        with pytest.raises(UnfinishedRunError, match="unfinished run"):
            load_run(half)
        resumed = (resume(tiny(), half, compile=False, progress=False) if resume is train
                   else resume([tiny()], [half], compile=False, progress=False)[0])
        assert_same_run(resumed, whole)


def test_crashed_batch_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfgs = [tiny(seed=s) for s in range(2)]
    dirs = [tmp_path / f"run{s}" for s in range(2)]
    reference = train_many(cfgs, [tmp_path / f"ref{s}" for s in range(2)], compile=False, progress=False)
    interrupt_batch(monkeypatch, cfgs, dirs,  # after both runs saved step 20
                    lambda obj, path: path == dirs[-1] / "state.pt" and obj["step"] == 20)
    resumed = train_many(cfgs, dirs, compile=False, progress=False)
    assert_bit_identical(resumed, reference)


def test_a_batch_killed_while_writing_leaves_every_run_at_one_step_and_resumes_bit_identically(tmp_path, monkeypatch):
    """Runs saved at different steps would resume in separate batches, which round differently from the batch."""
    cfgs = [tiny(seed=s) for s in range(2)]
    dirs = [tmp_path / f"run{s}" for s in range(2)]
    reference = train_many(cfgs, [tmp_path / f"ref{s}" for s in range(2)], compile=False, progress=False)
    real_stage = S._save_temporary

    def die_while_writing_the_last_state(obj, path):
        if path.name == "state.pt" and obj["step"] == 20 and path.parent == dirs[-1]:
            raise KeyboardInterrupt  # the first run's files for step 20 are written, not yet renamed
        return real_stage(obj, path)
    monkeypatch.setattr(S, "_save_temporary", die_while_writing_the_last_state)
    with pytest.raises(KeyboardInterrupt):
        train_many(cfgs, dirs, compile=False, progress=False)
    monkeypatch.setattr(S, "_save_temporary", real_stage)
    saved = {torch.load(d / "state.pt", weights_only=True)["step"] for d in dirs}
    assert len(saved) == 1 and saved.pop() < 20
    resumed = train_many(cfgs, dirs, compile=False, progress=False)
    assert_bit_identical(resumed, reference)


def test_a_batch_killed_between_two_runs_renames_is_completed_on_resume_and_stays_bit_identical(tmp_path,
                                                                                                monkeypatch):
    """Renames can block (a busy file system), and a SIGKILL takes effect when the call returns: between two runs'
    renames. The batch's record of its renames lets the resume finish them, so both runs resume together."""
    cfgs = [tiny(seed=s) for s in range(2)]
    dirs = [tmp_path / f"run{s}" for s in range(2)]
    reference = train_many(cfgs, [tmp_path / f"ref{s}" for s in range(2)], compile=False, progress=False)
    interrupt_batch(monkeypatch, cfgs, dirs,  # the second run's files for step 20 are staged, not yet renamed
                    lambda obj, path: path == dirs[0] / "state.pt" and obj["step"] == 20)
    assert [torch.load(d / "state.pt", weights_only=True)["step"] for d in dirs] == [20, 0]
    assert all((d / S.PENDING).exists() for d in dirs)
    resumed = train_many(cfgs, dirs, compile=False, progress=False)
    assert not any((d / S.PENDING).exists() for d in dirs)
    assert_bit_identical(resumed, reference)


def test_a_single_run_opened_alone_completes_its_own_part_of_an_interrupted_batch_commit(tmp_path, monkeypatch):
    cfgs = [tiny(seed=s) for s in range(2)]
    dirs = [tmp_path / f"run{s}" for s in range(2)]
    interrupt_batch(monkeypatch, cfgs, dirs, lambda obj, path: path == dirs[0] / "state.pt" and obj["step"] == 20)
    S.prepare_dir(cfgs[1], dirs[1])  # what `train` does first
    assert torch.load(dirs[1] / "state.pt", weights_only=True)["step"] == 20
    assert not (dirs[1] / S.PENDING).exists() and (dirs[0] / S.PENDING).exists()


def test_a_damaged_batch_commit_record_is_refused_with_what_to_do(tmp_path):
    run = train(tiny(steps=20), tmp_path / "run", compile=False, progress=False)
    (run.run_dir / S.PENDING).write_text("{not json")
    with pytest.raises(S.CheckpointError, match="Delete .*batch-commit.json"):
        S.prepare_dir(run.config, run.run_dir)


def test_a_batch_interrupted_after_a_run_left_it_resumes_the_others_where_it_shrank_bit_identically(tmp_path,
                                                                                                   monkeypatch):
    """The staying runs are saved where the batch shrinks: resumed from an earlier save they would train alone
    where they had trained together, and a batch of another size rounds differently."""
    cfgs = [tiny(p=23, steps=120, eval_every=2), tiny(p=23, seed=1, steps=120, eval_every=2, stop_margin=20,
                                                       stop_test_acc=0.05, stop_loss_fall=1.5)]
    reference = train_many(cfgs, [tmp_path / f"ref{s}" for s in range(2)], compile=False, progress=False)
    left = int(reference[1].metrics.step.iloc[-1])
    assert reference[1].stop_reason != "all steps" and left % cfgs[0].checkpoint_every, "pick a stop off the schedule"
    dirs = [tmp_path / f"run{s}" for s in range(2)]
    interrupt_batch(monkeypatch, cfgs, dirs, lambda obj, path: path == dirs[1] / "state.pt" and "stopped" in obj)
    assert torch.load(dirs[0] / "state.pt", weights_only=True)["step"] == left
    assert not (dirs[0] / "checkpoints" / f"step_{left:06d}.pt").exists()  # a resume point, not a checkpoint
    resumed = train_many(cfgs, dirs, compile=False, progress=False)
    assert [r.checkpoint_steps for r in resumed] == [r.checkpoint_steps for r in reference]
    assert_bit_identical(resumed, reference)


# --- grouping ----------------------------------------------------------------------------------------------
def test_incompatible_configs_train_in_separate_batches_and_come_back_in_order(tmp_path, monkeypatch):
    short = lambda **kw: tiny(**{"steps": 10, "checkpoint_every": 10, "eval_every": 5, **kw})  # noqa: E731
    cfgs = [short(seed=0), short(p=13), short(seed=1, lr=1e-2), short(op="subtract"), short(d_mlp=48), short(steps=20),
            short(n_heads=4), short(checkpoint_every=5)]
    assert batches(cfgs) == [[0, 2, 3], [1], [4], [5], [6], [7]]  # another operation only changes the labels
    seen = record_batches(monkeypatch)
    runs = train_many(cfgs, [tmp_path / str(i) for i in range(len(cfgs))], compile=False, progress=False)
    assert sorted(len(batch) for batch in seen) == [1, 1, 1, 1, 1, 3]
    assert [run.config for run in runs] == cfgs
    assert_same_run(runs[3], train(cfgs[3], tmp_path / "sub", compile=False, progress=False))


def test_on_a_cpu_only_models_with_small_products_are_batched_unless_asked(tmp_path, monkeypatch):
    cfgs = [tiny(seed=s, steps=10) for s in range(3)]
    work = cfgs[0].n_train() * cfgs[0].d_model * cfgs[0].d_mlp
    seen = record_batches(monkeypatch)
    monkeypatch.setattr(M, "CPU_BATCH_WORK", work)  # at the limit: batched
    train_many(cfgs, [tmp_path / f"small{i}" for i in range(3)], device="cpu", compile=False, progress=False)
    monkeypatch.setattr(M, "CPU_BATCH_WORK", work - 1)  # above it: one after another …
    train_many(cfgs, [tmp_path / f"large{i}" for i in range(3)], device="cpu", compile=False, progress=False)
    train_many(cfgs, [tmp_path / f"asked{i}" for i in range(3)], device="cpu", compile=False, progress=False,
               max_models=3)  # … unless max_models asks for a batch
    assert [len(batch) for batch in seen] == [3, 1, 1, 1, 3]


def test_chapter_6s_robustness_set_trains_one_after_another_on_a_cpu_and_batched_on_a_gpu():
    # what chapter 6 and the README say of its set (benchmarks/results/train_many.json: batching lost there)
    cfgs = [T.robustness_config(p, seed, **T.ROBUSTNESS_STOP) for p in T.ROBUSTNESS_MODULI
            for seed in T.ROBUSTNESS_SEEDS]
    for group in batches(cfgs):
        members = [cfgs[i] for i in group]
        assert M._default_max_models(members, "cpu") == 1
        assert M._default_max_models(members, "cuda") is None


def test_training_sets_of_very_different_sizes_train_in_separate_batches(tmp_path, monkeypatch):
    seen = record_batches(monkeypatch)
    cfgs = [tiny(frac_train=f, steps=10) for f in (0.3, 0.7, 0.65, 0.32, 0.5)]  # 87, 202, 188, 92, 144 pairs
    train_many(cfgs, [tmp_path / str(i) for i in range(5)], compile=False, progress=False)
    assert [[c.frac_train for c in batch] for batch in seen] == [[0.7, 0.65], [0.5], [0.32, 0.3]]  # within 20%
    seen.clear()
    train_many(cfgs, [tmp_path / f"all{i}" for i in range(5)], compile=False, progress=False, max_padding=1.0)
    assert [[c.frac_train for c in batch] for batch in seen] == [[0.7, 0.65, 0.5, 0.32, 0.3]]


def test_max_models_splits_a_batch(tmp_path, monkeypatch):
    seen = record_batches(monkeypatch)
    train_many([tiny(seed=s, steps=10) for s in range(5)], [tmp_path / str(s) for s in range(5)],
               compile=False, progress=False, max_models=2)
    assert [len(batch) for batch in seen] == [2, 2, 1]


# --- the cache ----------------------------------------------------------------------------------------------
def test_get_runs_loads_cached_runs_and_trains_only_the_missing_ones_batched(tmp_path, monkeypatch):
    monkeypatch.setenv("GROKKING_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("GROKKING_COMPILE", "0")
    cached = get_run(tiny(seed=0, steps=20), progress=False)
    mtime = (cached.run_dir / "state.pt").stat().st_mtime_ns
    trained = record_batches(monkeypatch)
    cfgs = [tiny(seed=s, steps=20) for s in (2, 0, 1, 2)]  # one cached, one asked for twice
    runs = get_runs(cfgs, progress=False)
    assert [sorted(c.seed for c in batch) for batch in trained] == [[1, 2]]
    assert runs[1].run_dir == cached.run_dir and (cached.run_dir / "state.pt").stat().st_mtime_ns == mtime
    assert runs[0].run_dir == runs[3].run_dir == get_run(cfgs[0], progress=False).run_dir
    assert [r.config for r in runs] == cfgs
    trained.clear()
    assert [r.run_dir for r in get_runs(cfgs, progress=False)] == [r.run_dir for r in runs] and not trained
    assert [r.run_dir for r in train_many(cfgs, progress=False)] == [r.run_dir for r in runs]  # no dirs: the cache


# --- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfgs, run_dirs, error, match", [
    ([], None, ValueError, "empty"),
    (TrainConfig(), None, TypeError, "list of TrainConfig"),
    ([TrainConfig(), {"p": 23}], None, TypeError, r"cfgs\[1\] must be a TrainConfig"),
    ([TrainConfig(), TrainConfig(seed=1)], ["a"], ValueError, "one directory per config"),
    ([TrainConfig(), TrainConfig(seed=1)], "ab", ValueError, "one directory per config"),
    ([TrainConfig(), TrainConfig(seed=1)], ["same", "same"], ValueError, "used twice"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, monkeypatch, cfgs, run_dirs, error, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        train_many(cfgs, run_dirs)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("option, value", [("max_models", 0), ("max_models", 2.5), ("max_padding", -0.1),
                                           ("max_padding", 1.5)])
def test_batch_options_are_checked(tmp_path, option, value):
    with pytest.raises(ValueError, match=option):
        train_many([tiny()], [tmp_path / "run"], **{option: value})
    assert not (tmp_path / "run").exists()


def test_a_directory_holding_another_run_is_refused(tmp_path):
    train(tiny(steps=10), tmp_path / "run", compile=False, progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        train_many([tiny(steps=10, seed=1), tiny(steps=10, lr=1e-2)], [tmp_path / "new", tmp_path / "run"],
                   compile=False)
    assert not (tmp_path / "new").exists()


def test_failed_compile_falls_back_to_identical_eager_training(tmp_path, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(torch, "compile", broken_compile)
    cfgs = [tiny(seed=s, steps=10) for s in range(2)]
    with pytest.warns(RuntimeWarning, match="torch.compile unavailable"):
        fallback = train_many(cfgs, [tmp_path / "a0", tmp_path / "a1"], compile=True, progress=False)
    eager = train_many(cfgs, [tmp_path / "b0", tmp_path / "b1"], compile=False, progress=False)
    for f, e in zip(fallback, eager):
        assert all(torch.equal(w, weights(e)[k]) for k, w in weights(f).items())


def test_batched_adamw_is_torch_adamw_with_per_model_hyperparameters():
    cfgs = [TrainConfig(lr=1e-2, weight_decay=1.0), TrainConfig(lr=3e-3, weight_decay=0.0, betas=(0.8, 0.99)),
            TrainConfig(lr=1e-3, weight_decay=2.0, warmup_steps=0)]
    g = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(3, 5, 4, generator=g), "v": torch.randn(3, 7, generator=g)}
    stacked = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    batched = BatchedAdamW(stacked, cfgs)
    singles = [{k: v[i].clone().requires_grad_(True) for k, v in start.items()} for i in range(3)]
    torch_adamw = [torch.optim.AdamW(s.values(), lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
                   for s, c in zip(singles, cfgs)]
    for step in range(30):
        # gradients from 1e-6 to 1: Adam's normalisation must be right at every scale
        grads = {k: torch.randn(v.shape, generator=g) * 10.0 ** -torch.randint(0, 7, v.shape, generator=g)
                 for k, v in start.items()}
        for k, w in stacked.items():
            w.grad = grads[k]
        batched.step(batched.lrs(step))
        for i, (params, opt) in enumerate(zip(singles, torch_adamw)):
            for group in opt.param_groups:
                group["lr"] = batched.lrs(step)[i]
            for k, w in params.items():
                w.grad = grads[k][i]
            opt.step()
    for i, params in enumerate(singles):
        for k, w in params.items():
            assert torch.equal(stacked[k][i], w), (i, k)  # the same float operations in the same order
        saved = batched.state_dict(i, cfgs[i].lr)["state"]
        assert torch.equal(saved[0]["exp_avg"], torch_adamw[i].state[params["w"]]["exp_avg"])
