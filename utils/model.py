"""The paper's one-layer transformer as a TransformerLens HookedTransformer.

This is the only module that imports transformer_lens: an upgrade of that library touches this file alone.
(TransformerLens 4 removed HookedTransformer, so requirements.txt pins 3.9.0.)
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import einops
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from utils.data import OPERATIONS, check_p

__all__ = ["HookedTransformer", "HookedTransformerConfig", "model_config", "make_model", "bias_names",
           "load_original_checkpoint", "read_original_checkpoint", "export_original_checkpoint",
           "OriginalCheckpoint", "ORIGINAL_MASK", "CheckpointError", "load_tensor_file", "PATTERN_HOOK", "uniform_attention",
           "attention_rate_hook", "set_attention_rate",
           "trainable_params"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: its message names the file and what to do."""


def model_config(p: int = 113, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512,
                 seed: int = 0, device: str = "cpu") -> HookedTransformerConfig:
    """The paper's architecture: 1 layer, ReLU MLP, no LayerNorm, inputs (a, b, =), answers 0…p-1."""
    check_p(p)
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    return HookedTransformerConfig(
        n_layers=1, n_ctx=3, d_vocab=p + 1, d_vocab_out=p,  # token p is "="; it is never an answer
        d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=d_mlp,
        act_fn="relu", normalization_type=None, attn_only=False,
        seed=seed, device=device, init_weights=True,
    )


def bias_names(model: HookedTransformer) -> list[str]:
    """Names of the bias parameters (b_Q, b_K, b_V, b_O, b_in, b_out, b_U)."""
    return [name for name, _ in model.named_parameters() if name.split(".")[-1].startswith("b_")]


def make_model(cfg_or_p: HookedTransformerConfig | int = 113) -> HookedTransformer:
    """A freshly initialised model (seeded by cfg.seed) whose biases are frozen at zero."""
    cfg = model_config(cfg_or_p) if isinstance(cfg_or_p, int) else cfg_or_p
    with warnings.catch_warnings():  # 3.9 warns that HookedTransformer is deprecated in favour of 4.x
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        model = HookedTransformer(cfg)
    params = dict(model.named_parameters())
    for name in bias_names(model):
        params[name].requires_grad_(False)
        params[name].data.zero_()
    return model


def trainable_params(model: HookedTransformer) -> dict[str, torch.Tensor]:
    """The weights that train (biases stay frozen at zero), keyed by their HookedTransformer names."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


# --- the attention rate (Zhong et al. 2023, "The Clock and the Pizza") ---------------------------
PATTERN_HOOK = "blocks.0.attn.hook_pattern"  # attention weights after the softmax: [batch, head, query, key]


def uniform_attention(n_ctx: int) -> torch.Tensor:
    """Causal uniform attention: query q spreads its weight evenly over keys 0 … q. [n_ctx (query), n_ctx (key)]."""
    allowed = torch.ones(n_ctx, n_ctx).tril()
    return allowed / allowed.sum(-1, keepdim=True)


def attention_rate_hook(alpha: float):
    """A hook for PATTERN_HOOK mixing the pattern with uniform attention: α·softmax + (1 - α)·uniform.

    α = 1 is ordinary attention, α = 0 attention that ignores the inputs (every key weighted alike).
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"the attention rate must be in [0, 1], got {alpha}")

    def mix(pattern: torch.Tensor, hook) -> torch.Tensor:
        uniform = uniform_attention(pattern.shape[-1]).to(pattern)
        return alpha * pattern + (1 - alpha) * uniform

    return mix


def set_attention_rate(model: HookedTransformer, alpha: float) -> HookedTransformer:
    """Give the model attention rate α for good (a permanent hook; α = 1 removes it). Returns the model."""
    model.reset_hooks(including_permanent=True)
    if alpha != 1:
        model.add_hook(PATTERN_HOOK, attention_rate_hook(alpha), is_permanent=True)
    return model


