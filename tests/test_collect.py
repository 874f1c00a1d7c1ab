"""Collection and filtering on a real tiny model: notebooks 01/02 through `sdlib run`, a run
killed with SIGKILL that resumes without duplicates or losses, and the record contracts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdlib.data.jsonl import JsonlWriter
from sdlib.data.resumable import KILL_AFTER_COMMITS, ResumableLog, read_committed
from sdlib.prompting.prompts import TEMPLATES

ROOT = Path(__file__).resolve().parents[1]

PARAMS = {
    "run_name": "mini",
    "seed": 3,
    "model": {"kind": "tiny", "batch_size": 32, "tiny": {"n_problems": 6, "steps": 70}},
    "teacher": {"kind": "self"},
    "sandbox": {"timeout": 5, "workers": 2},
    "collect": {
        "n_problems": 5,
        "few_shot": 0,
        "samples_per_problem": 4,
        "temperature": 1.0,
        "max_new_tokens": 128,
        "refinements_per_wrong": 1,
    },
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("collect")
    (folder / "params.yaml").write_text(
        yaml.safe_dump({**PARAMS, "output_dir": str(folder / "outputs")})
    )
    return folder


@pytest.fixture(scope="module")
def finished_run(workdir, data_dir) -> Path:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdlib.workbench.cli",
            "run",
            str(workdir / "params.yaml"),
            "--stages",
            "collect,filter",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir / "outputs" / "mini"


def test_run_writes_records_notebooks_and_manifest(finished_run):
    run = finished_run
    initial = read_committed(run / "collect" / "initial.jsonl")
    refinements = read_committed(run / "collect" / "refinements.jsonl")
    assert {r["task_id"] for r in initial} and len({r["id"] for r in initial}) == len(initial)
    programs = [(r["task_id"], r["program"]) for r in initial if r["program"]]
    assert len(programs) == len(set(programs)), "identical programs must be folded together"
    assert {r["mode"] for r in refinements} == {"refine", "expl_refine"}
    for record in refinements:  # the wrong solution sits in the history as the assistant turn
        parent = next(r for r in initial if r["id"] == record["parent"])
        assert (
            record["messages"][1]["role"] == "assistant"
            and parent["code"] in record["messages"][1]["content"]
        )
        assert parent["feedback"] in record["messages"][2]["content"]
    judged = [
        json.loads(x) for x in (run / "filter" / "refinements.jsonl").read_text().splitlines()
    ]
    assert len(judged) == len(refinements) and all("verdict" in r for r in judged)
    sft = [json.loads(x) for x in (run / "filter" / "sft.jsonl").read_text().splitlines()]
    passing = {r["id"] for r in initial if r["verdict"]["status"] == "pass"}
    passing |= {r["id"] for r in judged if r["verdict"]["status"] == "pass"}
    assert {r["id"] for r in sft} == passing
    rl = [json.loads(x) for x in (run / "filter" / "rl.jsonl").read_text().splitlines()]
    assert len(rl) == len(initial) + len(judged)
    table = json.loads((run / "filter" / "table.json").read_text())
    assert table["unique"] == len(initial) and table["wrong"] + table["correct"] == len(initial)
    # the paper's rate: over the wrong solutions sent for refinement, the others counted apart
    assert table["wrong_refined"] + sum(table["wrong_not_refined"].values()) == table["wrong"]
    assert table["wrong_refined"] == len({r["parent"] for r in judged})
    fixed = {r["parent"] for r in judged if r["verdict"]["status"] == "pass"}
    assert table["rate"] == len(fixed) / table["wrong_refined"]
    assert table["rate_of_all_wrong"] == len(fixed) / table["wrong"]
    assert (run / "filter" / "overview.png").stat().st_size > 1000
    assert (run / "notebooks" / "01_collect.ipynb").is_file() and (
        run / "notebooks" / "02_filter.ipynb"
    ).is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert (
        manifest["stages"]["collect"]["status"] == "done"
        and manifest["stages"]["filter"]["status"] == "done"
    )
    assert (
        "pid-namespace" in manifest["sandbox"]["layers"]
        and manifest["sandbox"]["limits"]["timeout_s"] == 5
    )
    assert manifest["prompts"] == dict(TEMPLATES)  # the templates the run used, all of them


def test_killed_run_resumes_without_duplicates_or_losses(finished_run, workdir, tmp_path):
    """SIGKILL a real collection mid-way, start it again, and get exactly the records of the
    uninterrupted run (per-unit seeds and fixed batches make the sampling reproducible)."""
    run_dir = tmp_path / "killed"
    script = (
        "import sys; from sdlib.runs import params as P; from sdlib.stages import pipeline\n"
        f"p = P.load({str(workdir / 'params.yaml')!r})\n"
        f"print(pipeline.run_collect(p, {str(run_dir)!r}, progress=False))\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = subprocess.run(  # SIGKILLed by itself right after its second commit
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, KILL_AFTER_COMMITS: "2"},
        capture_output=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    log = run_dir / "collect" / "initial.jsonl"
    partial = read_committed(log)
    assert len({r["task_id"] for r in partial}) == 2 < PARAMS["collect"]["n_problems"]
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert "'resumed': {'problems': " in summary and "'problems': 0" not in summary
    for name in ("initial.jsonl", "refinements.jsonl"):
        resumed = read_committed(run_dir / "collect" / name)
        reference = read_committed(finished_run / "collect" / name)
        assert len({r["id"] for r in resumed}) == len(resumed), f"duplicates in {name}"
        key = lambda r: (r["id"], r.get("code"), r.get("verdict", {}).get("status"))  # noqa: E731
        assert sorted(map(key, resumed)) == sorted(map(key, reference)), f"{name} differs"


def test_resumable_log_drops_an_uncommitted_unit(tmp_path):
    path = tmp_path / "log.jsonl"
    with ResumableLog(path) as log:
        log.commit("a", [{"id": "a1"}, {"id": "a2"}])
    with JsonlWriter(path) as raw:  # a unit killed before its marker, then a torn line
        raw.write({"id": "b1", "_unit": "b"})
    with open(path, "a") as handle:
        handle.write('{"id": "b2", "_un')
    with ResumableLog(path) as log:
        assert log.done == {"a"} and [r["id"] for r in log.records] == ["a1", "a2"]
        assert log.dropped == 1
        log.commit("b", [{"id": "b1"}])
    assert [r["id"] for r in read_committed(path)] == ["a1", "a2", "b1"]
    with pytest.raises(ValueError):
        ResumableLog(path).commit("a", [])


def test_bad_params_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("collect:\n  samples_per_problme: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sdlib.workbench.cli", "run", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert (
        "collect.samples_per_problme: unknown field" in proc.stderr
        and "samples_per_problem" in proc.stderr
    )


def test_every_params_file_validates():
    from sdlib.runs import params

    files = sorted((ROOT / "params").glob("*.yaml"))
    assert {f.name for f in files} >= {
        "smoke.yaml",
        "codellama7b-paper.yaml",
        "starcoder15b-paper.yaml",
    }
    for path in files:
        params.load(path)


def test_dataset_table_rate_is_over_the_wrong_solutions_refined():
    """Method §2's rate: correct refinements / wrong solutions refined; no-code and
    sandbox-error answers (never sent to the teacher) are counted apart, not in the rate."""
    from sdlib.stages.trajectories import dataset_table

    def initial(i, status):
        return {"id": f"s{i}", "task_id": "t", "verdict": {"status": status}}

    records = [initial(0, "pass"), initial(1, "fail"), initial(2, "error")]
    records += [initial(3, "no_code"), initial(4, "no_code"), initial(5, "sandbox_error")]
    judged = [
        {"parent": "s1", "mode": "refine", "verdict": {"status": "pass"}},
        {"parent": "s1", "mode": "expl_refine", "verdict": {"status": "pass"}},
        {"parent": "s2", "mode": "refine", "verdict": {"status": "fail"}},
    ]
    table = dataset_table(records, judged, "mbpp")
    assert (table["wrong"], table["wrong_refined"], table["correct_refinements"]) == (5, 2, 1)
    assert table["wrong_not_refined"] == {"no_code": 2, "sandbox_error": 1}
    assert table["rate"] == 0.5 and table["rate_of_all_wrong"] == 0.2


def test_grouped_calls_resume_to_the_same_records(tmp_path, data_dir, monkeypatch, capfd):
    """``problems_per_call`` samples several problems in one call: a run stopped after the
    first problem of a group redoes the whole group and keeps exactly the same records."""
    from sdlib.data import benchmarks
    from sdlib.execution.sandbox import Sandbox, SandboxConfig
    from sdlib.generation.backends import HFBackend
    from sdlib.generation.generator import Generator
    from sdlib.generation.tiny_model import TinyModelConfig, build_tiny_model, tiny_prompt
    from sdlib.stages.collect import sample_initial

    problems = benchmarks.load("mbpp", split="train", directory=str(data_dir))[:3]
    texts = [p.text for p in problems] + [p.reference for p in problems]
    pairs = [
        (tiny_prompt(p.text, p.visible_tests[0] if p.visible_tests else ""), p.reference)
        for p in problems
    ]
    small = TinyModelConfig(vocab_size=384, hidden=32, intermediate=64, layers=1, heads=2, steps=10)
    folder = build_tiny_model(texts, pairs, tmp_path / "tiny", small, progress=False, verbose=False)
    model = Generator(HFBackend(folder, device="cpu", batch_size=8, progress=False), "tiny")
    kwargs = dict(few_shot=[], n=3, temperature=1.0, max_new_tokens=24, seed=1, progress=False)
    monkeypatch.setenv("SDLIB_TERMINAL", "1")  # as under `sdlib run`: a line per call
    with Sandbox(SandboxConfig(timeout=5, workers=1)) as sandbox:
        with ResumableLog(tmp_path / "whole.jsonl") as log:
            sample_initial(problems, model, sandbox, log, problems_per_call=2, **kwargs)
            whole = log.records
        first = [r for r in whole if r["task_id"] == problems[0].task_id]
        with ResumableLog(tmp_path / "resumed.jsonl") as log:
            log.commit(problems[0].key, first)  # stopped after the group's first problem
            sample_initial(problems, model, sandbox, log, problems_per_call=2, **kwargs)
            resumed = log.records
    key = lambda r: (r["id"], r["response"], r["verdict"]["status"])  # noqa: E731
    assert sorted(map(key, resumed)) == sorted(map(key, whole))
    assert len(resumed) == len({r["id"] for r in resumed})
    assert {r["task_id"] for r in whole} == {p.task_id for p in problems}
    err = capfd.readouterr().err
    assert "collect: initial solutions of 2/3 problems" in err
    assert "collect: initial solutions of 3/3 problems" in err
