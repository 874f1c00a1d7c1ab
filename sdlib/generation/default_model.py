"""The embedded default model: a tiny causal LM built locally so every stage gets real data.

Model hubs are unreachable here and on many clusters, so the default run trains its own
model (sdlib.generation.tiny_model) on the *training split only*: MBPP train problems' prompts and
reference solutions, plus refinement chats made from real failures of simple mutants of those
references (the wrong code, its real sandbox feedback, a templated explanation naming the
mutation, and the reference as the fix). Its samples are then sometimes right and often nearly
right, and it answers refinement prompts in the expected layout.

Its scores say nothing about the method.
"""

from __future__ import annotations

from pathlib import Path

from sdlib.data import benchmarks
from sdlib.data.mutants import mutants
from sdlib.execution.problems import Problem
from sdlib.execution.sandbox import Sandbox
from sdlib.execution.verdict import Verdict
from sdlib.prompting import prompts
from sdlib.runs.context import training_problems
from sdlib.runs.params import RunParams, TinyModel

HINTS = {
    "flip_compare": "a comparison is reversed",
    "off_by_one": "a constant is off by one",
    "swap_binop": "an arithmetic operator is wrong",
    "return_none": "the function returns None instead of computing the result",
}


def synthetic_explanation(kind: str, verdict: Verdict) -> str:
    hint = HINTS[kind]
    if verdict.status == "fail" and verdict.expected:
        return (
            f"The code returns {verdict.actual} for `{verdict.failed_test}` where "
            f"{verdict.expected} is expected: {hint}."
        )
    if verdict.status == "timeout":
        return f"The code does not finish in time: {hint}."
    return f"The code fails with {verdict.error_type or verdict.status}: {hint}."


def warm_start_pairs(
    problems: list[Problem], sandbox: Sandbox, max_mutants: int = 2
) -> list[tuple[str, str]]:
    """(prompt, target) pairs: code generation, then Refine and Expl.+Refine chats."""
    pairs = [
        (prompts.initial_prompt(p, (), None, "base"), prompts.base_completion(p.reference))
        for p in problems
    ]
    jobs = []
    for problem in problems:
        for kind, program in list(mutants(problem.reference, problem.entry_point).items())[
            :max_mutants
        ]:
            jobs.append((problem, kind, program))
    verdicts = sandbox.run_many([(p, prog) for p, _, prog in jobs])
    for (problem, kind, program), verdict in zip(jobs, verdicts):
        if verdict.ok:
            continue
        feedback = prompts.format_feedback(verdict)
        for mode in ("refine", "expl_refine"):
            messages = prompts.refine_messages(problem, program, feedback, mode)
            explanation = synthetic_explanation(kind, verdict) if mode == "expl_refine" else ""
            pairs.append(
                (
                    prompts.render_chat(messages, None),
                    prompts.format_answer(problem.reference, explanation),
                )
            )
    return pairs


def build_default_model(
    params: RunParams,
    sandbox: Sandbox,
    out_root: Path | None = None,
    tiny: TinyModel | None = None,
) -> Path:
    """Build (or reuse, if already built from the same config and data) the tiny model of
    ``tiny`` (default: the run's model's; a tiny teacher beside a real model has its own)."""
    from sdlib.generation.tiny_model import TinyModelConfig, build_tiny_model

    tiny = tiny or params.model.tiny
    config = TinyModelConfig(
        seed=params.seed,
        vocab_size=tiny.vocab_size,
        hidden=tiny.hidden,
        intermediate=tiny.intermediate,
        layers=tiny.layers,
        heads=tiny.heads,
        lr=tiny.lr,
        batch=tiny.batch_size,
        steps=tiny.steps,
        max_len=tiny.max_len,
        n_problems=tiny.n_problems,
    )
    corpus = benchmarks.load("mbpp", directory=params.data_directory())
    texts = [f"{p.text}\n{p.reference}" for p in corpus if p.split in ("train", "validation")]
    # warm-started on function problems (its mutants need an entry point to break)
    problems = [p for p in training_problems(params) if not p.stdio][: tiny.n_problems]
    pairs = warm_start_pairs(problems, sandbox)
    out_root = out_root or params.run_dir().parent / "_models"
    out_dir = out_root / f"tiny-{config.hash(str(len(pairs)))}"
    return build_tiny_model(texts, pairs, out_dir, config)
