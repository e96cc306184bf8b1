"""The two measures of Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018, section 3 and Fig. 2),
between two projections of the same row: the Spearman rank correlation of their absolute maps and the structural
similarity (SSIM, Wang et al. 2004) of the normalised absolute maps (``zf.experiments.sanity`` says the choices)."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr


def abs_map(projection: np.ndarray) -> np.ndarray:
    """(..., 3, h, w) -> (..., h, w): the per-pixel magnitude summed over colour channels."""
    return np.abs(np.asarray(projection, np.float64)).sum(-3)


def normalise_map(m: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """(h, w) -> [0, 1]: (m - min) / (percentile - min), clipped (Adebayo et al.'s display normalisation); a
    constant map gives zeros."""
    m = np.asarray(m, np.float64)
    lo, hi = m.min(), np.percentile(m, percentile)
    if not hi > lo:
        hi = m.max()
    if not hi > lo:
        return np.zeros_like(m)
    return np.clip((m - lo) / (hi - lo), 0.0, 1.0)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5, truncate: float = 3.5,
         k1: float = 0.01, k2: float = 0.03) -> float:
    """The mean structural similarity of two (h, w) maps (Wang et al. 2004), with Gaussian-weighted local
    statistics (``sigma``; population variances), as scikit-image's ``structural_similarity(a, b,
    gaussian_weights=True, use_sample_covariance=False, data_range=...)`` computes it: filter with
    ``scipy.ndimage.gaussian_filter`` (mode ``reflect``), then average the SSIM map over the pixels at least
    (window - 1) / 2 from the border (the window is 11 for sigma 1.5); a map too small for that keeps every pixel."""

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim: two (h, w) maps of one shape, got {a.shape} and {b.shape}")
    f = lambda v: gaussian_filter(v, sigma=sigma, truncate=truncate)  # noqa: E731
    ua, ub = f(a), f(b)
    vaa, vbb, vab = f(a * a) - ua * ua, f(b * b) - ub * ub, f(a * b) - ua * ub
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (vaa + vbb + c2))
    pad = (2 * int(truncate * sigma + 0.5)) // 2
    if min(a.shape) > 2 * pad:
        s = s[pad:-pad, pad:-pad]
    return float(s.mean())


def similarity(trained: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(Spearman rank correlation of the absolute maps, SSIM of the normalised absolute maps) between two
    projections (3, h, w); NaN for both when either map is zero everywhere (or constant: no ranks)."""

    a, b = abs_map(trained), abs_map(other)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    return float(spearmanr(a.ravel(), b.ravel())[0]), ssim(normalise_map(a), normalise_map(b))


__all__ = ["abs_map", "normalise_map", "ssim", "similarity"]
