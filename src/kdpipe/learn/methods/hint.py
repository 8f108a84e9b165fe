"""FitNets hints (Romero et al. 2015): a trainable regressor maps the student's feature map to
the teacher's, and MSE pulls it there."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.core.errors import ConfigError
from kdpipe.core.schema import weight
from kdpipe.learn.objective import FeatureShapes, LossWeights, Method, Objective


@dataclass(frozen=True)
class HintConfig(LossWeights):
    feature_weight: float = weight()
    ce_weight: float = weight()


def matched_maps(student: torch.Tensor, teacher: torch.Tensor):
    """Both maps at the smaller one's height and width (average pooling of the larger)."""
    size = tuple(min(a, b) for a, b in zip(student.shape[-2:], teacher.shape[-2:]))
    if tuple(student.shape[-2:]) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(teacher.shape[-2:]) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


class HintRegressor(Objective):
    """A trainable 3x3 conv maps the student's feature map to the teacher's channels (16 -> 32
    for the tutorial's pair), the larger map is average-pooled to the smaller's height and
    width, and MSE pulls the student's towards the teacher's."""

    needs = ("features",)

    def __init__(self, cfg: HintConfig, shapes: FeatureShapes | None = None):
        super().__init__(cfg.ce_weight)
        shapes = shapes or FeatureShapes()
        for role in ("student", "teacher"):
            if len(getattr(shapes, role)) != 3:
                raise ConfigError(f"{role}.feature_layer: hint needs a feature map "
                                  f"(channels x height x width); that layer gives "
                                  f"{getattr(shapes, role)}")
        self.weight = cfg.feature_weight
        self.regressor = nn.Conv2d(shapes.student[0], shapes.teacher[0], 3, padding=1)

    def extra(self, logits, features, teacher, labels):
        student, target = matched_maps(self.regressor(features), teacher.features)
        return self.weight * F.mse_loss(student, target)


METHOD = Method(HintConfig, HintRegressor, "FitNets hint (regressor + MSE)")
