"""Chapters 8 and 9's training knobs (attention rate, StableMax, ⊥Grad, Grokfast, init_from, keep_train): checked,
in the cache key only when used, the same whether a run trains alone or in a batch."""
import pandas as pd
import pytest
import torch

from utils.train import TrainConfig, get_run, train, train_many, trainable_params
from utils.train.loop import GradientKnobs

TINY = dict(p=17, frac_train=0.5, d_model=32, n_heads=2, d_mlp=64, lr=3e-3, weight_decay=1.0,
            steps=40, checkpoint_every=20, eval_every=10)
SAME = ["step", "train_loss", "test_loss", "train_acc", "test_acc"]


def tiny(**overrides) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **overrides})


def weights(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainable_params(run.model).items()}


def test_knobs_at_their_defaults_keep_the_cache_key_and_change_it_when_used():
    base = tiny()
    assert tiny(attention_rate=1.0, loss="cross_entropy", orthogonal_grad=False, grokfast_lamb=0.0,
                init_from="", keep_train=1.0).key() == base.key()
    assert tiny(grokfast_alpha=0.5).key() == base.key()  # the filter is off: its decay changes nothing
    used = [tiny(attention_rate=0.0), tiny(loss="stablemax"), tiny(orthogonal_grad=True), tiny(grokfast_lamb=2.0),
            tiny(grokfast_lamb=2.0, grokfast_alpha=0.5), tiny(keep_train=0.5), tiny(init_from="some-run")]
    assert len({c.key() for c in used} | {base.key()}) == len(used) + 1


@pytest.mark.parametrize("field, value", [("attention_rate", 1.5), ("attention_rate", -0.1), ("loss", "mse"),
                                          ("orthogonal_grad", 1), ("grokfast_lamb", -1.0),
                                          ("grokfast_alpha", 1.0), ("init_from", "../elsewhere"),
                                          ("init_from", "a/b"), ("keep_train", 0.0), ("keep_train", 1.2)])
def test_knobs_out_of_range_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        tiny(**{field: value})


def test_gradient_knobs_change_only_the_models_that_ask_for_them():
    knobs = GradientKnobs([tiny(), tiny(orthogonal_grad=True), tiny(grokfast_lamb=2.0)])
    g = torch.Generator().manual_seed(0)
    w, grad = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    out = knobs({"w": w}, {"w": grad})["w"]
    assert torch.equal(out[0], grad[0])  # neither knob: untouched
    assert abs((out[1] * w[1]).sum().item()) < 1e-4 and out[1].norm().item() == pytest.approx(grad[1].norm().item())
    torch.testing.assert_close(out[2], 3 * grad[2])  # first call: the average is the gradient, g + 2·g


def test_runs_with_knobs_train_the_same_alone_and_in_a_batch(tmp_path):
    cfgs = [tiny(seed=0, attention_rate=0.0), tiny(seed=1, orthogonal_grad=True, weight_decay=0.0),
            tiny(seed=2, grokfast_lamb=2.0, grokfast_alpha=0.9), tiny(seed=3, keep_train=0.6),
            tiny(seed=4, loss="stablemax", weight_decay=0.0)]
    batched = train_many(cfgs, [tmp_path / f"many{i}" for i in range(len(cfgs))], compile=False, progress=False,
                         max_padding=1.0)
    for i, (cfg, run) in enumerate(zip(cfgs, batched)):
        alone = train(cfg, tmp_path / f"alone{i}", compile=False, progress=False)
        for name, w in weights(alone).items():
            assert (weights(run)[name] - w).abs().max() <= 1e-5, (cfg, name)
        pd.testing.assert_frame_equal(run.metrics[SAME], alone.metrics[SAME], rtol=1e-4, atol=1e-6)
    plain = train(tiny(seed=4, weight_decay=0.0), tmp_path / "plain", compile=False, progress=False)
    assert not torch.equal(weights(plain)["embed.W_E"], weights(batched[4])["embed.W_E"])  # StableMax mattered


def test_init_from_starts_at_the_parents_final_weights_and_keep_train_trains_on_a_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("GROKKING_RUNS_DIR", str(tmp_path))
    parent = get_run(tiny(), compile=False, progress=False)
    child_cfg = tiny(init_from=parent.run_dir.name, keep_train=0.5, steps=20, checkpoint_every=10)
    child = get_run(child_cfg, compile=False, progress=False)
    start = child.model_at(0)
    for name, w in weights(parent).items():
        assert torch.equal(trainable_params(start)[name], w), name
    assert len(child.train_idx) == child_cfg.n_train() == round(0.5 * len(parent.train_idx))
    assert torch.equal(child.train_idx, parent.train_idx[:len(child.train_idx)])
    assert torch.equal(child.test_idx, parent.test_idx)


def test_init_from_a_missing_or_different_run_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("GROKKING_RUNS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Train the parent first"):
        get_run(tiny(init_from="no-such-run"), compile=False, progress=False)
    parent = get_run(tiny(steps=10, checkpoint_every=10), compile=False, progress=False)
    with pytest.raises(ValueError, match="another architecture"):
        get_run(tiny(d_mlp=48, init_from=parent.run_dir.name), compile=False, progress=False)
