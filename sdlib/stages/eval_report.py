"""Stage 5's numbers, from the records alone: pass@k per setting and round, the success
refinement rate, model calls and tokens, and the paper's Table 2 beside them.

Kept apart from generation and execution (``refinement_eval``) so that a summary can be
recomputed, or compared with EvalPlus on the exported samples, without running anything.

A failed sample is replaced by its refinement (method §5): after round r of a setting, a
sample counts as correct when it passed at round 0 or its chain passed by round r. Round 1
is the paper's Table 2; ``resample`` is the same number of model calls spent on fresh
samples instead of refinements.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sdlib.data.records import EvalRoundRecord, EvalSampleRecord, read_records
from sdlib.execution.metrics import mean_pass_at_k
from sdlib.runs.layout import RunLayout
from sdlib.runs.params import RunParams

KS = (1, 10)
SETTING_NAMES = {
    "init": "Init",
    "refine": "Refine",
    "expl_refine": "Expl.+Refine",
    "resample": "Resample (same calls)",
}
BENCHMARK_NAMES = {
    "mbpp": "MBPP",
    "humaneval": "HumanEval",
    "mbpp+": "MBPP+",
    "humaneval+": "HumanEval+",
    "apps": "APPS",
    "codecontests": "CodeContests",
}
STAGE_NAMES = {"base": "Prompt", "sft": "SFT", "rl": "RL"}
SEEN = "seen in training: checks the mechanics, not the method"


def benchmark_label(entry: str) -> str:
    """How tables and plots name an eval set: "MBPP", or "MBPP train (seen in training: ...)"
    for another split, so it is never mistaken for a benchmark score."""
    name, _, split = entry.partition(":")
    label = BENCHMARK_NAMES.get(name, name)
    if not split:
        return label
    return f"{label} {split} ({SEEN})" if split == "train" else f"{label} {split}"


# method.md, the paper's Table 2 for CodeLlama-7B: pass@1, pass@10 in percent.
PAPER_TABLE2 = {
    "CodeLlama-7B": {
        ("base", "init"): {"mbpp": (38.21, 67.24), "humaneval": (34.27, 69.60), "mbpp+": (37.18, 61.23), "humaneval+": (27.40, 60.81)},
        ("base", "expl_refine"): {"mbpp": (43.42, 72.09), "humaneval": (40.13, 74.95), "mbpp+": (42.46, 67.41), "humaneval+": (32.49, 66.58)},
        ("sft", "init"): {"mbpp": (48.87, 70.89), "humaneval": (36.99, 69.95), "mbpp+": (42.97, 62.69), "humaneval+": (30.76, 62.52)},
        ("sft", "expl_refine"): {"mbpp": (57.98, 77.92), "humaneval": (52.98, 82.22), "mbpp+": (51.55, 70.94), "humaneval+": (47.62, 75.54)},
        ("rl", "init"): {"mbpp": (46.54, 71.54), "humaneval": (39.38, 71.84), "mbpp+": (41.46, 63.68), "humaneval+": (33.95, 65.98)},
        ("rl", "expl_refine"): {"mbpp": (57.92, 78.97), "humaneval": (55.84, 84.14), "mbpp+": (52.90, 71.80), "humaneval+": (50.04, 78.25)},
    }
}  # fmt: skip
# Success refinement rate, CodeLlama-7B, Expl.+Refine (percent).
PAPER_REFINEMENT_RATE = {"CodeLlama-7B": {"base": 8.10, "sft": 17.60, "rl": 20.84}}


REFINE_MODES = ("refine", "expl_refine")
RESAMPLE = "resample"


def benchmark_dir(run_dir: str | Path, model: str, benchmark: str) -> Path:
    return RunLayout.of(run_dir).eval_setting(model, benchmark)


def settings(params: RunParams) -> list[str]:
    """The round-by-round settings: the refinement modes, then the resampling baseline."""
    modes = [m for m in REFINE_MODES if m in params.eval.modes]
    return modes + ([RESAMPLE] if params.eval.resample_baseline else [])


def _round_log_path(folder: Path, round_: int) -> Path:
    return RunLayout.eval_round(folder, round_)


def load_rounds(folder: Path, rounds: int) -> tuple[list[dict], list[list[dict]]]:
    """(samples, [round 1 records, round 2 records, ...]) as committed."""

    def read(round_: int, contract: type) -> list[dict]:
        path = _round_log_path(folder, round_)
        return read_records(path, contract, resumable=True, missing_ok=True)

    initial = read(0, EvalSampleRecord)
    later = [read(r, EvalRoundRecord) for r in range(1, rounds + 1)]
    return initial, later


def chain_state(
    initial: list[dict], later: list[list[dict]], setting: str, round_: int
) -> dict[str, dict]:
    """Per sample id: the record that stands for its chain after ``round_`` rounds of
    ``setting`` (the sample itself when it passed or was never refined)."""
    state = {s["id"]: s for s in initial}
    for records in later[:round_]:
        for record in records:
            if record["mode"] == setting:
                state[record["root"]] = record
    return state


def paper_model(params: RunParams) -> str | None:
    """The paper model the run's base model is, if any (its numbers are then shown)."""
    name = f"{params.model.path or ''} {params.model.model or ''}".lower()
    if re.search(r"codellama.*7b", name.replace("-", "").replace("_", "")):
        return "CodeLlama-7B"
    return None


