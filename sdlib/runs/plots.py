"""Plots the notebooks show (and save next to the run's records)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


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


def _save(fig, save: Path | None) -> None:
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=110)


SETTING_STYLES = {"refine": "--", "expl_refine": "-", "resample": ":"}


def pass_by_round(summary: Mapping, save: Path | None = None):
    """pass@1 after each refinement round against resampling with the same number of calls,
    one panel per benchmark, one colour per model."""
    import matplotlib.pyplot as plt

    benchmarks = summary["benchmarks"]
    fig, axes = _figure(len(benchmarks), width=4.0)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, benchmark in zip(axes, benchmarks):
        for index, (model, per_benchmark) in enumerate(summary["results"].items()):
            result = per_benchmark.get(benchmark)
            if not result:
                continue
            for setting, rounds in result["by_round"].items():
                values = [100 * r.get("pass@1", float("nan")) for r in rounds]
                ax.plot(
                    range(len(values)),
                    values,
                    SETTING_STYLES.get(setting, "-."),
                    marker="o",
                    color=colours[index % len(colours)],
                    label=f"{model} · {setting}",
                )
        name, _, split = benchmark.partition(":")
        seen = split == "train"
        ax.set_title(f"{name} {split}\n(seen in training)" if seen else benchmark, fontsize=9)
        ax.set_xlabel("round (model calls per sample − 1)")
        ax.set_ylabel("pass@1 (%)")
        ax.set_xticks(range(summary["rounds"] + 1))
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, save)
    return fig


def refinement_rates(summary: Mapping, save: Path | None = None):
    """Share of wrong samples fixed in round 1, per model (stage) and setting, averaged over
    benchmarks weighted by wrong samples."""
    import numpy as np

    models = list(summary["results"])
    settings = [s for s in summary["settings"] if s != "init"]
    fig, (ax,) = _figure(1, width=max(5.0, 1.6 * len(models)))
    width = 0.8 / max(len(settings), 1)
    for i, setting in enumerate(settings):
        values = []
        for model in models:
            fixed = wrong = 0.0
            for result in summary["results"][model].values():
                n_wrong = result["samples"] - result["status_counts"].get("pass", 0)
                fixed += result["refinement_rate"].get(setting, 0.0) * n_wrong
                wrong += n_wrong
            values.append(100 * fixed / wrong if wrong else 0.0)
        ax.bar(np.arange(len(models)) + i * width, values, width, label=setting)
    ax.set_xticks(np.arange(len(models)) + width * (len(settings) - 1) / 2, models)
    ax.set_ylabel("wrong samples fixed in round 1 (%)")
    ax.set_title("success refinement rate by stage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, save)
    return fig


def plot_rewards(metrics: Sequence[dict[str, Any]], save: Path | None = None):
    """Mean R_code, R_expl and their sum per step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = [m["step"] for m in metrics]
    for key, label in (
        ("reward_mean", "R_code + R_expl"),
        ("r_code_mean", "R_code"),
        ("r_expl_mean", "R_expl (Expl.+Refine)"),
    ):
        pts = [(s, m[key]) for s, m in zip(steps, metrics) if m.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("PPO step")
    ax.set_ylabel("mean reward")
    ax.set_ylim(-5.2, 5.2)
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title("RL: mean reward per step")
    fig.tight_layout()
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=110)
    return fig
