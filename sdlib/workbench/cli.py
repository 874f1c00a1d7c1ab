"""The ``sdlib`` command. Sub-commands import their modules lazily so that ``sdlib evaluate``
starts without touching torch or transformers."""

from __future__ import annotations

import argparse
import sys

from sdlib.runs.layout import RunLayout


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
    ev.add_argument(
        "--test-details",
        action="store_true",
        help="run every test of a failing sample (passed = all it passes); by default a "
        "sample stops at its first failing test, as in EvalPlus",
    )

    ev.add_argument(
        "--isolation",
        default="auto",
        choices=["auto", "namespaces", "unprivileged", "none"],
        help="sandbox isolation (default auto; see `sdlib doctor`)",
    )
    ev.add_argument(
        "--require",
        default="",
        help="comma list of guarantees the machine must give or nothing runs: "
        "filesystem,network,processes,ipc",
    )

    doc = sub.add_parser(
        "doctor", help="what this machine's sandbox contains, checked by hostile programs"
    )
    doc.add_argument(
        "--isolation", default="auto", choices=["auto", "namespaces", "unprivileged", "none"]
    )
    doc.add_argument("--json", action="store_true", help="print the report as JSON")

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

    tr = sub.add_parser(
        "train",
        help="run the sft or rl stage directly, e.g. under accelerate launch (multi-GPU)",
        description="Train one stage without papermill: `accelerate launch [--config_file "
        "configs/accelerate/multi_gpu.yaml] -m sdlib.workbench.cli train sft PARAMS.yaml --run-dir DIR`. "
        "Every process runs this; only the main one writes files and prints the summary.",
    )
    tr.add_argument("stage", choices=["sft", "rl"])
    tr.add_argument("params", metavar="PARAMS.yaml", help="run parameters (see params/)")
    tr.add_argument(
        "--run-dir",
        default=None,
        help="the run folder holding filter/ (default: OUTPUT_DIR/RUN_NAME of the params)",
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def train_main(args: argparse.Namespace) -> int:
    """``sdlib train``: one training stage in this process (one of N under accelerate)."""
    import json
    from pathlib import Path

    from sdlib.runs.params import ParamsError, load

    try:
        params = load(args.params)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else params.run_dir()
    if not RunLayout(run_dir).filter.is_dir():
        print(
            f"error: {run_dir / 'filter'} is missing: run the collect and filter stages first "
            f"(sdlib run {args.params} --stages collect,filter)",
            file=sys.stderr,
        )
        return 2
    import torch
    from accelerate import PartialState

    # gloo between CPU processes when there is no GPU: the same code path as multi-GPU
    state = PartialState(cpu=not torch.cuda.is_available())
    if args.stage == "sft":
        from sdlib.training.sft import run_sft as train
    else:
        from sdlib.training.rl import run_rl as train
    summary = train(params, run_dir, progress=not args.quiet)
    sys.stderr.write(  # one write: the processes share the terminal
        f"process {state.process_index}/{state.num_processes}: {args.stage} done, "
        f"trainable_checksum={summary.get('trainable_checksum')!r}\n"
    )
    sys.stderr.flush()
    if state.is_main_process:
        shown = {k: v for k, v in summary.items() if k not in ("reward_config", "ppo_config")}
        print(json.dumps({"stage": args.stage, "run_dir": str(run_dir), **shown}, indent=1))
    state.wait_for_everyone()
    state.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        from sdlib.data.datafiles import DataFileMissing
        from sdlib.execution.sandbox import SandboxUnavailable
        from sdlib.workbench.evaluate import main as evaluate_main

        try:
            return evaluate_main(args)
        except (DataFileMissing, SandboxUnavailable, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "run":
        from sdlib.runs.params import ParamsError
        from sdlib.workbench.runner import RunError, run

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
    if args.command == "train":
        return train_main(args)
    if args.command == "doctor":
        from sdlib.execution.doctor import main as doctor_main

        return doctor_main(["--isolation", args.isolation] + (["--json"] if args.json else []))
    return 2


if __name__ == "__main__":
    sys.exit(main())
