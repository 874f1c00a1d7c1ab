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

    rn = sub.add_parser("run", help="run a workbench's stage notebooks with papermill")
    rn.add_argument("params", metavar="PARAMS.yaml", help="run parameters (see params/)")
    rn.add_argument(
        "--stages",
        default=None,
        help="comma list of stages to run (default: the params' stages): "
        "collect,filter,sft,rl,eval,human_study",
    )
    rn.add_argument("--run-name", default=None, help="override the params' run_name")
    rn.add_argument("--force", action="store_true", help="rerun the selected stages even when done")
    rn.add_argument(
        "--notebooks-dir", default="notebooks", help="stage notebooks (default: notebooks)"
    )
    rn.add_argument("--kernel", default="python3", help="Jupyter kernel (default: python3)")
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
    if args.command == "run":
        from .params import ParamsError
        from .runner import RunError, run

        try:
            result = run(
                args.params,
                stages=args.stages,
                run_name=args.run_name,
                force=args.force,
                notebooks_dir=args.notebooks_dir,
                kernel=args.kernel,
            )
        except (ParamsError, RunError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return result.exit_code
    return 2


if __name__ == "__main__":
    sys.exit(main())
