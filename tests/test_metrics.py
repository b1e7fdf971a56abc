"""utils.metrics: the one loss and accuracy every module uses."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils import metrics


def _logits(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def test_cross_entropy_is_torchs_in_float64_for_one_model_and_for_a_stack():
    logits, labels = _logits(3, 10, 7), torch.arange(10) % 7
    got = metrics.cross_entropy(logits, labels)
    assert got.shape == (3,) and got.dtype == torch.float64
    for m in range(3):
        torch.testing.assert_close(got[m], F.cross_entropy(logits[m].double(), labels))


def test_cross_entropy_and_accuracy_read_only_the_selected_inputs():
    logits, labels = _logits(10, 7), torch.arange(10) % 7
    idx = torch.tensor([1, 4, 5])
    torch.testing.assert_close(metrics.cross_entropy(logits, labels, idx),
                               F.cross_entropy(logits[idx].double(), labels[idx]))
    assert metrics.accuracy(logits, labels, idx) == (logits[idx].argmax(-1) == labels[idx]).double().mean()


def test_loss_fn_reads_the_last_position_of_a_sequence_of_logits():
    logits, labels = _logits(10, 3, 7), torch.arange(10) % 7
    torch.testing.assert_close(metrics.loss_fn(logits, labels), metrics.cross_entropy(logits[:, -1], labels))


def test_cross_entropy_resolves_losses_far_below_float32s_reach():
    logits = torch.tensor([[20.0, 0.0]])  # the answer's probability is 1 - 2e-9: 1.0 in float32
    assert metrics.cross_entropy(logits, torch.tensor([0])).item() > 0
    assert F.cross_entropy(logits, torch.tensor([0])).item() == 0  # what float32 makes of it
