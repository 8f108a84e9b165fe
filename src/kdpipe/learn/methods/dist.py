"""DIST (Huang et al., NeurIPS 2022): match the correlations of the softened outputs, within
each sample (inter-class) and within each class across the batch (intra-class)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdpipe.core.schema import positive_float, weight
from kdpipe.learn.objective import FeatureShapes, LossWeights, Method, Objective


@dataclass(frozen=True)
class DISTConfig(LossWeights):
    """beta * inter-class + gamma * intra-class relation loss at `temperature`, plus
    ce_weight * cross-entropy."""
    TERM_WEIGHTS = ("beta", "gamma")
    beta: float = weight()
    gamma: float = weight()
    temperature: float = positive_float()
    ce_weight: float = weight()


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`: the cosine of the
    mean-centred rows, with the authors' 1e-8 added to the product of the norms."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """Each term scaled by T^2 as the authors' code (hunto/image_classification_sota,
    lib/models/losses/dist_kd.py) does. Of the softened probabilities softmax(z / T) (B, C):
    the inter-class relation, 1 - the batch mean of the Pearson correlation between student and
    teacher rows (one sample's classes), and the intra-class relation, 1 - the class mean of the
    correlation between columns (one class across the batch). Matching correlations, not exact
    probabilities, relaxes KD's match: the paper's remedy for a teacher much stronger than the
    student."""
    p_student = F.softmax(student_logits / temperature, dim=-1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=-1)
    inter = 1 - pearson_rows(p_student, p_teacher).mean()
    intra = 1 - pearson_rows(p_student.T, p_teacher.T).mean()
    return inter * temperature**2, intra * temperature**2


class DIST(Objective):
    needs = ("logits",)

    def __init__(self, cfg: DISTConfig, shapes: FeatureShapes | None = None):
        super().__init__(cfg.ce_weight)
        self.cfg = cfg

    def extra(self, logits, features, teacher, labels):
        inter, intra = dist_terms(logits, teacher.logits, self.cfg.temperature)
        return self.cfg.beta * inter + self.cfg.gamma * intra


METHOD = Method(DISTConfig, DIST, "DIST (correlations of the softened outputs)")
