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

from kdpipe.core.config import Config, build
from kdpipe.core.errors import ConfigError
from kdpipe.learn.objective import FeatureShapes, Method, Objective

FOLDER = Path(__file__).parent
NOT_METHODS = {"registry"}


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
    """The validated params section distill.<name> of a method, defaults filled in."""
    return build(method(name).settings, cfg.distill.sections[name], f"distill.{name}")


def objective(cfg: Config, name: str, shapes: FeatureShapes | None = None) -> Objective:
    """The objective of method `name`, configured from params distill.<name>; `shapes`: the
    feature maps at the two taps, for a method that reads features (hint sizes its regressor
    from them)."""
    return method(name).objective(settings(cfg, name), shapes)


def check_all(cfg: Config) -> dict:
    """Every section of params `distill` validated by its method: {name: settings as a dict}."""
    return {name: asdict(settings(cfg, name)) for name in cfg.distill.sections}


def teacher_needs(cfg: Config) -> list[str]:
    """The teacher outputs (logits, features) that the listed methods read, in that order."""
    needed = {need for name in cfg.distill.methods for need in method(name).needs}
    return [need for need in ("logits", "features") if need in needed]
