"""Accuracy and logits on a preloaded split."""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

EVAL_BATCH = 1000  # images per forward pass: large batches are faster and accuracy is exact


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             normalize: Callable[[torch.Tensor], torch.Tensor],
             autocast=contextlib.nullcontext) -> float:
    """Top-1 accuracy in percent on uint8 `images`, normalised batch by batch. Puts `model` in
    eval mode and leaves it there."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    for start in range(0, len(labels), EVAL_BATCH):
        x = normalize(images[start:start + EVAL_BATCH])
        with autocast():
            logits = model(x)
        correct += (logits.argmax(dim=1) == labels[start:start + EVAL_BATCH]).sum()
    return 100.0 * correct.item() / len(labels)


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
