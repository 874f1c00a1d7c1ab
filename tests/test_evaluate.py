"""`sdlib evaluate` end to end, pass@k, and agreement with EvalPlus's own evaluator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdlib.data import benchmarks
from sdlib.execution.metrics import mean_pass_at_k, pass_at_k

ROOT = Path(__file__).resolve().parents[1]


def test_pass_at_k_hand_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 4, 2) == 1.0
    assert mean_pass_at_k({"a": (2, 1), "b": (2, 2)}, (1, 10)) == {"pass@1": pytest.approx(0.75)}
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)


def test_cli_judges_every_line_in_order(tmp_path, data_dir):
    problems = benchmarks.load_by_id("mbpp")
    a, b = problems["11"], problems["12"]
    lines = [
        json.dumps({"task_id": 11, "solution": a.reference}),
        json.dumps({"task_id": "11", "solution": "def remove_Occ(s, ch):\n    return s\n"}),
        "{not json",
        json.dumps({"task_id": "Mbpp/12", "completion": b.reference}),
        json.dumps({"task_id": "9999", "solution": "x = 1"}),
        json.dumps(
            {"task_id": "12", "solution": "def sort_matrix(m):\n    return sorted(m, key=sum"}
        ),
    ]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("\n".join(lines) + "\n")
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdlib.workbench.cli",
            "evaluate",
            "--benchmark",
            "mbpp",
            "--samples",
            str(samples),
            "--out",
            str(out),
            "--quiet",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr  # invalid lines are reported by the exit code
    assert "line 3" in proc.stderr and "line 5" in proc.stderr and "9999" in proc.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in results] == [1, 2, 3, 4, 5, 6]
    assert [r["status"] for r in results] == [
        "pass",
        "fail",
        "invalid",
        "pass",
        "invalid",
        "syntax",
    ]
    assert [r.get("index") for r in results] == [0, 1, None, 0, None, 1]
    assert results[1]["passed"] == 0 and results[1]["total"] == 3
    assert "Expected:" in results[1]["feedback"]
    # task 11: 1 of 2 pass; task 12: 1 of 2 pass -> pass@1 = 50%
    assert "pass@1: 50.00%" in proc.stdout


def test_missing_samples_file_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdlib.workbench.cli",
            "evaluate",
            "--benchmark",
            "mbpp",
            "--samples",
            str(tmp_path / "nope.jsonl"),
            "--out",
            str(tmp_path / "r.jsonl"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_evaluate_imports_no_heavy_library():
    code = "import sys, sdlib.workbench.cli, sdlib.workbench.evaluate, sdlib.execution.sandbox; print(sorted(m for m in ('torch','transformers','trl','numpy') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("benchmark", ["humaneval+", "mbpp+"])
def test_verdicts_agree_with_evalplus(benchmark, data_dir):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from evalplus_agreement import compare
    finally:
        sys.path.pop(0)
    report = compare(benchmark, tasks=10, workers=2)
    assert report["samples"] >= 30
    assert report["disagreements"] == []
    assert 0 < report["sdlib_pass"] < report["samples"]
