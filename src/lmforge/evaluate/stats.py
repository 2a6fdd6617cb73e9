"""Summary statistics of per-item scores: the mean with its standard error, and a seeded bootstrap
confidence interval (numpy, no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and its standard error (sample standard deviation / sqrt(n), as lm-eval's
    `mean_stderr`); the error is None below two values, and the mean NaN for none."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def bootstrap_ci(values: Sequence[float], resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float, float]:
    """A percentile bootstrap interval of the mean: (standard deviation of the resampled means, low,
    high). The same values, resamples and seed give the same interval; NaNs for no values."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)  # (resamples,)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(means.std(ddof=1)) if resamples > 1 else 0.0, float(low), float(high)
