"""The model's maths, written once: logits at the last position of (a, b, =) for a stack of M models.

Training (one run or many), the trainer's evaluation and the progress measures all call `logits`; analysis with
hooks uses the HookedTransformer itself (tests/test_forward.py checks logits and gradients against it). One run is
the stack M = 1 (`stacked` adds the model axis as a view, so gradients reach the run's own weights).

Why it is fast and still exact. The loss reads only the last position (the `=` token) and the model has one
layer, so three things matter: the query at position 2 (a constant: the input there is always `=`), the keys and
values at positions 0 and 1 (each depends on one token, so p-row tables hold them all), and the MLP and unembed at
position 2. The tables are built from the weights on every call (autograd flows through them) and gathered per
pair; the MLP runs on one position instead of three. Same parameters, same maths: only the order of
floating-point sums differs from HookedTransformer's.
"""
from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F

__all__ = ["logits", "stacked", "all_pairs"]


class _Rows(torch.autograd.Function):
    """table[m, idx[m, i]] for every model m: [M, t, ...], [M, n] → [M, n, ...]; a fast, deterministic backward.

    The backward sums the gradient per token. Compiled, it is a one-hot matrix product: autograd's own backward of
    indexing is a scatter-add, which compiles to atomic adds on a CPU (slow, a large share of the step; and the order of the
    additions varies). Eager, it is index_add_ on the flattened table, which a CPU runs serially and fast.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.n_rows = table.shape[1]
        M, t = table.shape[:2]
        rows = (idx + t * torch.arange(M, device=idx.device)[:, None]).reshape(-1)  # row of the flattened table
        return table.reshape(M * t, *table.shape[2:]).index_select(0, rows).view(*idx.shape, *table.shape[2:])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        (M, n), t = idx.shape, ctx.n_rows
        flat_grad = grad.reshape(M, n, -1)  # [M, n, k]
        if torch.compiler.is_compiling():
            summed = F.one_hot(idx, t).to(grad.dtype).transpose(1, 2) @ flat_grad  # [M, t, k]
        else:
            rows = (idx + t * torch.arange(M, device=idx.device)[:, None]).reshape(-1)
            summed = flat_grad.new_zeros(M * t, flat_grad.shape[-1]).index_add_(0, rows, flat_grad.reshape(M * n, -1))
        return summed.view(M, t, *grad.shape[2:]), None


def _plus_bias(x: torch.Tensor, params: dict[str, torch.Tensor], name: str, between: int = 0) -> torch.Tensor:
    """x + params[name] ([M, ...], with `between` axes of size 1 after the model axis), or x itself when the stack
    omits that bias (training keeps the biases at zero and leaves them out; an analysed model may have trained ones).
    """
    if name not in params:
        return x
    bias = params[name]
    return x + bias.view(bias.shape[0], *(1,) * between, *bias.shape[1:])


def logits(params: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor,
           attention_rate: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Logits at the last position: stacked weights [M, ...] (HookedTransformer's names), inputs a, b [M, n] →
    [M, n, p]. attention_rate α (a number, or one per model [M]) mixes the pattern with uniform attention:
    α·softmax + (1 - α)/3 (Zhong et al. 2023; α = 1 is ordinary attention)."""
    W_E, W_pos = params["embed.W_E"], params["pos_embed.W_pos"]  # [M, p + 1, d], [M, 3, d]
    W_Q, W_K, W_V, W_O = (params[f"blocks.0.attn.W_{x}"] for x in "QKVO")  # [M, h, d, e] ×3, [M, h, e, d]
    p, d_head = W_E.shape[1] - 1, W_Q.shape[-1]
    x = W_E[:, :p, None] + W_pos[:, None, :2]  # [M, p, 2, d]: the residual stream of token t at positions 0, 1
    x2 = W_E[:, p] + W_pos[:, 2]  # [M, d]: position 2 always holds "="
    q = _plus_bias(einops.einsum(x2, W_Q, "M d, M h d e -> M h e"), params, "blocks.0.attn.b_Q")
    keys = _plus_bias(einops.einsum(x, W_K, "M t i d, M h d e -> M t i h e"), params, "blocks.0.attn.b_K", 2)
    key2 = _plus_bias(einops.einsum(x2, W_K, "M d, M h d e -> M h e"), params, "blocks.0.attn.b_K")
    scores = einops.einsum(keys, q, "M t i h e, M h e -> M t i h") / math.sqrt(d_head)  # [M, p, 2, h]
    score2 = einops.einsum(key2, q, "M h e, M h e -> M h") / math.sqrt(d_head)
    values = _plus_bias(einops.einsum(x, W_V, "M t i d, M h d e -> M t i h e"), params, "blocks.0.attn.b_V", 2)
    value2 = _plus_bias(einops.einsum(x2, W_V, "M d, M h d e -> M h e"), params, "blocks.0.attn.b_V")
    rows = _Rows.apply
    attn = torch.stack([rows(scores[:, :, 0], a), rows(scores[:, :, 1], b),
                        score2[:, None].expand(-1, a.shape[1], -1)], dim=-1).softmax(-1)  # [M, n, h, 3]
    attn = _mix_uniform(attn, attention_rate)
    resid = _plus_bias(x2[:, None] + _attention_output(attn, values, value2, W_O, a, b), params,
                       "blocks.0.attn.b_O", 1)  # [M, n, d]
    resid = resid + _mlp(resid, params)
    return _plus_bias(resid @ params["unembed.W_U"], params, "unembed.b_U", 1)  # [M, n, p]


