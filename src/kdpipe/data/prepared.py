"""Prepared data: written once by the prepare stage, loaded whole onto the device by the rest.

Layout of a prepared folder (all plain .npy, loadable without pickle):
    {train,val,test}_images.npy  uint8 (N, 3, 32, 32); val is empty when data.val_fraction is 0
    {train,val,test}_labels.npy  int64 (N,)
    summary.json             classes, counts per class, digests of the data and of its source
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdpipe.core.config import DataConfig
from kdpipe.core.errors import ConfigError, DataError
from kdpipe.core.files import atomic_path, read_json, sha256_files, write_json
from kdpipe.data.sources import Split, balanced_subset, local_path, read_source, take

# The tutorial's normalisation (ImageNet statistics), applied once to the whole split.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PREPARED_SPLITS = ("train", "val", "test")
ARRAYS = [f"{split}_{kind}.npy" for split in PREPARED_SPLITS for kind in ("images", "labels")]


def prepare(cfg: DataConfig, seed: int, root: Path, out_dir: Path) -> dict:
    """Read `cfg.source`, cut the seeded class-balanced subsets, write `out_dir` atomically."""
    limits = {"train": cfg.limit_train, "test": cfg.limit_test}
    splits, classes = read_source(cfg.source, root, seed, limits, cfg.image_size)
    splits["train"], splits["val"] = hold_out(splits["train"], cfg.val_fraction, seed)
    with atomic_path(out_dir, is_dir=True) as tmp:
        for split in PREPARED_SPLITS:
            np.save(tmp / f"{split}_images.npy", splits[split].images)
            np.save(tmp / f"{split}_labels.npy", splits[split].labels)
        summary = {
            "source": cfg.source,
            "source_sha256": source_digest(cfg.source, root),
            "image_size": cfg.image_size,
            "classes": classes,
            "counts": {split: dict(zip(classes, np.bincount(splits[split].labels,
                                                            minlength=len(classes)).tolist()))
                       for split in PREPARED_SPLITS},
            "sha256": sha256_files([tmp / name for name in ARRAYS]),
        }
        write_json(tmp / "summary.json", summary)
    return summary


def hold_out(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, validation): a seeded, class-balanced `fraction` of `train` held out. A fraction
    that leaves either part empty is a config error, not a silent switch to choosing on test."""
    n = len(train.labels)
    n_val = round(n * fraction)
    if fraction > 0 and not 0 < n_val < n:
        part = "no validation image" if n_val == 0 else "no training image"
        raise ConfigError(f"data.val_fraction={fraction}: holds out {n_val} of the {n} training "
                          f"images, leaving {part}; expected 0 (no validation split) or a "
                          f"fraction between {1 / n:.4g} and {(n - 1) / n:.4g}")
    val = balanced_subset(train.labels, n_val, seed + 1) if n_val else np.array([], dtype=int)
    rest = np.setdiff1d(np.arange(len(train.labels)), val)
    return take(train, rest), take(train, val)


def source_digest(source: str, root: Path) -> str | None:
    """sha256 of a local archive file; None for downloads, synthetic data and folders
    (a folder's content is covered by the prepared data's own digest)."""
    path = local_path(source, root)
    if path is None or not path.is_file():
        return None
    return sha256_files([path])


