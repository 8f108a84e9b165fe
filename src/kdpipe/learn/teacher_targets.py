"""Teacher outputs for distillation: computed once and cached, or live when they cannot be.

The cache holds, per training sample (the prepared train split's order; with data.views: K,
each image's K views, row `image * K + view`):
    logits.npy    float32 (N or N*K, classes)
    features.npy  float16 (N or N*K, ...): the teacher's output at teacher.feature_layer
                  ((32, 8, 8), its last feature map, for the tutorial's DeepNN); only when a
                  method of distill.methods needs features and the teacher has such a layer
    meta.json     what it was computed from: the prepared data's digest, the teacher's MLflow
                  run id, the layer and the number of views
The cosine target (2048 -> 1024 average pool) is derived from the feature map on the fly,
so each thing is stored once. With data.augment the inputs change every batch, so there is
nothing to cache: the folder then holds only meta.json, and distillation runs the teacher live.

Why float16 for the feature map: it is 97% of the cache (2048 values a sample vs 10 logits),
and half precision halves it (205 MB instead of 410 MB for CIFAR-10) and the memory the
distill stages hold. The values are post-ReLU activations of order 1-10, far inside float16's
range (max 65504), and its relative rounding error (<= 4.9e-4) is far below the noise of
SGD; tests check the cached loss against a live teacher. Logits stay float32: they are tiny
and the KD loss divides them by the temperature, so they are kept exact.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from kdpipe.core.errors import DataError
from kdpipe.core.files import atomic_path, read_json, write_json
from kdpipe.core.paths import CHECKPOINT_DIR
from kdpipe.core.progress import bar, say
from kdpipe.data.views import Views
from kdpipe.learn.checkpoint import Checkpoint
from kdpipe.learn.models import Tapped
from kdpipe.learn.objective import TeacherOutputs

FEATURE_DTYPE = np.float16
TARGET_FILES = {"logits": "logits.npy", "features": "features.npy"}


# A pass is saved in chunks of this many rows, so a killed teacher_targets resumes where it
# stopped: 100,000 views are about 1-3 minutes of teacher passes on a 2-core CPU, what a kill
# loses at most, and 4 MB of logits a chunk (with the tutorial's features, 800 MB).
CHUNK_ROWS = 100_000
CHUNK_NAME = "teacher_targets-{key}-{start}"  # the key's first 16 hex digits: one pass's own


class TeacherPass(NamedTuple):
    logits: torch.Tensor            # float32 (rows, classes)
    maps: torch.Tensor | None       # float32 feature maps, where asked for
    computed_rows: int              # rows computed by this call (the rest from checkpoints)


@torch.no_grad()
def compute_targets(teacher, images: torch.Tensor, normalize, autocast,
                    views: Views | None = None, features: bool = True, batch: int = 1000,
                    resume_key: str | None = None, chunk: int = CHUNK_ROWS) -> TeacherPass:
    """One pass of the frozen teacher over uint8 `images` (each of its views, with `views`) in
    the run's precision (`autocast`, as a live teacher runs), on the CPU, in cache-row order.
    With `resume_key` (a digest of all the pass depends on) each finished chunk of rows is
    checkpointed, and a chunk saved under the same key is loaded instead of computed;
    `remove_chunks` deletes them once the cache is written."""
    teacher.eval()
    rows = len(images) * (views.count if views else 1)
    steps = bar(rows, "teacher pass", "img")
    logits, maps, computed = [], [], 0
    for start in range(0, rows, chunk):
        keys = torch.arange(start, min(start + chunk, rows), device=images.device)
        saved = Checkpoint(CHUNK_NAME.format(key=resume_key[:16], start=start), resume_key) \
            if resume_key else None
        part = saved.load() if saved else None
        if part is None:
            part = _pass(teacher, images, normalize, autocast, views, features, keys, batch,
                         steps)
            computed += len(keys)
            if saved:
                saved.save(part)
        else:
            steps.update(len(keys))
        logits.append(part["logits"])
        if part["maps"] is not None:
            maps.append(part["maps"])
    steps.close()
    return TeacherPass(torch.cat(logits), torch.cat(maps) if maps else None, computed)


def _pass(teacher, images, normalize, autocast, views, features, rows, batch, steps) -> dict:
    """The teacher's outputs on cache rows `rows`, `batch` at a time."""
    logits, maps = [], []
    for keys in rows.split(batch):
        x = views.render(images, normalize, keys) if views else normalize(images[keys])
        with autocast():
            out, fmap = teacher.forward_with_features(x)
        logits.append(out.float().cpu())
        if features and fmap is not None:
            maps.append(fmap.float().cpu())
        steps.update(len(out))
    return {"logits": torch.cat(logits), "maps": torch.cat(maps) if maps else None}


def remove_chunks(resume_key: str, folder: Path = CHECKPOINT_DIR) -> None:
    """Delete the chunk checkpoints of the pass with `resume_key` (once its cache is written;
    another pass's, e.g. a parallel experiment's, are left alone)."""
    for path in folder.glob(CHUNK_NAME.format(key=resume_key[:16], start="*") + ".pt"):
        path.unlink(missing_ok=True)


