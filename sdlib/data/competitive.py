"""Competitive-programming sources: APPS and CodeContests, as ``Problem`` objects.

The hubs are often unreachable (and ``codeparrot/apps``'s loading script does not run under
``datasets`` >= 4), so both are read from local copies in the data directory, in whichever
form they were saved:

* ``<data>/apps/<split>.jsonl`` (the release's files), ``<data>/apps/<split>*.parquet`` (the
  hub's parquet conversion) or ``<data>/apps/<split>/`` (``datasets.save_to_disk``);
* ``<data>/codecontests/<split>*.parquet`` (the hub's ``data/<split>-*.parquet``), JSONL, or a
  ``save_to_disk`` folder. CodeContests' splits are ``train``, ``valid``, ``test``.

APPS: ``input_output`` and ``solutions`` are JSON text; a problem without tests is skipped
and counted; ``fn_name`` makes it call-based (``starter_code`` shown, a ``class Solution``
method called through a wrapper), else stdin/stdout. CodeContests: Python 3 solutions only
(language 3) as references; public + private + generated tests; ``time_limit`` and
``memory_limit_bytes`` kept; ``cf_rating`` as the difficulty.

Every problem's first reference is run on its own tests once, in the sandbox, and the result
cached (keyed by the file's digest): problems whose reference fails are reported
(``dropped()``) and left out by default, as are problems whose statement accepts several
answers (comparison cannot judge them; ``stdio.several_answers``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from sdlib.data.datafiles import DataFileMissing, cache_dir, data_dir
from sdlib.execution.problems import Problem, TestCase
from sdlib.execution.stdio import several_answers

SOURCES = {
    "apps": {
        "repo": "codeparrot/apps",
        "files": "{split}.jsonl",
        "splits": ("train", "test"),
        "hub": "codeparrot/apps (https://huggingface.co/datasets/codeparrot/apps: the "
        "train.jsonl/test.jsonl files, or the refs/convert/parquet branch)",
    },
    "codecontests": {
        "repo": "deepmind/code_contests",
        "files": "data/{split}-*.parquet",
        "splits": ("train", "valid", "test"),
        "hub": "deepmind/code_contests (https://huggingface.co/datasets/deepmind/code_contests"
        ": data/<split>-*.parquet)",
    },
}
PYTHON3 = 3  # CodeContests' language code for Python 3
# What APPS's testing_util puts before every solution (numpy left out: not a dependency here).
APPS_PREAMBLE = (
    "import sys\nimport time\nimport itertools\n"
    "from itertools import accumulate, product, permutations, combinations\n"
    "import collections\nfrom collections import Counter, OrderedDict, deque, defaultdict, ChainMap\n"
    "from functools import lru_cache\nimport math\n"
    "from math import sqrt, sin, cos, tan, ceil, fabs, floor, gcd, exp, log, log2\n"
    "import fractions\nfrom typing import List, Tuple\nimport random\nimport heapq\n"
    "from heapq import *\n"
)
APPS_DIFFICULTIES = ("introductory", "interview", "competition")
VERIFY_VERSION = 1
_DROPPED: dict[tuple[str, str], Counter] = {}


# --------------------------------------------------------------------------- reading files


def source_files(name: str, split: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """The local copy of a split: a JSONL or parquet file (or files), or a save_to_disk
    folder; a clear error naming where it was looked for and where it comes from."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    if split not in SOURCES[name]["splits"]:
        raise ValueError(f"{name} has splits {SOURCES[name]['splits']}, not {split!r}")
    folder = data_dir(directory) / name
    candidates = [
        folder / split,  # save_to_disk
        folder / f"{split}.jsonl",
        folder / f"{split}.jsonl.gz",
        *sorted(folder.glob(f"{split}*.parquet")),
        *sorted(folder.glob(f"{split}/*.parquet")),
    ]
    for path in candidates:
        if path.is_dir() and (path / "dataset_info.json").is_file():
            return path
        if path.is_file():
            return path.parent if path.suffix == ".parquet" else path
    fetched = _download(name, split, folder)
    if fetched is None:
        return source_files(name, split, directory)
    raise DataFileMissing(
        f"{name} split {split!r} is missing and could not be downloaded ({fetched}): "
        f"looked in {folder} for {split}.jsonl, "
        f"{split}*.parquet or a save_to_disk folder {split}/. It comes from "
        f"{SOURCES[name]['hub']}; download it where the hub is reachable and copy it there "
        "(or set SDLIB_DATA_DIR to the folder that holds it)."
    )


