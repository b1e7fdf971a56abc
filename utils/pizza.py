"""Clock or pizza? Two measurements that tell the algorithms apart (Zhong et al. 2023; chapter 8).

- The **clock** (the algorithm of chapters 2–4) multiplies waves of a and b into cos(w(a+b)), sin(w(a+b)): its logit
  of c is about Σ_k α_k cos(w_k(a+b-c)), a function of a + b - c alone. Its gradient with respect to a's embedding
  and the one with respect to b's are different vectors (for one frequency their cosine is cos(w(a-b))).
- The **pizza** adds the two embeddings' circles first: E_a + E_b = 2cos(w(a-b)/2)·(a point at angle w(a+b)/2), so
  its logits are about Σ_k |cos(w_k(a-b)/2)| cos(w_k(a+b-c)): the correct logit varies with the distance a - b, and
  the gradients with respect to a's and b's embeddings are the same vector.

Gradient symmetricity: the mean cosine similarity between ∂logit_c/∂(embedding of a) and ∂logit_c/∂(embedding of b)
over random (a, b, c). Distance irrelevance: the std of the correct logit over the pairs with one distance
d = (a - b) mod p, averaged over d, divided by its std over all pairs. The ideal clock scores (0, 1), the ideal
pizza (1, 0); `classify` names the ideal a model is nearer to on both axes. With uniform attention (attention rate
0) the layers after attention see a and b only through E_a + E_b, so the symmetricity is exactly 1 whatever the
weights: then only distance irrelevance says what the model computes.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from utils.data import make_dataset
from utils.mechanism import logit_grid, model_logits
from utils.model import HookedTransformer, set_attention_rate

__all__ = ["KINDS", "SYMMETRICITY_CUT", "IRRELEVANCE_CUT", "embedding_gradients", "random_triples",
           "gradient_cosines", "gradient_symmetricity", "correct_logits", "distance_grid", "distance_irrelevance",
           "classify", "accuracy_with_attention_rate", "query_key_norm", "decay_only_factor"]

KINDS = ("clock", "pizza", "neither")
# Halfway between the ideal clock (symmetricity 0, irrelevance 1) and the ideal pizza (1, 0): the course's cuts.
SYMMETRICITY_CUT = 0.5
IRRELEVANCE_CUT = 0.5


def embedding_gradients(model: HookedTransformer, a: torch.Tensor, b: torch.Tensor,
                        c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∂logit_c/∂(token embedding at position 0) and at position 1 for the inputs (a, b, =): [n, d_model] each.

    The token embedding enters the residual stream with the positional embedding added, so this is also the
    gradient with respect to the residual stream at that position.
    """
    p = model.cfg.d_vocab_out
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1).to(model.cfg.device)
    leaf: list[torch.Tensor] = []

    def capture(embed: torch.Tensor, hook) -> torch.Tensor:  # embed: [n, 3, d_model]
        leaf.append(embed.detach().requires_grad_(True))
        return leaf[0]

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", capture)])[:, -1]  # [n, p]
        (grad,) = torch.autograd.grad(logits.gather(1, c[:, None].to(logits.device)).sum(), leaf[0])
    return grad[:, 0].cpu(), grad[:, 1].cpu()


def random_triples(p: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n random inputs (a, b) and answers c, uniform over 0 … p-1 and independent: three [n] long tensors."""
    a, b, c = torch.randint(p, (3, n), generator=torch.Generator().manual_seed(seed))
    return a, b, c


def gradient_cosines(model: HookedTransformer, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """For each triple, the cosine similarity of ∂logit_c/∂E_a and ∂logit_c/∂E_b: [n] (float64)."""
    grad_a, grad_b = embedding_gradients(model, a, b, c)
    return F.cosine_similarity(grad_a.double(), grad_b.double(), dim=-1)


def gradient_symmetricity(model: HookedTransformer, n: int = 1000, seed: int = 0) -> float:
    """Mean cosine similarity of the logit's gradients with respect to a's and b's embeddings, over n random (a, b, c).

    Near 1: the logit treats the two embeddings alike (the pizza; exactly 1 for any model with uniform attention);
    clearly below 1: the clock.
    """
    return gradient_cosines(model, *random_triples(model.cfg.d_vocab_out, n, seed)).mean().item()


def correct_logits(model: HookedTransformer) -> torch.Tensor:
    """The logit of the right answer (a + b) mod p for every input: [p (a), p (b)] (float64)."""
    p = model.cfg.d_vocab_out
    _, labels = make_dataset(p)
    return logit_grid(model).flatten(0, 1).gather(1, labels[:, None])[:, 0].view(p, p)


def distance_grid(p: int) -> torch.Tensor:
    """The distance d = (a - b) mod p of every input: [p (a), p (b)] (long)."""
    x = torch.arange(p)
    return (x[:, None] - x[None, :]) % p


def distance_irrelevance(correct: torch.Tensor) -> float:
    """How little the correct logit [p (a), p (b)] depends on the distance a - b: its std over the pairs with one
    distance d = (a - b) mod p, averaged over d, divided by its std over all pairs (stds of the values themselves,
    numpy's default; torch's unbiased std changes the ratio by less than 1/p).

    Near 1: the correct logit ignores a - b (the clock: it depends on a + b - c only); low: it depends on a - b
    (the pizza's |cos(w(a - b)/2)| factor).
    """
    if correct.ndim != 2 or correct.shape[0] != correct.shape[1]:
        raise ValueError(f"distance_irrelevance needs the correct logits as a [p, p] grid, got {tuple(correct.shape)}")
    correct = correct.double()
    distance = distance_grid(correct.shape[0])
    per_distance = torch.stack([correct[distance == d].std(correction=0) for d in range(correct.shape[0])])
    return (per_distance.mean() / correct.flatten().std(correction=0)).item()


def classify(symmetricity: float, irrelevance: float) -> str:
    """"clock", "pizza" or "neither": the ideal (clock: symmetricity 0, irrelevance 1; pizza: 1, 0) the model is
    nearer to on both measures, or "neither" when the two measures disagree."""
    clock_like = (symmetricity < SYMMETRICITY_CUT, irrelevance > IRRELEVANCE_CUT)
    if all(clock_like):
        return "clock"
    if not any(clock_like):
        return "pizza"
    return "neither"


def accuracy_with_attention_rate(model: HookedTransformer, alpha: float) -> float:
    """Accuracy on all p² inputs of a copy of the model run with attention rate α (the model is left as it is)."""
    other = set_attention_rate(copy.deepcopy(model), alpha)
    _, labels = make_dataset(model.cfg.d_vocab_out)
    return (model_logits(other).argmax(-1) == labels).double().mean().item()


def query_key_norm(model: HookedTransformer) -> float:
    """The norm of the attention's query and key weights together: sqrt(|W_Q|² + |W_K|²)."""
    attn = model.blocks[0].attn
    return torch.cat([attn.W_Q.detach().flatten(), attn.W_K.detach().flatten()]).double().norm().item()


def decay_only_factor(lr: float, weight_decay: float, warmup_steps: int, steps: int) -> float:
    """What AdamW's decoupled weight decay alone does to a weight that never gets a gradient in `steps` steps:
    Π_t (1 - lr_t·λ), with the trainer's schedule lr_t = lr·min(1, (t + 1)/warmup_steps)."""
    t = torch.arange(steps, dtype=torch.float64)
    rates = lr * torch.clamp((t + 1) / max(warmup_steps, 1), max=1.0)
    return torch.log1p(-rates * weight_decay).sum().exp().item()
