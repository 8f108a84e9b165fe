"""Logit-standardised KD (Sun et al., CVPR 2024): soft-target KD on z-scored logits of both
models, so the student matches the teacher's logit relations, not their range."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kdpipe.core.schema import positive_float, weight
from kdpipe.learn.objective import LossWeights, Method, SoftTarget


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


class StandardizedKD(SoftTarget):
    """Soft-target KD on each model's z-scored logits."""

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        return standardized(logits)


METHOD = Method(LSKDConfig, StandardizedKD, "KD on standardised logits")
