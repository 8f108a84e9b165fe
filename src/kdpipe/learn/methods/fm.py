"""Function matching (Beyer et al., CVPR 2022, "Knowledge distillation: A good teacher is
patient and consistent"): the student matches the teacher's output distribution on the very
input it sees, aggressively augmented (with data.mix, on mixed views the teacher's cache holds
for exactly those images), by KL alone: no labels by default. Their recipe: Adam with gradient
clipping (student.grad_clip) over very long schedules (student.epochs)."""
from __future__ import annotations

from dataclasses import dataclass

from kdpipe.core.schema import positive_float, weight
from kdpipe.learn.objective import LossWeights, Method, SoftTarget


@dataclass(frozen=True)
class FMConfig(LossWeights):
    temperature: float = positive_float()
    soft_target_weight: float = weight()
    ce_weight: float = weight()  # 0: the teacher's function alone, as the paper


class FunctionMatching(SoftTarget):
    """KL(teacher || student) of the softened outputs on the shown (mixed) view."""


METHOD = Method(FMConfig, FunctionMatching,
                "function matching (KL to the teacher on the shown view)")
