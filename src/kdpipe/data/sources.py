"""Where images come from: torchvision's CIFAR-10, a synthetic set, or a local ImageFolder
(a folder or a .tar.gz holding `train/<class>/*` and `test/<class>/*`).

Each reader returns uint8 images shaped (N, 3, 32, 32), int64 labels and the class names, cut
to a seeded, class-balanced subset when a limit is set. An ImageFolder is decoded only for the
images the subset keeps: JPEG decoding is most of `prepare`'s time.
"""
from __future__ import annotations

import io
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from kdpipe.core.errors import DataError
from kdpipe.core.progress import bar, clock, say

SPLITS = ("train", "test")
NATIVE_SIZE = 32  # CIFAR-10's, and the synthetic set's
SYNTHETIC_SIZES = {"train": 2000, "test": 400}  # images per split before any limit


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, 3, S, S), S = data.image_size
    labels: np.ndarray  # int64 (N,)


BUILT_IN = ("cifar10", "synthetic")
TORCHVISION_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def local_path(source: str, root: Path) -> Path | None:
    """Where a local source (an ImageFolder folder or .tar.gz) is: `~` expanded, a relative
    path taken from the repository root; None for a built-in set. The one reading of
    params `data.source`: the data, its digest and MLflow's dataset record all use it."""
    if source in BUILT_IN:
        return None
    path = Path(source).expanduser()
    return (path if path.is_absolute() else root / path).resolve()


def dataset_uri(source: str, root: Path, prepared_dir: Path) -> str:
    """Where the data came from, as MLflow records it: CIFAR-10's download URL, the local
    source, or (synthetic data, made here) the prepared folder."""
    if source == "cifar10":
        return TORCHVISION_CIFAR10_URL
    return (local_path(source, root) or prepared_dir.resolve()).as_uri()


def read_source(source: str, root: Path, seed: int, limits: dict[str, int],
                size: int = NATIVE_SIZE) -> tuple[dict[str, Split], list[str]]:
    """Every split of `source`, each cut to `limits[split]` images (0 = all), as size x size."""
    if source not in BUILT_IN:
        return read_image_folder(existing(local_path(source, root), root), limits, seed, size)
    if source == "cifar10":
        splits, classes = read_torchvision_cifar10(root / "data" / "raw")
    else:
        splits, classes = make_synthetic(seed), [f"class{k}" for k in range(10)]
    out = {}
    for split, data in splits.items():
        kept = take(data, balanced_subset(data.labels, limits.get(split, 0), seed))
        check_memory(split, len(kept.labels), size)
        out[split] = kept if size == NATIVE_SIZE else \
            Split(np.stack([resized(image, size) for image in kept.images]), kept.labels)
    return out, classes


