"""Decoupled KD (Zhao et al., CVPR 2022): KD's KL split into its target-class part (TCKD) and
its non-target part (NCKD), weighted apart."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdpipe.core.schema import positive_float, rule, weight
from kdpipe.learn.objective import FeatureShapes, LossWeights, Method, Objective


@dataclass(frozen=True)
class DKDConfig(LossWeights):
    """alpha * TCKD + beta * NCKD at `temperature`, ramped in linearly per step over
    `warmup_epochs`, plus ce_weight * cross-entropy."""
    TERM_WEIGHTS = ("alpha", "beta")
    alpha: float = weight()
    beta: float = weight()
    temperature: float = positive_float()
    ce_weight: float = weight()
    warmup_epochs: int = rule("an integer >= 0", lambda v: v >= 0, default=0)


def decoupled_kd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       labels: torch.Tensor, temperature: float):
    """Batch means scaled by T^2: TCKD, the KL between the binary (target class, all others)
    distributions, and NCKD, the KL between the distributions over the non-target classes alone
    (target masked out). For one sample, KD's KL = TCKD + (1 - p_target of the teacher) * NCKD
    (Eq. 7 of the paper)."""
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


class DecoupledKD(Objective):
    """alpha * TCKD + beta * NCKD plus cross-entropy, the DKD terms ramped in linearly over the
    first `warmup_epochs` epochs. The paper's code (mdistiller, distillers/DKD.py) ramps per
    epoch, min(epoch / warmup, 1) with 1-based epochs, over 20 of 240 epochs; this ramps per
    step, so that a warm-up of 1 or 2 epochs (as short runs need) still ramps."""

    needs = ("logits",)
    hard_labels = True  # TCKD and NCKD split at each sample's one label

    def __init__(self, cfg: DKDConfig, shapes: FeatureShapes | None = None):
        super().__init__(cfg.ce_weight)
        self.cfg = cfg
        self.ramp = 1.0

    def start_step(self, step: int, steps_per_epoch: int) -> None:
        # Steps count from 1, as mdistiller's epochs and the learning-rate warm-up's (step + 1)
        # / warmup (state.lr_schedule): the first step already distils a little (from 0 it
        # would be plain cross-entropy) and the warm-up's last step has the full weight.
        warmup = self.cfg.warmup_epochs * steps_per_epoch
        self.ramp = min(step / warmup, 1.0) if warmup else 1.0

    def extra(self, logits, features, teacher, labels):
        tckd, nckd = decoupled_kd_terms(logits, teacher.logits, labels, self.cfg.temperature)
        return self.ramp * (self.cfg.alpha * tckd + self.cfg.beta * nckd)


METHOD = Method(DKDConfig, DecoupledKD, "decoupled KD (TCKD + NCKD)")
