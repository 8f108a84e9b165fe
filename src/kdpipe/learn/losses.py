"""Training objectives. The training loop is the same for every model; only this differs.

An objective maps (student logits, student feature map, labels, teacher outputs) to a scalar
loss. It is an nn.Module so that trainable adapters (the hint regressor) reach the optimizer
without becoming part of the saved student.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.core.config import CosineConfig, DISTConfig, DKDConfig, HintConfig, KDConfig, LSKDConfig
from kdpipe.core.errors import ConfigError

# The tutorial pair's feature maps (channels, height, width) on 32x32 images: DeepNN's
# `features` flattens to 2048, LightNN's to 1024.
TEACHER_FEATURES = (32, 8, 8)
STUDENT_FEATURES = (16, 8, 8)


@dataclass
class TeacherOutputs:
    logits: torch.Tensor | None = None    # (B, 10)
    features: torch.Tensor | None = None  # (B, ...) the teacher's output at its feature layer


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, averaged over the
    batch and scaled by T^2 so its gradients keep their size as T changes (Hinton et al.)."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def standardized(logits: torch.Tensor) -> torch.Tensor:
    """Each sample's logits as z-scores (mean 0, unbiased std 1), as logit-standardised KD
    (Sun et al., CVPR 2024) does before the temperature softmax: the student then matches the
    teacher's logit relations, not their range. 1e-7 keeps constant logits finite."""
    mean = logits.mean(dim=-1, keepdim=True)
    return (logits - mean) / (logits.std(dim=-1, keepdim=True) + 1e-7)


