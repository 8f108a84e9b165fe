"""Cosine loss on hidden representations (the tutorial's second method): the student's
flattened feature map pulled towards the teacher's in direction."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdpipe.core.schema import weight
from kdpipe.learn.objective import FeatureShapes, LossWeights, Method, Objective


@dataclass(frozen=True)
class CosineConfig(LossWeights):
    hidden_weight: float = weight()
    ce_weight: float = weight()


def pool_to(flat: torch.Tensor, length: int) -> torch.Tensor:
    """(B, n) -> (B, length) by averaging neighbours: groups of n / length when that divides
    (for the tutorial's pair, its avg_pool1d(x, 2) from 2048 to 1024), else adaptive pooling."""
    n = flat.shape[1]
    if n == length:
        return flat
    if n % length == 0:
        return flat.view(flat.shape[0], length, n // length).mean(dim=2)
    return F.adaptive_avg_pool1d(flat.unsqueeze(1), length).squeeze(1)


def cosine_hidden_loss(student_features: torch.Tensor, teacher_features: torch.Tensor):
    """CosineEmbeddingLoss with target +1: mean over the batch of 1 - cos(student, teacher),
    the longer flattened representation average-pooled to the shorter one's length."""
    student, teacher = torch.flatten(student_features, 1), torch.flatten(teacher_features, 1)
    length = min(student.shape[1], teacher.shape[1])
    return (1 - F.cosine_similarity(pool_to(student, length), pool_to(teacher, length),
                                    dim=1)).mean()


class CosineHidden(Objective):
    needs = ("features",)

    def __init__(self, cfg: CosineConfig, shapes: FeatureShapes | None = None):
        super().__init__(cfg.ce_weight)
        self.weight = cfg.hidden_weight

    def extra(self, logits, features, teacher, labels):
        return self.weight * cosine_hidden_loss(features, teacher.features)


METHOD = Method(CosineConfig, CosineHidden, "cosine loss on hidden representation")
