"""Trajectory explorer: rows from real record files of collect, filter and eval (written here
in their contracts), filters, diffs, provenance, the widgets, and notebook 07 under papermill."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlib.data.jsonl import JsonlWriter, write_jsonl
from sdlib.data.resumable import ResumableLog
from sdlib.study import explorer

ROOT = Path(__file__).resolve().parents[1]
WRONG = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"


def _verdict(status: str, passed: int = 0) -> dict:
    return {"status": status, "passed": passed, "total": 3, "feedback": ""}


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    with ResumableLog(run / "collect" / "initial.jsonl") as log:
        log.commit("mbpp:601", [
            {"id": "mbpp:601/s0", "task_id": "601", "benchmark": "mbpp", "code": WRONG,
             "verdict": _verdict("fail", 1), "feedback": "Expected: 3\nActual: -1", "model": "tiny"},
        ])  # fmt: skip
    write_jsonl(run / "filter" / "refinements.jsonl", [
        {"id": "mbpp:601/s0/expl_refine/0", "parent": "mbpp:601/s0", "task_id": "601",
         "benchmark": "mbpp", "mode": "expl_refine", "round": 1, "code": FIXED,
         "explanation": "It subtracts instead of adding.", "teacher": "tiny", "_unit": "u601",
         "verdict": _verdict("pass", 3), "feedback": "All tests passed."},
    ])  # fmt: skip
    folder = run / "eval" / "sft" / "humaneval"
    with ResumableLog(folder / "initial.jsonl") as log:
        log.commit("HumanEval/0", [
            {"id": "HumanEval/0/s0", "task_id": "HumanEval/0", "index": 0, "benchmark": "humaneval",
             "model": "sft", "code": WRONG, "verdict": _verdict("fail"), "feedback": "Failed test: t"},
        ])  # fmt: skip
    with ResumableLog(folder / "round1.jsonl") as log:
        log.commit("HumanEval/0/s0", [
            {"id": "HumanEval/0/s0/r1", "root": "HumanEval/0/s0", "parent": "HumanEval/0/s0",
             "task_id": "HumanEval/0", "benchmark": "humaneval", "model": "sft", "mode": "refine",
             "round": 1, "code": FIXED, "explanation": "", "verdict": _verdict("pass", 3),
             "feedback": "All tests passed."},
        ])  # fmt: skip
    with JsonlWriter(folder / "round2.jsonl") as writer:  # a unit never committed (killed run)
        writer.write({"id": "HumanEval/0/s0/r2", "parent": "HumanEval/0/s0/r1", "_unit": "u",
                      "mode": "refine", "round": 2, "task_id": "HumanEval/0"})  # fmt: skip
    return run


def test_rows_link_parents_and_say_where_they_come_from(run_dir):
    rows = explorer.load_trajectories(run_dir)
    assert len(rows) == 4  # the uncommitted round-2 record is not shown
    refined = next(r for r in rows if r["id"] == "mbpp:601/s0/expl_refine/0")
    assert refined["wrong_code"] == WRONG and refined["code"] == FIXED
    assert refined["shown_feedback"] == "Expected: 3\nActual: -1"
    assert refined["file"] == "filter/refinements.jsonl" and refined["line"] == 1
    assert refined["parent_where"] == "collect/initial.jsonl:1"
    eval_r1 = next(r for r in rows if r["id"] == "HumanEval/0/s0/r1")
    assert (eval_r1["source"], eval_r1["model"], eval_r1["round"]) == ("eval", "sft", 1)
    assert eval_r1["file"] == "eval/sft/humaneval/round1.jsonl"
    assert eval_r1["wrong_code"] == WRONG

    assert [r["id"] for r in explorer.filter_rows(rows, status="pass", source="eval")] == [
        "HumanEval/0/s0/r1"
    ]
    assert len(explorer.filter_rows(rows, mode="initial")) == 2
    assert len(explorer.filter_rows(rows, task_id="601", round=explorer.ALL)) == 2
    with pytest.raises(ValueError, match="unknown filter"):
        explorer.filter_rows(rows, colour="red")

    html = explorer.detail_html(refined)
    assert "It subtracts instead of adding." in html and "diff_chg" in html
    assert "collect/initial.jsonl:1" in html


def test_widgets_filter_and_show(run_dir):
    app = explorer.TrajectoryExplorer(explorer.load_trajectories(run_dir))
    assert app.count.value.startswith("4 record")
    app.filters["model"].value = "sft"
    app.filters["round"].value = 1
    assert app.count.value.startswith("1 record")
    assert "HumanEval/0/s0/r1" in app.detail.value and "wrong (parent)" in app.detail.value
    app.filters["status"].value = (
        "timeout" if "timeout" in app.filters["status"].options else "fail"
    )
    assert app.detail.value == "" and app.count.value.startswith("0 record")


def test_notebook_07_runs_headless(run_dir, tmp_path):
    import papermill

    out = tmp_path / "07.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "07_explore_trajectories.ipynb"),
        str(out),
        parameters={"params_path": str(ROOT / "params" / "smoke.yaml"), "run_dir": str(run_dir)},
        kernel_name="python3",
        cwd=str(ROOT),
        progress_bar=False,
    )
    text = out.read_text()
    assert "expl_refine" in text and "application/vnd.jupyter.widget-view+json" in text
