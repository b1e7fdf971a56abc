"""The paper's one-layer transformer as a TransformerLens HookedTransformer.

This is the only module that imports transformer_lens: an upgrade of that library touches this file alone.
(TransformerLens 4 removed HookedTransformer, so requirements.txt pins 3.9.0.)
"""
from __future__ import annotations

import warnings
from pathlib import Path

import einops
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from utils.data import check_p

__all__ = ["HookedTransformer", "HookedTransformerConfig", "model_config", "make_model",
           "bias_names", "load_original_checkpoint", "CheckpointError", "PATTERN_HOOK",
           "uniform_attention", "attention_rate_hook", "set_attention_rate"]


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


# --- the paper's original checkpoint format (see shared COURSE.md §6) --------------------------
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


def _load_tensor_file(path: Path) -> object:
    """torch.load with weights_only=True, turning every failure into a CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file. Check the path (it should point at a .pt/.pth file).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with arbitrary objects, not a torch file, …
        raise CheckpointError(
            f"{path}: could not be read as a tensor-only torch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). The file may be truncated or corrupt, or contain "
            "objects other than tensors, numbers and strings; download or re-save it."
        ) from None


def load_original_checkpoint(path: str | Path) -> HookedTransformer:
    """Load a checkpoint saved by the paper's own code (a dict with 'model' and 'config') into a HookedTransformer.

    Their attention has no biases and their MLP biases were trained: those are kept; the other biases are 0.
    """
    path = Path(path)
    blob = _load_tensor_file(path)
    if not isinstance(blob, dict) or "model" not in blob or not isinstance(blob["model"], dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict (the paper's format); "
                              f"got {type(blob).__name__} with keys {sorted(blob)[:8] if isinstance(blob, dict) else '—'}.")
    state = blob["model"]
    missing = [k for k in ("embed.W_E", "blocks.0.attn.W_Q", "blocks.0.mlp.W_in") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: the state dict lacks {missing}; this is not the paper's one-layer model.")
    d_model, d_vocab = state["embed.W_E"].shape
    n_heads, d_head, _ = state["blocks.0.attn.W_Q"].shape
    d_mlp = state["blocks.0.mlp.W_in"].shape[0]
    p = d_vocab - 1
    config = blob.get("config") if isinstance(blob.get("config"), dict) else {}
    if "p" in config and config["p"] != p:
        raise CheckpointError(f"{path}: config says p={config['p']} but W_E has {d_vocab} tokens (expected p + 1).")
    expected = _original_shapes(p, d_model, n_heads, d_head, d_mlp)
    problems = [f"{k}: missing" if k not in state else f"{k}: shape {tuple(state[k].shape)}, expected {v}"
                for k, v in expected.items() if k not in state or tuple(state[k].shape) != v]
    if problems:
        raise CheckpointError(f"{path}: not the paper's format — " + "; ".join(problems))

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
    return model
