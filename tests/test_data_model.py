"""utils.data and utils.model: the dataset, the split, the model's shape, and the paper's checkpoint format."""
import math

import einops
import pytest
import torch

from utils.data import make_dataset, train_test_split
from utils.model import (CheckpointError, bias_names, export_original_checkpoint, load_original_checkpoint, make_model,
                         model_config, read_original_checkpoint)


def test_dataset_lists_every_pair_with_its_sum_mod_p():
    tokens, labels = make_dataset(7)
    assert tokens.shape == (49, 3) and labels.shape == (49,)
    assert tokens.dtype == labels.dtype == torch.int64
    assert torch.equal(tokens[3 * 7 + 5], torch.tensor([3, 5, 7]))  # row a·p + b holds (a, b, =)
    assert labels[3 * 7 + 5] == (3 + 5) % 7
    assert len({tuple(t[:2].tolist()) for t in tokens}) == 49


def test_subtraction_dataset_uses_a_minus_b_mod_p():
    _, labels = make_dataset(5, op="subtract")
    assert labels[1 * 5 + 3] == (1 - 3) % 5


def test_split_is_seeded_disjoint_and_covers_everything():
    train, test = train_test_split(23, 0.3, seed=4)
    assert len(train) == round(0.3 * 23 * 23)
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(23 * 23))
    assert torch.equal(train, train_test_split(23, 0.3, seed=4)[0])
    assert not torch.equal(train, train_test_split(23, 0.3, seed=5)[0])


@pytest.mark.parametrize("call, field", [
    (lambda: make_dataset(2), "p"),
    (lambda: make_dataset(5.0), "p"),
    (lambda: make_dataset(5, op="multiply"), "op"),
    (lambda: train_test_split(13, 0.0, 0), "frac_train"),
    (lambda: train_test_split(13, 1.0, 0), "frac_train"),
])
def test_bad_dataset_arguments_raise_value_errors_naming_the_argument(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_model_matches_the_paper_architecture_and_freezes_biases_at_zero():
    model = make_model(model_config(p=113))
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_mlp) == (1, 4, 32, 128, 512)
    assert cfg.d_vocab == 114 and cfg.d_vocab_out == 113 and cfg.normalization_type is None and cfg.act_fn == "relu"
    params = dict(model.named_parameters())
    assert set(bias_names(model)) == {n for n in params if n.split(".")[-1].startswith("b_")}
    for name in bias_names(model):
        assert not params[name].requires_grad and torch.count_nonzero(params[name]) == 0


def test_same_seed_gives_the_same_initial_weights():
    first, second = make_model(model_config(p=31, seed=3)), make_model(model_config(p=31, seed=3))
    other = make_model(model_config(p=31, seed=4))
    assert all(torch.equal(x, y) for x, y in zip(first.parameters(), second.parameters()))
    assert not torch.equal(first.W_E, other.W_E)


# --- the paper's original checkpoint format -------------------------------------------------------
def _original_state(p=13, d_model=16, n_heads=2, d_mlp=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    d_head, d_vocab = d_model // n_heads, p + 1
    shapes = {
        "embed.W_E": (d_model, d_vocab), "pos_embed.W_pos": (3, d_model),
        "blocks.0.attn.W_K": (n_heads, d_head, d_model), "blocks.0.attn.W_Q": (n_heads, d_head, d_model),
        "blocks.0.attn.W_V": (n_heads, d_head, d_model), "blocks.0.attn.W_O": (d_model, n_heads * d_head),
        "blocks.0.mlp.W_in": (d_mlp, d_model), "blocks.0.mlp.b_in": (d_mlp,),
        "blocks.0.mlp.W_out": (d_model, d_mlp), "blocks.0.mlp.b_out": (d_model,),
        "unembed.W_U": (d_model, d_vocab),
    }
    state = {k: torch.randn(s, generator=g) / math.sqrt(s[-1]) for k, s in shapes.items()}
    state["blocks.0.attn.mask"] = torch.tril(torch.ones(3, 3))
    return state


def _original_forward(state, tokens):
    """The original architecture written out directly: causal attention scaled by √d_head, ReLU MLP with biases."""
    x = state["embed.W_E"][:, tokens].permute(1, 2, 0) + state["pos_embed.W_pos"]  # [batch, pos, d_model]
    q = einops.einsum(state["blocks.0.attn.W_Q"], x, "i h m, b p m -> b i p h")
    k = einops.einsum(state["blocks.0.attn.W_K"], x, "i h m, b p m -> b i p h")
    v = einops.einsum(state["blocks.0.attn.W_V"], x, "i h m, b p m -> b i p h")
    scores = einops.einsum(q, k, "b i p h, b i q h -> b i p q") / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.triu(torch.ones(3, 3, dtype=torch.bool), 1), float("-inf"))
    z = einops.einsum(scores.softmax(-1), v, "b i p q, b i q h -> b p i h")
    x = x + einops.rearrange(z, "b p i h -> b p (i h)") @ state["blocks.0.attn.W_O"].T
    hidden = torch.relu(x @ state["blocks.0.mlp.W_in"].T + state["blocks.0.mlp.b_in"])
    x = x + hidden @ state["blocks.0.mlp.W_out"].T + state["blocks.0.mlp.b_out"]
    return (x @ state["unembed.W_U"])[:, -1, :-1]  # drop the "=" column