def _download(name: str, split: str, folder: Path) -> str | None:
    """Fetch a split from the hub into ``folder`` (None: done), or say why not."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "HF_HUB_OFFLINE=1"
    try:
        from huggingface_hub import snapshot_download

        pattern = SOURCES[name]["files"].format(split=split)
        snapshot_download(
            SOURCES[name]["repo"], repo_type="dataset", allow_patterns=[pattern],
            local_dir=str(folder),
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - offline, no huggingface_hub, no access: say so
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    nested = folder / "data"  # the hub's layout: move the parquet shards up
    if nested.is_dir():
        for shard in nested.glob(f"{split}-*.parquet"):
            shard.rename(folder / shard.name)
    found = list(folder.glob(f"{split}*.parquet")) + list(folder.glob(f"{split}.jsonl"))
    return None if found else "the download held no such file"


def read_rows(path: Path, split: str) -> list[dict[str, Any]]:
    """The rows of a JSONL file, of a split's parquet files, or of a save_to_disk folder."""
    if path.is_file():
        import gzip

        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if (path / "dataset_info.json").is_file():
        from datasets import load_from_disk

        return list(load_from_disk(str(path)))
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading parquet needs pyarrow: pip install pyarrow") from e
    files = sorted(path.glob(f"{split}*.parquet")) or sorted(path.glob("*.parquet"))
    rows: list[dict[str, Any]] = []
    for file in files:
        rows.extend(pq.read_table(file).to_pylist())
    return rows


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        h.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------------- APPS


def _json_field(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value) if value.strip() else None
    return value


def _as_text(value: Any) -> str:
    """APPS keeps some stdio inputs/outputs as lists of lines."""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value) + "\n"
    return str(value)


def apps_problem(row: dict[str, Any], split: str) -> Problem | None:
    """One APPS row as a Problem; None when it has no tests."""
    io = _json_field(row.get("input_output")) or {}
    inputs, outputs = io.get("inputs") or [], io.get("outputs") or []
    if not inputs or len(inputs) != len(outputs):
        return None
    solutions = _json_field(row.get("solutions")) or []
    starter = row.get("starter_code") or ""
    fn = io.get("fn_name")
    setup = ""
    if fn:
        tests = tuple(
            TestCase(kind="call", inputs=tuple(i), expected=o, oracle="apps")
            for i, o in zip(inputs, outputs)
        )
        if "class Solution" in starter:  # LeetCode-style: a method of Solution
            setup = f"def {fn}(*args):\n    return Solution().{fn}(*args)\n"
    else:
        tests = tuple(
            TestCase(kind="stdio", inputs=(_as_text(i),), expected=_as_text(o))
            for i, o in zip(inputs, outputs)
        )
    question = row.get("question") or ""
    return Problem(
        task_id=f"apps/{row['problem_id']}",  # unique beside MBPP's numeric ids
        benchmark="apps",
        split=split,  # type: ignore[arg-type]
        text=question.strip(),
        prompt=starter,
        entry_point=fn or "",
        reference=solutions[0] if solutions else "",
        tests=tests,
        setup=setup,
        checkable=not several_answers(question),
        difficulty=row.get("difficulty") or "",
        preamble=APPS_PREAMBLE,
    )


# ------------------------------------------------------------------------- CodeContests


def _tests(block: Any) -> list[tuple[str, str]]:
    if not block:
        return []
    return list(zip(block.get("input") or [], block.get("output") or []))