def _counts_by_round(
    initial: list[dict], later: list[list[dict]], setting: str
) -> list[dict[str, tuple[int, int]]]:
    """Per round r (0..R): per task, (samples, samples correct after r rounds of setting)."""
    out = []
    for round_ in range(len(later) + 1):
        state = chain_state(initial, later, setting, round_)
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for sample in initial:
            counts[sample["task_id"]][0] += 1
            counts[sample["task_id"]][1] += state[sample["id"]]["verdict"]["status"] == "pass"
        out.append({t: (n, c) for t, (n, c) in counts.items()})
    return out


def benchmark_result(initial: list[dict], later: list[list[dict]], settings: list[str]) -> dict:
    """Everything the table and plots need for one (model, benchmark)."""
    wrong = [s for s in initial if s["verdict"]["status"] != "pass"]
    result: dict[str, Any] = {
        "tasks": len({s["task_id"] for s in initial}),
        "samples": len(initial),
        "samples_per_task": min(Counter(s["task_id"] for s in initial).values(), default=0),
        "status_counts": dict(Counter(s["verdict"]["status"] for s in initial)),
        "no_code": sum(bool(s.get("no_code")) for s in initial),
        "init": mean_pass_at_k(_counts_by_round(initial, [], "init")[0], KS),
        "by_round": {},
        "refinement_rate": {},
        "calls": {},
        "completion_tokens": {},
    }
    base_tokens = sum(s.get("completion_tokens") or 0 for s in initial)
    for setting in settings:
        rounds = _counts_by_round(initial, later, setting)
        result["by_round"][setting] = [mean_pass_at_k(c, KS) for c in rounds]
        result[setting] = result["by_round"][setting][1] if len(rounds) > 1 else result["init"]
        fixed = {
            r["root"]
            for r in (later[0] if later else [])
            if r["mode"] == setting and r["verdict"]["status"] == "pass"
        }
        result["refinement_rate"][setting] = len(fixed) / len(wrong) if wrong else 0.0
        mine = [r for records in later for r in records if r["mode"] == setting]
        result["calls"][setting] = len(initial) + len(mine)
        result["completion_tokens"][setting] = base_tokens + sum(
            r.get("completion_tokens") or 0 for r in mine
        )
    return result


def summarise(params: RunParams, run_dir: str | Path) -> dict[str, Any]:
    """Read every finished (model, benchmark) of the run and compute its numbers."""
    from sdlib.generation.models import model_label

    setting_names = settings(params)
    results: dict[str, dict[str, Any]] = {}
    for entry in params.eval.models:
        label = model_label(entry)
        for benchmark in params.eval.benchmarks:
            folder = benchmark_dir(run_dir, label, benchmark)
            if not RunLayout.eval_round(folder, 0).is_file():
                continue
            initial, later = load_rounds(folder, params.eval.rounds)
            if initial:
                results.setdefault(label, {})[benchmark] = benchmark_result(
                    initial, later, setting_names
                )
    paper = paper_model(params)
    return {
        "benchmarks": list(params.eval.benchmarks),
        "models": list(results),
        "settings": ["init", *setting_names],
        "rounds": params.eval.rounds,
        "samples_per_task": params.eval.samples_per_task,
        "temperature": params.eval.temperature,
        "results": results,
        "paper_model": paper,
        "paper": _paper_rows(paper) if paper else None,
    }


