"""Stage 2 (method §2): execute every refinement, keep the verified ones.

Outputs (``outputs/<run>/filter/``):

* ``refinements.jsonl``: every refinement record of collection with its ``verdict`` and
  ``feedback`` (no-code answers get a counted ``no_code`` verdict).
* ``sft.jsonl``: correct initial solutions (plain code generation, ``source: "initial"``) and
  correct refinements (``source: "refine" | "expl_refine"``), each as chat ``messages`` plus
  the ``final_answer``; the SFT stage renders them with its tokenizer so that loss falls on
  the final answer only.
* ``rl.jsonl``: all initial solutions and all refinements, success and failure, with
  ``passed``/``total``/``pass_fraction``; refinements also carry the code and explanations
  of the correct refinements of the same wrong solution (the rewards' references).
* ``table.json``: the dataset table per source (method §1).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdlib.data.jsonl import write_jsonl
from sdlib.execution.problems import Problem
from sdlib.execution.sandbox import Sandbox
from sdlib.execution.verdict import Verdict
from sdlib.prompting import prompts
from sdlib.prompting.answers import judge_programs
from sdlib.runs.layout import RunLayout
from sdlib.stages.collect import NEVER_REFINED


def judge_refinements(
    refinements: list[dict[str, Any]],
    problems: dict[str, Problem],
    sandbox: Sandbox,
    progress: bool = True,
) -> list[dict[str, Any]]:
    verdicts = judge_programs(
        sandbox,
        [(problems[r["task_id"]], r.get("program")) for r in refinements],
        [r.get("parse_reason", "") for r in refinements],
        progress="executing refinements" if progress else False,
    )
    return [
        {**record, "verdict": verdict.to_dict(), "feedback": prompts.format_feedback(verdict)}
        for record, verdict in zip(refinements, verdicts, strict=True)
    ]


def sft_records(
    initial: list[dict[str, Any]],
    judged: list[dict[str, Any]],
    problems: dict[str, Problem],
    include_initial_correct: bool = True,
    few_shot: Sequence[Problem] = (),
) -> list[dict[str, Any]]:
    """The SFT set: correct initial solutions + correct refinements of both kinds.

    A correct initial solution is kept in both layouts a first attempt is prompted in, built
    by the functions collection and evaluation prompt with (same few-shot examples): the chat
    (``messages``, for chat models) and the few-shot completion text (``completion_prompt`` +
    ``completion``, for base models). SFT trains the one its model is evaluated in."""
    out = []
    if include_initial_correct:
        for record in initial:
            if record["verdict"]["status"] != "pass":
                continue
            problem = problems[record["task_id"]]
            out.append(
                {
                    "id": record["id"],
                    "source": "initial",
                    "task_id": record["task_id"],
                    "messages": prompts.initial_messages(problem, few_shot),
                    "final_answer": prompts.format_answer(record["code"]),
                    "completion_prompt": prompts.initial_prompt(problem, few_shot, style="base"),
                    "completion": prompts.base_completion(record["code"]),
                    "code": record["code"],
                }
            )
    for record in judged:
        if record["verdict"]["status"] != "pass":
            continue
        out.append(
            {
                "id": record["id"],
                "source": record["mode"],
                "task_id": record["task_id"],
                "parent": record["parent"],
                "messages": record["messages"],
                "final_answer": prompts.format_answer(
                    record["code"], record.get("explanation", "")
                ),
                "code": record["code"],
                "explanation": record.get("explanation", ""),
            }
        )
    return out


def _fraction(verdict: dict[str, Any]) -> float:
    return verdict["passed"] / verdict["total"] if verdict.get("total") else 0.0


def rl_records(initial: list[dict[str, Any]], judged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The RL set: everything, with the references the rewards compare against."""
    correct_by_parent: dict[str, list[dict]] = defaultdict(list)
    for record in judged:
        if record["verdict"]["status"] == "pass":
            correct_by_parent[record["parent"]].append(record)
    out = []
    for record in initial:
        out.append(
            {
                "id": record["id"],
                "kind": "initial",
                "task_id": record["task_id"],
                "code": record["code"],
                "status": record["verdict"]["status"],
                "passed": record["verdict"]["passed"],
                "total": record["verdict"]["total"],
                "pass_fraction": _fraction(record["verdict"]),
                "feedback": record["feedback"],
            }
        )
    for record in judged:
        refs = [c for c in correct_by_parent[record["parent"]] if c["id"] != record["id"]]
        out.append(
            {
                "id": record["id"],
                "kind": "refinement",
                "parent": record["parent"],
                "task_id": record["task_id"],
                "mode": record["mode"],
                "messages": record["messages"],
                "response": record["response"],
                "explanation": record.get("explanation", ""),
                "code": record["code"],
                "status": record["verdict"]["status"],
                "passed": record["verdict"]["passed"],
                "total": record["verdict"]["total"],
                "pass_fraction": _fraction(record["verdict"]),
                "reference_code": [c["code"] for c in refs],
                "reference_explanations": [
                    c["explanation"]
                    for c in refs
                    if c["mode"] == "expl_refine" and c.get("explanation")
                ],
            }
        )
    return out


