"""The benchmark loaders on the real data files, and the data-directory contract."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import shutil
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from sdlib.data import benchmarks, datafiles
from sdlib.data.mutants import mutate
from sdlib.execution.sandbox import Sandbox, SandboxConfig


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout=10)) as box:
        yield box


def test_counts_and_splits(data_dir):
    assert len(benchmarks.load("humaneval")) == 164
    mbpp = benchmarks.load("mbpp")
    assert len(mbpp) == 974
    assert Counter(p.split for p in mbpp) == {
        "prompt": 10,
        "test": 500,
        "validation": 90,
        "train": 374,
    }
    assert {p.task_id for p in benchmarks.load("mbpp", split="train")} == {
        str(i) for i in range(601, 975)
    }
    assert len(benchmarks.load("humaneval+")) == 164
    assert len(benchmarks.load("mbpp+")) == 378


def test_problem_fields(data_dir):
    he = benchmarks.load_by_id("humaneval")["HumanEval/0"]
    assert he.entry_point == "has_close_elements"
    assert len(he.tests) == 7 and all(t.kind == "assert" for t in he.tests)
    assert "candidate(" in he.tests[0].code and he.prompt.startswith("from typing import List")
    mbpp = benchmarks.load_by_id("mbpp")["601"]
    assert mbpp.split == "train" and mbpp.entry_point == "max_chain_length"
    assert mbpp.visible_tests == tuple(t.code for t in mbpp.tests) and len(mbpp.tests) == 3
    plus = benchmarks.load_by_id("mbpp+")["Mbpp/2"]
    assert plus.tests[0].kind == "call" and plus.tests[0].oracle == "set_eq"
    assert isinstance(plus.tests[0].inputs[0], tuple)  # EvalPlus's deserialisation applied
    assert len(plus.tests) > 50  # base + plus inputs
    zero = benchmarks.load_by_id("humaneval+")["HumanEval/32"]
    assert zero.tests[0].oracle == "poly_root"


def test_humaneval_check_split_keeps_loops_and_setup():
    setup, tests = benchmarks.split_check_function(
        "M = 1\n\ndef check(candidate):\n    import math\n    assert candidate(1) == 2\n"
        "    xs = [1, 2]\n    for x in xs:\n        assert candidate(x) > x\n"
    )
    assert setup == "M = 1"
    assert [t.code for t in tests] == [
        "import math\nassert candidate(1) == 2",
        "xs = [1, 2]\nfor x in xs:\n    assert candidate(x) > x",
    ]


def test_every_reference_passes(sandbox, data_dir):
    """Each benchmark's reference solutions pass all their tests (EvalPlus: base + plus)."""
    for name in benchmarks.BENCHMARKS:
        problems = benchmarks.load(name)
        verdicts = sandbox.run_many([(p, p.reference) for p in problems])
        failing = [
            (p.task_id, v.status, v.feedback) for p, v in zip(problems, verdicts) if not v.ok
        ]
        assert failing == [], f"{name}: references that fail: {failing[:5]}"
        assert all(v.passed == v.total == len(p.tests) for p, v in zip(problems, verdicts))


def test_mutants_fail(sandbox, data_dir):
    quick = sandbox
    """A program that returns None fails everywhere; flipped comparisons fail almost always."""
    for name in benchmarks.BENCHMARKS:
        problems = benchmarks.load(name)
        jobs = [(p, mutate(p.reference, p.entry_point, "return_none")) for p in problems]
        verdicts = sandbox.run_many(jobs)
        survivors = [p.task_id for p, v in zip(problems, verdicts) if v.ok]
        assert survivors == [], f"{name}: return-None mutants that pass: {survivors}"
        flips = [(p, mutate(p.reference, p.entry_point, "flip_compare")) for p in problems[:40]]
        flips = [(p, m) for p, m in flips if m is not None]
        killed = sum(
            not quick.run(p, m, timeout=max(2.0, 4 * p.reference_seconds)).ok for p, m in flips
        )
        assert killed >= 0.9 * len(flips), (
            f"{name}: only {killed}/{len(flips)} flipped mutants fail"
        )


