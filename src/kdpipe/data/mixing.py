"""Mixed views (params `data.mix`: mixup or cutmix, `data.mix_alpha`): each of an image's K
views (kdpipe.data.views) mixed with a view of a partner image, as mixup (Zhang et al., ICLR
2018: a convex blend) or CutMix (Yun et al., ICCV 2019: a box pasted from the partner).

Everything about a mixed view is a pure function of (params `seed`, image, view): the partner
image, the partner's own crop and flip, the mixing weight lam ~ Beta(alpha, alpha) and, for
CutMix, the box. So teacher_targets caches the teacher's outputs on exactly the mixed image a
student is shown (mixing two cached outputs is not the teacher's output on the mixed image:
function matching, Beyer et al., CVPR 2022), and every student of a seed, the baseline included,
sees the same mixed views. Hard labels mix with the same weight: lam on the image's label,
1 - lam on the partner's (for CutMix, lam is the share of pixels the image keeps).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta

from kdpipe.data.hashing import hashed, uniform
from kdpipe.data.prepared import crop_params, crop_rows, padded_pixels, pixels_at

# Salts: each property of a mixed view hashes (seed ^ salt, image, view) on its own.
PARTNER, PARTNER_VIEW, WEIGHT, BOX_Y, BOX_X = 0x9A27, 0xC809, 0x1A3B, 0xB0F1, 0xB0F2


def describe(mixing: dict) -> str:
    """What the teacher cache records of the mixing (params' DataConfig.mixing)."""
    mode = mixing["data.mix"]
    return mode if mode == "none" else f"{mode} alpha {mixing['data.mix_alpha']}"


@dataclass(frozen=True)
class Mixing:
    mode: str                # mixup | cutmix
    # The tables hold every view of every image (N x K: 9 million rows at 45,000 images and
    # 200 views), so each in the narrowest type its values fit: 0.2 GB instead of 0.8 as int64.
    partner: torch.Tensor    # int32 (N, K): the image each view is mixed with
    partner_view: torch.Tensor  # uint8 (N, K, 3): the partner's crop dy, dx and flip
    lam: torch.Tensor        # float32 (N, K): the image's share (CutMix: of the pixels)
    box: torch.Tensor | None  # int16 (N, K, 4): CutMix's y0, y1, x0, x1 (rows, columns)

    @classmethod
    def make(cls, mode: str, alpha: float, seed: int, images: int, views: int, size: int,
             device: torch.device) -> Mixing:
        image, view = np.arange(images)[:, None], np.arange(views)[None, :]

        def h(salt: int) -> np.ndarray:
            return hashed(seed ^ salt, image, view)

        # Never the image itself: i + 1 + (0 .. N-2), modulo N.
        partner = (image + 1 + h(PARTNER) % np.uint64(max(images - 1, 1))) % images
        crops = crop_params(h(PARTNER_VIEW))
        lam = beta.ppf(uniform(h(WEIGHT)), alpha, alpha)
        box = None
        if mode == "cutmix":  # the box of CutMix's reference code (rand_bbox), clipped
            cut = (size * np.sqrt(1.0 - lam)).astype(np.int64)
            cy = (uniform(h(BOX_Y)) * size).astype(np.int64)
            cx = (uniform(h(BOX_X)) * size).astype(np.int64)
            y0, y1 = np.clip(cy - cut // 2, 0, size), np.clip(cy + cut // 2, 0, size)
            x0, x1 = np.clip(cx - cut // 2, 0, size), np.clip(cx + cut // 2, 0, size)
            box = np.stack([y0, y1, x0, x1], -1)
            lam = 1.0 - (y1 - y0) * (x1 - x0) / size**2  # the pixels the image keeps

        def tensor(a, dtype):
            return torch.from_numpy(np.ascontiguousarray(a).astype(dtype)).to(device)

        return cls(mode, tensor(partner, np.int32), tensor(crops, np.uint8),
                   tensor(lam, np.float32), None if box is None else tensor(box, np.int16))

    def render(self, images: torch.Tensor, normalize, image: torch.Tensor, view: torch.Tensor,
               crops: torch.Tensor) -> torch.Tensor:
        """The views `view` of `image` (their own crops (B, 3): dy, dx, flip) mixed with their
        partners' views, rendered from the uint8 `images` of the split.

        Both crops of a pair index one padded batch of 2B images, and CutMix picks each pixel's
        source in that index: one index_select of B images instead of two crops and a
        torch.where. Measured in bf16 on a 2-core Xeon (docs/performance.md): a student epoch on
        cutmixed views 1.10x one on plain views, against 1.24x."""
        n = len(image)
        partner = self.partner[image, view].long()
        both = torch.cat([crops, self.partner_view[image, view]])
        pixels = padded_pixels(normalize(images[torch.cat([image, partner])]))
        rows = crop_rows(*both.unbind(-1), *images.shape[2:])  # (2B, H, W): own, then partner
        if self.box is None:
            x = pixels_at(pixels, rows)
            lam = self.lam[image, view][:, None, None, None]
            mixed = torch.lerp(x[n:], x[:n], lam)  # lam * own + (1 - lam) * partner, one pass
        else:
            y0, y1, x0, x1 = (b[:, None, None]
                              for b in self.box[image, view].long().unbind(-1))
            h, w = rows.shape[1:]
            ys = torch.arange(h, device=rows.device)[None, :, None]
            xs = torch.arange(w, device=rows.device)[None, None, :]
            inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
            mixed = pixels_at(pixels, torch.where(inside, rows[n:], rows[:n]))
        return mixed.contiguous(memory_format=torch.channels_last)

    def labels(self, labels: torch.Tensor, image: torch.Tensor, view: torch.Tensor,
               classes: int) -> torch.Tensor:
        """(B, classes) mixed hard labels: lam on the image's label, 1 - lam on its partner's."""
        lam = self.lam[image, view][:, None]
        own = torch.nn.functional.one_hot(labels[image], classes).float()
        other = torch.nn.functional.one_hot(labels[self.partner[image, view].long()],
                                            classes).float()
        return lam * own + (1 - lam) * other
