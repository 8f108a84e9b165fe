"""Teacher-free KD, its manually designed teacher (Yuan et al., CVPR 2020, "Revisiting knowledge
distillation via label smoothing regularization", Tf-KD_reg): KD toward a hand-made distribution
instead of a trained teacher's, a control for how much of KD's gain is regularisation. No
teacher is read.

As the authors' code computes it (yuanli2333/Teacher-free-Knowledge-Distillation,
my_loss_function.py, loss_kd_regularization): the virtual teacher puts `correct_prob` on the
label and the rest uniformly on the other classes; its target is softmax(those probabilities /
`temperature`), the student's output unsoftened, and the KL averaged over batch and classes
(nn.KLDivLoss's default "mean", hence the division by the number of classes). Their loss is
(1 - alpha) CE + alpha * multiplier * KL: here ce_weight = 1 - alpha and reg_weight = alpha *
multiplier. The defaults are their CIFAR-100 ResNet-18 values (experiments/base_experiments/
base_resnet18/params.json: reg_alpha 0.1, reg_temperature 20, multiplier 100; correct_prob 0.99
in the loss)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdpipe.core.schema import positive_float, rule, weight
from kdpipe.learn.objective import FeatureShapes, LossWeights, Method, Objective


@dataclass(frozen=True)
class TfKDConfig(LossWeights):
    correct_prob: float = rule("a probability in (0, 1)", lambda v: 0 < v < 1)
    temperature: float = positive_float()
    reg_weight: float = weight()
    ce_weight: float = weight()


def virtual_teacher(labels: torch.Tensor, classes: int, correct_prob: float,
                    temperature: float) -> torch.Tensor:
    """(B, classes) targets: softmax of the hand-made probabilities (correct_prob on the label,
    the rest shared equally) divided by `temperature`."""
    probs = torch.full((len(labels), classes), (1 - correct_prob) / (classes - 1),
                       device=labels.device)
    probs.scatter_(1, labels[:, None], correct_prob)
    return F.softmax(probs / temperature, dim=1)


class TeacherFreeKD(Objective):
    needs = ()  # no teacher: the targets are made from the labels
    hard_labels = True

    def __init__(self, cfg: TfKDConfig, shapes: FeatureShapes | None = None):
        super().__init__(cfg.ce_weight)
        self.cfg = cfg

    def extra(self, logits, features, teacher, labels):
        classes = logits.shape[1]
        target = virtual_teacher(labels, classes, self.cfg.correct_prob, self.cfg.temperature)
        kl = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean") / classes
        return self.cfg.reg_weight * kl


METHOD = Method(TfKDConfig, TeacherFreeKD, "teacher-free KD (hand-made soft labels; control)",
                control=True)
