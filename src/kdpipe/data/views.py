"""K fixed augmented views per training image (params `data.views`), so that the teacher's
outputs on every view are computed once and every student is taught consistently from them.

A view is a 4-px padded crop plus a horizontal flip (data.crop_flip). Its parameters are a pure
function of (params `seed`, image index, view index), and which view an image shows in an epoch
a pure function of (the model's seed, epoch, image index): no RNG state, nothing to resume, the
same on every device. So teacher_targets computes the teacher's logits on all N x K views once
(as FKD, Shen & Xing, ECCV 2022, stores them), and in every training stage of a seed, the
baseline included, epoch e shows each image the same view, with the teacher's output on exactly
that view (consistent teaching, Beyer et al., CVPR 2022). A sample's key in the cache is
`image * K + view`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kdpipe.data.prepared import PAD, crop_flip

CHOICE_SALT = 0x5EED_F00D  # separates the per-epoch choice from the views' own parameters


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: uint64 -> well-scrambled uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hashed(seed: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A uint64 per element of the broadcast of `a` and `b`, a pure function of (seed, a, b)."""
    h = mix(np.full(np.broadcast(a, b).shape, seed, dtype=np.uint64))
    h = mix(h ^ np.asarray(a, dtype=np.uint64))
    return mix(h ^ np.asarray(b, dtype=np.uint64))


@dataclass(frozen=True)
class Views:
    params: torch.Tensor  # int64 (N, K, 3): crop offsets dy, dx in 0..2*PAD and flip 0/1
    seed: int             # params `seed`: the views are the same for every model

    @classmethod
    def from_params(cls, seed: int, images: int, views: int,
                    device: torch.device) -> Views | None:
        """The views params `seed` and `data.views` name for a split of `images` images; None
        for data.views 0 (no views)."""
        return cls.make(seed, images, views, device) if views else None

    @classmethod
    def make(cls, seed: int, images: int, views: int, device: torch.device) -> Views:
        h = hashed(seed, np.arange(images)[:, None], np.arange(views)[None, :])
        span = np.uint64(2 * PAD + 1)
        params = np.stack([h % span, (h >> np.uint64(8)) % span, (h >> np.uint64(16)) & 1], -1)
        return cls(torch.from_numpy(params.astype(np.int64)).to(device), seed)

    @property
    def count(self) -> int:
        return self.params.shape[1]

    def for_epoch(self, seed: int, epoch: int) -> torch.Tensor:
        """Which view each image shows in `epoch` (1-based) of a model trained with `seed`."""
        h = hashed(seed ^ CHOICE_SALT, np.uint64(epoch), np.arange(len(self.params)))
        choice = (h % np.uint64(self.count)).astype(np.int64)
        return torch.from_numpy(choice).to(self.params.device)

    def keys(self, idx: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """The teacher cache's rows for images `idx` shown as `view`: the one place that
        lays rows out (image * K + view)."""
        return idx * self.count + view

    def images(self, keys: torch.Tensor) -> torch.Tensor:
        """The image of each cache row."""
        return keys // self.count

    def apply(self, batch: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The normalised images of `batch` as the views that `keys` name."""
        dy, dx, flip = self.params[self.images(keys), keys % self.count].unbind(-1)
        return crop_flip(batch, dy, dx, flip)
