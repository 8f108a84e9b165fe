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

from kdpipe.data.hashing import hashed
from kdpipe.data.mixing import Mixing
from kdpipe.data.prepared import crop_flip, crop_params

CHOICE_SALT = 0x5EED_F00D  # separates the per-epoch choice from the views' own parameters


def image_of(rows: torch.Tensor, views: int) -> torch.Tensor:
    """The training image of each teacher-cache row, for `views` views per image (0: a row per
    image). The inverse of Views.keys."""
    return rows // max(views, 1)


@dataclass(frozen=True)
class Views:
    params: torch.Tensor  # uint8 (N, K, 3): crop offsets dy, dx in 0..2*PAD and flip 0/1
    seed: int             # params `seed`: the views are the same for every model
    mixing: Mixing | None = None  # data.mix: each view mixed with a partner's (data.mixing)

    @classmethod
    def from_params(cls, seed: int, images: int, views: int, device: torch.device,
                    mixing: dict | None = None, size: int = 32) -> Views | None:
        """The views params `seed`, `data.views` and (for students) the mixing
        (params' DataConfig.mixing) name for a split of `images` images of `size` pixels; None for
        data.views 0 (no views)."""
        if not views:
            return None
        plain = cls.make(seed, images, views, device)
        mode = (mixing or {}).get("data.mix", "none")
        if mode == "none":
            return plain
        return cls(plain.params, seed, Mixing.make(mode, mixing["data.mix_alpha"], seed, images,
                                                   views, size, device))

    @classmethod
    def make(cls, seed: int, images: int, views: int, device: torch.device) -> Views:
        params = crop_params(hashed(seed, np.arange(images)[:, None], np.arange(views)[None, :]))
        return cls(torch.from_numpy(params.astype(np.uint8)).to(device), seed)

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
        return image_of(keys, self.count)

    def apply(self, batch: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The normalised images of `batch` as the views that `keys` name, unmixed."""
        dy, dx, flip = self.params[self.images(keys), keys % self.count].unbind(-1)
        return crop_flip(batch, dy, dx, flip)

    def render(self, images: torch.Tensor, normalize, keys: torch.Tensor) -> torch.Tensor:
        """The views `keys` name, from the split's uint8 `images`: cropped and flipped, then
        mixed with their partners' where data.mix says. What the teacher's cache and every
        training stage both show."""
        image, view = self.images(keys), keys % self.count
        if self.mixing:
            return self.mixing.render(images, normalize, image, view, self.params[image, view])
        return self.apply(normalize(images[image]), keys)

    def labels(self, labels: torch.Tensor, keys: torch.Tensor, classes: int) -> torch.Tensor:
        """The training targets of the views `keys` name: the images' labels, or with mixing
        (B, classes) mixed hard labels."""
        image = self.images(keys)
        return self.mixing.labels(labels, image, keys % self.count, classes) \
            if self.mixing else labels[image]
