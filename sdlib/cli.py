"""The ``sdlib`` command. Sub-commands import their modules lazily so that ``sdlib evaluate``
starts without touching torch or transformers."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="judge a samples file (EvalPlus format) on a benchmark")
    ev.add_argument(
        "--benchmark", required=True, choices=["humaneval", "mbpp", "humaneval+", "mbpp+"]
    )
    ev.add_argument("--samples", required=True, help="JSONL: task_id + solution or completion")
    ev.add_argument("--out", required=True, help="JSONL results, one line per sample, in order")
    ev.add_argument("--timeout", type=float, default=10.0, help="seconds per program (default 10)")
    ev.add_argument(
        "--memory-mb", type=int, default=2048, help="address-space limit (default 2048)"
    )
    ev.add_argument(
        "--workers", type=int, default=0, help="sandbox workers (default: one per core)"
    )
    ev.add_argument("--data-dir", default=None, help="benchmark files (default $SDLIB_DATA_DIR)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        from .datafiles import DataFileMissing
        from .evaluate import main as evaluate_main

        try:
            return evaluate_main(args)
        except DataFileMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
