"""Axis scales, limits and colour scales chosen from the data, and the points left off the chart.

The rules, shared by every figure of the project:
- a positive quantity spanning more than `LOG_DECADES` decades (losses, learning rates, tolerances, step
  counts) gets a log axis; a non-negative one with zeros and positive values spanning that much gets symlog;
- an extreme point so far from the others that drawing it would squash them into less than a quarter of
  the axis (`SQUASH`) is an outlier: a log axis is used when that removes the squash (nothing hidden),
  otherwise the axis stops short of it and the point is drawn on the edge with an arrow and its value;
- colours follow the same plan: by the log of the value on a log axis, clipped at the limits otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from matplotlib import colors as mcolors

LOG_DECADES = 2.0
SQUASH = 3.0
PAD = 0.05  # of the shown span, beyond the last point kept on the chart
OFF_CHART_GID = "off-chart"  # the gid of every artist that marks a point beyond the axis limits


@dataclass(frozen=True)
class AxisPlan:
    """How one axis shows a set of values: its scale and, when outliers are left off, its limits."""

    scale: str = "linear"  # linear | log | symlog
    low: float | None = None  # set only when values below it are left off the chart
    high: float | None = None  # set only when values above it are left off the chart
    linthresh: float | None = None  # symlog: the linear range around zero

    @property
    def clips(self) -> bool:
        return self.low is not None or self.high is not None

    def above(self, values: Iterable[float]) -> np.ndarray:
        v = as_array(values)
        return np.isfinite(v) & (v > self.high) if self.high is not None else np.zeros(v.shape, bool)

    def below(self, values: Iterable[float]) -> np.ndarray:
        v = as_array(values)
        return np.isfinite(v) & (v < self.low) if self.low is not None else np.zeros(v.shape, bool)

    def placed(self, values: Iterable[float]) -> np.ndarray:
        """The values with those off the chart moved onto its edge (NaN stays NaN: a gap in a line)."""
        v = as_array(values).copy()
        v[self.above(v)] = self.high
        v[self.below(v)] = self.low
        return v


def as_array(values: Iterable[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def finite(values: Iterable[float | None]) -> np.ndarray:
    v = as_array(values)
    return v[np.isfinite(v)]


def decades(values: np.ndarray) -> float:
    """How many powers of ten positive `values` span."""
    return float(np.log10(values.max() / values.min())) if values.size else 0.0


def _outlier_bounds(t: np.ndarray, squash: float, floor: float) -> tuple[float, float] | None:
    """The (low, high) range of the points kept, when extreme points of `t` would squash the rest; else None.

    A group of the k highest (or lowest) points is cut when its gap to the others is more than `squash`
    times the span of the others (at least `floor`); the smallest such group is cut, from either end, at
    most a quarter of the points in all and always leaving two."""
    s = np.sort(t)
    n = len(s)
    lo, hi = 0, n - 1
    budget = max(1, n // 4)
    changed = True
    while changed and budget > 0:
        changed = False
        for k in range(1, budget + 1):  # the k highest points
            if hi - k < lo + 1:
                break
            if s[hi - k + 1] - s[hi - k] > squash * max(s[hi - k] - s[lo], floor):
                hi, budget, changed = hi - k, budget - k, True
                break
        for k in range(1, budget + 1):  # the k lowest points
            if lo + k > hi - 1:
                break
            if s[lo + k] - s[lo + k - 1] > squash * max(s[hi] - s[lo + k], floor):
                lo, budget, changed = lo + k, budget - k, True
                break
    return None if (lo, hi) == (0, n - 1) else (float(s[lo]), float(s[hi]))


def plan_axis(
    values: Iterable[float | None], log_decades: float = LOG_DECADES, squash: float = SQUASH, clip: bool = True
) -> AxisPlan:
    """The scale and limits for `values` (NaN, inf and None ignored) by the module's rules."""
    v = finite(values)
    if v.size == 0:
        return AxisPlan()
    positive = bool((v > 0).all())
    if positive:
        logs = np.log10(v)
        log_outliers = _outlier_bounds(logs, squash, floor=0.1)
        if decades(v) > log_decades:
            return _clipped("log", logs, log_outliers, clip) if log_outliers else AxisPlan("log")
        linear_outliers = _outlier_bounds(v, squash, floor=0.1 * abs(float(np.median(v))))
        if linear_outliers is None:
            return AxisPlan()
        if log_outliers is None:
            return AxisPlan("log")  # a log axis shows the outlier without squashing the rest
        return _clipped("linear", v, linear_outliers, clip)
    nonzero = v[v > 0]
    if (v >= 0).all() and nonzero.size and decades(nonzero) > log_decades:
        return AxisPlan("symlog", linthresh=float(nonzero.min()))
    linear_outliers = _outlier_bounds(v, squash, floor=0.1 * max(abs(float(np.median(v))), 1e-12))
    return _clipped("linear", v, linear_outliers, clip) if linear_outliers else AxisPlan()


