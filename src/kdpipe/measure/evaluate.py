"""Accuracy and logits on a preloaded split: the one definition of top-1 accuracy every stage
and report uses."""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

EVAL_BATCH = 1000  # images per forward pass: large batches are faster and accuracy is exact


def top1(logits, labels) -> float:
    """Top-1 accuracy in percent of `logits` (N, classes) against `labels` (N,): torch tensors
    or numpy arrays alike (ONNX Runtime's outputs are numpy)."""
    return 100.0 * float((logits.argmax(1) == labels).sum()) / len(labels)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             normalize: Callable[[torch.Tensor], torch.Tensor],
             autocast=contextlib.nullcontext) -> float:
    """Top-1 accuracy in percent of `model` on uint8 `images`, normalised batch by batch. Puts
    `model` in eval mode and leaves it there."""
    return top1(predict(model, images, normalize, autocast), labels.cpu())


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor,
            normalize: Callable[[torch.Tensor], torch.Tensor],
            autocast=contextlib.nullcontext) -> torch.Tensor:
    """The model's logits on uint8 `images`, float32 on the CPU (eval mode, left there)."""
    model.eval()
    out = []
    for start in range(0, len(images), EVAL_BATCH):
        with autocast():
            out.append(model(normalize(images[start:start + EVAL_BATCH])).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)
