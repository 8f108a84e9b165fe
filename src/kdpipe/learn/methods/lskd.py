"""Logit-standardised KD (Sun et al., CVPR 2024): soft-target KD on z-scored logits of both
models, so the student matches the teacher's logit relations, not their range."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kdpipe.core.config import LossWeights, positive_float, weight
from kdpipe.learn.objective import FeatureShapes, Method, Objective, soft_target_loss


@dataclass(frozen=True)
class LSKDConfig(LossWeights):
    temperature: float = positive_float()
    soft_target_weight: float = weight()
    ce_weight: float = weight()


def standardized(logits: torch.Tensor) -> torch.Tensor:
    """Each sample's logits as z-scores (mean 0, unbiased std 1), as the paper does before the
    temperature softmax. 1e-7 keeps constant logits finite."""
    mean = logits.mean(dim=-1, keepdim=True)
    return (logits - mean) / (logits.std(dim=-1, keepdim=True) + 1e-7)


class StandardizedKD(Objective):
    needs = ("logits",)

    def __init__(self, cfg: LSKDConfig, shapes: FeatureShapes | None = None):
        super().__init__(cfg.ce_weight)
        self.temperature, self.weight = cfg.temperature, cfg.soft_target_weight

    def extra(self, logits, features, teacher, labels):
        return self.weight * soft_target_loss(standardized(logits), standardized(teacher.logits),
                                              self.temperature)


METHOD = Method(LSKDConfig, StandardizedKD, "KD on standardised logits")
