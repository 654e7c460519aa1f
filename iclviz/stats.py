"""Statistics for comparing conditions on the same prompts (scipy, no hand-written formulas).

- ``proportion_ci``: Wilson interval of an accuracy (``scipy.stats.binomtest``).
- ``mcnemar_exact``: two conditions' correctness on the same prompts; exact two-sided test on the
  discordant prompts (``binomtest(b, b + c, 0.5)``).
- ``paired_bootstrap``: mean of per-prompt differences with a bootstrap interval
  (``scipy.stats.bootstrap``).
- ``unit_bootstrap``: percentile intervals of several statistics from one set of resamples of paired
  units (e.g. every condition's bias over the same test prompts).
- ``empirical_p``: where an observed effect falls in a null distribution of random draws.
- ``format_p``: a p-value as printed.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats


def proportion_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson interval for ``k`` successes in ``n`` trials (NaN when n is 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test of two conditions on the same prompts.

    ``b``: prompts right under A and wrong under B; ``c``: the reverse. p is 1 when no prompt
    is discordant (nothing separates the conditions).
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError("paired conditions need the same prompts")
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    p = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {"a_only": b, "b_only": c, "discordant": b + c, "p": p}


def paired_bootstrap(diff, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float,
                                                                                                      float]:
    """Mean of per-prompt differences and its bootstrap interval (percentile method)."""
    d = np.asarray(diff, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(d.mean())
    if len(d) < 2 or np.allclose(d, d[0]):
        return mean, mean, mean
    res = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                          rng=np.random.default_rng(seed))
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_ci(values, statistic, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
                 ) -> tuple[float, float]:
    """Bootstrap interval of any statistic of one sample (e.g. a bias reduction over prompts)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float("nan"), float("nan")
    res = stats.bootstrap((v,), statistic, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else (float("nan"), float("nan"))


def unit_bootstrap(n_units: int, statistic, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals of a vector of statistics of ``n_units`` paired units (e.g. test prompts).

    ``statistic(idx)`` gets the indices of one resample (units drawn with replacement) and returns a
    vector; every entry is computed on the same resamples, so differences between conditions measured on
    the same units are paired. Entries that are not finite on some resample get NaN intervals; a statistic
    equal in every resample gets an interval of one point."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((np.arange(n_units),), lambda i: np.asarray(statistic(i.astype(int)), dtype=float),
                              vectorized=False, confidence_level=confidence, n_resamples=n_resamples,
                              method="percentile", rng=np.random.default_rng(seed))
    lo, hi = np.asarray(res.confidence_interval.low, float), np.asarray(res.confidence_interval.high, float)
    bad = ~(np.isfinite(lo) & np.isfinite(hi))
    lo[bad], hi[bad] = np.nan, np.nan
    return lo, hi


def format_p(p: float) -> str:
    """A p-value as printed after "p": "= 0.203", or "< 0.001" (a permutation p is never 0)."""
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def empirical_p(observed: float, null) -> dict:
    """One-sided empirical p-value of ``observed`` against draws ``null`` (large = extreme).

    ``p = (1 + #{null >= observed}) / (1 + n)``, so it is never 0; ``percentile`` is the share of
    draws strictly below the observed value, in percent.
    """
    v = np.asarray(null, dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0 or not math.isfinite(observed):
        return {"p": float("nan"), "percentile": float("nan"), "draws": n}
    return {"p": float((1 + (v >= observed).sum()) / (1 + n)), "percentile": float(100 * (v < observed).mean()),
            "draws": n}