# --- the paper's original checkpoint format (the authors' saved runs: see utils.original) -------
# The authors' code saves a dict: "model" (the state dict below), "config" (a dict of its settings) and loss
# histories. Their attention has no biases and a causal-mask buffer; their MLP biases were trained.
ORIGINAL_MASK = "blocks.0.attn.mask"  # the one buffer of their model: tril(ones(n_ctx, n_ctx))
_ORIGINAL_NDIMS = {
    "embed.W_E": 2, "pos_embed.W_pos": 2,
    "blocks.0.attn.W_K": 3, "blocks.0.attn.W_Q": 3, "blocks.0.attn.W_V": 3, "blocks.0.attn.W_O": 2,
    "blocks.0.mlp.W_in": 2, "blocks.0.mlp.b_in": 1, "blocks.0.mlp.W_out": 2, "blocks.0.mlp.b_out": 1,
    "unembed.W_U": 2,
}
# Settings of the authors' config that fix the architecture, with the paper's values.
_ORIGINAL_ARCHITECTURE = {"num_layers": 1, "n_ctx": 3, "use_ln": False, "act_type": "ReLU"}


class OriginalCheckpoint(NamedTuple):
    """A checkpoint in the paper's format, read and checked: the model and what the file says about its run."""

    model: HookedTransformer
    config: dict  # the authors' settings (lr, p, frac_train, seed, weight_decay, fn_name, …); {} if none
    train_losses: list[float] | None  # the loss histories the file records, if any
    test_losses: list[float] | None
    train_idx: torch.Tensor | None  # rows (a·p + b) of the training pairs, when the file lists them


def _original_shapes(p: int, d_model: int, n_heads: int, d_head: int, d_mlp: int, n_ctx: int = 3) -> dict:
    d_vocab = p + 1
    return {
        "embed.W_E": (d_model, d_vocab),
        "pos_embed.W_pos": (n_ctx, d_model),
        "blocks.0.attn.W_K": (n_heads, d_head, d_model),
        "blocks.0.attn.W_Q": (n_heads, d_head, d_model),
        "blocks.0.attn.W_V": (n_heads, d_head, d_model),
        "blocks.0.attn.W_O": (d_model, n_heads * d_head),
        "blocks.0.mlp.W_in": (d_mlp, d_model),
        "blocks.0.mlp.b_in": (d_mlp,),
        "blocks.0.mlp.W_out": (d_model, d_mlp),
        "blocks.0.mlp.b_out": (d_model,),
        "unembed.W_U": (d_model, d_vocab),
    }


def load_tensor_file(path: Path) -> object:
    """torch.load with weights_only=True, turning every failure into a CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file. Check the path (it should point at a .pt/.pth file).")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), e.g. an interrupted download or save; "
                              "delete it and download or save it again.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with arbitrary objects, not a torch file, …
        first_line = (str(err).strip().splitlines() or ["no message"])[0][:200]
        raise CheckpointError(
            f"{path}: could not be read as a tensor-only torch checkpoint ({type(err).__name__}: "
            f"{first_line}). The file may be truncated or corrupt, or contain "
            "objects other than tensors, numbers and strings; download or re-save it."
        ) from None


def _unexpected_key_hint(key: str) -> str:
    """Why a state-dict key does not belong to the paper's model, in words."""
    if key.startswith("module."):
        return "saved from a DataParallel wrapper: strip the 'module.' prefix from every key and re-save"
    if key.startswith("blocks.") and not key.startswith("blocks.0."):
        return "a further layer: the paper's model has exactly one"
    if ".attn.b_" in key:
        return "an attention bias: the paper's attention has none"
    if key.startswith("ln") or ".ln" in key:
        return "a LayerNorm: the paper's model has none"
    if key.startswith("unembed.b_"):
        return "an unembedding bias: the paper's model has none"
    return "not part of the paper's one-layer model"


