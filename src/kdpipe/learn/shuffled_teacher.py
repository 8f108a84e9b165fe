"""The shuffled teacher, a control (`distill.<method>.teacher: shuffled`): the cached teacher's
logits with each row's non-target entries permuted at random. Each row (a training image, or
one of its views) keeps its target probability and the multiset of the others, at any
temperature, so the same confidence and entropy: the label-smoothing effect of distillation
without the teacher's knowledge of which wrong classes resemble the right one."""
from __future__ import annotations

import torch

from kdpipe.data.views import image_of
from kdpipe.learn.objective import TeacherOutputs


def shuffle_non_target(logits: torch.Tensor, labels: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """`logits` (rows, classes) with each row's entries other than its label's permuted by a
    random permutation of their own (drawn from `generator`)."""
    rows, classes = logits.shape
    columns = torch.arange(classes).expand(rows, classes)
    is_target = columns == labels[:, None].cpu()
    # Sorting puts the target first; after it, the other columns in order (dst) or in a random
    # order (src): moving src's values to dst permutes the non-target entries only.
    dst = torch.argsort(torch.where(is_target, -1, columns), dim=1)[:, 1:]
    keys = torch.rand(rows, classes, generator=generator)
    src = torch.argsort(torch.where(is_target, -1.0, keys), dim=1)[:, 1:]
    dst, src = dst.to(logits.device), src.to(logits.device)
    return logits.clone().scatter_(1, dst, logits.gather(1, src))


class ShuffledTeacher:
    """A cached teacher source (learn.teacher_targets.CachedTargets) whose logits are shuffled
    once, row by row, each row against the label of its image (data.views.image_of)."""

    def __init__(self, cached, train_labels: torch.Tensor, views: int, seed: int):
        logits = cached.tensors["logits"]
        labels = train_labels[image_of(torch.arange(len(logits)), views)]
        generator = torch.Generator().manual_seed(seed)
        self.logits = shuffle_non_target(logits, labels, generator)

    def __call__(self, keys: torch.Tensor, x: torch.Tensor) -> TeacherOutputs:
        return TeacherOutputs(logits=self.logits[keys].float())
