"""The tutorial's teacher (DeepNN) and student (LightNN), unchanged in architecture.

Both split into `features` (conv stack -> feature map) and `classifier` (flatten -> logits), so
that distillation objectives can read the feature map without a second model class per method.
"""
from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10
# Feature-map shapes (channels, height, width) for 32x32 inputs.
TEACHER_FEATURES = (32, 8, 8)  # flattened: 2048
STUDENT_FEATURES = (16, 8, 8)  # flattened: 1024


class ConvNet(nn.Module):
    """A conv `features` stack followed by a linear `classifier` on its flattened output."""

    features: nn.Sequential
    classifier: nn.Sequential

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, feature map) in one pass."""
        fmap = self.features(x)
        return self.classifier(torch.flatten(fmap, 1)), fmap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


class DeepNN(ConvNet):
    """Teacher: 4 conv layers + 2 linear layers, 1,186,986 parameters."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 128, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(64, 64, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 32, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(2048, 512), nn.ReLU(), nn.Dropout(0.1), nn.Linear(512, num_classes),
        )


class LightNN(ConvNet):
    """Student: 2 conv layers + 2 linear layers, 267,738 parameters."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 16, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(1024, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, num_classes),
        )


ARCHITECTURES = {"DeepNN": DeepNN, "LightNN": LightNN}


def build_model(arch: str, num_classes: int = NUM_CLASSES) -> ConvNet:
    return ARCHITECTURES[arch](num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