class Prepared:
    """A prepared folder, loaded: uint8 arrays per split plus the summary."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        missing = [name for name in ARRAYS + ["summary.json"] if not (folder / name).exists()]
        if missing:
            raise DataError(f"{folder}: prepared data is missing {', '.join(missing)}; "
                            "run `dvc repro prepare`")
        self.summary = read_json(folder / "summary.json")
        self.image_size: int = self.summary.get("image_size", 32)
        self.classes: list[str] = self.summary["classes"]
        self.digest: str = self.summary["sha256"]
        self.splits = {split: Split(np.load(folder / f"{split}_images.npy"),
                                    np.load(folder / f"{split}_labels.npy"))
                       for split in PREPARED_SPLITS}


def to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """A whole split on `device`, as it is stored: uint8 (N, 3, H, W), a quarter of float32's
    memory; batches are normalised as they are drawn (`Normalize`)."""
    return torch.from_numpy(images).to(device)


class Normalize:
    """uint8 (B, 3, H, W) -> float32 (x / 255 - mean) / std, channels_last (NHWC in memory: the
    fast layout for convolutions on both CPU and CUDA; measured on the 2-core CPU, a training
    step ran 1.35x faster for LightNN and 1.27x for DeepNN than in NCHW). Element by element,
    so a batch comes out exactly as if the whole split had been normalised first."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = (batch.float().div_(255) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


PAD = 4  # pixels of zero padding around an image before a random crop (the usual CIFAR recipe)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and horizontal flip, for a whole batch at once."""
    n, device = len(batch), generator.device
    dy = torch.randint(0, 2 * PAD + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * PAD + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return crop_flip(batch, dy, dx, flip)


def crop_params(h: np.ndarray) -> np.ndarray:
    """uint64 hashes -> crop_flip's parameters (..., 3): offsets dy, dx in 0..2*PAD from two
    bytes, the flip from a third bit."""
    span = np.uint64(2 * PAD + 1)
    return np.stack([h % span, (h >> np.uint64(8)) % span, (h >> np.uint64(16)) & 1], -1)


def crop_flip(batch: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
              flip: torch.Tensor) -> torch.Tensor:
    """Each image of a normalised batch padded by PAD zeros, cropped back to its size at offset
    (dy, dx) in 0..2*PAD (PAD, PAD = the image itself) and mirrored where `flip`.

    Padding happens after normalisation, so padded pixels are 0 = the dataset mean, as with
    torchvision's RandomCrop applied to a normalised tensor."""
    return pixels_at(padded_pixels(batch), crop_rows(dy, dx, flip, *batch.shape[2:]))


def padded_pixels(batch: torch.Tensor) -> torch.Tensor:
    """A normalised (n, C, H, W) batch padded by PAD zeros, as one row of C values per pixel:
    (n * (H + 2 PAD) * (W + 2 PAD), C), the rows crop_rows names."""
    pixels = torch.nn.functional.pad(batch.permute(0, 2, 3, 1), (0, 0, PAD, PAD, PAD, PAD))
    return pixels.reshape(-1, batch.shape[1])


def crop_rows(dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, h: int,
              w: int) -> torch.Tensor:
    """(n, h, w): the row of padded_pixels (of n images of h x w) that each pixel of image i's
    crop at (dy[i], dx[i]), mirrored where flip[i], reads."""
    dy, dx = dy.long(), dx.long()  # the views' tables store them as uint8
    device = dy.device
    rows = dy[:, None] + torch.arange(h, device=device)
    cols = dx[:, None] + torch.arange(w, device=device)
    cols = torch.where(flip.bool()[:, None], cols.flip(1), cols)
    image = torch.arange(len(dy), device=device)[:, None, None]
    return (image * (h + 2 * PAD) + rows[:, :, None]) * (w + 2 * PAD) + cols[:, None, :]


def pixels_at(pixels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(n, C, h, w) images whose pixels are the `rows` (n, h, w) of `pixels`. One index_select of
    whole pixels (their C values side by side in channels_last memory): measured on the 2-core
    CPU, 0.5 ms for 128 CIFAR images against 1.3 ms for two gathers over rows and columns."""
    n, h, w = rows.shape
    out = pixels.index_select(0, rows.reshape(-1)).view(n, h, w, pixels.shape[1])
    return out.permute(0, 3, 1, 2)  # NCHW indexing over channels_last memory


def batch_order(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's batches: a seeded permutation of sample indices, cut into batches (the last
    one may be smaller, as with a DataLoader without drop_last)."""
    return list(torch.randperm(n, generator=generator).split(batch_size))
