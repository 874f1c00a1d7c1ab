"""Agreement between raters and confidence intervals for mean scores (pure Python).

Why these statistics: every explanation gets two raters drawn from a pool, so pairs of raters
differ from item to item. Krippendorff's alpha handles that (any number of raters, missing
ratings) and is the study's main figure; quadratic-weighted Cohen's kappa is the familiar one
when exactly two raters rated the same items. Scores are ordinal 1-5, hence the ordinal /
interval metrics. Both are a few lines, checked in the tests against published values and
scikit-learn, so no dependency is added.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Literal

Level = Literal["nominal", "ordinal", "interval"]


def cohen_kappa(
    a: Sequence[int],
    b: Sequence[int],
    weights: Literal[None, "linear", "quadratic"] = "quadratic",
    labels: Sequence[int] = (1, 2, 3, 4, 5),
) -> float:
    """Cohen's kappa of two raters' paired scores (weighted as scikit-learn's
    ``cohen_kappa_score``). NaN when it is undefined (fewer than 2 pairs, no variation)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores needed: {len(a)} vs {len(b)}")
    n = len(a)
    if n < 2:
        return math.nan
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    observed = [[0.0] * k for _ in range(k)]
    for x, y in zip(a, b):
        observed[index[x]][index[y]] += 1
    rows = [sum(r) for r in observed]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]

    def weight(i: int, j: int) -> float:
        if weights is None:
            return 0.0 if i == j else 1.0
        if weights == "linear":
            return abs(i - j)
        return (i - j) ** 2

    disagree = sum(weight(i, j) * observed[i][j] for i in range(k) for j in range(k))
    expected = sum(weight(i, j) * rows[i] * cols[j] / n for i in range(k) for j in range(k))
    if expected == 0:
        return math.nan
    return 1.0 - disagree / expected


def krippendorff_alpha(
    units: Mapping[Hashable, Sequence[float]] | Sequence[Sequence[float]],
    level: Level = "ordinal",
) -> float:
    """Krippendorff's alpha from the values each unit (item) received, any number of raters
    per unit; units with fewer than two values are not pairable and are left out. NaN when
    there is no variation or no pairable unit."""
    values = list(units.values()) if isinstance(units, Mapping) else list(units)
    pairable = [list(v) for v in values if len(v) >= 2]
    n = sum(len(v) for v in pairable)
    if n < 2:
        return math.nan
    # Coincidence matrix o[c][k]
    coincidence: dict[tuple[float, float], float] = defaultdict(float)
    for vals in pairable:
        m = len(vals)
        for i, c in enumerate(vals):
            for j, k in enumerate(vals):
                if i != j:
                    coincidence[(c, k)] += 1.0 / (m - 1)
    totals: Counter[float] = Counter()
    for (c, _), count in coincidence.items():
        totals[c] += count
    categories = sorted(totals)
    if len(categories) < 2:
        return math.nan

    def delta(c: float, k: float) -> float:
        if level == "nominal":
            return 0.0 if c == k else 1.0
        if level == "interval":
            return (c - k) ** 2
        lo, hi = sorted((c, k))  # ordinal: ranks between c and k
        between = sum(totals[g] for g in categories if lo <= g <= hi)
        return (between - (totals[c] + totals[k]) / 2) ** 2

    observed = sum(count * delta(c, k) for (c, k), count in coincidence.items())
    expected = sum(totals[c] * totals[k] * delta(c, k) for c in categories for k in categories) / (
        n - 1
    )
    if expected == 0:
        return math.nan
    return 1.0 - observed / expected


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so reports are reproducible)."""
    values = list(values)
    if not values:
        return (math.nan, math.nan)
    if len(values) == 1:
        return (values[0], values[0])
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    lo = means[int(math.floor(tail * (resamples - 1)))]
    hi = means[int(math.ceil((1 - tail) * (resamples - 1)))]
    return (lo, hi)
