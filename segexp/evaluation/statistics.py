"""Paired statistics for comparing two segmentation systems case by case: pure functions on arrays.

Two systems A and B scored on the same cases give paired scores ``a_i``, ``b_i`` (``i = 1..n``) and differences
``d_i = b_i - a_i`` (positive: B scores higher). The comparison reports

* the mean difference ``d̄ = (1/n) Σ d_i``;
* its percentile bootstrap confidence interval (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993,
  ch. 13): the cases are resampled with replacement ``R`` times, ``d̄*_r`` is the mean of the ``r``-th resample,
  and the interval is the ``(1-c)/2`` and ``(1+c)/2`` quantiles of ``d̄*_1..d̄*_R`` (``c``: the confidence level),
  by :func:`scipy.stats.bootstrap` (``method="percentile"``) with a seeded generator, so a rerun gives the same
  interval;
* the two-sided Wilcoxon signed-rank test of "the differences are symmetric about 0" (Wilcoxon, *Individual
  comparisons by ranking methods*, Biometrics Bulletin 1, 1945): the ranks of ``|d_i|`` (zero differences
  dropped, ties averaged), ``W = Σ_{d_i>0} rank_i``, its p-value by :func:`scipy.stats.wilcoxon` (exact for small
  ``n`` without ties, else the normal approximation). With fewer than :data:`MIN_PAIRS` pairs even the most
  extreme outcome has ``p ≥ 2/2^n > 0.05``, so no p-value is given ("n too small"); when every difference is 0
  there is nothing to test ("no difference").

Per-case paired tests with a bootstrap interval, rather than a comparison of two means, and the spread over
seeds of a system's mean score as a yardstick for "a real difference", follow the practice argued for in
Isensee et al., *nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image Segmentation*, MICCAI 2024.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

#: Fewer pairs than this: the Wilcoxon test cannot reach p < 0.05 (two-sided), no p-value is reported.
MIN_PAIRS = 6
N_TOO_SMALL = "n too small"
NO_DIFFERENCE = "no difference"


@dataclass(frozen=True)
class PairedResult:
    """The comparison of paired scores ``a`` and ``b``: ``n`` pairs, the means, the mean difference ``b - a``, its
    bootstrap interval ``[ci_low, ci_high]`` (NaN for fewer than 2 pairs), the Wilcoxon p-value (None: see
    ``note``, :data:`N_TOO_SMALL` or :data:`NO_DIFFERENCE`)."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _vector(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of per-case scores, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: NaN or infinite values (drop undefined pairs before comparing)")
    return array


def bootstrap_ci(
    differences: ArrayLike, n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``differences`` (cases resampled with replacement,
    ``n_resamples`` times, generator seeded with ``seed``); ``(nan, nan)`` for fewer than 2 values."""
    d = _vector(differences, "differences")
    if d.size < 2:
        return (float("nan"), float("nan"))
    if np.all(d == d[0]):  # every resample has the same mean (scipy warns of a degenerate distribution)
        return (float(d[0]), float(d[0]))
    from scipy.stats import bootstrap

    result = bootstrap(
        (d,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        # random_state: accepted by every scipy segexp allows (>= 1.11; ``rng`` only since 1.15)
        random_state=np.random.default_rng(seed),
    )
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def wilcoxon_p(differences: ArrayLike) -> tuple[float | None, str]:
    """``(p-value, "")`` of the two-sided Wilcoxon signed-rank test of ``differences``, or ``(None, reason)``:
    :data:`N_TOO_SMALL` below :data:`MIN_PAIRS` pairs, :data:`NO_DIFFERENCE` when every difference is 0."""
    d = _vector(differences, "differences")
    if d.size < MIN_PAIRS:
        return None, N_TOO_SMALL
    if not np.any(d):
        return None, NO_DIFFERENCE
    from scipy.stats import wilcoxon

    return float(wilcoxon(d).pvalue), ""


def paired_comparison(
    a: ArrayLike, b: ArrayLike, n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> PairedResult:
    """:class:`PairedResult` of paired per-case scores ``a`` and ``b`` (same length, same case order)."""
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired scores of different lengths: {x.size} and {y.size}")
    if x.size == 0:
        raise ValueError("no paired scores")
    d = y - x
    low, high = bootstrap_ci(d, n_resamples, seed, confidence)
    p, note = wilcoxon_p(d)
    return PairedResult(int(d.size), float(x.mean()), float(y.mean()), float(d.mean()), low, high, p, note)


def mean_sd(values: ArrayLike) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``: ``sqrt(Σ (x_i - x̄)² / (k - 1))``) of ``values``, e.g. one
    system's mean score in each of ``k`` seeds; the sd is NaN for fewer than 2 values."""
    x = _vector(values, "values")
    if x.size == 0:
        raise ValueError("mean_sd of no values")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else float("nan")