def decoupled_kd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       labels: torch.Tensor, temperature: float):
    """Decoupled KD (Zhao et al., CVPR 2022), batch means scaled by T^2:
    TCKD, the KL between the binary (target class, all others) distributions, and NCKD, the KL
    between the distributions over the non-target classes alone (target masked out). For one
    sample, KD's KL = TCKD + (1 - p_target of the teacher) * NCKD (Eq. 7 of the paper)."""
    target = F.one_hot(labels, student_logits.shape[-1]).bool()
    p_student = F.softmax(student_logits / temperature, dim=-1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=-1)
    binary_student = torch.stack([p_student[target], 1 - p_student[target]], dim=-1)
    binary_teacher = torch.stack([p_teacher[target], 1 - p_teacher[target]], dim=-1)
    tckd = F.kl_div(binary_student.clamp_min(1e-12).log(), binary_teacher, reduction="batchmean")
    masked = torch.finfo(student_logits.dtype).min  # exp() of it is 0: the target drops out
    log_others_student = F.log_softmax(
        (student_logits / temperature).masked_fill(target, masked), dim=-1)
    others_teacher = F.softmax((teacher_logits / temperature).masked_fill(target, masked), dim=-1)
    nckd = F.kl_div(log_others_student.masked_fill(target, 0), others_teacher,
                    reduction="batchmean")
    return tckd * temperature**2, nckd * temperature**2


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`: the cosine of the
    mean-centred rows, with the authors' 1e-8 added to the product of the norms."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """DIST (Huang et al., NeurIPS 2022), each term scaled by T^2 as the authors' code
    (hunto/image_classification_sota, lib/models/losses/dist_kd.py) does. Of the softened
    probabilities softmax(z / T) (B, C): the inter-class relation, 1 - the batch mean of the
    Pearson correlation between student and teacher rows (one sample's classes), and the
    intra-class relation, 1 - the class mean of the correlation between columns (one class
    across the batch). Matching correlations, not exact probabilities, relaxes KD's match: the
    paper's remedy for a teacher much stronger than the student."""
    p_student = F.softmax(student_logits / temperature, dim=-1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=-1)
    inter = 1 - pearson_rows(p_student, p_teacher).mean()
    intra = 1 - pearson_rows(p_student.T, p_teacher.T).mean()
    return inter * temperature**2, intra * temperature**2


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


def matched_maps(student: torch.Tensor, teacher: torch.Tensor):
    """Both maps at the smaller one's height and width (average pooling of the larger)."""
    size = tuple(min(a, b) for a, b in zip(student.shape[-2:], teacher.shape[-2:]))
    if tuple(student.shape[-2:]) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(teacher.shape[-2:]) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


class Objective(nn.Module):
    """Cross-entropy on the labels; subclasses add a term against the teacher."""

    needs: tuple[str, ...] = ()  # which TeacherOutputs fields the objective reads

    def __init__(self, ce_weight: float = 1.0):
        super().__init__()
        self.ce_weight = ce_weight

    def forward(self, logits, features, labels, teacher: TeacherOutputs) -> torch.Tensor:
        return self.ce_weight * F.cross_entropy(logits, labels) + self.extra(logits, features,
                                                                              teacher, labels)

    def extra(self, logits, features, teacher: TeacherOutputs, labels) -> torch.Tensor | float:
        return 0.0

    def start_step(self, step: int, steps_per_epoch: int) -> None:
        """Called before each training step with the global step (1-based, counted over all
        epochs), for terms that change with training time. What it sets must depend on `step`
        alone: a resumed run then continues exactly as an uninterrupted one."""


class SoftTargetKD(Objective):
    needs = ("logits",)

    def __init__(self, cfg: KDConfig):
        super().__init__(cfg.ce_weight)
        self.temperature, self.weight = cfg.temperature, cfg.soft_target_weight

    def extra(self, logits, features, teacher, labels):
        return self.weight * soft_target_loss(logits, teacher.logits, self.temperature)


class StandardizedKD(Objective):
    """Soft-target KD on z-scored logits of both models (logit standardisation)."""

    needs = ("logits",)

    def __init__(self, cfg: LSKDConfig):
        super().__init__(cfg.ce_weight)
        self.temperature, self.weight = cfg.temperature, cfg.soft_target_weight

    def extra(self, logits, features, teacher, labels):
        return self.weight * soft_target_loss(standardized(logits), standardized(teacher.logits),
                                              self.temperature)


class DecoupledKD(Objective):
    """alpha * TCKD + beta * NCKD plus cross-entropy, the DKD terms ramped in linearly over the
    first `warmup_epochs` epochs. The paper's code (mdistiller, distillers/DKD.py) ramps per
    epoch, min(epoch / warmup, 1) with 1-based epochs, over 20 of 240 epochs; this ramps per
    step, so that a warm-up of 1 or 2 epochs (as short runs need) still ramps."""

    needs = ("logits",)

    def __init__(self, cfg: DKDConfig):
        super().__init__(cfg.ce_weight)
        self.cfg = cfg
        self.ramp = 1.0

    def start_step(self, step: int, steps_per_epoch: int) -> None:
        # Steps count from 1, as mdistiller's epochs and the learning-rate warm-up's (step + 1)
        # / warmup (train.lr_schedule): the first step already distils a little (from 0 it
        # would be plain cross-entropy) and the warm-up's last step has the full weight.
        warmup = self.cfg.warmup_epochs * steps_per_epoch
        self.ramp = min(step / warmup, 1.0) if warmup else 1.0

    def extra(self, logits, features, teacher, labels):
        tckd, nckd = decoupled_kd_terms(logits, teacher.logits, labels, self.cfg.temperature)
        return self.ramp * (self.cfg.alpha * tckd + self.cfg.beta * nckd)


class DIST(Objective):
    """beta * inter-class + gamma * intra-class relation (dist_terms), plus cross-entropy."""

    needs = ("logits",)

    def __init__(self, cfg: DISTConfig):
        super().__init__(cfg.ce_weight)
        self.cfg = cfg

    def extra(self, logits, features, teacher, labels):
        inter, intra = dist_terms(logits, teacher.logits, self.cfg.temperature)
        return self.cfg.beta * inter + self.cfg.gamma * intra


class CosineHidden(Objective):
    needs = ("features",)

    def __init__(self, cfg: CosineConfig):
        super().__init__(cfg.ce_weight)
        self.weight = cfg.hidden_weight

    def extra(self, logits, features, teacher, labels):
        return self.weight * cosine_hidden_loss(features, teacher.features)


class HintRegressor(Objective):
    """FitNets-style hint: a trainable 3x3 conv maps the student's feature map to the
    teacher's channels (16 -> 32 for the tutorial's pair), the larger map is average-pooled to
    the smaller's height and width, and MSE pulls the student's towards the teacher's."""

    needs = ("features",)

    def __init__(self, cfg: HintConfig, student_shape=STUDENT_FEATURES,
                 teacher_shape=TEACHER_FEATURES):
        super().__init__(cfg.ce_weight)
        for role, shape in (("student", student_shape), ("teacher", teacher_shape)):
            if len(shape) != 3:
                raise ConfigError(f"{role}.feature_layer: hint needs a feature map "
                                  f"(channels x height x width); that layer gives {shape}")
        self.weight = cfg.feature_weight
        self.regressor = nn.Conv2d(student_shape[0], teacher_shape[0], 3, padding=1)

    def extra(self, logits, features, teacher, labels):
        student, target = matched_maps(self.regressor(features), teacher.features)
        return self.weight * F.mse_loss(student, target)


OBJECTIVES = {"kd": SoftTargetKD, "cosine": CosineHidden, "hint": HintRegressor,
              "dkd": DecoupledKD, "lskd": StandardizedKD, "dist": DIST}


def build_objective(method: str, distill_cfg, student_shape=STUDENT_FEATURES,
                    teacher_shape=TEACHER_FEATURES) -> Objective:
    """The objective of a distillation method (a key of OBJECTIVES), configured from params
    `distill.<method>` (plain training uses `Objective()`); the hint regressor is sized from
    the feature shapes at the two taps."""
    if method == "hint":
        return HintRegressor(distill_cfg.hint, student_shape, teacher_shape)
    return OBJECTIVES[method](getattr(distill_cfg, method))