def _check_state(path: Path, state: dict) -> None:
    """Refuse keys, types, dtypes and values the paper's one-layer model cannot have (CheckpointError)."""
    unexpected = [k for k in state if k not in _ORIGINAL_NDIMS and k != ORIGINAL_MASK]
    if unexpected:
        details = "; ".join(f"{k!r} ({_unexpected_key_hint(str(k))})" for k in unexpected[:20])
        details += f"; and {len(unexpected) - 20} more" if len(unexpected) > 20 else ""
        raise CheckpointError(
            f"{path}: unexpected state-dict key{'s' * (len(unexpected) > 1)} {details}. The loader reads only "
            "the paper's architecture (one layer, no LayerNorm, attention without biases); load another "
            "architecture with TransformerLens directly.")
    missing = [k for k in _ORIGINAL_NDIMS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not the paper's format — " + "; ".join(f"{k}: missing" for k in missing))
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {key} is a {type(value).__name__}, not a tensor; re-save the "
                                  "model's state_dict() itself.")
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: {key} has dtype {value.dtype}; the paper's weights are real "
                                  "floating-point numbers. Convert it with .float() and re-save (or use the "
                                  "file the authors published).")
        want = _ORIGINAL_NDIMS.get(key, 2)
        if value.dim() != want:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)} ({value.dim()}-D); the paper's "
                                  f"format stores it as a {want}-D tensor (see the shapes in utils/model.py).")
        if not torch.isfinite(value.float()).all():
            raise CheckpointError(f"{path}: {key} holds NaN or infinite values (in float32); the training run "
                                  "diverged or the file is damaged: use another checkpoint.")


def _check_mask(path: Path, state: dict, n_ctx: int) -> None:
    """The attention-mask buffer, if present, must be the causal mask the loaded model uses."""
    if ORIGINAL_MASK not in state:
        return
    mask, causal = state[ORIGINAL_MASK], torch.tril(torch.ones(n_ctx, n_ctx))
    if tuple(mask.shape) != (n_ctx, n_ctx) or not torch.equal(mask.float(), causal):
        raise CheckpointError(f"{path}: {ORIGINAL_MASK} is not the causal mask tril(ones({n_ctx}, {n_ctx})) "
                              "of the paper's attention; a model with another mask computes something else, "
                              "so the loader refuses it.")


def _check_config(path: Path, config: dict, sizes: dict) -> None:
    """Settings the authors' config records must agree with the paper's architecture and with the weights."""
    for name, value in _ORIGINAL_ARCHITECTURE.items():
        if name in config and config[name] != value:
            raise CheckpointError(f"{path}: config says {name}={config[name]!r}, but the paper's architecture "
                                  f"has {name}={value!r}; the loader reads only that architecture.")
    for name, value in sizes.items():
        if name in config and config[name] != value:
            raise CheckpointError(f"{path}: config says {name}={config[name]!r} but the weights have "
                                  f"{name}={value}; the file mixes two models: use the authors' file unchanged.")
    if "fn_name" in config and config["fn_name"] not in OPERATIONS:
        raise CheckpointError(f"{path}: config says fn_name={config['fn_name']!r}; the course's dataset knows "
                              f"only {sorted(OPERATIONS)}, so its tools cannot label this model's task.")


def _train_rows(path: Path, train_data: object, p: int) -> torch.Tensor | None:
    """Rows a·p + b of the training pairs from a list of (a, b, =) triples (the authors' `train_data`)."""
    if train_data is None:
        return None
    triples = torch.as_tensor(train_data) if isinstance(train_data, (list, tuple, torch.Tensor)) else None
    if (triples is None or triples.dim() != 2 or triples.shape[1] != 3 or triples.is_floating_point()
            or not ((triples[:, :2] >= 0) & (triples[:, :2] < p)).all() or not (triples[:, 2] == p).all()):
        raise CheckpointError(f"{path}: train_data must list the training inputs as (a, b, {p}) triples with "
                              f"0 ≤ a, b < {p}; drop the entry or re-save it.")
    rows = (triples[:, 0] * p + triples[:, 1]).long()
    if len(rows.unique()) != len(rows):
        raise CheckpointError(f"{path}: train_data lists a pair twice; drop the entry or re-save it.")
    return rows.sort().values