def _clipped(scale: str, t: np.ndarray, bounds: tuple[float, float], clip: bool) -> AxisPlan:
    """Limits a little beyond `bounds` (in the axis' own space `t`: log10 for log axes) on the sides cut."""
    if not clip:
        return AxisPlan(scale)
    low, high = bounds
    pad = PAD * ((high - low) or abs(high) or 1.0)
    new_low = low - pad if t.min() < low else None
    new_high = high + pad if t.max() > high else None
    if scale == "log":
        new_low = None if new_low is None else 10**new_low
        new_high = None if new_high is None else 10**new_high
    return AxisPlan(scale, new_low, new_high)


def apply_axis(ax, plan: AxisPlan, axis: str = "y") -> None:
    """Set the scale and the limits of the planned side(s) on `ax` (the other side stays automatic)."""
    set_scale = ax.set_yscale if axis == "y" else ax.set_xscale
    if plan.scale == "symlog":
        set_scale("symlog", linthresh=plan.linthresh)
    else:
        set_scale(plan.scale)
    if plan.clips:
        (ax.set_ylim if axis == "y" else ax.set_xlim)(**bottom_top(plan, axis))


def bottom_top(plan: AxisPlan, axis: str) -> dict[str, float]:
    keys = ("bottom", "top") if axis == "y" else ("left", "right")
    return {k: v for k, v in zip(keys, (plan.low, plan.high), strict=True) if v is not None}


def mark_off_chart(ax, xs: Iterable[float], ys: Iterable[float], plan: AxisPlan, color="black", **style) -> list:
    """Draw each point of (xs, ys) beyond the planned y limits on the edge, with an arrow and its value."""
    x, y = as_array(xs), as_array(ys)
    artists = []
    for mask, edge, arrow, va in ((plan.above(y), plan.high, "↑", "bottom"), (plan.below(y), plan.low, "↓", "top")):
        if not mask.any():
            continue
        points = ax.scatter(x[mask], [edge] * int(mask.sum()), color=color, clip_on=False, zorder=5, **style)
        points.set_gid(OFF_CHART_GID)
        artists.append(points)
        for xi, yi in zip(x[mask], y[mask], strict=True):
            label = ax.annotate(
                f"{arrow} {yi:.3g}",
                (xi, edge),
                xytext=(0, 5 if va == "bottom" else -5),
                textcoords="offset points",
                ha="center",
                va=va,
                fontsize=7,
                color=color,
                annotation_clip=False,
            )
            label.set_gid(OFF_CHART_GID)
            artists.append(label)
    return artists


def color_norm(plan: AxisPlan, values: Iterable[float | None]) -> tuple[mcolors.Normalize, str]:
    """A colour scale for `values` that follows `plan` (log colours on a log axis, clipped at its limits),
    and the colourbar's `extend` ("neither", "min", "max", "both") for the values beyond the limits."""
    v = finite(values)
    if v.size == 0:
        return mcolors.Normalize(0, 1), "neither"
    low = plan.low if plan.low is not None else float(v.min())
    high = plan.high if plan.high is not None else float(v.max())
    if high <= low:
        high = low * 1.1 if plan.scale == "log" else low + 1.0
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (plan.low is not None, plan.high is not None)
    ]
    if plan.scale == "log":
        return mcolors.LogNorm(low, high, clip=True), extend
    if plan.scale == "symlog":
        return mcolors.SymLogNorm(plan.linthresh or 1.0, vmin=low, vmax=high, clip=True), extend
    return mcolors.Normalize(low, high, clip=True), extend
