"""One way to judge a model's answer, for every stage: parse the response, build the program,
run it in the sandbox, get its verdict. Collection, filtering, evaluation, RL and the human
study all call these, so an answer without code is judged alike everywhere: a counted
``no_code`` verdict over the problem's tests, never a crash and never a dropped record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sdlib.execution.problems import Problem
from sdlib.execution.verdict import Verdict
from sdlib.prompting import prompts
from sdlib.prompting.parsing import ParsedResponse, split_response


@dataclass(frozen=True)
class ReadAnswer:
    """A response split into its parts, with the program that would run (None: no code)."""

    parsed: ParsedResponse
    code: str | None  # the extracted code; code that does not compile is kept (it runs
    # for a SyntaxError verdict rather than counting as "no code")
    program: str | None

    @property
    def explanation(self) -> str:
        return self.parsed.explanation

    @property
    def parse_reason(self) -> str:
        return self.parsed.reason


def read_answer(problem: Problem, response: str) -> ReadAnswer:
    parsed = split_response(response, problem.entry_point)
    code = parsed.code or parsed.broken_code
    program = prompts.assemble_program(problem, code) if code else None
    return ReadAnswer(parsed, code, program)


def no_code_verdict(problem: Problem, reason: str = "") -> Verdict:
    """The verdict of an answer with no code: every test of the problem failed."""
    return Verdict(status="no_code", total=len(problem.tests), feedback=reason or "no code")


def judge_programs(
    sandbox,
    jobs: Sequence[tuple[Problem, str | None]],
    reasons: Sequence[str] | None = None,
    progress: bool | str = False,
) -> list[Verdict]:
    """Verdicts in order; a job without a program gets ``no_code_verdict`` (with its parse
    reason) and costs no sandbox run."""
    runnable = [i for i, (_, program) in enumerate(jobs) if program]
    ran = sandbox.run_many([jobs[i] for i in runnable], progress=progress) if runnable else []
    verdicts = dict(zip(runnable, ran, strict=True))
    return [
        verdicts[i] if i in verdicts else no_code_verdict(problem, reasons[i] if reasons else "")
        for i, (problem, _) in enumerate(jobs)
    ]
