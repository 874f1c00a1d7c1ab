"""Evaluation stage: pass@k with refinement rounds and the equal-budget resampling baseline.

The numbers are checked on hand-made records (the tiny model solves no evaluation task); the
run itself on a real tiny model: files, a SIGKILLed eval that resumes without regenerating
finished samples, EvalPlus-format exports that ``sdlib evaluate`` judges identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sdlib.data.resumable import KILL_AFTER_COMMITS, read_committed
from sdlib.execution.metrics import mean_pass_at_k, pass_at_k
from sdlib.runs.params import ParamsError, parse
from sdlib.stages import eval_report
from sdlib.stages.refinement_eval import chain_state, load_rounds
from sdlib.workbench.evaluate import evaluate_samples

ROOT = Path(__file__).resolve().parents[1]

PARAMS = {
    "run_name": "evalmini",
    "seed": 2,
    "model": {
        "kind": "tiny",
        "batch_size": 16,
        "tiny": {"n_problems": 3, "steps": 4, "batch_size": 4, "max_len": 768},
    },
    "sandbox": {"timeout": 5, "workers": 2},
    "collect": {"n_problems": 3, "exclude_eval_overlap": False, "few_shot": 0},
    "eval": {
        "benchmarks": ["mbpp", "humaneval"],
        "n_problems": 3,
        "samples_per_task": 3,
        "temperature": 1.0,
        "max_new_tokens": 48,
        "rounds": 2,
        "tasks_per_call": 1,
        "models": ["base"],
    },
}


# ----------------------------------------------------------------- numbers on known records


def _v(ok: bool) -> dict:
    return {"status": "pass" if ok else "fail", "passed": int(ok), "total": 1}


def _records():
    """Task A: 4 samples, 1 passes. Round 1 fixes one failing sample by Expl.+Refine and none
    by Refine; round 2 fixes another by Refine. Task B: 4 samples, none pass, nothing fixed."""
    initial = [
        {"id": f"{t}/s{i}", "task_id": t, "index": i, "verdict": _v(t == "A" and i == 0)}
        for t in ("A", "B")
        for i in range(4)
    ]
    r1, r2 = [], []
    for s in initial:
        if s["verdict"]["status"] == "pass":
            continue
        for mode in ("refine", "expl_refine", "resample"):
            ok = s["id"] == "A/s1" and mode == "expl_refine"
            r1.append(
                {"id": f"{s['id']}/{mode}/r1", "root": s["id"], "mode": mode, "verdict": _v(ok)}
            )
    for r in r1:
        if r["verdict"]["status"] == "pass":
            continue
        ok = r["root"] == "A/s2" and r["mode"] == "refine"
        r2.append({"id": f"{r['root']}/{r['mode']}/r2", "root": r["root"], "mode": r["mode"], "verdict": _v(ok)})  # fmt: skip
    return initial, [r1, r2]


def test_pass_at_k_replaces_failed_samples_by_their_refinements():
    initial, later = _records()
    result = eval_report.benchmark_result(initial, later, ["refine", "expl_refine", "resample"])
    # task A has c=1 of n=4 at first, B has 0: pass@1 = (1/4 + 0) / 2
    assert result["init"]["pass@1"] == pytest.approx(0.125)
    assert "pass@10" not in result["init"]  # 4 samples cannot give pass@10
    assert result["expl_refine"]["pass@1"] == pytest.approx((2 / 4) / 2)
    assert result["refine"]["pass@1"] == pytest.approx((1 / 4) / 2)  # round 1: nothing fixed
    assert [r["pass@1"] for r in result["by_round"]["refine"]] == pytest.approx(
        [0.125, 0.125, (2 / 4) / 2]
    )
    assert [r["pass@1"] for r in result["by_round"]["resample"]] == pytest.approx([0.125] * 3)
    # 7 wrong samples; one fixed in round 1 by Expl.+Refine
    assert result["refinement_rate"] == pytest.approx(
        {"refine": 0.0, "expl_refine": 1 / 7, "resample": 0.0}
    )
    # equal budget: 8 samples + 7 calls in round 1 + 6 (refine) / 6 (expl, A/s1 stopped) ...
    assert result["calls"]["refine"] == 8 + 7 + 7
    assert result["calls"]["expl_refine"] == 8 + 7 + 6
    assert result["calls"]["resample"] == 8 + 7 + 7


def test_chain_state_stops_at_the_first_pass():
    initial, later = _records()
    state = chain_state(initial, later, "expl_refine", 2)
    assert state["A/s1"]["id"] == "A/s1/expl_refine/r1"  # fixed in round 1, not refined again
    assert state["A/s0"]["id"] == "A/s0"  # passed at first
    assert state["B/s3"]["id"] == "B/s3/expl_refine/r2"


def test_pass_at_k_matches_the_estimator():
    counts = {"a": (10, 3), "b": (10, 0)}
    got = mean_pass_at_k(counts, eval_report.KS)
    assert got["pass@1"] == pytest.approx(0.15)
    assert got["pass@10"] == pytest.approx((pass_at_k(10, 3, 10) + 0.0) / 2)


def test_table_shows_the_paper_only_for_the_paper_model():
    initial, later = _records()
    result = eval_report.benchmark_result(initial, later, ["refine", "expl_refine", "resample"])
    params = parse({"model": {"kind": "hf", "path": "/models/CodeLlama-7b-Python-hf"}})
    assert eval_report.paper_model(params) == "CodeLlama-7B"
    assert eval_report.paper_model(parse({"model": {"kind": "hf", "path": "Qwen/x"}})) is None
    summary = {
        "benchmarks": ["mbpp", "humaneval"],
        "settings": ["init", "refine", "expl_refine", "resample"],
        "samples_per_task": 4,
        "temperature": 0.8,
        "results": {"base": {"mbpp": result}},
        "paper_model": "CodeLlama-7B",
        "paper": eval_report._paper_rows("CodeLlama-7B"),
    }
    table = eval_report.table2_markdown(summary)
    assert "| base | Init | 12.50 / – | – |" in table
    assert "| base | Expl.+Refine | 25.00 / – | – |" in table
    assert "| paper CodeLlama-7B Prompt | Expl.+Refine | 43.42 / 72.09 | 40.13 / 74.95 |" in table


def test_eval_params_name_models_or_specs():
    params = parse({"eval": {"models": ["base", {"name": "qwen", "kind": "hf", "path": "q"}]}})
    assert params.eval.models[1].name == "qwen"
    with pytest.raises(ParamsError, match="unknown model name"):
        parse({"eval": {"models": ["bsae"]}})
    with pytest.raises(ParamsError, match="unique"):
        parse({"eval": {"models": ["base", {"name": "base", "kind": "hf", "path": "q"}]}})


# ----------------------------------------------------------------- a real run


def _eval_script(params: dict) -> str:
    return (
        "import json, sys\n"
        "from sdlib.runs.params import parse\n"
        "from sdlib.stages.refinement_eval import run_eval\n"
        f"p = parse(json.loads({json.dumps(params)!r}))\n"
        "run_eval(p, p.run_dir(), progress=False)\n"
    )


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, data_dir):
    """An eval killed with SIGKILL after its first committed tasks, then run to the end."""
    folder = tmp_path_factory.mktemp("eval")
    params = {**PARAMS, "output_dir": str(folder / "outputs")}
    run_dir = folder / "outputs" / "evalmini"
    log = run_dir / "eval" / "base" / "mbpp" / "initial.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(  # SIGKILLed by itself right after its second commit
        [sys.executable, "-c", _eval_script(params)],
        cwd=ROOT,
        env={**env, KILL_AFTER_COMMITS: "2"},
        capture_output=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    before = read_committed(log)
    done_before = {r["task_id"] for r in before}
    assert done_before and len(done_before) < 3
    resumed = subprocess.run(
        [sys.executable, "-c", _eval_script(params) + "print('DONE')"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return parse(params), run_dir, before


def test_resumed_eval_keeps_finished_samples_and_completes(killed_and_resumed):
    params, run_dir, before = killed_and_resumed
    folder = run_dir / "eval" / "base" / "mbpp"
    initial, later = load_rounds(folder, 2)
    ids = [r["id"] for r in initial]
    assert len(ids) == len(set(ids)) == 3 * 3  # 3 tasks x 3 samples, no duplicates
    by_id = {r["id"]: r for r in initial}
    for record in before:  # committed before the kill: kept as they were, not regenerated
        assert by_id[record["id"]]["response"] == record["response"]
    for records in later:
        assert len({r["id"] for r in records}) == len(records)
    # every failing sample got exactly one call per setting in round 1
    failing = [s for s in initial if s["verdict"]["status"] != "pass"]
    for setting in ("refine", "expl_refine", "resample"):
        assert sorted(r["root"] for r in later[0] if r["mode"] == setting) == sorted(
            s["id"] for s in failing
        )
    # round 2 continues the chats of round 1
    chat = next(r for r in later[1] if r["mode"] == "expl_refine")
    assert len(chat["messages"]) == 5 and chat["parent"].endswith("/expl_refine/r1")


def test_exports_are_judged_identically_by_sdlib_evaluate(killed_and_resumed):
    params, run_dir, _ = killed_and_resumed
    for benchmark in ("mbpp", "humaneval"):
        folder = run_dir / "eval" / "base" / benchmark
        initial, later = load_rounds(folder, 2)
        report = evaluate_samples(benchmark, folder / "samples.jsonl", progress=False)
        mine = {(r["task_id"], r["index"]): r["verdict"] for r in initial}
        assert len(report.results) == len(initial)
        for result in report.results:
            verdict = mine[(result["task_id"], result["index"])]
            for key in ("status", "passed", "total", "error_type", "failed_test", "expected"):
                assert result.get(key, "") == verdict.get(key, ""), (key, result, verdict)
        refined = evaluate_samples(
            benchmark, folder / "samples_expl_refine_r1.jsonl", progress=False
        )
        state = chain_state(initial, later, "expl_refine", 1)
        assert refined.status_counts.get("pass", 0) == sum(
            s["verdict"]["status"] == "pass" for s in state.values()
        )


def test_summary_table_and_plots_are_written(killed_and_resumed):
    params, run_dir, _ = killed_and_resumed
    from sdlib.stages.eval_report import summarise, write_summary

    # the resumed run's own summary: execution ran on the worker thread while the model
    # generated the next task
    timing = json.loads((run_dir / "eval" / "summary.json").read_text())["pipeline"]["total"]
    assert timing["units"] > 0 and timing["execution_hidden_s"] > 0
    summary = summarise(params, run_dir)
    paths = write_summary(run_dir, summary)
    data = json.loads(paths["summary"].read_text())
    assert set(data["results"]["base"]) == {"mbpp", "humaneval"}
    result = data["results"]["base"]["mbpp"]
    assert result["samples"] == 9 and len(result["by_round"]["expl_refine"]) == 3
    assert result["calls"]["refine"] == result["calls"]["resample"]  # equal budget
    assert "| base | Expl.+Refine |" in paths["table"].read_text()

    assert paths["pass_by_round"].stat().st_size > 10_000


def test_missing_stage_model_is_a_clear_error(tmp_path, data_dir):
    from sdlib.generation.models import stage_generator

    params = parse({**PARAMS, "output_dir": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="run the sft stage first"):
        stage_generator("sft", params, tmp_path / "run")


def test_any_split_is_an_eval_set_named_as_such(data_dir):
    """``<benchmark>:<split>`` evaluates another split; "mbpp:train" is the problems collection
    trained on, and every table says it was seen in training."""
    from sdlib.runs.context import training_problems
    from sdlib.stages.refinement_eval import eval_problems

    params = parse({**PARAMS, "eval": {**PARAMS["eval"], "benchmarks": ["mbpp", "mbpp:train"]}})
    seen = eval_problems(params, "mbpp:train")
    assert [p.task_id for p in seen] == [p.task_id for p in training_problems(params)][:3]
    assert {p.split for p in seen} == {"train"} and eval_problems(params, "mbpp")[0].split == "test"
    label = eval_report.benchmark_label("mbpp:train")
    assert label == "MBPP train (seen in training: checks the mechanics, not the method)"
    assert eval_report.benchmark_label("humaneval+") == "HumanEval+"
    for bad in ("mbpp:", "gsm8k", "gsm8k:train"):
        with pytest.raises(ParamsError, match="unknown eval benchmark"):
            parse({"eval": {"benchmarks": [bad]}})