def test_dropped_evalplus_inputs_are_few(data_dir):
    """Inputs the canonical solution cannot answer within the reference limits are left out
    and listed (README); there must be only a handful."""
    dropped = {**benchmarks.dropped_inputs("humaneval+"), **benchmarks.dropped_inputs("mbpp+")}
    assert sum(len(v) for v in dropped.values()) <= 5, dropped


def test_data_dir_from_env(tmp_path, monkeypatch, data_dir):
    shutil.copy(data_dir / "mbpp.jsonl", tmp_path / "mbpp.jsonl")
    monkeypatch.setenv("SDLIB_DATA_DIR", str(tmp_path))
    assert datafiles.data_dir() == tmp_path.resolve()
    assert len(benchmarks.load("mbpp", split="prompt")) == 10


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_file_offline_names_file_path_and_source(tmp_path, monkeypatch):
    spec = datafiles.FILES["mbpp.jsonl"]
    url = f"http://127.0.0.1:{_closed_port()}/mbpp.jsonl"
    monkeypatch.setitem(datafiles.FILES, "mbpp.jsonl", dataclasses.replace(spec, url=url))
    monkeypatch.setenv("SDLIB_DATA_DIR", str(tmp_path))
    with pytest.raises(datafiles.DataFileMissing) as info:
        benchmarks.load("mbpp")
    message = str(info.value)
    assert "mbpp.jsonl" in message and str(tmp_path / "mbpp.jsonl") in message and url in message
    assert "SDLIB_DATA_DIR" in message


@pytest.fixture()
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_when_missing_checks_sha256(tmp_path, monkeypatch, file_server, data_dir):
    served, base = file_server
    shutil.copyfile(data_dir / "mbpp.jsonl", served / "mbpp.jsonl")
    spec = datafiles.FILES["mbpp.jsonl"]
    monkeypatch.setitem(
        datafiles.FILES, "mbpp.jsonl", dataclasses.replace(spec, url=f"{base}/mbpp.jsonl")
    )
    target = tmp_path / "data"
    path = datafiles.ensure_file("mbpp.jsonl", target)
    assert path == target / "mbpp.jsonl" and datafiles.sha256_of(path) == spec.sha256
    # A corrupted download is refused and not kept.
    (served / "mbpp.jsonl").write_text("{}\n")
    other = tmp_path / "other"
    with pytest.raises(datafiles.DataFileMissing, match="sha256"):
        datafiles.ensure_file("mbpp.jsonl", other)
    assert not (other / "mbpp.jsonl").exists()
    assert not [p for p in Path(other).iterdir()]


def test_loading_some_evalplus_tasks_computes_only_those(tmp_path, monkeypatch, data_dir):
    """A small run on a fresh machine computes the expected outputs of its tasks alone, and
    they equal those of the whole-file cache."""
    full = benchmarks.load_by_id("mbpp+", directory=data_dir)  # the whole-file cache
    monkeypatch.setenv("SDLIB_CACHE_DIR", str(tmp_path))
    ids = benchmarks.task_ids("mbpp+", data_dir)[:2]
    some = benchmarks.load("mbpp+", directory=data_dir, task_ids=ids)
    assert [p.task_id for p in some] == ids
    for problem in some:
        for mine, whole in zip(problem.tests, full[problem.task_id].tests, strict=True):
            assert (mine.inputs, mine.oracle) == (whole.inputs, whole.oracle)
            if mine.oracle == "set_eq":  # a set's order follows the process's hash seed
                assert set(mine.expected) == set(whole.expected)
            else:
                assert mine.expected == whole.expected
    cached = sorted(f.name for f in tmp_path.glob("*.tasks/*"))
    assert cached == sorted(t.replace("/", "_") + ".json" for t in ids)
    assert not list(tmp_path.glob("*.json"))  # no whole-file cache from a partial load
