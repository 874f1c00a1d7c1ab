"""Stage 1 (method §1): sample initial solutions, execute them, and ask a teacher to refine
the wrong ones (Refine and Expl.+Refine).

Records are committed one unit at a time (a problem's samples, a batch of wrong solutions'
refinements) through ``ResumableLog``: a run killed at any point resumes where it stopped.

Record contract (``outputs/<run>/collect/``), read by every later stage:

* ``initial.jsonl``: one record per *unique* program of a problem — ``id``, ``task_id``,
  ``benchmark``, ``prompt``, ``response``, ``code`` (None: no usable code), ``program``,
  ``explanation``, ``duplicates`` (identical samples folded into it), ``verdict``
  (``Verdict.to_dict()``), ``feedback`` (the text a refinement prompt shows), ``model``.
* ``refinements.jsonl``: one record per teacher response — ``id``, ``parent`` (an initial
  ``id``), ``task_id``, ``mode`` (``refine`` | ``expl_refine``), ``round``, ``messages`` (the
  chat up to the feedback turn), ``prompt``, ``response``, ``explanation``, ``code``,
  ``program``, ``parse_reason``, ``teacher``, ``finish_reason``, token counts. Refinements are
  executed by the filter stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdlib.data.resumable import ResumableLog
from sdlib.execution.problems import Problem
from sdlib.execution.sandbox import Sandbox
from sdlib.generation.backends import SamplingParams
from sdlib.generation.generator import (
    Generator,
    chat_stop,
    complete,
    initial_request,
    initial_stop,
    seed_for,
)
from sdlib.prompting import prompts
from sdlib.prompting.answers import judge_programs, read_answer
from sdlib.runs.layout import RunLayout
from sdlib.runs.notebook import to_terminal

WRONG_BATCH = 8  # wrong solutions whose refinements are generated together
# Wrong answers never sent for refinement: no code to put in the history, or not judged.
NEVER_REFINED = ("no_code", "sandbox_error")


def sample_initial(
    problems: Sequence[Problem],
    model: Generator,
    sandbox: Sandbox,
    log: ResumableLog,
    few_shot: Sequence[Problem],
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    progress: bool = True,
    problems_per_call: int = 1,
) -> None:
    """Sample, deduplicate and execute initial solutions, one problem per committed unit.

    ``problems_per_call`` problems share one call (and its seed, that of the group's first
    problem); a group with any problem not yet committed is sampled again as a whole, so a
    resumed run gets exactly the text an uninterrupted one would have."""
    from tqdm.auto import tqdm

    groups = [
        problems[i : i + problems_per_call] for i in range(0, len(problems), problems_per_call)
    ]
    todo = [g for g in groups if any(p.key not in log.done for p in g)]
    bar = tqdm(
        total=sum(len(g) for g in todo),
        desc="initial solutions",
        unit="problem",
        disable=not progress,
    )
    total = sum(len(g) for g in todo)
    for done, group in enumerate(todo):
        params = SamplingParams(
            n=n,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            stop=initial_stop(model),
            seed=seed_for(seed, group[0].key),
        )
        requests = [initial_request(problem, few_shot, model) for problem in group]
        outputs = complete(model, requests, params)
        for problem, request, completions in zip(group, requests, outputs, strict=True):
            if problem.key not in log.done:
                _commit_initial(problem, request[1], completions, model, sandbox, log)
            bar.update(1)
        finished = sum(len(g) for g in todo[: done + 1])  # a disabled bar counts nothing
        to_terminal(f"collect: initial solutions of {finished}/{total} problems")
    bar.close()


def _commit_initial(
    problem: Problem,
    prompt: str,
    completions: Sequence[Any],
    model: Generator,
    sandbox: Sandbox,
    log: ResumableLog,
) -> None:
    """Deduplicate one problem's samples, execute them and commit them as one unit."""
    unique: dict[str, dict[str, Any]] = {}
    for index, completion in enumerate(completions):
        answer = read_answer(problem, completion.text)
        program = answer.program
        key = program if program is not None else "\0" + completion.text.strip()
        if key in unique:
            unique[key]["duplicates"] += 1
            continue
        unique[key] = {
            "id": f"{problem.key}/s{index}",
            "kind": "initial",
            "task_id": problem.task_id,
            "benchmark": problem.benchmark,
            "prompt": prompt,
            "response": completion.text,
            "explanation": answer.explanation,
            "code": answer.code,
            "program": program,
            "parse_reason": answer.parse_reason,
            "duplicates": 0,
            "finish_reason": completion.finish_reason,
            "completion_tokens": completion.completion_tokens,
            "model": model.name,
        }
    records = list(unique.values())
    verdicts = judge_programs(
        sandbox,
        [(problem, r["program"]) for r in records],
        [r["parse_reason"] for r in records],
    )
    for record, verdict in zip(records, verdicts, strict=True):
        record["verdict"] = verdict.to_dict()
        record["feedback"] = prompts.format_feedback(verdict)
    log.commit(problem.key, records)


