"""How closely a model follows its teacher on test, and how honest its confidence is.

- agreement: top-1 predictions equal to the teacher's, in percent of test images;
- kl_to_teacher: mean over test images of KL(teacher || model) at temperature 1, in nats (what
  soft-target KD minimises, on images it never trained on);
- test_ece: expected calibration error, 15 equal-width confidence bins (Guo et al., ICML
  2017): the gap between confidence and accuracy, weighted by each bin's share, in percent.

A student can match its teacher better without being more accurate (Stanton et al., NeurIPS
2021): reports show these beside accuracy, so that finding is seen.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ECE_BINS = 15
FIDELITY_KEYS = ("agreement", "kl_to_teacher", "test_ece")  # the teacher has only test_ece


def agreement(logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    same = logits.argmax(dim=1) == teacher_logits.argmax(dim=1)
    return 100.0 * same.double().mean().item()


def kl_to_teacher(logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    log_p = F.log_softmax(logits.double(), dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.double(), dim=1)
    return F.kl_div(log_p, log_p_teacher, log_target=True, reduction="batchmean").item()


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor,
                               bins: int = ECE_BINS) -> float:
    """Sum over bins (lo, hi] of confidence of |accuracy - mean confidence| x share of images."""
    confidence, predicted = F.softmax(logits.double(), dim=1).max(dim=1)
    correct = (predicted == labels).double()
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1  # (lo, hi] -> bin index
    gap = torch.zeros(bins, dtype=torch.float64)
    for b in which.unique():
        inside = which == b
        gap[b] = (correct[inside].mean() - confidence[inside].mean()).abs() * inside.double().mean()
    return 100.0 * gap.sum().item()


def to_teacher(logits: torch.Tensor, teacher_logits: torch.Tensor) -> dict:
    """A model's agreement with and divergence from the teacher, on the same test images."""
    return {"agreement": agreement(logits, teacher_logits),
            "kl_to_teacher": kl_to_teacher(logits, teacher_logits)}
