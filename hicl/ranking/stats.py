"""The statistics of an augmentation ranking: intervals over seeds, verdicts, tie groups, Spearman's rho.

For one op with per-seed drops d_1..d_n (the score of the full pipeline minus the score without the
op, same seed), the interval is the normal approximation that the invariance probe uses too:
mean +- 1.96 sd / sqrt(n), sd the sample standard deviation. With the few seeds a pilot study affords
it is narrower than Student's (t_{0.975, n-1} instead of 1.96: 12.7 for two seeds, 4.3 for three), so
`student=True` (`hicl rank-augmentations --interval student`) gives the conservative one. One seed
gives no interval (both ends are the drop itself).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# t_{0.975, df} for df = 1..30 (beyond, the Cornish-Fisher expansion of `t975` is exact to 3 decimals)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
Z975 = 1.959964
Verdict = Literal["needed", "harmful", "unclear"]


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError("t975: df must be at least 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """Mean of `values` over seeds, its 95 % interval [low, high] and the sample sd (0 for one value)."""

    mean: float
    low: float
    high: float
    sd: float
    n: int

    def record(self) -> dict[str, float | int]:
        return {"mean": round(self.mean, 3), "low": round(self.low, 3), "high": round(self.high, 3),
                "sd": round(self.sd, 3), "n": self.n}


def interval(values: Sequence[float], student: bool = False) -> Interval:
    """The 95 % interval of the mean of `values` (at least one): normal approximation, or Student's."""
    if not values:
        raise ValueError("interval: no values")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, mean, mean, 0.0, 1)
    sd = statistics.stdev(values)
    half = (t975(len(values) - 1) if student else Z975) * sd / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, sd, len(values))


def verdict(drop: Interval) -> Verdict:
    """needed: removing the op lowers the score (interval above 0); harmful: removing it raises the score
    (interval below 0); unclear: the interval holds 0. With one seed, the sign of the drop decides."""
    if drop.low > 0:
        return "needed"
    if drop.high < 0:
        return "harmful"
    return "unclear"


def tie_groups(order: Sequence[str], drops: dict[str, Interval], max_groups: int | None = None) -> list[list[str]]:
    """Ops (most important first) in groups: an op joins the current group while its mean drop lies inside
    the interval of the group's first op; at most `max_groups` groups (the rest join the last one)."""
    groups: list[list[str]] = []
    for op in order:
        if groups and drops[op].mean >= drops[groups[-1][0]].low:
            groups[-1].append(op)
        elif max_groups is not None and len(groups) == max_groups:
            groups[-1].append(op)
        else:
            groups.append([op])
    return groups


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties: mean rank); NaN if either is constant."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("spearman: two sequences of the same length, at least 2")
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    norm = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / norm if norm > 0 else float("nan")