def read_original_checkpoint(path: str | Path) -> OriginalCheckpoint:
    """Read a checkpoint saved by the paper's own code (a dict with 'model' and 'config'), refusing anything else.

    Their attention has no biases and their MLP biases were trained: those are kept; the other biases are 0.
    """
    # Long (56 lines): each way a foreign file can be wrong gets its own check and message, in reading order.
    path = Path(path)
    blob = load_tensor_file(path)
    if not isinstance(blob, dict) or "model" not in blob or not isinstance(blob["model"], dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict (the paper's format); "
                              f"got {type(blob).__name__} with keys {sorted(blob)[:8] if isinstance(blob, dict) else '—'}.")
    if not isinstance(blob.get("config", {}), dict):
        raise CheckpointError(f"{path}: 'config' is a {type(blob['config']).__name__}; the paper's format "
                              "stores a dict of settings.")
    state, config = blob["model"], blob.get("config", {})
    _check_state(path, state)
    d_model, d_vocab = state["embed.W_E"].shape
    n_heads, d_head, _ = state["blocks.0.attn.W_Q"].shape
    d_mlp = state["blocks.0.mlp.W_in"].shape[0]
    n_ctx, p = state["pos_embed.W_pos"].shape[0], d_vocab - 1
    if "p" in config and config["p"] != p:
        raise CheckpointError(f"{path}: config says p={config['p']} but W_E has {d_vocab} tokens (expected p + 1).")
    if n_ctx != 3:
        raise CheckpointError(f"{path}: pos_embed.W_pos has {n_ctx} positions; the paper's model reads "
                              "(a, b, =), 3 positions, and the loader reads only that architecture.")
    if p < 3 or d_head == 0:
        raise CheckpointError(f"{path}: W_E has {d_vocab} tokens and W_Q heads of size {d_head}: too small for "
                              "the paper's task (p ≥ 3 numbers plus '='); this is not the paper's model.")
    expected = _original_shapes(p, d_model, n_heads, d_head, d_mlp)
    problems = [f"{k}: shape {tuple(state[k].shape)}, expected {v}"
                for k, v in expected.items() if tuple(state[k].shape) != v]
    if problems:
        raise CheckpointError(f"{path}: not the paper's format — " + "; ".join(problems))
    _check_mask(path, state, n_ctx)
    _check_config(path, config, {"d_model": d_model, "num_heads": n_heads, "d_mlp": d_mlp})

    model = make_model(model_config(p=p, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp))
    s = {k: state[k].float() for k in expected}
    ours = {
        "embed.W_E": s["embed.W_E"].T,
        "pos_embed.W_pos": s["pos_embed.W_pos"],
        "blocks.0.attn.W_Q": einops.rearrange(s["blocks.0.attn.W_Q"], "i h m -> i m h"),
        "blocks.0.attn.W_K": einops.rearrange(s["blocks.0.attn.W_K"], "i h m -> i m h"),
        "blocks.0.attn.W_V": einops.rearrange(s["blocks.0.attn.W_V"], "i h m -> i m h"),
        "blocks.0.attn.W_O": einops.rearrange(s["blocks.0.attn.W_O"], "m (i h) -> i h m", i=n_heads),
        "blocks.0.mlp.W_in": s["blocks.0.mlp.W_in"].T,
        "blocks.0.mlp.b_in": s["blocks.0.mlp.b_in"],
        "blocks.0.mlp.W_out": s["blocks.0.mlp.W_out"].T,
        "blocks.0.mlp.b_out": s["blocks.0.mlp.b_out"],
        "unembed.W_U": s["unembed.W_U"][:, :p],  # the last column is the "=" token, never an answer
    }
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in ours.items():
            params[name].copy_(value)
    histories = [blob.get(k) if isinstance(blob.get(k), list) else None for k in ("train_losses", "test_losses")]
    return OriginalCheckpoint(model, dict(config), *histories, _train_rows(path, blob.get("train_data"), p))


def load_original_checkpoint(path: str | Path) -> HookedTransformer:
    """Load a checkpoint saved by the paper's own code into a HookedTransformer (see read_original_checkpoint)."""
    return read_original_checkpoint(path).model


def export_original_checkpoint(model: HookedTransformer, path: str | Path | None = None, *,
                               config: dict | None = None, train_idx: torch.Tensor | None = None) -> dict:
    """The model in the paper's checkpoint format (what load_original_checkpoint reads back); saved if path is given.

    config: settings to record beside the architecture (e.g. lr, seed); train_idx: the rows a·p + b of its
    training pairs, stored as the authors' code lists them ("train_data": (a, b, =) triples).
    """
    cfg = model.cfg
    p = cfg.d_vocab_out
    if (cfg.n_layers, cfg.n_ctx, cfg.d_vocab, cfg.act_fn, cfg.normalization_type) != (1, 3, p + 1, "relu", None):
        raise ValueError("only the paper's architecture (1 layer, 3 positions, vocab p + 1, ReLU, no LayerNorm) "
                         "has an original checkpoint format")
    ours = {name: value.detach().float().cpu() for name, value in model.named_parameters()}
    kept = {"blocks.0.mlp.b_in", "blocks.0.mlp.b_out"}
    nonzero = [n for n in bias_names(model) if n not in kept and torch.count_nonzero(ours[n])]
    if nonzero:
        raise ValueError(f"the paper's format has no place for the biases {nonzero}: they must be zero")
    state = {
        "embed.W_E": ours["embed.W_E"].T.contiguous(),  # [d_model, p + 1]
        "pos_embed.W_pos": ours["pos_embed.W_pos"].clone(),
        "blocks.0.attn.W_K": einops.rearrange(ours["blocks.0.attn.W_K"], "i m h -> i h m").contiguous(),
        "blocks.0.attn.W_Q": einops.rearrange(ours["blocks.0.attn.W_Q"], "i m h -> i h m").contiguous(),
        "blocks.0.attn.W_V": einops.rearrange(ours["blocks.0.attn.W_V"], "i m h -> i h m").contiguous(),
        "blocks.0.attn.W_O": einops.rearrange(ours["blocks.0.attn.W_O"], "i h m -> m (i h)").contiguous(),
        ORIGINAL_MASK: torch.tril(torch.ones(3, 3)),
        "blocks.0.mlp.W_in": ours["blocks.0.mlp.W_in"].T.contiguous(),
        "blocks.0.mlp.b_in": ours["blocks.0.mlp.b_in"].clone(),
        "blocks.0.mlp.W_out": ours["blocks.0.mlp.W_out"].T.contiguous(),
        "blocks.0.mlp.b_out": ours["blocks.0.mlp.b_out"].clone(),
        "unembed.W_U": torch.cat([ours["unembed.W_U"], torch.zeros(cfg.d_model, 1)], dim=1),  # + the "=" column
    }
    settings = {"p": p, "d_model": cfg.d_model, "num_heads": cfg.n_heads, "d_mlp": cfg.d_mlp, "d_vocab": p + 1,
                "fn_name": "add", **_ORIGINAL_ARCHITECTURE, **(config or {})}
    blob: dict = {"model": state, "config": settings}
    if train_idx is not None:
        blob["train_data"] = [(int(r) // p, int(r) % p, p) for r in torch.as_tensor(train_idx).long()]
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, path)
    return blob
