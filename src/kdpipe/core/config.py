"""Typed, validated view of params.yaml.

Every section is a frozen dataclass (kdpipe.core.schema builds and checks it). `load_config`
rejects unknown keys, wrong types and out-of-range values before any stage touches data or a
device, with one message that names the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from kdpipe.core.errors import ConfigError
from kdpipe.core.schema import build, positive_float, positive_int, rule, type_ok


def _three(values: list, ok: Callable[[float], bool]) -> bool:
    return len(values) == 3 and all(type_ok(float, x) and ok(x) for x in values)


@dataclass(frozen=True)
class DataConfig:
    source: str = rule("'cifar10', 'synthetic' or a path to an ImageFolder dir or .tar.gz",
                       lambda v: v.strip() != "")
    limit_train: int = rule("an integer >= 0 (0 = all images)", lambda v: v >= 0)
    limit_test: int = rule("an integer >= 0 (0 = all images)", lambda v: v >= 0)
    augment: bool = False
    # K fixed, seeded augmented views per training image (crop + flip), the teacher's outputs
    # on each cached once; every model trains epoch e on a view of each image. 0 = none.
    views: int = rule("an integer >= 0 (0 = no views)", lambda v: v >= 0, default=0)
    # Students' views mixed with a partner image's (data.mixing): none | mixup | cutmix, the
    # mixing weight ~ Beta(mix_alpha, mix_alpha). Needs views; the teacher trains unmixed.
    mix: str = rule("none, mixup or cutmix", lambda v: v in ("none", "mixup", "cutmix"),
                    default="none")
    mix_alpha: float = rule("a number > 0", lambda v: v > 0, default=1.0)
    # A held-out part of the training set for per-epoch curves and every choice; 0 = none (as
    # the tutorial, which reports test accuracy every epoch and so chooses on test).
    val_fraction: float = rule("a number >= 0 and < 1", lambda v: 0 <= v < 1, default=0.1)
    # Side of the square images `prepare` stores (resized once if the source differs).
    image_size: int = rule("an integer >= 8", lambda v: v >= 8, default=32)
    # Per-channel normalisation of the model's input (default: the tutorial's ImageNet values).
    mean: list[float] = rule("3 numbers (R, G, B)", lambda v: _three(v, lambda x: True),
                             default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = rule("3 numbers > 0 (R, G, B)", lambda v: _three(v, lambda x: x > 0),
                            default_factory=lambda: [0.229, 0.224, 0.225])

    def check(self) -> str | None:
        if self.views and self.augment:
            return (f"views={self.views} and augment=true: choose one (views: K cached views, "
                    "the teacher never runs while students train; augment: a fresh random view "
                    "every batch, the teacher runs live)")
        if self.mix != "none" and not self.views:
            return (f"mix={self.mix} mixes cached views: set views (e.g. views=8; as many as "
                    "epochs shows a new one every epoch)")
        return None

    def mixing(self) -> dict:
        """`mix` and, only where a mode uses it, `mix_alpha`, as params keys: what the stages
        that show students views read (data/mixing.json, from check_params), so changing the
        alpha of no mixing reruns nothing."""
        if self.mix == "none":
            return {"data.mix": "none"}
        return {"data.mix": self.mix, "data.mix_alpha": float(self.mix_alpha)}


SCHEDULES = ("constant", "cosine")
MODELS_CODE = "src/kdpipe/learn/models.py"


def builder_file(arch: str) -> str:
    """The file of a `module:function` builder, relative to the repository root."""
    return arch.partition(":")[0].replace(".", "/") + ".py"


ARCH = "DeepNN, LightNN, a torchvision model name or module:function"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = positive_int()
    lr: float = positive_float()
    batch_size: int = positive_int()
    # constant: Adam at `lr` throughout (the tutorial); cosine: decays to 0 by the last step,
    # after `warmup_epochs` of linear warm-up (either schedule).
    schedule: str = rule(" | ".join(SCHEDULES), lambda v: v in SCHEDULES, default="constant")
    warmup_epochs: int = rule("an integer >= 0", lambda v: v >= 0, default=0)
    # DeepNN | LightNN (the tutorial's) | a torchvision classification model (resnet18, ...) |
    # module:function, a builder in your code: function(num_classes=...) -> nn.Module
    arch: str = rule(ARCH, lambda v: v.strip() != "", default="LightNN")
    # The file that defines `arch`, a DVC dependency of the stages that build it: the default
    # for built-in architectures, the builder's file (module a.b -> a/b.py) for module:function.
    code: str = rule("a path relative to the repository root", lambda v: v.strip() != "",
                     default=MODELS_CODE)
    # The module whose output cosine and hint distil ("" = the architecture's default).
    feature_layer: str = ""
    # Cross-entropy against (1 - eps) * one-hot + eps / classes (Szegedy et al. 2016): a control
    # for what soft targets add beyond smoothing. 0 = plain cross-entropy, bit for bit.
    label_smoothing: float = rule("a number in [0, 1)", lambda v: 0 <= v < 1, default=0.0)
    # Gradients rescaled to this global L2 norm at most before each step (function matching's
    # Adam recipe, Beyer et al. 2022); 0 = no clipping.
    grad_clip: float = rule("a number >= 0 (0 = none)", lambda v: v >= 0, default=0.0)

    def check(self) -> str | None:
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            return f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})"
        expected = builder_file(self.arch) if ":" in self.arch else MODELS_CODE
        if self.code != expected:
            return (f"code={self.code!r} does not define arch={self.arch!r}; expected "
                    f"code: {expected} (the file DVC must watch for it)")
        return None


PRETRAINED_DIR = "teachers"
PRETRAINED_SUFFIXES = (".pt", ".pth", ".safetensors")


@dataclass(frozen=True)
class TeacherConfig(TrainConfig):
    arch: str = rule(ARCH, lambda v: v.strip() != "", default="DeepNN")
    # A trained teacher to use instead of training one: a file under teachers/ (that folder is
    # the teacher stage's DVC dependency). "" = train it.
    pretrained: str = rule(f"'' or a {'/'.join(PRETRAINED_SUFFIXES)} file under "
                           f"{PRETRAINED_DIR}/",
                           lambda v: v == "" or (v.startswith(PRETRAINED_DIR + "/")
                                                 and v.endswith(PRETRAINED_SUFFIXES)),
                           default="")
    # K fixed views per image the teacher trains on, the first K of those data.views caches
    # and shows students (so students can see more views, e.g. one per epoch, without
    # retraining the teacher); 0 = the images themselves.
    views: int = rule("an integer >= 0 (0 = no views)", lambda v: v >= 0, default=0)


@dataclass(frozen=True)
class DistillConfig:
    """Which methods run (a distill stage per method and seed), and each method's section
    distill.<name>, kept here as read: the method's own settings dataclass validates it where
    the method is used (kdpipe.learn.methods.registry), and stage check_params validates them
    all. So this file names no method, and adding one touches only its module and params."""
    REST: ClassVar[str] = "sections"  # every key but `methods` that holds a mapping: a section
    REST_IS: ClassVar[str] = "a method's section (a mapping of its settings)"
    methods: list[str] = rule("a non-empty list of distinct method names",
                              lambda v: bool(v) and len(set(v)) == len(v)
                              and all(isinstance(m, str) for m in v))
    sections: dict = field(default_factory=dict)

    def check(self) -> str | None:
        missing = [m for m in self.methods if m not in self.sections]
        if missing:  # raised here: the message names the list, not the whole section
            raise ConfigError(f"distill.methods={self.methods!r}: {', '.join(missing)} has no "
                              f"section distill.{missing[0]}; the methods with a section are: "
                              f"{', '.join(self.sections)}")
        return None


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = rule("a non-empty experiment name", lambda v: v.strip() != "")


@dataclass(frozen=True)
class ExportConfig:
    """Stage `export`: the chosen student in ONNX, and an int8 copy measured beside it."""
    # Quantize a copy to int8 (static, onnxruntime) and report its accuracy and speed.
    int8: bool = True
    # Train images (a seeded, class-balanced subset) that calibrate the int8 activation ranges.
    calibration_images: int = rule("an integer >= 1", lambda v: v >= 1, default=1000)
    # The int8 copy is reported as usable only if it loses at most this much test accuracy
    # (percentage points) against the PyTorch model.
    int8_max_loss: float = rule("a number >= 0 (percentage points)", lambda v: v >= 0,
                                default=1.0)


DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Config:
    seed: int = rule("an integer >= 0", lambda v: v >= 0)
    seeds: list[int] = rule("a non-empty list of distinct integers >= 0",
                            lambda v: bool(v) and len(set(v)) == len(v)
                            and all(type_ok(int, s) and s >= 0 for s in v))
    device: str = rule(" | ".join(DEVICES), lambda v: v in DEVICES)
    data: DataConfig
    teacher: TeacherConfig
    student: TrainConfig
    distill: DistillConfig
    mlflow: MlflowConfig
    export: ExportConfig = field(default_factory=ExportConfig)
    # bf16 autocast (losses, softmax and caches stay fp32) or full fp32; auto: bf16 where the
    # device computes it in hardware (GPU capability >= 8.0, CPU with AMX or AVX-512 BF16),
    # else fp32 (kdpipe.core.runtime.bf16_rule).
    precision: str = rule(" | ".join(PRECISIONS), lambda v: v in PRECISIONS, default="auto")
    # CPU threads for torch; 0 keeps torch's default (one per core).
    threads: int = rule("an integer >= 0 (0 = torch's default)", lambda v: v >= 0, default=0)
    # torch.compile the training step (CUDA only; ignored on CPU, where it does not pay off:
    # docs/performance.md). A speed switch: no stage declares it, so flipping it reruns nothing.
    compile: bool = False

    def check(self) -> str | None:
        if self.teacher.views and self.data.augment:  # raised here: one line, not all params
            raise ConfigError(f"teacher.views={self.teacher.views} and data.augment=true: "
                              "choose one (views: fixed, cached; augment: fresh every batch)")
        return None


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the repository root") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return build(Config, raw, "")


def as_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def flat(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}: the form MLflow params and DVC use."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def section(cfg: Config, *names: str) -> dict:
    """The named params sections ('distill.kd', 'seed', ...) as a nested plain dict."""
    out: dict = {}
    for name in names:
        value = cfg
        for part in name.split("."):
            value = getattr(value, part)
        out[name] = as_dict(value) if hasattr(value, "__dataclass_fields__") else value
    return out