def test_original_checkpoint_loads_and_computes_the_same_logits(tmp_path):
    state = _original_state()
    path = tmp_path / "full_run_data.pth"
    torch.save({"model": state, "config": {"p": 13, "lr": 1e-3, "fn_name": "add"}, "train_losses": [2.5, 1.0]}, path)
    model = load_original_checkpoint(path)
    tokens, _ = make_dataset(13)
    ours = model(tokens)[:, -1]
    theirs = _original_forward(state, tokens)
    assert ours.shape == (169, 13)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mutate, message", [
    (lambda blob: blob["model"].pop("blocks.0.mlp.W_out"), "blocks.0.mlp.W_out: missing"),
    (lambda blob: blob["model"].__setitem__("unembed.W_U", torch.zeros(16, 10)), "unembed.W_U: shape"),
    (lambda blob: blob.pop("model"), "expected a dict with a 'model'"),
    (lambda blob: blob["config"].__setitem__("p", 17), "config says p=17"),
])
def test_original_checkpoint_loader_refuses_other_formats(tmp_path, mutate, message):
    blob = {"model": _original_state(), "config": {"p": 13}}
    mutate(blob)
    torch.save(blob, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match=message):
        load_original_checkpoint(tmp_path / "ckpt.pth")


class NotATensor:  # an arbitrary object: unpickling it could run code, so weights_only must refuse it
    pass


