"""How fast APPS-sized sources load and verify: N problems in APPS's public schema (the
test fixtures, repeated under new ids), read from JSONL, parsed, and one reference each run
on its own tests in the sandbox (the check every load does once, then caches).

    python benchmarks/competitive_speed.py [--problems 5000] [--workers 2]

Prints problems/s and tests/s for parsing, for verifying (cold cache) and for a cached load.
The fixtures' programs are short: real APPS references run longer, so verifying real data is
slower per test by what their own computing costs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from competitive_fixtures import apps_rows  # noqa: E402

from sdlib.data import competitive  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", type=int, default=5000)
    args = parser.parse_args()
    base = [r for r in apps_rows() if r["input_output"]]
    rows = []
    for k in range(args.problems):
        row = dict(base[k % len(base)], problem_id=k)
        row["question"] = f"{row['question']} (copy {k})"  # distinct problems
        rows.append(row)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "apps"
        folder.mkdir()
        (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.environ["SDLIB_CACHE_DIR"] = str(Path(tmp) / "cache")
        start = time.perf_counter()
        parsed = competitive.load("apps", "train", directory=tmp, verified=False)
        t_parse = time.perf_counter() - start
        tests = sum(len(p.tests) for p in parsed)
        start = time.perf_counter()
        verified = competitive.load("apps", "train", directory=tmp)
        t_verify = time.perf_counter() - start
        start = time.perf_counter()
        competitive.load("apps", "train", directory=tmp)
        t_cached = time.perf_counter() - start
    n = len(parsed)
    print(
        f"{n} problems, {tests} tests ({len(verified)} verified; dropped {competitive.dropped('apps')})"
    )
    print(
        f"parse:  {t_parse:6.2f} s  {n / t_parse:8.0f} problems/s  {tests / t_parse:9.0f} tests/s"
    )
    print(
        f"verify: {t_verify:6.2f} s  {n / t_verify:8.0f} problems/s  {tests / t_verify:9.0f} tests/s (cold cache)"
    )
    print(f"cached: {t_cached:6.2f} s  {n / t_cached:8.0f} problems/s")


if __name__ == "__main__":
    main()
