"""The records one stage hands to the next, and the one reader that checks them.

A stage that reads another's output gets each record checked against its contract: a line
that is not JSON, or a record without a field the reader needs, is an error that names the
file and the line (never a KeyError three functions later, never a line silently dropped).
Only the fields later stages read are required; writers add more (see each stage's module).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypedDict

from sdlib.data.jsonl import BadLine, iter_jsonl
from sdlib.data.resumable import MARKER


class VerdictFields(TypedDict):
    status: str
    passed: int
    total: int


class InitialRecord(TypedDict):
    """collect/initial.jsonl: one unique initial solution (collect → filter, RL, explorer)."""

    id: str
    task_id: str
    code: str | None
    program: str | None
    verdict: VerdictFields
    feedback: str


class RefinementRecord(TypedDict):
    """collect/refinements.jsonl: one teacher answer to a wrong solution (collect → filter)."""

    id: str
    parent: str
    task_id: str
    mode: str  # "refine" | "expl_refine"
    messages: list
    response: str
    code: str | None
    program: str | None


class SFTRecord(TypedDict):
    """filter/sft.jsonl: one training example (filter → SFT)."""

    id: str
    source: str  # "initial" | "refine" | "expl_refine"
    task_id: str
    messages: list  # the prompt's chat
    final_answer: str  # what the loss is on


class RLRecord(TypedDict):
    """filter/rl.jsonl: an initial solution or a judged refinement (filter → RL)."""

    id: str
    kind: str  # "initial" | "refinement"
    task_id: str
    code: str | None
    status: str


class _EvalSampleExtras(TypedDict, total=False):
    solution: str  # the program executed (the bare prompt when there was no code)
    no_code: bool


class EvalSampleRecord(_EvalSampleExtras):
    """eval/<model>/<benchmark>/initial.jsonl: one sampled answer with its verdict
    (eval → its report, the human study)."""

    id: str
    task_id: str
    code: str | None
    verdict: VerdictFields
    feedback: str


class EvalRoundRecord(TypedDict):
    """eval/<model>/<benchmark>/round<r>.jsonl: one refinement (or fresh sample) of a chain
    (eval → its report)."""

    id: str
    root: str  # the sample whose chain this is
    parent: str
    task_id: str
    mode: str  # "refine" | "expl_refine" | "resample"
    round: int
    verdict: VerdictFields


class StudyItemRecord(TypedDict):
    """human_study/<study>/items.jsonl: what a rater sees (no model name)."""

    item: str
    task_id: str
    text: str
    code: str
    feedback: str
    explanation: str


class StudyKeyRecord(TypedDict):
    """human_study/<study>/key.jsonl: the blinding key, item → model (not for raters)."""

    item: str
    model: str
    refined_status: str


class RecordError(ValueError):
    """A records file that breaks its contract, with the file and line."""


def check(record: Any, contract: type, where: str) -> None:
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a {contract.__name__} must be a JSON object")
    missing = sorted(k for k in contract.__required_keys__ if k not in record)
    if missing:
        raise RecordError(
            f"{where}: a {contract.__name__} needs {', '.join(missing)} "
            f"(the line has {', '.join(sorted(record)) or 'nothing'}); was the file written "
            "by another sdlib version, or edited by hand?"
        )


def read_records(
    path: str | os.PathLike[str], contract: type, resumable: bool = False, missing_ok: bool = False
) -> list[dict[str, Any]]:
    """Every record of a file, checked. ``resumable``: a stage's ResumableLog, of which only
    committed units count (a torn line after the last commit is a killed run's, not an
    error). ``missing_ok``: a file not written yet holds no records."""
    path = Path(path)
    if missing_ok and not path.exists():
        return []
    rows = list(iter_jsonl(path))
    committed = {r[MARKER] for _, r in rows if isinstance(r, dict) and MARKER in r}
    last_marker = max((n for n, r in rows if isinstance(r, dict) and MARKER in r), default=0)
    out = []
    for number, row in rows:
        where = f"{path}:{number}"
        if isinstance(row, BadLine):
            if resumable and number > last_marker:
                continue  # the unfinished unit of a killed run: dropped on resume
            raise RecordError(f"{where}: not a JSON object ({row.error})")
        if resumable and (MARKER in row or row.get("_unit") not in committed):
            continue
        check(row, contract, where)
        out.append(row)
    return out
