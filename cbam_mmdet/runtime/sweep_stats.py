"""Statistics of a multi-seed comparison (``tools/analysis/compare.py``).

Each variant of a sweep is trained once per seed. A variant is summarised by the mean and the
sample standard deviation of its runs; it is compared with the baseline through the differences
of runs that share a seed (paired: the seed fixes the initialisation and the data order of both
sides), whose mean gets a percentile bootstrap confidence interval.
"""
from typing import Dict, Optional, Sequence

import numpy as np


def summarize(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (ddof=1) of ``values``.

    Args:
        values (Sequence[float]): One number per run.

    Returns:
        dict: ``n``, ``mean`` (None without values) and ``std`` (None for fewer than 2 values).
    """
    data = np.asarray(values, dtype=np.float64)
    return dict(n=int(data.size),
                mean=float(data.mean()) if data.size else None,
                std=float(data.std(ddof=1)) if data.size > 1 else None)


def bootstrap_mean_interval(values: Sequence[float],
                            confidence: float = 0.95,
                            num_resamples: int = 10000,
                            seed: int = 0) -> tuple:
    """Percentile bootstrap interval of the mean of ``values``.

    ``num_resamples`` resamples of len(values) values drawn with replacement; the interval spans
    the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of their means. The generator is
    seeded, so the same values give the same interval.

    Args:
        values (Sequence[float]): At least 2 numbers.
        confidence (float): Coverage in (0, 1). Defaults to 0.95.
        num_resamples (int): Bootstrap resamples. Defaults to 10000.
        seed (int): Seed of the resampling. Defaults to 0.

    Returns:
        tuple: (low, high).
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        raise ValueError(f'a bootstrap interval needs at least 2 values, got {data.size}')
    if not 0 < confidence < 1:
        raise ValueError(f'confidence must be in (0, 1), got {confidence}')
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(num_resamples, data.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def paired_difference(baseline: Dict[int, float],
                      variant: Dict[int, float],
                      confidence: float = 0.95,
                      num_resamples: int = 10000,
                      seed: int = 0) -> Optional[dict]:
    """``variant - baseline`` over the seeds both have, with a bootstrap interval of its mean.

    Args:
        baseline (dict[int, float]): The baseline's metric per seed.
        variant (dict[int, float]): The variant's metric per seed.
        confidence, num_resamples, seed: See :func:`bootstrap_mean_interval`.

    Returns:
        dict | None: ``seeds`` (sorted), ``differences`` (per seed), ``n``, ``mean``, ``ci_low``
        and ``ci_high`` (None with fewer than 2 pairs: one pair says nothing about the spread);
        None when no seed has both runs.
    """
    seeds = sorted(set(baseline) & set(variant))
    if not seeds:
        return None
    differences = [variant[s] - baseline[s] for s in seeds]
    low = high = None
    if len(seeds) > 1:
        low, high = bootstrap_mean_interval(differences, confidence, num_resamples, seed)
    return dict(seeds=seeds, differences=differences, n=len(seeds),
                mean=float(np.mean(differences)), ci_low=low, ci_high=high)
