"""Soft-target KD (Hinton et al. 2015), the tutorial's method: cross-entropy plus the KL between
the temperature-softened outputs of teacher and student."""
from __future__ import annotations

from dataclasses import dataclass

from kdpipe.core.schema import positive_float, weight
from kdpipe.learn.objective import LossWeights, Method, SoftTarget


@dataclass(frozen=True)
class KDConfig(LossWeights):
    temperature: float = positive_float()
    soft_target_weight: float = weight()
    ce_weight: float = weight()


class SoftTargetKD(SoftTarget):
    """KL(teacher || student) of the softened outputs, as they are."""


METHOD = Method(KDConfig, SoftTargetKD, "soft-target KD")
