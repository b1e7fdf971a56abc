"""Clock or pizza? Two measurements that tell the algorithms apart (Zhong et al. 2023; chapter 7).

- The **clock** (the algorithm of chapters 2–4) multiplies waves of a and b, so the logit of c depends on a + b - c
  alone and treats a and b symmetrically *through a product*: the logit's gradient with respect to a's embedding
  and with respect to b's are different vectors in general.
- The **pizza** adds the two embeddings' circles first; its logits depend on cos(w(a - b)/2) as well, so the correct
  logit varies with the distance a - b, and its gradients with respect to a's and b's embeddings agree.
Gradient symmetricity: mean cosine similarity between ∂logit_c/∂(embedding of a) and ∂logit_c/∂(embedding of b)
over random (a, b, c). Distance irrelevance: how little the correct logit depends on a - b (see below).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.data import make_dataset
from utils.mechanism import logit_grid
from utils.model import HookedTransformer

__all__ = ["embedding_gradients", "gradient_symmetricity", "distance_irrelevance"]


def embedding_gradients(model: HookedTransformer, a: torch.Tensor, b: torch.Tensor,
                        c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∂logit_c/∂(embedding at position 0) and ∂logit_c/∂(embedding at position 1) for inputs (a, b, =): [n, d] each."""
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


def gradient_symmetricity(model: HookedTransformer, n: int = 1000, seed: int = 0) -> float:
    """Mean cosine similarity of the logit's gradients with respect to a's and b's embeddings, over n random (a, b, c).

    Near 1: the logit treats the two embeddings alike (the pizza); clearly below 1: the clock.
    """
    p = model.cfg.d_vocab_out
    a, b, c = torch.randint(p, (3, n), generator=torch.Generator().manual_seed(seed))
    grad_a, grad_b = embedding_gradients(model, a, b, c)
    return F.cosine_similarity(grad_a.double(), grad_b.double(), dim=-1).mean().item()


def distance_irrelevance(model: HookedTransformer) -> float:
    """How little the correct logit depends on the distance a - b: the std of the correct logit over the pairs with
    one distance d = (a - b) mod p, averaged over d, divided by its std over all pairs.

    Near 1: the correct logit ignores a - b (the clock: it depends on a + b - c only); low: it depends on a - b
    (the pizza's cos(w(a - b)/2) factor).
    """
    p = model.cfg.d_vocab_out
    _, labels = make_dataset(p)
    correct = logit_grid(model).flatten(0, 1).gather(1, labels[:, None])[:, 0].view(p, p)  # [a, b]
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    distance = (a - b) % p
    per_distance = torch.stack([correct[distance == d].std() for d in range(p)])
    return (per_distance.mean() / correct.flatten().std()).item()