def codecontests_problem(row: dict[str, Any], split: str) -> Problem | None:
    """One CodeContests row as a Problem; None when it has no tests."""
    pairs = _tests(row.get("public_tests")) + _tests(row.get("private_tests"))
    pairs += _tests(row.get("generated_tests"))
    if not pairs:
        return None
    solutions = row.get("solutions") or {}
    python = [
        code
        for lang, code in zip(solutions.get("language") or [], solutions.get("solution") or [])
        if lang == PYTHON3
    ]
    limit = row.get("time_limit") or {}
    seconds = (limit.get("seconds") or 0) + (limit.get("nanos") or 0) / 1e9
    memory = row.get("memory_limit_bytes") or 0
    rating = row.get("cf_rating") or 0
    description = row.get("description") or ""
    return Problem(
        task_id=str(row["name"]),
        benchmark="codecontests",
        split=split,  # type: ignore[arg-type]
        text=description.strip(),
        prompt="",
        entry_point="",
        reference=python[0] if python else "",
        tests=tuple(TestCase(kind="stdio", inputs=(i,), expected=o) for i, o in pairs),
        time_limit=seconds or None,
        memory_mb=int(memory) >> 20 or None,
        checkable=not several_answers(description),
        difficulty=str(rating or row.get("difficulty") or ""),
    )


# ----------------------------------------------------------------------------- loading


def load(
    name: str,
    split: str = "train",
    difficulty: str | None = None,
    directory: str | os.PathLike[str] | None = None,
    verified: bool = True,
    include_uncheckable: bool = False,
    limit: int | None = None,
) -> list[Problem]:
    """A source's problems. ``verified``: only those whose reference passes its own tests
    in the sandbox (checked once, cached); ``difficulty``: APPS's level or, for
    CodeContests, its rating as text; ``limit``: the first problems (before verifying)."""
    path = source_files(name, split, directory)
    parse = apps_problem if name == "apps" else codecontests_problem
    counts: Counter = Counter()
    problems: list[Problem] = []
    for row in read_rows(path, split):
        problem = parse(row, split)
        if problem is None:
            counts["no_tests"] += 1
            continue
        if difficulty is not None and problem.difficulty != str(difficulty):
            continue
        if not problem.reference.strip():
            counts["no_python_reference"] += 1
            continue
        if not problem.checkable and not include_uncheckable:
            counts["several_answers"] += 1
            continue
        problems.append(problem)
        if limit is not None and len(problems) >= limit:
            break
    if verified:
        passing = _verified(name, split, path, problems)
        counts["reference_fails"] += sum(1 for p in problems if not passing.get(p.task_id))
        problems = [p for p in problems if passing.get(p.task_id)]
    _DROPPED[(name, split)] = counts
    return problems


def dropped(name: str, split: str = "train") -> dict[str, int]:
    """What the last ``load`` of a split left out, by reason (no tests, no Python 3
    reference, several valid answers, a reference that fails its own tests)."""
    return dict(_DROPPED.get((name, split), {}))


def _cache_path(name: str, split: str, path: Path) -> Path:
    return cache_dir() / f"verified-{name}-{split}-{_digest(path)}-v{VERIFY_VERSION}.json"


def _verified(name: str, split: str, path: Path, problems: list[Problem]) -> dict[str, bool]:
    """Whether each problem's reference passes its own tests, computed for the problems not
    cached yet (one sandbox run each) and cached."""
    target = _cache_path(name, split, path)
    known: dict[str, bool] = json.loads(target.read_text()) if target.is_file() else {}
    todo = [p for p in problems if p.task_id not in known]
    if todo:
        known.update(verify_references(todo))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(known))
        tmp.replace(target)
    return known


def verify_references(problems: list[Problem]) -> dict[str, bool]:
    """Run each problem's reference on its tests (fail-fast): task id -> passed."""
    from sdlib.execution.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout=10.0)) as sandbox:
        jobs = [(p, p.with_preamble(p.reference)) for p in problems]
        verdicts = sandbox.run_many(jobs, fail_fast=True)
    return {p.task_id: v.ok for p, v in zip(problems, verdicts)}
