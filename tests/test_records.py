"""Typed records between stages (issue 13, item 6): a file that breaks its contract is an
error naming the file and the line, never a KeyError later or a line silently dropped."""

from __future__ import annotations

import json

import pytest

from sdlib.data.records import RecordError, RLRecord, SFTRecord, read_records
from sdlib.data.resumable import ResumableLog

SFT = {"id": "a", "source": "initial", "task_id": "1", "messages": [], "final_answer": "x"}


def test_a_good_file_reads_whole(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(SFT) + "\n\n" + json.dumps({**SFT, "id": "b"}) + "\n")
    assert [r["id"] for r in read_records(path, SFTRecord)] == ["a", "b"]


def test_a_corrupt_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "rl.jsonl"
    path.write_text(json.dumps(SFT) + "\n{not json\n")
    with pytest.raises(RecordError, match=rf"{path}:2: not a JSON object"):
        read_records(path, SFTRecord)


def test_a_missing_field_names_it_and_the_line(tmp_path):
    path = tmp_path / "rl.jsonl"
    path.write_text(json.dumps({"id": "a", "kind": "initial", "task_id": "1"}) + "\n")
    with pytest.raises(RecordError, match=rf"{path}:1: a RLRecord needs code, status"):
        read_records(path, RLRecord)


def test_a_resumable_log_counts_committed_units_and_forgives_a_torn_tail(tmp_path):
    path = tmp_path / "initial.jsonl"
    with ResumableLog(path) as log:
        log.commit("u1", [SFT])
    with open(path, "a") as handle:  # a killed run: half a unit, then a torn line
        handle.write(json.dumps({**SFT, "id": "lost", "_unit": "u2"}) + '\n{"id": "to')
    assert [r["id"] for r in read_records(path, SFTRecord, resumable=True)] == ["a"]
    with open(path, "a") as handle:  # a corrupt line before a commit is not a torn tail
        handle.write("\n" + json.dumps({"_committed": "u3", "n": 0}) + "\n")
    with pytest.raises(RecordError, match=":4: not a JSON object"):
        read_records(path, SFTRecord, resumable=True)


def test_eval_and_study_readers_check_their_records(tmp_path):
    """The eval report and the human study read through the same checked reader."""
    from sdlib.stages.eval_report import load_rounds
    from sdlib.study.human_study import load_items

    folder = tmp_path / "eval" / "base" / "mbpp"
    sample = {
        "id": "s0",
        "task_id": "Mbpp/1",
        "code": "x",
        "solution": "x",
        "no_code": False,
        "verdict": {"status": "fail", "passed": 0, "total": 3},
        "feedback": "f",
    }
    with ResumableLog(folder / "initial.jsonl") as log:
        log.commit("Mbpp/1", [sample])
    with ResumableLog(folder / "round1.jsonl") as log:
        log.commit("Mbpp/1", [{"id": "s0/refine/r1", "root": "s0", "task_id": "Mbpp/1"}])
    with pytest.raises(RecordError, match=r"round1.jsonl:1: a EvalRoundRecord needs mode"):
        load_rounds(folder, 2)
    initial, later = load_rounds(folder, 0)
    assert [s["id"] for s in initial] == ["s0"] and later == []

    study = tmp_path / "study"
    study.mkdir()
    item = {"item": "i1", "task_id": "t", "text": "", "code": "", "feedback": "", "explanation": ""}
    (study / "items.jsonl").write_text(json.dumps(item) + "\n" + json.dumps({"item": "i2"}) + "\n")
    with pytest.raises(RecordError, match=r"items.jsonl:2: a StudyItemRecord needs code"):
        load_items(study)