def resized(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (3, H, W) -> (3, size, size), bilinear with antialiasing (PIL)."""
    pil = Image.fromarray(image.transpose(1, 2, 0)).resize((size, size), Image.BILINEAR)
    return np.asarray(pil).transpose(2, 0, 1)


def check_memory(split: str, count: int, size: int) -> None:
    """Say what a split will take in memory (uint8), and refuse when it cannot fit: every
    training stage holds all splits at once."""
    import psutil

    need = count * 3 * size * size
    available = psutil.virtual_memory().available
    say(f"{split}: {count:,} images of 3x{size}x{size} uint8 = {need / 2**20:,.0f} MiB")
    if need > available / 2:
        raise DataError(f"data.image_size={size}: the {split} split needs {need / 2**30:.1f} GiB "
                        f"({count:,} x 3 x {size} x {size} bytes) but only "
                        f"{available / 2**30:.1f} GiB of memory is free, and training holds "
                        "every split at once; lower data.image_size or data.limit_*")


def take(split: Split, indices: np.ndarray) -> Split:
    return Split(split.images[indices], split.labels[indices])


def existing(path: Path, root: Path) -> Path:
    if not path.exists():
        raise DataError(f"data.source: {path} does not exist (relative paths are resolved "
                        f"against the repository root {root}); expected 'cifar10', 'synthetic' "
                        "or an ImageFolder folder or .tar.gz")
    return path


def read_torchvision_cifar10(raw_dir: Path) -> tuple[dict[str, Split], list[str]]:
    from torchvision.datasets import CIFAR10  # slow import, only needed here

    splits = {}
    try:
        for split in SPLITS:
            ds = CIFAR10(str(raw_dir), train=split == "train", download=True)
            splits[split] = Split(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)),
                                  np.asarray(ds.targets, dtype=np.int64))
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise DataError(
            f"data.source=cifar10: could not download CIFAR-10 into {raw_dir} ({err}). "
            "Offline? Point data.source at a local copy, e.g. "
            "`dvc exp run -S data.source=../shared/data/cifar10-jpeg.tar.gz`, or put "
            "torchvision's cifar-10-python.tar.gz into that folder.") from None
    return splits, list(ds.classes)


def make_synthetic(seed: int) -> dict[str, Split]:
    """Ten classes, each a fixed random low-frequency colour pattern plus per-image noise and a
    random shift: learnable (a short run beats chance) but not trivial."""
    rng = np.random.default_rng(seed)
    # Classes differ by a faint coarse pattern on a shared background, under strong noise.
    coarse = rng.uniform(64, 192, size=(1, 3, 4, 4)) + rng.normal(0, 24, size=(10, 3, 4, 4))
    templates = coarse.repeat(NATIVE_SIZE // 4, axis=2).repeat(NATIVE_SIZE // 4, axis=3)
    splits = {}
    for split, n in SYNTHETIC_SIZES.items():
        labels = np.arange(n, dtype=np.int64) % 10
        shifts = rng.integers(-3, 4, size=(n, 2))
        images = np.stack([np.roll(templates[y], tuple(s), axis=(1, 2))
                           for y, s in zip(labels, shifts)])
        images = images + rng.normal(0, 48, size=images.shape)
        splits[split] = Split(images.clip(0, 255).astype(np.uint8), labels)
    return splits


def read_image_folder(path: Path, limits: dict[str, int] | None = None, seed: int = 0,
                      size: int = NATIVE_SIZE) -> tuple[dict[str, Split], list[str]]:
    say(f"reading {path}")
    files: dict[str, dict[str, list[tuple[str, bytes]]]] = {s: {} for s in SPLITS}
    for rel, data in _walk(path):
        parts = _split_path(rel, path)
        if parts is None:
            continue
        split, cls, name = parts
        bucket = files[split].setdefault(cls, [])
        if name is not None:
            bucket.append((name, data))
    for split in SPLITS:
        if not files[split]:
            raise DataError(f"{path}: no '{split}/<class>/<image>' entries; expected an "
                            "ImageFolder layout with train/ and test/ folders")
    classes = sorted(files["train"])
    if sorted(files["test"]) != classes:
        raise DataError(f"{path}: train and test have different classes: "
                        f"train={classes}, test={sorted(files['test'])}")
    splits = {split: _decode_split(path, split, files[split], classes,
                                   (limits or {}).get(split, 0), seed, size) for split in SPLITS}
    return splits, classes


def _walk(path: Path) -> Iterator[tuple[str, bytes | None]]:
    """(relative posix path, bytes) for files, (path + '/', None) for folders."""
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            rel = p.relative_to(path).as_posix()
            yield (rel + "/", None) if p.is_dir() else (rel, p.read_bytes())
        return
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isdir():
                    yield member.name.rstrip("/") + "/", None
                elif member.isfile():
                    yield member.name, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{path}: not a readable .tar/.tar.gz archive, or truncated/corrupt "
                        f"({type(err).__name__}: {err})") from None


def _split_path(rel: str, root: Path) -> tuple[str, str, str | None] | None:
    """'[top/]train/cat/1.jpg' -> ('train', 'cat', '1.jpg'); ('train', 'cat', None) for a class
    folder; None for anything else. Refuses names that would escape the archive's folder."""
    posix = PurePosixPath(rel)
    if posix.is_absolute() or ".." in posix.parts:
        raise DataError(f"{root}: refusing entry '{rel}': it points outside the archive")
    parts = [p for p in posix.parts if p not in ("", ".")]
    for i, part in enumerate(parts[:2]):  # allow one wrapping folder, e.g. cifar10/train/...
        if part in SPLITS:
            rest = parts[i + 1:]
            if len(rest) == 1 and rel.endswith("/"):
                return part, rest[0], None
            if len(rest) == 2 and not rel.endswith("/") and not rest[1].startswith("."):
                return part, rest[0], rest[1]
            return None
    return None


def _decode_split(path: Path, split: str, by_class: dict, classes: list[str], limit: int,
                  seed: int, size: int) -> Split:
    """Decode the class-balanced subset of `limit` images (all when 0), in class order, as
    size x size."""
    entries, labels = [], []
    for label, cls in enumerate(classes):
        names = sorted(by_class[cls])
        if not names:
            raise DataError(f"{path}: class folder '{split}/{cls}' has no images")
        entries += [(f"{split}/{cls}/{name}", data) for name, data in names]
        labels += [label] * len(names)
    keep = balanced_subset(np.asarray(labels, dtype=np.int64), limit, seed)
    check_memory(split, len(keep), size)
    start, images = time.perf_counter(), []
    steps = bar(len(keep), f"decoding {split}", "img")
    for i in keep:
        images.append(_decode(path, *entries[i], size))
        steps.update()
    steps.close()
    say(f"decoded {split}: {len(keep):,} images in {clock(time.perf_counter() - start)}")
    return Split(np.stack(images), np.asarray(labels, dtype=np.int64)[keep])


def _decode(path: Path, rel: str, data: bytes, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size): resized (bilinear, antialiased) unless it already is."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            array = np.asarray(rgb)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: cannot read image '{rel}' ({err})") from None
    return array.transpose(2, 0, 1)


def balanced_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of `limit` images, as even across classes as
    possible; all indices when limit is 0 or not smaller than the split."""
    if limit == 0 or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    take = np.full(len(classes), limit // len(classes))
    take[rng.permutation(len(classes))[: limit % len(classes)]] += 1
    return np.sort(np.concatenate([idx[:k] for idx, k in zip(per_class, take)]))
