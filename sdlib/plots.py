"""Plots the notebooks show (and save next to the run's records)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def _figure(ncols: int = 1, width: float = 5.0):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.6), squeeze=False)
    return fig, axes[0]


def bar(ax, counts: Mapping[str, float], title: str, ylabel: str = "count") -> None:
    labels = list(counts)
    ax.bar(range(len(labels)), [counts[k] for k in labels], color="#4C72B0")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)


def filter_overview(
    outcomes: Mapping[str, int],
    feedback: Mapping[str, int],
    success: Mapping[str, Mapping[str, int]],
    save: Path | None = None,
):
    """Outcome mix of initial solutions, what went wrong, refinement success by instruction."""
    fig, (a, b, c) = _figure(3)
    bar(a, dict(sorted(outcomes.items())), "initial solutions: outcome")
    bar(
        b,
        dict(feedback.most_common(8)) if hasattr(feedback, "most_common") else dict(feedback),
        "wrong solutions: feedback kind",
    )
    rates = {m: (v["pass"] / v["total"] if v["total"] else 0.0) for m, v in sorted(success.items())}
    bar(c, rates, "refinements that pass, by instruction", "share")
    c.set_ylim(0, 1)
    fig.tight_layout()
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=110)
    return fig
