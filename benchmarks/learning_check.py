"""Do the training stages learn? Checked on the embedded default (params/smoke.yaml).

    .venv/bin/python benchmarks/learning_check.py            # reuses finished stages
    .venv/bin/python benchmarks/learning_check.py --force    # retrains sft and rl

Runs collect, filter, sft and rl with ``sdlib.workbench.runner.run`` into ``outputs/learning-check``
(finished stages with unchanged params are skipped), then checks:

(a) SFT lowers the held-out loss on *refinement* records (Refine and Expl.+Refine chats held
    out of training; ``sft/metrics.json``: ``eval_loss_refinement_before/after``). The loss
    over all held-out records is printed too; code-generation records alone could hide a
    regression on refinements.
(b) RL raises the mean reward: ``rl/eval.json`` scores the policy on a fixed, seeded set of RL
    prompts with the same sampling seeds before and after RL (``rl.eval_prompts``). The
    per-step means of ``rl/metrics.jsonl`` are printed as well, but each step draws other
    prompts, so on a short run they are dominated by prompt difficulty and prove nothing.

Prints the numbers and exits 1 when a check fails. The tiny model's scores say nothing about
the method; this only shows that the training code moves the model the right way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"
if "SDLIB_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["SDLIB_DATA_DIR"] = str(SHARED_DATA)

STAGES = "collect,filter,sft,rl"


def check_sft(metrics: dict) -> tuple[bool, list[str]]:
    """(passed, report lines) for SFT's held-out refinement loss."""
    n = metrics["records"].get("held_out_refinements", 0)
    before, after = (
        metrics.get("eval_loss_refinement_before"),
        metrics.get("eval_loss_refinement_after"),
    )
    lines = [
        f"SFT held-out loss, all {metrics['records']['held_out']} records: "
        f"{metrics['eval_loss_before']:.4f} -> {metrics['eval_loss_after']:.4f}",
    ]
    if not n or before is None or after is None:
        return False, [*lines, "SFT held-out refinement records: none (cannot check)"]
    ok = after < before
    lines.append(
        f"SFT held-out loss, {n} refinement records: {before:.4f} -> {after:.4f} "
        f"({after - before:+.4f}) {'PASS' if ok else 'FAIL'}"
    )
    return ok, lines


def check_rl(evaluation: dict | None, steps: list[dict]) -> tuple[bool, list[str]]:
    """(passed, report lines) for RL's mean reward on the fixed prompt set."""
    lines = ["RL mean reward per step (different prompts each step): "
             + ", ".join(f"{m['reward_mean']:.2f}" for m in steps)]  # fmt: skip
    if evaluation is None:
        return False, [*lines, "RL eval.json missing: set rl.eval_prompts > 0"]
    before, after, diff = evaluation["before"], evaluation["after"], evaluation["difference"]
    ok = after["reward_mean"] > before["reward_mean"]
    se = diff["stderr"]
    lines += [
        f"RL fixed set: {evaluation['prompts']} prompts x {evaluation['samples_per_prompt']} "
        f"samples, same seeds before and after",
        f"  mean reward  {before['reward_mean']:.3f} -> {after['reward_mean']:.3f} "
        f"({diff['mean']:+.3f}, paired standard error {se:.3f}, "
        f"{diff['mean'] / se if se else float('inf'):.1f} SE) {'PASS' if ok else 'FAIL'}",
        f"  R_code       {before['r_code_mean']:.3f} -> {after['r_code_mean']:.3f}",
        f"  pass rate    {before['pass_rate']:.3f} -> {after['pass_rate']:.3f}",
        f"  no-code rate {before['no_code_rate']:.3f} -> {after['no_code_rate']:.3f}",
    ]
    if before["r_expl_mean"] is not None and after["r_expl_mean"] is not None:
        lines.append(f"  R_expl       {before['r_expl_mean']:.3f} -> {after['r_expl_mean']:.3f}")
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params" / "smoke.yaml"))
    parser.add_argument("--run-name", default="learning-check")
    parser.add_argument("--force", action="store_true", help="retrain sft and rl")
    args = parser.parse_args(argv)

    from sdlib.workbench.runner import run

    kwargs = {"run_name": args.run_name, "notebooks_dir": ROOT / "notebooks"}
    if args.force:
        result = run(args.params, stages="collect,filter", **kwargs)
        if result.ok:
            result = run(args.params, stages="sft,rl", force=True, **kwargs)
    else:
        result = run(args.params, stages=STAGES, **kwargs)
    if not result.ok:
        failed = result.failed
        print(f"stage {failed.stage} failed: {failed.error}", file=sys.stderr)
        return 1
    run_dir = result.run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    seconds = {s: manifest["stages"][s].get("seconds") for s in STAGES.split(",")}
    print(f"run folder: {run_dir}")
    print("stage seconds (as last run, notebook included): "
          + ", ".join(f"{s} {v:.0f}" for s, v in seconds.items() if v is not None))  # fmt: skip

    sft_ok, sft_lines = check_sft(json.loads((run_dir / "sft" / "metrics.json").read_text()))
    eval_file = run_dir / "rl" / "eval.json"
    evaluation = json.loads(eval_file.read_text()) if eval_file.is_file() else None
    steps = [
        json.loads(line) for line in (run_dir / "rl" / "metrics.jsonl").read_text().splitlines()
    ]
    rl_ok, rl_lines = check_rl(evaluation, steps)
    print("\n".join([*sft_lines, *rl_lines]))
    print("(embedded default model: its scores say nothing about the method)")
    failed = [name for name, ok in (("sft", sft_ok), ("rl", rl_ok)) if not ok]
    print("learning check:", "FAILED " + ", ".join(failed) if failed else "passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