def _mlp(resid: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The MLP's output: ReLU(resid · W_in + b_in) · W_out + b_out, resid [M, n, d] → [M, n, d]. Without biases
    and eager (training), `_ReluMLP` computes the same numbers with less memory traffic."""
    W_in, W_out = params["blocks.0.mlp.W_in"], params["blocks.0.mlp.W_out"]  # [M, d, m], [M, m, d]
    if "blocks.0.mlp.b_in" in params or "blocks.0.mlp.b_out" in params or torch.compiler.is_compiling():
        hidden = torch.relu(_plus_bias(resid @ W_in, params, "blocks.0.mlp.b_in", 1))
        return _plus_bias(hidden @ W_out, params, "blocks.0.mlp.b_out", 1)
    return _ReluMLP.apply(resid, W_in, W_out)


class _ReluMLP(torch.autograd.Function):
    """ReLU(x · W_in) · W_out with a hand-written backward, bit-identical to autograd's: the ReLU and its gradient
    work in place, where autograd writes each into a new [M, n, m] tensor (megabytes per step, and on a CPU the
    largest element-wise cost of the step). Compiled, inductor fuses them itself."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, W_in: torch.Tensor, W_out: torch.Tensor) -> torch.Tensor:
        hidden = (x @ W_in).clamp_min_(0)  # [M, n, m]
        ctx.save_for_backward(x, W_in, W_out, hidden)
        return hidden @ W_out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, W_in, W_out, hidden = ctx.saved_tensors
        grad_W_out = hidden.transpose(1, 2) @ grad
        grad_hidden = grad @ W_out.transpose(1, 2)  # [M, n, m], then zeroed where the ReLU was off, in place:
        torch.ops.aten.threshold_backward.grad_input(grad_hidden, hidden, 0, grad_input=grad_hidden)
        return grad_hidden @ W_in.transpose(1, 2), x.transpose(1, 2) @ grad_hidden, grad_W_out


def _attention_output(attn: torch.Tensor, values: torch.Tensor, value2: torch.Tensor, W_O: torch.Tensor,
                      a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_heads Σ_positions attn · value · W_O at position 2: attn [M, n, h, 3], values [M, p, 2, h, e] (tokens at
    positions 0, 1), value2 [M, h, e] → [M, n, d]. The heads are mixed first with products and sums (an einsum would
    make n tiny matrix products), then W_O is one large matrix product over the pairs: the per-pair tensors stay
    d_head wide per head, not d_model wide."""
    rows = _Rows.apply
    z = (attn[..., 0, None] * rows(values[:, :, 0], a) + attn[..., 1, None] * rows(values[:, :, 1], b)
         + attn[..., 2, None] * value2[:, None])  # [M, n, h, e]
    return z.flatten(-2) @ W_O.flatten(1, 2)


def _mix_uniform(attn: torch.Tensor, rate: float | torch.Tensor) -> torch.Tensor:
    """α·attn + (1 - α)/3 for the query at position 2 (it sees 3 keys): attn [M, n, h, 3], α a number or [M]."""
    if isinstance(rate, (int, float)):
        return attn if rate == 1 else rate * attn + (1 - rate) / 3
    rate = rate.to(attn).view(-1, 1, 1, 1)
    return rate * attn + (1 - rate) / 3


def stacked(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One model's weights as a stack of one ([...] → [1, ...]): views, so gradients reach the weights."""
    return {name: w[None] for name, w in params.items()}


def all_pairs(p: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """a and b of every input, in the dataset's order (row a·p + b): two tensors [p²]."""
    a, b = torch.meshgrid(torch.arange(p, device=device), torch.arange(p, device=device), indexing="ij")
    return a.flatten(), b.flatten()
