"""Every architecture the pipeline trains: the tutorial's teacher (DeepNN) and student (LightNN),
any torchvision classification model by name (random init, the data's number of classes), or
`module:function`, a builder in the user's own code (called with `num_classes`, it returns an
`nn.Module`).

Distillation reads a hidden representation at a named module (`feature_layer`) through a
forward hook: an adapter outside the model (`Tapped`), so any model works unchanged and the saved
model is the plain model.
"""
from __future__ import annotations

import difflib
import importlib
import sys

import torch
from torch import nn

from kdpipe.core.errors import ConfigError

NUM_CLASSES = 10


class ConvNet(nn.Module):
    """A conv `features` stack followed by a linear `classifier` on its flattened output."""

    features: nn.Sequential
    classifier: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class DeepNN(ConvNet):
    """Teacher: 4 conv layers + 2 linear layers, 1,186,986 parameters on 32x32 images."""

    def __init__(self, num_classes: int = NUM_CLASSES, image_size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 128, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(64, 64, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 32, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        flat = 32 * (image_size // 4) ** 2  # 2048 for 32x32
        self.classifier = nn.Sequential(
            nn.Linear(flat, 512), nn.ReLU(), nn.Dropout(0.1), nn.Linear(512, num_classes),
        )


class LightNN(ConvNet):
    """Student: 2 conv layers + 2 linear layers, 267,738 parameters on 32x32 images."""

    def __init__(self, num_classes: int = NUM_CLASSES, image_size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 16, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        flat = 16 * (image_size // 4) ** 2  # 1024 for 32x32
        self.classifier = nn.Sequential(
            nn.Linear(flat, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, num_classes),
        )


TUTORIAL = {"DeepNN": DeepNN, "LightNN": LightNN}


def torchvision_classifiers() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def build_model(arch: str, num_classes: int = NUM_CLASSES, image_size: int = 32,
                key: str = "arch") -> nn.Module:
    """A freshly initialised model (the caller seeds the RNG). `key` names the param in errors."""
    if arch in TUTORIAL:
        return TUTORIAL[arch](num_classes, image_size)
    if ":" in arch:
        return from_builder(arch, num_classes, key)
    if arch in torchvision_classifiers():
        import torchvision

        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    known = [*TUTORIAL, *torchvision_classifiers()]
    close = difflib.get_close_matches(arch, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"{key}={arch!r}: unknown architecture{hint} Expected DeepNN, LightNN, a "
                      "torchvision classification model (e.g. resnet18, mobilenet_v3_small) or "
                      "module:function for a builder in your code")


def from_builder(arch: str, num_classes: int, key: str) -> nn.Module:
    """`module:function` from the repository (the stage's working directory)."""
    module_name, _, function = arch.partition(":")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the working directory: DVC runs stages at the repo root
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{key}={arch!r}: cannot import {module_name} ({err})") from None
    builder = getattr(module, function, None)
    if not callable(builder):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise ConfigError(f"{key}={arch!r}: {module_name} has no function {function!r}; it has "
                          f"{', '.join(names) or 'none'}")
    model = builder(num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{key}={arch!r}: {function}(num_classes=...) returned "
                          f"{type(model).__name__}, expected a torch.nn.Module")
    return model


def default_feature_layer(model: nn.Module) -> str | None:
    """The output of the last feature stage before pooling: `features` (the tutorial's nets,
    MobileNet, EfficientNet, VGG, ConvNeXt, ...), `layer4` (ResNet, ResNeXt, Wide ResNet),
    `trunk_output` (RegNet); None when the model has none of these."""
    names = dict(model.named_children())
    return next((n for n in ("features", "layer4", "trunk_output") if n in names), None)


class Tapped(nn.Module):
    """A model plus a tap on one of its modules: `forward_with_features` returns the logits and
    that module's output from one forward pass."""

    def __init__(self, model: nn.Module, layer: str | None, key: str = "feature_layer"):
        super().__init__()
        self.model, self.layer, self.key = model, layer, key
        self._features: torch.Tensor | None = None
        if layer is None:  # no default for this architecture: fine unless features are needed
            return
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ConfigError(f"{key}={layer!r}: no such module; {self.valid_layers()}")
        modules[layer].register_forward_hook(self._keep)

    def valid_layers(self) -> str:
        valid = [n for n, _ in self.model.named_modules() if n and n.count(".") <= 1]
        return "valid names: " + ", ".join(valid[:40]) + (", ..." if len(valid) > 40 else "")

    def _keep(self, module, inputs, output) -> None:
        self._features = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, self._features


@torch.no_grad()
def feature_shape(model: Tapped, image_size: int) -> tuple[int, ...]:
    """The shape of one sample's features at the tap, from a probe batch of 2 images."""
    if model.layer is None:
        raise ConfigError(f"{model.key}='': {type(model.model).__name__} has no default "
                          f"feature layer; set one. {model.valid_layers()}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    _, features = model.forward_with_features(torch.zeros(2, 3, image_size, image_size,
                                                          device=device))
    model.train(was_training)
    return tuple(features.shape[1:])


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