def dataset_table(
    initial: list[dict[str, Any]], judged: list[dict[str, Any]], source: str
) -> dict[str, Any]:
    """Method §2's table: unique / correct / wrong / correct refinements / rate.

    ``rate`` is the paper's: wrong solutions with a correct refinement over the wrong
    solutions that were sent for refinement. Wrong answers never sent (no code to show, a
    sandbox error, over ``collect.max_wrong_per_problem``) are counted apart, in
    ``wrong_not_refined``; ``rate_of_all_wrong`` divides by every wrong solution instead.
    """
    wrong_ids = {r["id"] for r in initial if r["verdict"]["status"] != "pass"}
    refined = {r["parent"] for r in judged if r["verdict"]["status"] == "pass"} & wrong_ids
    by_mode = Counter(r["mode"] for r in judged if r["verdict"]["status"] == "pass")
    attempted = {r["parent"] for r in judged} & wrong_ids
    not_sent = Counter(
        r["verdict"]["status"] if r["verdict"]["status"] in NEVER_REFINED else "over_limit"
        for r in initial
        if r["id"] in wrong_ids and r["id"] not in attempted
    )
    return {
        "source": source,
        "problems": len({r["task_id"] for r in initial}),
        "unique": len(initial),
        "correct": len(initial) - len(wrong_ids),
        "wrong": len(wrong_ids),
        "wrong_refined": len(attempted),
        "wrong_not_refined": dict(sorted(not_sent.items())),
        "correct_refinements": len(refined),
        "rate": len(refined) / len(attempted) if attempted else 0.0,
        "rate_of_all_wrong": len(refined) / len(wrong_ids) if wrong_ids else 0.0,
        "refinements": len(judged),
        "refinements_correct": sum(by_mode.values()),
        "refinements_correct_by_mode": dict(by_mode),
    }


# Method §1: the share of wrong solutions refined correctly, per source (GPT-3.5 teacher).
PAPER_RATES = {"mbpp": 0.4595, "apps": 0.3921, "codecontests": 0.2607}


def source_tables(
    initial: list[dict[str, Any]], judged: list[dict[str, Any]], benchmark_of: dict[str, str]
) -> dict[str, Any]:
    """The dataset table over all sources (``dataset_table``'s fields, source "all" when
    there are several) and ``by_source``: one table per source with the paper's rate beside
    ours (``paper_rate``, where the paper gives one)."""
    names = sorted({benchmark_of.get(r["task_id"], "unknown") for r in initial})
    by_source = {}
    for name in names:
        mine = [r for r in initial if benchmark_of.get(r["task_id"], "unknown") == name]
        tasks = {r["task_id"] for r in mine}
        part = dataset_table(mine, [r for r in judged if r["task_id"] in tasks], name)
        part["paper_rate"] = PAPER_RATES.get(name)
        by_source[name] = part
    overall = dataset_table(initial, judged, names[0] if len(names) == 1 else "all")
    return {**overall, "by_source": by_source}


def outcome_counts(records: Sequence[dict[str, Any]]) -> Counter:
    return Counter(r["verdict"]["status"] for r in records)


def feedback_kinds(records: Sequence[dict[str, Any]]) -> Counter:
    """What went wrong, by kind: wrong answer, the exception type, timeout, ..."""
    kinds: Counter = Counter()
    for record in records:
        verdict = Verdict.from_dict(record["verdict"])
        if verdict.ok:
            continue
        if verdict.status == "fail":
            kinds["wrong answer"] += 1
        elif verdict.status == "error":
            kinds[verdict.error_type or "error"] += 1
        else:
            kinds[verdict.status] += 1
    return kinds


def success_by_mode(judged: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for record in judged:
        entry = out.setdefault(record["mode"], {"total": 0, "pass": 0})
        entry["total"] += 1
        entry["pass"] += int(record["verdict"]["status"] == "pass")
    return out


def write_outputs(folder: Path, judged, sft, rl, table) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    layout = RunLayout(folder.parent)
    write_jsonl(layout.judged_refinements, judged)
    write_jsonl(layout.sft_set, sft)
    write_jsonl(layout.rl_set, rl)
    layout.filter_table.write_text(json.dumps(table, indent=2))
