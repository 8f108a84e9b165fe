"""Counter-based randomness: a value per (seed, a, b) that needs no RNG state, so that a view,
its partner or its mixing weight is the same on every device, in every stage and after any
resume."""
from __future__ import annotations

import numpy as np


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


def uniform(h: np.ndarray) -> np.ndarray:
    """uint64 hashes -> floats in [0, 1) (their top 53 bits)."""
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53
