"""What every training objective is: the loop calls it, the methods (learn/methods/, one module
each) subclass it. Plain training uses `Objective()`, cross-entropy alone.

An objective maps (student logits, student feature map, labels, teacher outputs) to a scalar
loss. It is an nn.Module so that trainable adapters (the hint regressor) reach the optimizer
without becoming part of the saved student.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TeacherOutputs:
    logits: torch.Tensor | None = None    # (B, 10)
    features: torch.Tensor | None = None  # (B, ...) the teacher's output at its feature layer


@dataclass(frozen=True)
class FeatureShapes:
    """The feature maps (channels, height, width) at the two taps; default: the tutorial pair
    on 32x32 images (DeepNN's `features` flattens to 2048, LightNN's to 1024)."""
    student: tuple[int, ...] = (16, 8, 8)
    teacher: tuple[int, ...] = (32, 8, 8)


class Objective(nn.Module):
    """Cross-entropy on the labels; a method's subclass adds a term against the teacher."""

    needs: tuple[str, ...] = ()  # which TeacherOutputs fields the objective reads
    # Whether its own term reads each sample's one label (not mixed labels: data.mix); the
    # cross-entropy takes either.
    hard_labels: bool = False
    # The cross-entropy's label smoothing: the model's recipe (<role>.label_smoothing), which
    # the training stage sets, not the method's.
    label_smoothing: float = 0.0

    def __init__(self, ce_weight: float = 1.0):
        super().__init__()
        self.ce_weight = ce_weight

    def forward(self, logits, features, labels, teacher: TeacherOutputs) -> torch.Tensor:
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return self.ce_weight * ce + self.extra(logits, features, teacher, labels)

    def extra(self, logits, features, teacher: TeacherOutputs, labels) -> torch.Tensor | float:
        return 0.0

    def start_step(self, step: int, steps_per_epoch: int) -> None:
        """Called before each training step with the global step (1-based, counted over all
        epochs), for terms that change with training time. What it sets must depend on `step`
        alone: a resumed run then continues exactly as an uninterrupted one."""


@dataclass(frozen=True)
class LossWeights:
    """Base of a method's settings (Method.settings): the terms' weights plus the
    cross-entropy weight, at least one of them > 0."""

    # The fields that weight a term but are not named *weight (the papers' alpha, beta, gamma).
    TERM_WEIGHTS: ClassVar[tuple[str, ...]] = ()

    def check(self) -> str | None:
        names = [f.name for f in dataclasses.fields(self)
                 if "weight" in f.name or f.name in self.TERM_WEIGHTS]
        if all(getattr(self, name) == 0 for name in names):
            return f"the weights are all 0 ({', '.join(names)}); at least one must be > 0"
        return None


@dataclass(frozen=True)
class Method:
    """What a method's module registers as METHOD: the dataclass of its params section
    (distill.<name>), how it builds its objective from those settings and the feature shapes,
    and what the report calls it. A control (`control=True`) is a baseline recipe, not
    distillation: it reads no teacher, and the sweep counts it among the baselines."""
    settings: type
    objective: type[Objective]  # built as objective(settings, FeatureShapes)
    description: str
    control: bool = False

    @property
    def needs(self) -> tuple[str, ...]:
        """The teacher outputs (logits, features) its objective reads."""
        return self.objective.needs


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, averaged over the
    batch and scaled by T^2 so its gradients keep their size as T changes (Hinton et al.).
    The term of kd and lskd."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


class SoftTarget(Objective):
    """Cross-entropy plus `soft_target_weight` times the soft-target term at `temperature`, on
    logits as `transform` gives them: kd's as they are, lskd's standardised."""

    needs = ("logits",)

    def __init__(self, cfg, shapes: FeatureShapes | None = None):
        super().__init__(cfg.ce_weight)
        self.temperature, self.weight = cfg.temperature, cfg.soft_target_weight

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def extra(self, logits, features, teacher, labels):
        return self.weight * soft_target_loss(self.transform(logits),
                                              self.transform(teacher.logits), self.temperature)
