"""The distillation methods: one module each in this folder, registered by the METHOD it
defines (kdpipe.learn.objective.Method). Adding a method is adding its module and its section
`distill.<name>` in params.yaml; nothing else names the methods.

A method's module is imported by name, only where that method is used: a distill stage loads
its own method alone, so it depends (dvc.yaml) on that method's file alone, and editing one
method reruns exactly its stages.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import asdict
from pathlib import Path

from kdpipe.core.config import Config
from kdpipe.core.errors import ConfigError
from kdpipe.core.schema import build
from kdpipe.learn.objective import FeatureShapes, Method, Objective

FOLDER = Path(__file__).parent
NOT_METHODS = {"registry"}
# A key any method's section may hold: which teacher it learns from. `shuffled` is a control
# (kdpipe.learn.shuffled_teacher), for methods that read only the teacher's logits.
TEACHERS = ("trained", "shuffled")


def names() -> list[str]:
    """Every method there is: the modules of this folder."""
    return sorted(m.name for m in pkgutil.iter_modules([str(FOLDER)])
                  if m.name not in NOT_METHODS)


def method(name: str) -> Method:
    if name not in names():
        raise ConfigError(f"distill.{name}: no such method; the methods are "
                          f"{', '.join(names())} (one module each in src/kdpipe/learn/methods/)")
    module = importlib.import_module(f"{__package__}.{name}")
    if not isinstance(getattr(module, "METHOD", None), Method):
        raise ConfigError(f"distill.{name}: src/kdpipe/learn/methods/{name}.py defines no "
                          "METHOD = Method(settings, objective, description)")
    return module.METHOD


def settings(cfg: Config, name: str):
    """The validated params section distill.<name> of a method, defaults filled in (without
    its `teacher` key: see `teacher`)."""
    section = {k: v for k, v in cfg.distill.sections[name].items() if k != "teacher"}
    if name in cfg.distill.methods and cfg.data.mix != "none" \
            and method(name).objective.hard_labels:
        raise ConfigError(f"distill.methods: {name} reads each sample's one label, and "
                          f"data.mix={cfg.data.mix} mixes two; use it without data.mix")
    return build(method(name).settings, section, f"distill.{name}")


def teacher(cfg: Config, name: str) -> str:
    """Which teacher method `name` learns from (distill.<name>.teacher, default trained),
    checked against what the method reads and where the teacher's outputs come from."""
    kind = cfg.distill.sections[name].get("teacher", "trained")
    key = f"distill.{name}.teacher"
    if kind not in TEACHERS:
        raise ConfigError(f"{key}={kind!r}: expected one of {', '.join(TEACHERS)}")
    if kind == "trained" or name not in cfg.distill.methods:  # what runs is checked below
        return kind
    if method(name).needs != ("logits",):
        raise ConfigError(f"{key}=shuffled: it shuffles the teacher's logits, and {name} "
                          f"reads {', '.join(method(name).needs) or 'no teacher'}")
    if cfg.data.mix != "none":
        raise ConfigError(f"{key}=shuffled keeps each row's label entry, and data.mix="
                          f"{cfg.data.mix} gives a mixed view two labels")
    if cfg.data.augment:
        raise ConfigError(f"{key}=shuffled needs the cached teacher; data.augment=true runs "
                          "it live (use data.views instead)")
    return kind


def is_control(cfg: Config, name: str) -> bool:
    """Whether method `name`, as configured, is a control (a baseline recipe for the sweep)."""
    return method(name).control or teacher(cfg, name) == "shuffled"


def objective(cfg: Config, name: str, shapes: FeatureShapes | None = None) -> Objective:
    """The objective of method `name`, configured from params distill.<name>; `shapes`: the
    feature maps at the two taps, for a method that reads features (hint sizes its regressor
    from them)."""
    return method(name).objective(settings(cfg, name), shapes)


def check_all(cfg: Config) -> dict:
    """Every section of params `distill` validated by its method: {name: settings as a dict}."""
    return {name: {**asdict(settings(cfg, name)), "teacher": teacher(cfg, name)}
            for name in cfg.distill.sections}


def teacher_needs(cfg: Config) -> list[str]:
    """The teacher outputs (logits, features) that the listed methods read, in that order."""
    needed = {need for name in cfg.distill.methods for need in method(name).needs}
    return [need for need in ("logits", "features") if need in needed]
