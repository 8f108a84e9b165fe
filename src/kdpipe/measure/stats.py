"""Statistics across seeds: mean with a t-distribution 95% confidence interval, and paired
gains (method minus baseline on the same seed) with a paired t-test."""
from __future__ import annotations

import math
import statistics

from scipy import stats

ALPHA = 0.05


def summarize(values: list[float]) -> dict:
    """mean, sample std, 95% CI half-width (None with fewer than 2 values)."""
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    ci = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n) if n > 1 else None
    return {"mean": mean, "std": std, "ci95": ci}


def paired_gain(method: list[float], baseline: list[float]) -> dict:
    """Per-seed differences, their mean and 95% CI, and the two-sided paired t-test p-value
    (None with fewer than 2 seeds)."""
    diffs = [m - b for m, b in zip(method, baseline, strict=True)]
    summary = summarize(diffs)
    if len(diffs) < 2:
        p = None
    elif summary["std"] == 0:  # identical differences: t is infinite (or 0/0 when all zero)
        p = 1.0 if summary["mean"] == 0 else 0.0
    else:
        p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return {"diffs": diffs, **summary, "p_value": p}


def verdict(gain: dict | None, p_key: str = "p_value") -> str:
    """The one rule every report calls a gain by: its p-value at `p_key` (p_holm where several
    were tested at once) below ALPHA makes it a gain or a loss, else it is noise, however large;
    with one seed (or no gain at all) there is no test."""
    p = gain.get(p_key) if gain else None
    if p is None:
        return "no test"
    if p < ALPHA:
        return "gain" if gain["mean"] > 0 else "loss"
    return "noise"


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment for testing several hypotheses at once (controls the chance
    of any false 'significant' among them): the i-th smallest of m p-values is multiplied by
    m - i + 1, and adjusted values never decrease with rank. None (no test) stays None."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_by_seed(a: dict[str, float], b: dict[str, float]) -> dict:
    """paired_gain of two models' per-seed scores ({seed: score}) over the seeds both have,
    with how many that is."""
    seeds = sorted(set(a) & set(b))
    return paired_gain([a[s] for s in seeds], [b[s] for s in seeds]) | {"seeds": len(seeds)}
