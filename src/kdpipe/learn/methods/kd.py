"""Soft-target KD (Hinton et al. 2015), the tutorial's method: cross-entropy plus the KL between
the temperature-softened outputs of teacher and student."""
from __future__ import annotations

from dataclasses import dataclass

from kdpipe.core.config import LossWeights, positive_float, weight
from kdpipe.learn.objective import FeatureShapes, Method, Objective, soft_target_loss


@dataclass(frozen=True)
class KDConfig(LossWeights):
    temperature: float = positive_float()
    soft_target_weight: float = weight()
    ce_weight: float = weight()


class SoftTargetKD(Objective):
    needs = ("logits",)

    def __init__(self, cfg: KDConfig, shapes: FeatureShapes | None = None):
        super().__init__(cfg.ce_weight)
        self.temperature, self.weight = cfg.temperature, cfg.soft_target_weight

    def extra(self, logits, features, teacher, labels):
        return self.weight * soft_target_loss(logits, teacher.logits, self.temperature)


METHOD = Method(KDConfig, SoftTargetKD, "soft-target KD")
