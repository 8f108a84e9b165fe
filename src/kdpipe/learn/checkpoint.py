"""Per-epoch training checkpoints that survive a killed stage, and safe loading of .pt files.

DVC deletes a stage's declared outputs before running it, so checkpoints live in the
git-ignored CHECKPOINT_DIR, one file per stage. Each carries a key derived from
everything that determines the result (params, input data, the device actually used, code): a
checkpoint whose key does not match is ignored, so changed inputs never resume from stale state.
Every tensor is saved on the CPU, so model files and checkpoints load on any machine.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from kdpipe.core.errors import UnsafeCheckpointError
from kdpipe.core.files import sha256_files, write_with
from kdpipe.core.paths import CHECKPOINT_DIR
from kdpipe.core.runtime import Runtime
from kdpipe.learn.models import Tapped, build_model, default_feature_layer


def safe_load(path: str | Path) -> Any:
    """torch.load restricted to tensors and plain types: a file that would run code when
    unpickled is refused with a clear error instead of being executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path}: refusing to load: it contains objects other than tensors and plain "
            f"types, which could run code when unpickled ({str(err).splitlines()[0]})") from None


def load_teacher(path: Path, device: torch.device, layer: str) -> tuple[Tapped, dict]:
    """The teacher saved by its training stage, on `device`, tapped at `layer` (params
    `teacher.feature_layer`; "" = the architecture's default), plus its saved dict. The tap is
    the distilling stages' choice, not the teacher's: changing it never retrains the teacher."""
    saved = safe_load(path)
    model = build_model(saved["arch"], len(saved["classes"]), saved.get("image_size", 32))
    model.load_state_dict(saved["state_dict"])
    tapped = Tapped(model, layer or default_feature_layer(model), key="teacher.feature_layer")
    return tapped.to(device, memory_format=torch.channels_last), saved


def run_key(*parts: Any, files: list[Path] = ()) -> str:
    """A digest of `parts` (JSON-able: params, data digests), of the project modules this
    process has imported (what the stage runs: the same modules dvc.yaml lists as its deps, so
    editing any other file, e.g. kdpipe.analysis.sweep, keeps a killed stage's checkpoint
    usable) and of `files` (the stage's own script)."""
    code = sorted(Path(m.__file__) for name, m in list(sys.modules.items())
                  if name.startswith("kdpipe.") and getattr(m, "__file__", None)) + list(files)
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256((text + sha256_files(code)).encode()).hexdigest()


def stage_key(runtime: Runtime, *parts: Any) -> str:
    """The key of a stage's resumable state: run_key of `parts` (what the stage reads), of what
    else changes its numbers here (device type, precision, threads) and of the stage's script."""
    return run_key(*parts, runtime.device.type, runtime.precision, torch.get_num_threads(),
                   files=[Path(sys.argv[0])])


def on_cpu(obj: Any) -> Any:
    """`obj` (nested dicts, lists and tuples) with every tensor copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out = type(obj)((k, on_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a state_dict's per-module versions
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def save_tensors(path: Path, obj: Any) -> None:
    """torch.save of `obj` with its tensors on the CPU, written atomically."""
    write_with(path, lambda tmp: torch.save(on_cpu(obj), tmp))


class Checkpoint:
    def __init__(self, name: str, key: str, folder: Path = CHECKPOINT_DIR):
        self.path = folder / f"{name}.pt"
        self.key = key
        self.extra: dict = {}  # saved with every state, e.g. the MLflow run id to continue

    def load(self) -> dict | None:
        """The saved state if there is one for the same key, else None."""
        if not self.path.exists():
            return None
        state = safe_load(self.path)
        return state if state.get("key") == self.key else None

    def save(self, state: dict) -> None:
        save_tensors(self.path, {"key": self.key, **self.extra, **state})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
