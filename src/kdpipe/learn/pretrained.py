"""A teacher trained elsewhere (params `teacher.pretrained`): its weights, checked against the
architecture key by key, instead of training.

Accepted files (under teachers/, the teacher stage's DVC dependency):
- a state dict saved with torch.save (.pt/.pth), loaded without unpickling code;
- a model file this pipeline wrote (models/teacher-<seed>.pt, copied there): its `state_dict`;
- a safetensors file (.safetensors).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdpipe.core.errors import ConfigError, DataError
from kdpipe.core.files import sha256_files
from kdpipe.learn.checkpoint import safe_load

KEY = "teacher.pretrained"


def read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"{KEY}: {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    saved = safe_load(path)
    if isinstance(saved, dict) and "state_dict" in saved:  # a model file of this pipeline
        saved = saved["state_dict"]
    if not isinstance(saved, dict) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise DataError(f"{KEY}: {path} holds no state dict (a mapping of names to tensors)")
    return saved


def mismatches(state: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """What keeps `state` from loading into `model`, one phrase per kind of problem."""
    expected = model.state_dict()
    problems = []
    for kind, keys in (("missing", [k for k in expected if k not in state]),
                       ("unexpected", [k for k in state if k not in expected])):
        if keys:
            problems.append(f"{len(keys)} {kind} ({', '.join(keys[:4])}"
                            f"{', ...' if len(keys) > 4 else ''})")
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if shapes:
        problems.append(f"{len(shapes)} of another shape ({', '.join(shapes[:3])}"
                        f"{', ...' if len(shapes) > 3 else ''})")
    return problems


def pretrained_weights(path: Path, model: nn.Module, arch: str) -> tuple[dict, str]:
    """The file's weights, checked to fit `model` exactly, and the file's sha256 (lineage)."""
    state = read_state(path)
    problems = mismatches(state, model)
    if problems:
        raise ConfigError(f"{KEY}={str(path)!r} does not fit teacher.arch={arch!r}: "
                          + "; ".join(problems))
    return state, sha256_files([path])