def wrong_solutions(initial: list[dict[str, Any]], max_per_problem: int | None) -> list[dict]:
    """The wrong, executed solutions a teacher is asked to refine (no-code answers have no
    code to put in the history and are left out)."""
    out: list[dict] = []
    per_task: dict[str, int] = {}
    for record in initial:
        if record["verdict"]["status"] == "pass" or record["verdict"]["status"] in NEVER_REFINED:
            continue
        count = per_task.get(record["task_id"], 0)
        if max_per_problem is not None and count >= max_per_problem:
            continue
        per_task[record["task_id"]] = count + 1
        out.append(record)
    return out


def sample_refinements(
    wrong: list[dict[str, Any]],
    problems: dict[str, Problem],
    teacher: Generator,
    log: ResumableLog,
    modes: Sequence[str],
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    progress: bool = True,
) -> None:
    """Ask the teacher for ``n`` refinements of each wrong solution in each mode."""
    from tqdm.auto import tqdm

    # Batches are cut from the whole list, not from what is left, so a resumed run samples
    # exactly the batches (and so exactly the text) that an uninterrupted run would have.
    batches = [wrong[i : i + WRONG_BATCH] for i in range(0, len(wrong), WRONG_BATCH)]
    todo = [b for b in batches if any(w["id"] not in log.done for w in b)]
    bar = tqdm(total=len(wrong), desc="refinements", unit="wrong solution", disable=not progress)
    bar.update(len(wrong) - sum(len(b) for b in todo))
    for position, batch in enumerate(todo):
        jobs = []  # (wrong record, mode, messages, prompt)
        for record in batch:
            problem = problems[record["task_id"]]
            for mode in modes:
                messages = prompts.refine_messages(
                    problem, record["code"], record["feedback"], mode
                )
                prompt = prompts.render_chat(messages, teacher.tokenizer)
                jobs.append((record, mode, messages, prompt))
        params = SamplingParams(
            n=n,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            stop=chat_stop(teacher),
            seed=seed_for(seed, batch[0]["id"]),
        )
        outputs = complete(teacher, [(j[2], j[3]) for j in jobs], params)
        by_parent: dict[str, list[dict]] = {r["id"]: [] for r in batch}
        for (record, mode, messages, prompt), completions in zip(jobs, outputs):
            problem = problems[record["task_id"]]
            for index, completion in enumerate(completions):
                answer = read_answer(problem, completion.text)
                by_parent[record["id"]].append(
                    {
                        "id": f"{record['id']}/{mode}/{index}",
                        "kind": "refinement",
                        "parent": record["id"],
                        "task_id": record["task_id"],
                        "benchmark": record["benchmark"],
                        "mode": mode,
                        "round": 1,
                        "messages": messages,
                        "prompt": prompt,
                        "response": completion.text,
                        "explanation": answer.explanation if mode == "expl_refine" else "",
                        "code": answer.code,
                        "program": answer.program,
                        "parse_reason": answer.parse_reason,
                        "finish_reason": completion.finish_reason,
                        "completion_tokens": completion.completion_tokens,
                        "teacher": teacher.name,
                    }
                )
        for record in batch:
            if record["id"] not in log.done:
                log.commit(record["id"], by_parent[record["id"]])
        bar.update(len(batch))
        refined = len(wrong) - sum(len(b) for b in todo[position + 1 :])
        to_terminal(f"collect: refinements of {refined}/{len(wrong)} wrong solutions")
    bar.close()


def collect_dir(run_dir: str | Path) -> Path:
    return RunLayout.of(run_dir).collect