@pytest.mark.parametrize("write", [
    lambda path: path.write_bytes(b"this is not a checkpoint"),
    lambda path: (torch.save({"model": _original_state()}, path), path.write_bytes(path.read_bytes()[:500])),
    lambda path: torch.save({"model": _original_state(), "extra": NotATensor()}, path),
])
def test_corrupt_or_untrusted_checkpoint_files_get_a_clear_error(tmp_path, write):
    path = tmp_path / "bad.pth"
    write(path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_original_checkpoint(path)


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_original_checkpoint(tmp_path / "nowhere.pth")


# --- the loader is strict: anything but the paper's one-layer model is refused, naming the key ---------------
def _second_layer_with_attention_biases(blob):
    state = blob["model"]
    for key in [k for k in state if k.startswith("blocks.0.")]:
        state[key.replace("blocks.0.", "blocks.1.")] = state[key].clone()
    for name in ("b_Q", "b_K", "b_V"):
        state[f"blocks.0.attn.{name}"] = torch.full((2, 8), 100.0)
    state["blocks.0.attn.b_O"] = torch.full((16,), 100.0)


def _set(key, value):
    return lambda blob: blob["model"].__setitem__(key, value)


def _set_config(name, value):
    return lambda blob: blob["config"].__setitem__(name, value)


@pytest.mark.parametrize("mutate, message", [
    (_second_layer_with_attention_biases, r"'blocks\.1\.attn\.W_Q' \(a further layer.*'blocks\.0\.attn\.b_Q' \(an attention bias"),
    (_set("blocks.1.mlp.W_in", torch.zeros(24, 16)), r"'blocks\.1\.mlp\.W_in' \(a further layer"),
    (_set("blocks.0.ln1.w", torch.ones(16)), r"'blocks\.0\.ln1\.w' \(a LayerNorm"),
    (_set("unembed.b_U", torch.zeros(14)), r"'unembed\.b_U' \(an unembedding bias"),
    (_set("blocks.0.attn.W_Q", torch.complex(torch.zeros(2, 8, 16), torch.ones(2, 8, 16))),
     r"blocks\.0\.attn\.W_Q has dtype torch\.complex64"),
    (_set("blocks.0.mlp.W_in", torch.ones(24, 16, dtype=torch.int64)), r"blocks\.0\.mlp\.W_in has dtype torch\.int64"),
    (_set("blocks.0.mlp.b_in", torch.full((24,), float("nan"))), r"blocks\.0\.mlp\.b_in holds NaN or infinite"),
    (_set("unembed.W_U", torch.full((16, 14), float("inf"))), r"unembed\.W_U holds NaN or infinite"),
    (_set("embed.W_E", torch.full((16, 14), 1e300, dtype=torch.float64)), r"embed\.W_E holds NaN or infinite"),
    (_set("embed.W_E", torch.zeros(16)), r"embed\.W_E has shape \(16,\) \(1-D\)"),
    (_set("blocks.0.attn.W_Q", torch.zeros(16, 16)), r"blocks\.0\.attn\.W_Q has shape \(16, 16\) \(2-D\)"),
    (_set("blocks.0.mlp.b_out", [0.0] * 16), r"blocks\.0\.mlp\.b_out is a list, not a tensor"),
    (_set("blocks.0.attn.mask", torch.ones(3, 3)), r"blocks\.0\.attn\.mask is not the causal mask"),
    (_set("pos_embed.W_pos", torch.zeros(4, 16)), r"4 positions; the paper's model reads \(a, b, =\), 3"),
    (_set_config("num_layers", 2), r"config says num_layers=2"),
    (_set_config("use_ln", True), r"config says use_ln=True"),
    (_set_config("act_type", "GeLU"), r"config says act_type='GeLU'"),
    (_set_config("d_model", 128), r"config says d_model=128 but the weights have d_model=16"),
    (_set_config("fn_name", "x2xyy2"), r"config says fn_name='x2xyy2'"),
    (lambda blob: blob.__setitem__("config", [1, 2]), r"'config' is a list"),
    (lambda blob: blob.__setitem__("train_data", [(0, 1, 13), (0, 1, 13)]), r"train_data lists a pair twice"),
    (lambda blob: blob.__setitem__("train_data", [(0, 13, 13)]), r"train_data must list the training inputs"),
])
def test_loader_refuses_what_the_paper_model_cannot_hold_and_names_the_key(tmp_path, mutate, message):
    blob = {"model": _original_state(), "config": {"p": 13, "d_model": 16, "num_heads": 2, "d_mlp": 24}}
    mutate(blob)
    torch.save(blob, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match=message):
        load_original_checkpoint(tmp_path / "ckpt.pth")


def test_an_empty_file_gets_a_clear_error(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        load_original_checkpoint(tmp_path / "empty.pth")


def test_a_checkpoint_without_the_mask_buffer_or_config_still_loads(tmp_path):
    state = _original_state()
    del state["blocks.0.attn.mask"]
    torch.save({"model": state}, tmp_path / "ckpt.pth")
    tokens, _ = make_dataset(13)
    ours = load_original_checkpoint(tmp_path / "ckpt.pth")(tokens)[:, -1]
    assert torch.allclose(ours, _original_forward(state, tokens), rtol=1e-5, atol=1e-5)


def test_read_returns_the_config_histories_and_listed_training_pairs(tmp_path):
    blob = {"model": _original_state(), "config": {"p": 13, "seed": 3, "frac_train": 0.3},
            "train_losses": [2.5, 1.0], "test_losses": [2.6, 2.0], "train_data": [(2, 5, 13), (0, 1, 13)]}
    torch.save(blob, tmp_path / "ckpt.pth")
    read = read_original_checkpoint(tmp_path / "ckpt.pth")
    assert read.config == {"p": 13, "seed": 3, "frac_train": 0.3}
    assert read.train_losses == [2.5, 1.0] and read.test_losses == [2.6, 2.0]
    assert read.train_idx.tolist() == [0 * 13 + 1, 2 * 13 + 5]


def test_export_then_load_gives_back_the_same_model_and_split(tmp_path):
    model = make_model(model_config(p=13, d_model=16, n_heads=2, d_mlp=24, seed=1))
    with torch.no_grad():  # trained MLP biases are part of the paper's format
        model.b_in.normal_()
        model.b_out.normal_()
    train_idx = torch.tensor([3, 50, 100])
    blob = export_original_checkpoint(model, tmp_path / "out.pth", config={"seed": 7}, train_idx=train_idx)
    assert blob["model"]["unembed.W_U"].shape == (16, 14) and blob["model"]["embed.W_E"].shape == (16, 14)
    read = read_original_checkpoint(tmp_path / "out.pth")
    tokens, _ = make_dataset(13)
    assert torch.equal(read.model(tokens), model(tokens))
    assert torch.allclose(read.model(tokens)[:, -1], _original_forward(blob["model"], tokens), atol=1e-5)
    assert torch.equal(read.train_idx, train_idx) and read.config["seed"] == 7 and read.config["p"] == 13


def test_export_refuses_biases_the_paper_format_cannot_hold():
    model = make_model(model_config(p=13, d_model=16, n_heads=2, d_mlp=24))
    with torch.no_grad():
        model.blocks[0].attn.b_Q.fill_(1.0)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.b_Q"):
        export_original_checkpoint(model)
