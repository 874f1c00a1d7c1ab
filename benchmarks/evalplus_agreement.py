"""Do sdlib's verdicts agree with EvalPlus's own evaluator?

Samples: every reference solution of HumanEval+ and MBPP+ and its simple mutants
(sdlib.data.mutants). Each is judged by ``sdlib.execution.sandbox`` and by ``evalplus.evaluate.check_correctness``
(the function behind ``evalplus.evaluate``), base + plus inputs. Prints the agreement and every
disagreement.

    SDLIB_DATA_DIR=../shared/data .venv/bin/python benchmarks/evalplus_agreement.py [--tasks N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdlib.data import benchmarks  # noqa: E402
from sdlib.data.datafiles import data_dir  # noqa: E402

# EvalPlus reads these when it is first imported.
os.environ.setdefault(
    "HUMANEVAL_OVERRIDE_PATH", str(data_dir() / benchmarks.DATA_FILES["humaneval+"])
)
os.environ.setdefault("MBPP_OVERRIDE_PATH", str(data_dir() / benchmarks.DATA_FILES["mbpp+"]))
from sdlib.data.mutants import mutants  # noqa: E402
from sdlib.execution.sandbox import Sandbox, SandboxConfig  # noqa: E402


def _evalplus_problems(benchmark: str) -> tuple[dict, str]:
    # EvalPlus may have been imported before the variables above were set (sdlib imports
    # evalplus.data.mbpp to decode MBPP+ inputs): point its modules at the files as well.
    import evalplus.data.humaneval as humaneval_data
    import evalplus.data.mbpp as mbpp_data

    humaneval_data.HUMANEVAL_OVERRIDE_PATH = os.environ["HUMANEVAL_OVERRIDE_PATH"]
    mbpp_data.MBPP_OVERRIDE_PATH = os.environ["MBPP_OVERRIDE_PATH"]
    if benchmark == "humaneval+":
        return humaneval_data.get_human_eval_plus(), "humaneval"
    return mbpp_data.get_mbpp_plus(), "mbpp"


def samples_for(benchmark: str, tasks: int | None) -> list[tuple[str, str, str]]:
    """(task_id, kind, program): the reference and its mutants, for the first ``tasks`` tasks."""
    problems = benchmarks.load(benchmark)[:tasks]
    out = []
    for problem in problems:
        out.append((problem.task_id, "reference", problem.reference))
        for kind, program in mutants(problem.reference, problem.entry_point).items():
            out.append((problem.task_id, kind, program))
    return out


def evalplus_passes(
    benchmark: str, samples: list[tuple[str, str, str]], workers: int
) -> list[bool]:
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.evaluate import check_correctness, get_groundtruth

    problems, dataset = _evalplus_problems(benchmark)
    wanted = {task for task, _, _ in samples}
    problems = {k: v for k, v in problems.items() if k in wanted}
    not_none = MBPP_OUTPUT_NOT_NONE_TASKS if dataset == "mbpp" else []
    tag = f"sdlib-agreement-{dataset}-{len(problems)}-{abs(hash(tuple(sorted(problems)))) % 10**8}"
    expected = get_groundtruth(problems, tag, not_none)

    def judge(item: tuple[int, tuple[str, str, str]]) -> bool:
        index, (task, _, program) = item
        result = check_correctness(dataset, index, problems[task], program, expected[task])
        return result["base"][0] == "pass" and result["plus"][0] == "pass"

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(judge, enumerate(samples)))


def sdlib_passes(benchmark: str, samples: list[tuple[str, str, str]], workers: int) -> list[bool]:
    problems = benchmarks.load_by_id(benchmark)
    with Sandbox(SandboxConfig(workers=workers)) as sandbox:
        verdicts = sandbox.run_many([(problems[t], p) for t, _, p in samples])
    return [v.ok for v in verdicts]


def compare(benchmark: str, tasks: int | None = None, workers: int = 2) -> dict:
    samples = samples_for(benchmark, tasks)
    start = time.perf_counter()
    ours = sdlib_passes(benchmark, samples, workers)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = evalplus_passes(benchmark, samples, workers)
    theirs_s = time.perf_counter() - start
    disagreements = [
        {"task_id": t, "kind": k, "sdlib": a, "evalplus": b}
        for (t, k, _), a, b in zip(samples, ours, theirs)
        if a != b
    ]
    return {
        "benchmark": benchmark,
        "samples": len(samples),
        "agree": len(samples) - len(disagreements),
        "disagreements": disagreements,
        "sdlib_pass": sum(ours),
        "evalplus_pass": sum(theirs),
        "sdlib_seconds": round(ours_s, 1),
        "evalplus_seconds": round(theirs_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=None, help="first N tasks of each benchmark")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--benchmarks", default="humaneval+,mbpp+")
    args = parser.parse_args()
    for benchmark in args.benchmarks.split(","):
        report = compare(benchmark, args.tasks, args.workers)
        rate = 100 * report["agree"] / max(1, report["samples"])
        print(
            f"{benchmark}: {report['agree']}/{report['samples']} verdicts agree ({rate:.2f}%); "
            f"passes sdlib {report['sdlib_pass']}, evalplus {report['evalplus_pass']}; "
            f"time sdlib {report['sdlib_seconds']}s, evalplus {report['evalplus_seconds']}s"
        )
        for item in report["disagreements"]:
            print(
                f"  {item['task_id']} {item['kind']}: sdlib={item['sdlib']} evalplus={item['evalplus']}"
            )


if __name__ == "__main__":
    main()
