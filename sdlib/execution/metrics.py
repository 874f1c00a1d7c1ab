"""pass@k by the unbiased estimator of Chen et al. (2021)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c correct) is correct:
    1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    result = 1.0
    for i in range(n - c + 1, n + 1):
        result *= 1.0 - k / i
    return 1.0 - result


def mean_pass_at_k(counts: Mapping[str, tuple[int, int]], ks: Iterable[int]) -> dict[str, float]:
    """Mean over tasks of pass@k, for every k that every task has enough samples for."""
    if not counts:
        return {}
    smallest = min(n for n, _ in counts.values())
    out = {}
    for k in ks:
        if k <= smallest:
            out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
    return out