def _paper_rows(paper: str) -> dict[str, Any]:
    return {
        "table2": {
            f"{stage}/{setting}": {b: {"pass@1": v[0], "pass@10": v[1]} for b, v in row.items()}
            for (stage, setting), row in PAPER_TABLE2[paper].items()
        },
        "refinement_rate_expl_refine": PAPER_REFINEMENT_RATE[paper],
    }


def _cell(values: dict[str, float] | None) -> str:
    if not values:
        return "–"
    parts = [f"{100 * values[f'pass@{k}']:.2f}" if f"pass@{k}" in values else "–" for k in KS]
    return " / ".join(parts)


def table2_markdown(summary: dict[str, Any]) -> str:
    """The paper's Table 2 shape: model (stage) × setting rows, benchmark columns of
    pass@1 / pass@10 (percent), with the paper's rows beside ours when the model matches."""
    benchmarks = summary["benchmarks"]
    head = "| model | setting | " + " | ".join(benchmark_label(b) for b in benchmarks)
    lines = [head + " |", "|---|---|" + "---|" * len(benchmarks)]
    paper = (summary.get("paper") or {}).get("table2", {})
    for model, per_benchmark in summary["results"].items():
        for setting in summary["settings"]:
            cells = [_cell(per_benchmark.get(b, {}).get(setting)) for b in benchmarks]
            lines.append(
                f"| {model} | {SETTING_NAMES.get(setting, setting)} | " + " | ".join(cells) + " |"
            )
            row = paper.get(f"{model}/{setting}")
            if row:
                cells = [
                    f"{row[b]['pass@1']:.2f} / {row[b]['pass@10']:.2f}" if b in row else "–"
                    for b in benchmarks
                ]
                who = f"paper {summary['paper_model']} {STAGE_NAMES.get(model, model)}"
                lines.append(f"| {who} | {SETTING_NAMES[setting]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"pass@1 / pass@10 in percent; {summary['samples_per_task']} samples per task at "
        f"T={summary['temperature']}; refinement settings use round 1 (one refinement per "
        "failing sample); Resample spends the same number of model calls on fresh samples."
    )
    return "\n".join(lines)


def refinement_rate_markdown(summary: dict[str, Any]) -> str:
    settings = [s for s in summary["settings"] if s != "init"]
    lines = [
        "| model | benchmark | " + " | ".join(SETTING_NAMES[s] for s in settings) + " |",
        "|---|---|" + "---|" * len(settings),
    ]
    for model, per_benchmark in summary["results"].items():
        for benchmark, result in per_benchmark.items():
            rates = [f"{100 * result['refinement_rate'].get(s, 0.0):.2f}%" for s in settings]
            lines.append(f"| {model} | {benchmark_label(benchmark)} | " + " | ".join(rates) + " |")
    return "\n".join(lines)


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> dict[str, Path]:
    """summary.json, table.md and the two plots, under ``<run_dir>/eval/``."""
    from sdlib.runs import plots

    layout = RunLayout.of(run_dir)
    layout.eval.mkdir(parents=True, exist_ok=True)
    pass_by_round, refinement_rate = layout.eval_plots
    paths = {
        "summary": layout.eval_summary,
        "table": layout.eval_table,
        "pass_by_round": pass_by_round,
        "refinement_rate": refinement_rate,
    }
    paths["summary"].write_text(json.dumps(summary, indent=2))
    paths["table"].write_text(
        "## pass@k (Table 2 shape)\n\n"
        + table2_markdown(summary)
        + "\n\n## Success refinement rate (round 1)\n\n"
        + refinement_rate_markdown(summary)
        + "\n"
    )
    if summary["results"]:
        import matplotlib.pyplot as plt

        plt.close(plots.pass_by_round(summary, save=paths["pass_by_round"]))
        plt.close(plots.refinement_rates(summary, save=paths["refinement_rate"]))
    return paths
