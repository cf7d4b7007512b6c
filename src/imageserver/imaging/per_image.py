"""DIALS's per-image analysis of a frame's spots: counts, ice rings and resolution estimates.

The nine numbers dials.spot_counts_per_image and Diamond's find_spots_server report, with
DIALS's definitions (dials/algorithms/spot_finding/per_image_analysis.py, 3.12), worked from
each spot's resolution and summed intensity. A spot-finding intensity has no background, so
its variance is the intensity itself (DIALS's summation) and I/σ(I) is √I. The quirks are
kept on purpose, since the point is to give DIALS's numbers: the first shell of the
equal-population binning leaves out the lowest-resolution spot, the lower and upper
percentile points are swapped between the two fits, and so on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

ICE_CELL_A = (4.498, 7.338)
"""Hexagonal ice Ih, P6₃/mmc (DIALS's ice ring positions): a = b, c."""
ICE_RING_WIDTH = 0.004
"""Full width of an ice ring in d*² (Å⁻²), DIALS's per-image default."""
MIN_SPOTS_FOR_RESOLUTION = 11
"""DIALS estimates resolution only with more than 10 spots off the ice rings."""


@dataclass(frozen=True)
class PerImageStats:
    """DIALS's per-image fields; -1 where DIALS gives -1 (≤ 10 spots off the ice rings)."""

    n_spots_total: int
    n_spots_no_ice: int
    n_spots_4A: int  # noqa: N815 (DIALS's field name)
    total_intensity: float
    estimated_d_min: float
    d_min_distl_method_1: float
    d_min_distl_method_2: float
    noisiness_method_1: float
    noisiness_method_2: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def per_image_stats(
    d_a: FloatArray, intensity: FloatArray, *, filter_ice: bool = True
) -> PerImageStats:
    """The per-image fields of spots with resolutions ``d_a`` (Å) and summed ``intensity``.

    Spots at the beam itself (d infinite) are left out first, as DIALS does.
    """
    d_a = np.asarray(d_a, dtype=np.float64)
    intensity = np.asarray(intensity, dtype=np.float64)
    finite = np.isfinite(d_a)
    d_a, intensity = d_a[finite], intensity[finite]
    d_star_sq = 1.0 / (d_a * d_a)
    ice = ice_ring_selection(d_star_sq) if filter_ice else np.zeros(d_a.shape, dtype=bool)
    n_no_ice = int((~ice).sum())
    stats: dict[str, Any] = {
        "n_spots_total": int(d_a.shape[0]),
        "n_spots_no_ice": n_no_ice,
        "n_spots_4A": int((d_a > 4).sum()),
        "total_intensity": float(intensity[~ice].sum()),
    }
    if n_no_ice >= MIN_SPOTS_FOR_RESOLUTION:
        stats["estimated_d_min"] = estimate_resolution_limit(d_star_sq, intensity, ice)
        d1, noise1 = distl_method_1(d_star_sq)
        d2, noise2 = distl_method_2(d_a)
    else:
        stats["estimated_d_min"] = d1 = d2 = noise1 = noise2 = -1.0
    return PerImageStats(
        **stats,
        d_min_distl_method_1=d1,
        d_min_distl_method_2=d2,
        noisiness_method_1=noise1,
        noisiness_method_2=noise2,
    )


@cache
def ice_ring_d_star_sq(d_min_a: float = 0.5) -> FloatArray:
    """d*² of every ice reflection of P6₃/mmc down to ``d_min_a``, sorted (with repeats).

    Absent in P6₃/mmc: hh(−2h)l and its equivalents with l odd. A longer list than DIALS
    generates changes nothing: a ring beyond the spots' range matches none of them.
    """
    a, c = ICE_CELL_A
    limit = 1.0 / (d_min_a * d_min_a)
    h_max = math.ceil(a / d_min_a) + 1
    l_max = math.ceil(c / d_min_a) + 1
    values = []
    for h in range(-h_max, h_max + 1):
        for k in range(-h_max, h_max + 1):
            for ell in range(-l_max, l_max + 1):
                if h == k == ell == 0:
                    continue
                if ell % 2 and (h == k or k == -2 * h or h == -2 * k):
                    continue
                value = 4.0 / 3.0 * (h * h + h * k + k * k) / (a * a) + ell * ell / (c * c)
                if value <= limit:
                    values.append(value)
    return np.sort(np.array(values, dtype=np.float64))


def ice_ring_selection(d_star_sq: FloatArray, width: float = ICE_RING_WIDTH) -> BoolArray:
    """Spots within half the ring width (in d*²) of an ice ring."""
    rings = _unique_rings()
    # Only the rings on either side of a spot can be the nearest: test those two.
    above = np.clip(np.searchsorted(rings, d_star_sq), 1, rings.shape[0] - 1)
    near_below = np.abs(d_star_sq - rings[above - 1]) < width / 2.0
    near_above = np.abs(d_star_sq - rings[above]) < width / 2.0
    return cast(BoolArray, near_below | near_above)


@cache
def _unique_rings() -> FloatArray:
    return np.unique(ice_ring_d_star_sq())


def estimate_resolution_limit(
    d_star_sq: FloatArray, intensity: FloatArray, ice: BoolArray
) -> float:
    """DIALS's estimated_d_min: where ln(I/σ) of the spots falls below the line through the
    upper percentile of each equal-population shell."""
    keep = intensity > 0  # DIALS selects variance > 0; its variance is |I|
    d_star_sq, intensity, ice = d_star_sq[keep], intensity[keep], ice[keep]
    if d_star_sq.shape[0] == 0:
        return -1.0
    d_spacings = 1.0 / np.sqrt(d_star_sq)
    log_i_over_sigi = np.log(intensity / np.sqrt(np.abs(intensity)))
    outliers_all = np.zeros(d_star_sq.shape, dtype=bool)
    lower_y, lower_x, upper_y, upper_x = [], [], [], []
    for d_min, d_max in equal_population_shells(d_star_sq):
        in_shell = (d_spacings < d_max) & (d_spacings >= d_min)
        if not (in_shell & ~ice).any():
            continue
        shell_index = np.flatnonzero(in_shell)
        outliers = wilson_outliers(intensity[shell_index], ice[shell_index])
        outliers_all[shell_index] = outliers
        chosen = shell_index[~outliers & ~ice[shell_index]]
        if chosen.shape[0] == 0:
            continue  # DIALS fails here; an empty shell adds no point
        values, positions = log_i_over_sigi[chosen], d_star_sq[chosen]
        order = np.argsort(values, kind="stable")
        i_lower = order[math.floor(0.1 * order.shape[0])]
        i_upper = order[math.floor(0.9 * order.shape[0])]
        lower_y.append(values[i_lower])
        upper_y.append(values[i_upper])
        upper_x.append(positions[i_lower])
        lower_x.append(positions[i_upper])
    m_upper, c_upper = linear_regression(upper_x, upper_y)
    m_lower, _ = linear_regression(lower_x, lower_y)
    if m_upper == m_lower:
        return -1.0
    # Below the upper line: DIALS tests the sign of x·(−m) + (y − c) (−0 counts as below).
    inside = np.signbit(d_star_sq * -m_upper + (log_i_over_sigi - c_upper))
    inside &= ~outliers_all & ~ice
    if not inside.any():
        return -1.0
    return float(1.0 / math.sqrt(d_star_sq[inside].max()))


def equal_population_shells(d_star_sq: FloatArray) -> list[tuple[float, float]]:
    """(d_min, d_max) of DIALS's binner_equal_population: about 20 spots a shell, 5–20 shells."""
    n_slots = max(min(d_star_sq.shape[0] // 20, 20), 5)
    n_per_bin = d_star_sq.shape[0] / n_slots
    d_sorted = 1.0 / np.sqrt(np.sort(d_star_sq))
    shells = []
    d_max = float(d_sorted[0])
    for i in range(n_slots):
        d_min = float(d_sorted[math.floor((i + 1) * n_per_bin + 0.5) - 1])
        shells.append((d_min, d_max))
        d_max = d_min
    return shells


def wilson_outliers(intensity: FloatArray, ice: BoolArray, p_cutoff: float = 1e-2) -> BoolArray:
    """Spots too bright for a Wilson distribution, rejected iteratively (DIALS's rule)."""
    e_cutoff = math.sqrt(-math.log(p_cutoff))
    outliers = np.zeros(intensity.shape, dtype=bool)
    current = np.arange(intensity.shape[0])
    while current.shape[0]:
        off_ice = intensity[current][~ice[current]]
        if off_ice.shape[0] == 0:
            break
        sigma_n = off_ice.mean()
        new = np.sqrt(intensity[current]) / math.sqrt(sigma_n) >= e_cutoff
        if not new.any():
            break
        outliers[current[new]] = True
        current = current[~new]
    return outliers


def linear_regression(x: list[float], y: list[float]) -> tuple[float, float]:
    """(slope, intercept) of least squares as scitbx computes them, its degenerate cases too."""
    if not x:
        return 0.0, 0.0
    xs, ys = np.array(x), np.array(y)
    n = float(xs.shape[0])
    if xs.min() == xs.max():
        return 0.0, 0.0
    if ys.min() == ys.max():
        return 0.0, float(ys.min())
    sum_x, sum_y = float(xs.sum()), float(ys.sum())
    sum_x2, sum_xy = float((xs * xs).sum()), float((xs * ys).sum())
    dx = max(abs(xs.min() - sum_x / n), abs(xs.max() - sum_x / n))
    dy = max(abs(ys.min() - sum_y / n), abs(ys.max() - sum_y / n))
    if dx == 0:
        return 0.0, 0.0
    if dy == 0:
        return 0.0, sum_y / n
    if dx < dy * 1e-15:
        return 0.0, 0.0
    d = n * sum_x2 - sum_x * sum_x
    if d == 0:
        return 0.0, 0.0
    return (n * sum_xy - sum_x * sum_y) / d, (sum_x2 * sum_y - sum_x * sum_xy) / d


def distl_method_1(d_star_sq: FloatArray) -> tuple[float, float]:
    """DISTL's method 1 (Zhang et al. 2006, §2.4.4) as DIALS implements it: (d_min, noisiness)."""
    d_spacings = 1.0 / np.sqrt(d_star_sq)
    d_star_cubed = np.sqrt(d_star_sq) ** 3
    n = d_star_sq.shape[0]
    step = 2
    while n / step > 40:
        step += 1
    order = np.argsort(-d_spacings, kind="stable")
    picked = order[np.arange(n // step) * step]
    ds3, d_subset = d_star_cubed[picked], d_spacings[picked]
    x = np.arange(ds3.shape[0], dtype=np.float64)
    slopes = (ds3[1:] - ds3[0]) / (x[1:] - x[0])
    skip_first = 3
    p_m = int(np.argmax(slopes[skip_first:])) + 1 + skip_first
    x1 = (0.0, float(ds3[0]))
    x2 = (float(p_m), float(ds3[p_m]))
    v = (x2[1] - x1[1], -(x2[0] - x1[0]))
    length = math.sqrt(v[0] ** 2 + v[1] ** 2)
    v = (v[0] / length, v[1] / length)
    gaps = [0.0]
    for i in range(1, p_m):
        r = (x1[0] - i, x1[1] - float(ds3[i]))
        gaps.append(abs(v[0] * r[0] + v[1] * r[1]))
    s = float(np.std(gaps, ddof=1))
    p_k = int(np.argmax(gaps))
    g_k = gaps[p_k]
    p_g = p_k
    for i in range(p_k + 1, len(gaps)):
        if gaps[i] > g_k - 0.5 * s:
            p_g = i
    m = ds3.shape[0]
    later = np.triu(np.ones((m - 1, m - 1), dtype=bool), k=1)  # pairs i < j
    noisiness = int((later & (slopes[:, None] >= slopes[None, :])).sum())
    return float(d_subset[p_g]), noisiness / ((m - 1) * (m - 2) / 2)


def distl_method_2(d_a: FloatArray) -> tuple[float, float]:
    """DISTL's method 2 (Zhang et al. 2006, §2.4.4) as DIALS implements it: (d_min, noisiness),
    from spot counts in shells of equal volume in d*³."""
    unique = np.sort(np.unique(d_a))[::-1]
    ds3 = np.array([math.pow(1.0 / d, 3) for d in unique])
    low_res_count = math.ceil(min(max(25, 0.05 * unique.shape[0]), 0.25 * unique.shape[0]))
    bin_step = ds3[low_res_count] - ds3[0]
    n_slots = math.ceil((ds3[-1] - ds3[0]) / bin_step)
    n_slots = max(min(n_slots, 40), 20)
    bin_step = (ds3[-1] - ds3[0]) / n_slots
    shells = []
    ds3_max = ds3[0]
    for i in range(n_slots):
        ds3_min = ds3[0] + (i + 1) * bin_step
        shells.append((1 / ds3_min ** (1 / 3), 1 / ds3_max ** (1 / 3)))
        ds3_max = ds3_min
    d_sorted = np.sort(d_a)
    counts = [
        int(np.searchsorted(d_sorted, d_max) - np.searchsorted(d_sorted, d_min))
        for d_min, d_max in shells
    ]  # the spots with d_min ≤ d < d_max
    t0 = (counts[0] + counts[1]) / 2
    mu = 0.15
    i = 0
    for i in range(len(counts) - 1):
        if counts[i] < mu * t0 and counts[i + 1] < mu * t0:
            break
    d_min = float(shells[i][0])
    m = len(counts)
    shell_counts = np.array(counts)
    later = np.triu(np.ones((m, m), dtype=bool), k=1)  # pairs a < b
    noisiness = int((later & (shell_counts[:, None] <= shell_counts[None, :])).sum())
    return d_min, noisiness / (0.5 * m * (m - 1))