def check_cache_fits(count: int, num_classes: int, feature_shape: tuple[int, ...] | None) -> int:
    """The cache's size in bytes; refuses (with the numbers) if it would not fit in memory,
    since every distill stage loads it whole, and warns past a quarter of free memory."""
    import psutil

    per_sample = 4 * num_classes + 2 * math.prod(feature_shape or (0,))
    size, free = count * per_sample, psutil.virtual_memory().available
    text = (f"the teacher-output cache takes {size / 2**20:,.0f} MiB ({count:,} rows x "
            f"{per_sample:,} bytes) with {free / 2**20:,.0f} MiB of memory free")
    if size > free / 2:
        raise DataError(f"{text}: too much. Choose a smaller teacher.feature_layer, fewer "
                        "data.views, fewer or smaller images, or data.augment: true (the "
                        "teacher then runs live)")
    if size > free / 4:
        say(f"warning: {text}")
    return size


def save_targets(folder: Path, meta: dict, logits: torch.Tensor | None = None,
                 features: torch.Tensor | None = None) -> None:
    """Write the cache atomically; `meta` records what it was computed from. Without tensors
    (data.augment) the folder holds only `meta`."""
    if features is not None and features.abs().max() > np.finfo(FEATURE_DTYPE).max:
        raise ValueError("teacher feature map exceeds the float16 range; store it as float32")
    with atomic_path(folder, is_dir=True) as tmp:
        if logits is not None:
            np.save(tmp / TARGET_FILES["logits"], logits.numpy().astype(np.float32))
        if features is not None:
            np.save(tmp / TARGET_FILES["features"], features.numpy().astype(FEATURE_DTYPE))
        write_json(tmp / "meta.json", meta)


# What a cache's meta.json records, and what it means when it differs from what a stage expects.
META_CHECKS = {"data_sha256": "other data than data/prepared",
               "teacher_run_id": "another teacher",
               "teacher_layer": "another teacher.feature_layer",
               "views": "another data.views",
               "mix": "another data.mix or data.mix_alpha"}
META_DEFAULTS = {"views": 0, "mix": "none"}  # what a cache without the key was made with


class CachedTargets:
    """Looks up cached teacher outputs by cache row (a sample, or a sample's view); loads only
    what the objective needs. `expected`: the meta.json values this stage was run with (the
    layer is checked only where features are needed: logits do not depend on it)."""

    def __init__(self, folder: Path, needs: tuple[str, ...], device: torch.device,
                 expected: dict):
        meta = read_json(Path(folder) / "meta.json")
        for key, what in META_CHECKS.items():
            found = meta.get(key, META_DEFAULTS.get(key))  # no views: a cache of images
            if key in expected and (key != "teacher_layer" or "features" in needs) \
                    and found != expected[key]:
                raise DataError(f"{folder} was computed from {what} ({key} {found}, "
                                f"expected {expected[key]}); run `dvc repro teacher_targets`")
        for name in needs:
            if not (Path(folder) / TARGET_FILES[name]).exists():
                raise DataError(f"{folder} holds no teacher {name}: the teacher has no feature "
                                "layer; set teacher.feature_layer")
        self.tensors = {name: torch.from_numpy(np.load(Path(folder) / TARGET_FILES[name]))
                        .to(device) for name in needs}

    def __call__(self, keys: torch.Tensor, x: torch.Tensor) -> TeacherOutputs:
        return TeacherOutputs(**{name: t[keys].float() for name, t in self.tensors.items()})


class LiveTeacher:
    """Runs the frozen teacher on the very batch the student sees (needed with augmentation,
    where the inputs change every epoch and a cache would be stale)."""

    def __init__(self, teacher: Tapped, autocast):
        self.teacher = teacher.eval().requires_grad_(False)
        self.autocast = autocast

    @torch.no_grad()
    def __call__(self, keys: torch.Tensor, x: torch.Tensor) -> TeacherOutputs:
        with self.autocast():
            logits, features = self.teacher.forward_with_features(x)
        return TeacherOutputs(logits.float(), None if features is None else features.float())


def teacher_source(*, augment: bool, teacher: Tapped, teacher_saved: dict, autocast,
                   folder: Path, needs: tuple[str, ...], device: torch.device,
                   data_sha256: str, views: int, mix: str = "none"):
    """The cache when the teacher's inputs are known in advance (the images, or their fixed
    views, mixed as `mix` (data.mixing.describe) says); with data.augment each batch is a fresh
    random view, so the teacher must see the student's very batch."""
    if augment:
        return LiveTeacher(teacher, autocast)
    return CachedTargets(folder, needs, device, {
        "data_sha256": data_sha256, "teacher_run_id": teacher_saved["mlflow_run_id"],
        "teacher_layer": teacher.layer, "views": views, "mix": mix})
