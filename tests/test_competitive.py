"""APPS and CodeContests (issue 14): loaders on every form a local copy takes, the stdio test
kind in the real sandbox, the sources' comparison rules, counted drops, prompts."""

from __future__ import annotations

import pytest
from competitive_fixtures import (
    apps_incorrect,
    apps_rows,
    codecontests_incorrect,
    codecontests_rows,
    write,
)

from sdlib.data import benchmarks, competitive
from sdlib.data.datafiles import DataFileMissing
from sdlib.execution import stdio
from sdlib.execution.sandbox import Sandbox, SandboxConfig
from sdlib.prompting import prompts

FORMS = ("jsonl", "parquet", "save_to_disk")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The fixtures saved in every form, each in a data directory of its own; the sandbox
    verifications cached in a private cache."""
    root = tmp_path_factory.mktemp("competitive")
    made = {}
    for form in FORMS:
        data = root / form
        write(apps_rows(), data / "apps", "train", form)
        write(codecontests_rows(), data / "codecontests", "train", form)
        made[form] = data
    return made


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLIB_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout=5, workers=2)) as sb:
        yield sb


def _summary(problems):
    return [(p.task_id, p.stdio, len(p.tests), p.entry_point, p.difficulty) for p in problems]


def test_loaders_read_jsonl_parquet_and_save_to_disk_alike(sources):
    for name in ("apps", "codecontests"):
        loaded = {
            form: competitive.load(name, "train", directory=data, verified=False)
            for form, data in sources.items()
        }
        assert _summary(loaded["parquet"]) == _summary(loaded["jsonl"])
        assert _summary(loaded["save_to_disk"]) == _summary(loaded["jsonl"])
        assert [p.tests for p in loaded["parquet"]] == [p.tests for p in loaded["jsonl"]]


def test_apps_rows_decoded_with_counted_drops(sources):
    problems = competitive.load("apps", "train", directory=sources["jsonl"])
    ids = {p.task_id for p in problems}
    # 12 rows: one without tests, one "print any of them", one whose reference fails
    assert len(problems) == 9 and {"apps/4010", "apps/4006", "apps/4011"}.isdisjoint(ids)
    assert competitive.dropped("apps") == {
        "no_tests": 1,
        "several_answers": 1,
        "reference_fails": 1,
    }
    by_id = {p.task_id: p for p in problems}
    assert by_id["apps/4000"].stdio and by_id["apps/4000"].tests[1].inputs == ("10 -3\n",)
    assert by_id["apps/4007"].tests[0].expected == "a\nb\nc\n"  # outputs kept as lists of lines
    add, two_sum = by_id["apps/4008"], by_id["apps/4009"]
    assert not add.stdio and add.entry_point == "add" and add.tests[0].oracle == "apps"
    assert "class Solution" in two_sum.prompt and "Solution()" in two_sum.setup
    intro = competitive.load("apps", "train", "introductory", directory=sources["jsonl"])
    assert {p.difficulty for p in intro} == {"introductory"} and len(intro) == 5
    kept = competitive.load(
        "apps", "train", directory=sources["jsonl"], include_uncheckable=True, verified=False
    )
    assert not next(p for p in kept if p.task_id == "apps/4006").checkable


def test_codecontests_rows_python3_only_all_tests_limits(sources):
    problems = competitive.load("codecontests", "train", directory=sources["parquet"])
    assert competitive.dropped("codecontests") == {
        "no_python_reference": 1,
        "several_answers": 1,
        "reference_fails": 1,
    }
    first = problems[0]
    assert first.task_id == "1_A. Sum" and len(first.tests) == 3  # public + private + generated
    assert first.time_limit == 2.5 and first.memory_mb == 244 and first.difficulty == "800"
    assert "#include" not in first.reference  # the C++ solution is not a reference
    rated = benchmarks.load("codecontests", "train", directory=sources["jsonl"], difficulty="800")
    assert {p.difficulty for p in rated} == {"800"} and len(rated) == 4


def test_offline_error_names_the_file_where_and_the_source(tmp_path):
    with pytest.raises(DataFileMissing) as info:
        competitive.load("codecontests", "test", directory=tmp_path)
    text = str(info.value)
    assert str(tmp_path / "codecontests") in text and "test*.parquet" in text
    assert "deepmind/code_contests" in text
    with pytest.raises(ValueError, match="splits"):
        competitive.load("apps", "valid", directory=tmp_path)


def test_references_pass_and_incorrect_solutions_fail_with_feedback(sources, sandbox):
    for name, wrong in (("apps", apps_incorrect()), ("codecontests", codecontests_incorrect())):
        problems = competitive.load(name, "train", directory=sources["jsonl"])
        good = sandbox.run_many([(p, p.reference) for p in problems])
        assert all(v.ok for v in good), [(p.task_id, v.feedback) for p, v in zip(problems, good)]
        bad = sandbox.run_many([(p, wrong[p.task_id]) for p in problems])
        assert not any(v.ok for v in bad)
        for problem, verdict in zip(problems, bad):
            assert len(verdict.feedback) <= 1000
            if problem.stdio and verdict.status == "fail":
                assert verdict.feedback.startswith("Failed test: Input:\n")
                assert (
                    "Expected output:" in verdict.feedback and "Actual output:" in verdict.feedback
                )


def test_stdio_feedback_and_passed_of_total(sources, sandbox):
    by_id = {p.task_id: p for p in competitive.load("apps", "train", directory=sources["jsonl"])}
    fib = by_id["apps/4005"]  # tests: 0, 1, 10
    verdict = sandbox.run(fib, "n = int(input())\nprint(n)\n")  # right on 0 and 1 only
    assert (verdict.status, verdict.passed, verdict.total) == ("fail", 2, 3)
    assert verdict.feedback == "Failed test: Input:\n10\nExpected output:\n55\nActual output:\n10"
    crash = sandbox.run(fib, "n = int(input())\nprint([0, 1][n])\n")
    assert crash.status == "error" and crash.passed == 2
    assert "IndexError: list index out of range (line 2, in <module>)" in crash.feedback
    slow = sandbox.run(fib, "while True:\n    pass\n", timeout=0.5)
    assert slow.status == "timeout" and slow.feedback.endswith("Timeout") and slow.passed == 0
    fast = sandbox.run(fib, "n = int(input())\nprint(n)\n", fail_fast=True)
    assert fast.passed == 2 and fast.status == "fail"


def test_comparison_follows_the_sources_rules():
    assert stdio.outputs_match("3\n", "3")
    assert stdio.outputs_match("1 2  3\r\n\n", "1 2 3\n")
    assert stdio.outputs_match("1\n2\n", "1 2")  # tokens
    assert stdio.outputs_match("0.3333333333", "0.333333")  # APPS's float tolerance
    assert stdio.outputs_match("1e3\n", "1000.0\n")
    assert not stdio.outputs_match("0.34", "0.333333")
    assert not stdio.outputs_match("YES", "yes") and not stdio.outputs_match("1 2", "1 2 3")
    assert stdio.outputs_match("a b c", "a\nb\nc")  # APPS: whitespace is whitespace
    assert not stdio.outputs_match("nan", "0.5")
    assert stdio.several_answers("If there are multiple answers, print any of them.")
    assert not stdio.several_answers("Print the answer modulo 10^9+7.")


def test_an_uncheckable_failure_is_flagged_not_counted_as_the_models(sources, sandbox):
    kept = competitive.load(
        "apps", "train", directory=sources["jsonl"], include_uncheckable=True, verified=False
    )
    pair = next(p for p in kept if p.task_id == "apps/4006")
    other_right_answer = sandbox.run(pair, "n = int(input())\nprint(n, 0)\n")
    assert other_right_answer.status == "fail" and other_right_answer.extra == {"uncheckable": True}


def test_stdio_prompts_say_read_stdin_and_show_starter_code(sources):
    by_id = {
        p.task_id: p
        for p in competitive.load("apps", "train", directory=sources["jsonl"], verified=False)
    }
    text = prompts.task_description(by_id["apps/4000"])
    assert "Read two integers" in text and prompts.STDIO_INSTRUCTION in text
    assert "signature" not in text
    two_sum = prompts.task_description(by_id["apps/4009"])
    assert "class Solution" in two_sum and prompts.STDIO_INSTRUCTION not in two_sum
    # a base model's few-shot prompt of a stdio task ends in an opened fence, as for MBPP
    prompt = prompts.initial_prompt(by_id["apps/4000"], [by_id["apps/4001"]], style="base")
    assert prompt.endswith("```python\n") and prompt.count(prompts.STDIO_INSTRUCTION) == 2
    # the model's program runs whole, after APPS's own imports (its testing_util's header)
    program = prompts.assemble_program(by_id["apps/4000"], SUM_CODE)
    assert program == competitive.APPS_PREAMBLE + "\n" + SUM_CODE
    assert "from typing import List" in prompts.assemble_program(by_id["apps/4009"], "x = 1\n")


SUM_CODE = "a, b = map(int, input().split())\nprint(a + b)\n"


# ------------------------------------------------------------ the stages on all three sources


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory, data_dir):
    """A data directory with MBPP (the shared copy) and the APPS and CodeContests fixtures as
    both train and test splits, and a run of collect + filter + eval over it."""
    import os

    from sdlib.runs.params import parse
    from sdlib.stages import pipeline, refinement_eval

    root = tmp_path_factory.mktemp("three")
    data = root / "data"
    data.mkdir()
    for name in ("mbpp.jsonl", "MbppPlus-v0.2.0.jsonl.gz"):
        os.symlink(data_dir / name, data / name)
    for split in ("train", "test"):
        write(apps_rows(), data / "apps", split, "jsonl")
        write(codecontests_rows(), data / "codecontests", split, "parquet")
    cache = root / "cache"
    saved = os.environ.get("SDLIB_CACHE_DIR")
    os.environ["SDLIB_CACHE_DIR"] = str(cache)
    params = parse(
        {
            "run_name": "three",
            "seed": 1,
            "output_dir": str(root / "outputs"),
            "data_dir": str(data),
            "model": {"kind": "tiny", "batch_size": 16, "tiny": {"n_problems": 3, "steps": 4, "batch_size": 4, "max_len": 768}},
            "sandbox": {"timeout": 5, "workers": 2},
            "collect": {
                "sources": [
                    {"name": "mbpp", "n_problems": 2},
                    {"name": "apps", "n_problems": 3},
                    {"name": "codecontests", "n_problems": 2},
                ],
                "few_shot": 1,
                "samples_per_problem": 2,
                "max_new_tokens": 48,
                "refinements_per_wrong": 1,
            },
            "eval": {
                "benchmarks": ["apps", "codecontests"],
                "n_problems": 2,
                "samples_per_task": 2,
                "max_new_tokens": 32,
                "rounds": 1,
                "tasks_per_call": 2,
                "models": ["base"],
            },
        }
    )  # fmt: skip
    run_dir = params.run_dir()
    try:
        pipeline.run_collect(params, run_dir, progress=False)
        filtered = pipeline.run_filter(params, run_dir, progress=False)
        evaluated = refinement_eval.run_eval(params, run_dir, progress=False)
    finally:
        if saved is None:
            os.environ.pop("SDLIB_CACHE_DIR", None)
        else:
            os.environ["SDLIB_CACHE_DIR"] = saved
    return params, run_dir, filtered, evaluated


def test_collection_and_filtering_from_all_three_sources(three_sources):
    import json

    from sdlib.data.resumable import read_committed
    from sdlib.runs.layout import RunLayout

    params, run_dir, filtered, _ = three_sources
    table = filtered["table"]
    assert set(table["by_source"]) == {"mbpp", "apps", "codecontests"} and table["source"] == "all"
    for name, part in table["by_source"].items():
        assert part["paper_rate"] == {"mbpp": 0.4595, "apps": 0.3921, "codecontests": 0.2607}[name]
        assert part["unique"] >= 1
    assert sum(p["unique"] for p in table["by_source"].values()) == table["unique"]
    layout = RunLayout(run_dir)
    initial = read_committed(layout.initial)
    benchmarks_seen = {r["benchmark"] for r in initial}
    assert benchmarks_seen == {"mbpp", "apps", "codecontests"}
    # the few-shot CodeContests example is never collected
    assert "1_A. Sum" not in {r["task_id"] for r in initial}
    # the RL set: MBPP + APPS by default
    rl = [json.loads(line) for line in layout.rl_set.read_text().splitlines()]
    by_task = {r["task_id"]: r["benchmark"] for r in initial}
    assert {by_task[r["task_id"]] for r in rl} <= {"mbpp", "apps"} and rl


def test_apps_and_codecontests_evaluate_like_the_four(three_sources):
    _, _, _, summary = three_sources
    results = summary["results"]["base"]
    assert set(results) == {"apps", "codecontests"}
    for result in results.values():
        assert result["tasks"] == 2 and result["samples"] == 4 and "pass@1" in result["init"]
        assert set(result["by_round"]) >= {"refine", "expl_refine", "resample"}
