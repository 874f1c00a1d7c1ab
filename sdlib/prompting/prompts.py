"""Every prompt the workbench shows a model (the parser of its answers is ``parsing``).

Templates live here as module-level constants (and in ``TEMPLATES``, which each run writes into
its manifest), so that a change of wording is one diff and every result records what it saw.

Two prompt styles:

* ``base``: a few-shot completion prompt for pre-trained models (the method samples wrong
  solutions with a 3-shot prompt). It ends with an opened ```` ```python ```` fence, so the model
  writes the whole program and closes the fence; generation stops at ``STOP_BASE``.
* ``chat``: messages rendered with the tokenizer's chat template, or with the plain layout below
  when there is none (a tiny base model is trained on that layout).

Plain chat layout (``render_chat`` without a chat template)::

    ### User:
    <content>

    ### Assistant:
    <content>

    ### User:
    <content>

    ### Assistant:
    <- the generation prompt ends here ("### Assistant:\\n")

Turns are joined by one blank line; a turn's content loses its leading blank lines and trailing
whitespace. The final assistant answer is therefore exactly the text after the generation
prompt, which is what ``split_chat_for_training`` relies on. Generation stops at EOS (SFT
appends it to the completion) or at ``STOP_PLAIN_CHAT``.

Refinement follows the method's chat layout: the wrong solution sits in the history as the
assistant's first answer, the next user turn carries the execution feedback and the instruction
("refine": fixed code only; "expl_refine": a short explanation, then the fixed code).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from sdlib.execution.problems import Problem
from sdlib.execution.verdict import Verdict, cap
from sdlib.prompting.parsing import ParsedResponse, clean_block, split_response

__all__ = [
    "TEMPLATES",
    "STOP_BASE",
    "STOP_PLAIN_CHAT",
    "ParsedResponse",
    "task_description",
    "initial_prompt",
    "initial_messages",
    "base_completion",
    "format_answer",
    "format_feedback",
    "refine_messages",
    "add_refine_turn",
    "render_chat",
    "split_chat_for_training",
    "split_response",
    "assemble_program",
]

Style = Literal["base", "chat"]
RefineMode = Literal["refine", "expl_refine"]
Message = dict[str, str]

# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------

# The task as both styles show it (MBPP's customary wording, as in the bigcode harness).
TASK_TEXT = "You are an expert Python programmer, and here is your task: {text}\n"
# Used when a problem has a signature but no separate task text (or the text is the docstring).
TASK_TEXT_FROM_SIGNATURE = "Complete the following Python function."
# HumanEval-style problems: the model writes the whole function, so its answer stands alone
# (``assemble_program`` adds the prompt's imports and helpers back).
TASK_SIGNATURE = (
    "Write the complete function, starting from this signature and docstring:\n"
    "```python\n{prompt}\n```\n"
)
TASK_TESTS = "Your code should pass these tests:\n\n{tests}\n"
# Stdin/stdout problems (APPS, CodeContests): the statement holds the format and examples.
STDIO_INSTRUCTION = (
    "Write a complete Python program that reads the input from standard input and writes "
    "the answer to standard output."
)
# Call-based problems with starter code but no docstring (APPS): complete the starter code.
TASK_STARTER = "Complete this starter code:\n```python\n{prompt}\n```\n"

# Base style: each few-shot example is the task followed by its reference code in a fence; the
# prompt ends with the target task and an opened fence (a token boundary: "```python\n").
FEW_SHOT_EXAMPLE = "{task}\n```python\n{code}\n```\n\n"
BASE_PROMPT_END = "{task}\n```python\n"
STOP_BASE: tuple[str, ...] = ("\n```",)

# Chat style: the first user turn (also the first turn of every refinement chat).
CHAT_TASK = "{task}\nWrite your solution as Python code in one ```python block."
# How an assistant turn holds code (the wrong solution in the history, SFT targets).
ASSISTANT_CODE = "```python\n{code}\n```"
ASSISTANT_EXPLANATION_CODE = "{explanation}\n\n```python\n{code}\n```"

# The user turn after a wrong solution.
FEEDBACK_TURN = "Your code is wrong. Execution feedback:\n{feedback}\n\n{instruction}"
REFINE_INSTRUCTION = (
    "Fix the code. Reply with only the fixed code in one ```python block, without explanation."
)
EXPL_REFINE_INSTRUCTION = (
    "First explain briefly why the code is wrong. Then give the fixed code in one ```python block."
)
INSTRUCTIONS: dict[str, str] = {
    "refine": REFINE_INSTRUCTION,
    "expl_refine": EXPL_REFINE_INSTRUCTION,
}

# Feedback text built from a Verdict (the method: error line, "Timeout", or the first failed
# test with expected vs actual output).
FEEDBACK_FAILED_TEST = "Failed test: {test}"
FEEDBACK_EXPECTED_ACTUAL = "Expected: {expected}\nActual: {actual}"
FEEDBACK_WRONG_ANSWER = "The program gave a wrong answer."
FEEDBACK_TIMEOUT = "Timeout: the program did not finish within the time limit."
FEEDBACK_MEMORY = "MemoryError: the program exceeded the memory limit."
FEEDBACK_CRASH = "The program crashed ({error_type})."
FEEDBACK_NO_CODE = "No code was found in the answer."
FEEDBACK_SANDBOX = "The program could not be run."
FEEDBACK_PASS = "All tests passed."

# Plain chat layout (no chat template).
PLAIN_TURN = "### {role}:\n{content}"
PLAIN_SEPARATOR = "\n\n"
PLAIN_GENERATION_PROMPT = "### Assistant:\n"
PLAIN_ROLES: dict[str, str] = {"system": "System", "user": "User", "assistant": "Assistant"}
# A base model continues the layout: a new header of any role ends its turn (Gemma 3 270M
# wrote "### Assistant:" after its code and went on to max_new_tokens).
STOP_PLAIN_CHAT: tuple[str, ...] = ("\n### User:", "\n### System:", "\n### Assistant:")

TEMPLATES: dict[str, str] = {
    "task_text": TASK_TEXT,
    "task_text_from_signature": TASK_TEXT_FROM_SIGNATURE,
    "task_signature": TASK_SIGNATURE,
    "task_tests": TASK_TESTS,
    "stdio_instruction": STDIO_INSTRUCTION,
    "task_starter": TASK_STARTER,
    "few_shot_example": FEW_SHOT_EXAMPLE,
    "base_prompt_end": BASE_PROMPT_END,
    "stop_base": repr(STOP_BASE),
    "chat_task": CHAT_TASK,
    "assistant_code": ASSISTANT_CODE,
    "assistant_explanation_code": ASSISTANT_EXPLANATION_CODE,
    "feedback_turn": FEEDBACK_TURN,
    "refine_instruction": REFINE_INSTRUCTION,
    "expl_refine_instruction": EXPL_REFINE_INSTRUCTION,
    "feedback_failed_test": FEEDBACK_FAILED_TEST,
    "feedback_expected_actual": FEEDBACK_EXPECTED_ACTUAL,
    "feedback_wrong_answer": FEEDBACK_WRONG_ANSWER,
    "feedback_timeout": FEEDBACK_TIMEOUT,
    "feedback_memory": FEEDBACK_MEMORY,
    "feedback_crash": FEEDBACK_CRASH,
    "feedback_no_code": FEEDBACK_NO_CODE,
    "feedback_sandbox": FEEDBACK_SANDBOX,
    "feedback_pass": FEEDBACK_PASS,
    "plain_turn": PLAIN_TURN,
    "plain_separator": PLAIN_SEPARATOR,
    "plain_generation_prompt": PLAIN_GENERATION_PROMPT,
    "plain_roles": repr(PLAIN_ROLES),
    "stop_plain_chat": repr(STOP_PLAIN_CHAT),
}

# --------------------------------------------------------------------------------------------
# Prompt builders
# --------------------------------------------------------------------------------------------


def _squash(text: str) -> str:
    return " ".join(text.split())


def signature(problem: Problem) -> str:
    """The problem's code prompt when it is one (HumanEval: imports, ``def``, docstring), else
    "" (MBPP's docstring-only prompt is task text, not a signature)."""
    prompt = clean_block(problem.prompt)
    return prompt if _definition(problem.entry_point, prompt) else ""


def _definition(entry_point: str, code: str, indented: bool = True) -> re.Match | None:
    """Where ``code`` defines the function ``entry_point`` (``indented``: a method counts)."""
    indent = r"\s*" if indented else ""
    return re.search(rf"^{indent}(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M)


def task_description(problem: Problem) -> str:
    """The task as a model reads it, as the benchmark's own papers prompt it.

    * A problem with a signature (HumanEval, HumanEval+): the instruction to complete the
      function, then the signature and docstring (its text *is* the docstring, shown once).
    * A text problem (MBPP): the task text, then every visible test (MBPP's customary prompt,
      Austin et al. 2021: all three tests; MBPP+ shows the one test of EvalPlus's prompt).
    * A stdin/stdout problem (APPS, CodeContests): the statement (its format and examples),
      then "read from standard input, write to standard output"; APPS's call-based problems
      show their starter code instead.
    """
    if problem.stdio:  # the statement carries the input/output format and examples
        return TASK_TEXT.format(text=problem.text.strip()) + STDIO_INSTRUCTION + "\n"
    code = signature(problem)
    text = _squash(problem.text)
    if code and (not text or text in _squash(code)):
        text = TASK_TEXT_FROM_SIGNATURE  # HumanEval's text is its docstring
    parts = [TASK_TEXT.format(text=text)]
    if code:
        template = TASK_SIGNATURE if '"""' in code or "'''" in code else TASK_STARTER
        parts.append(template.format(prompt=code))
    tests = [t.strip() for t in problem.visible_tests if t.strip()]
    if tests:
        parts.append(TASK_TESTS.format(tests="\n".join(tests)))
    return "".join(parts)


def base_completion(code: str) -> str:
    """What a base model should write after ``initial_prompt(style="base")``: code, then the
    closing fence (the SFT target for a correct initial solution)."""
    return clean_block(code) + "\n```"


def format_answer(code: str, explanation: str = "") -> str:
    """An assistant turn holding code (and optionally an explanation before it)."""
    code = clean_block(code)
    explanation = clean_block(explanation).strip()
    if explanation:
        return ASSISTANT_EXPLANATION_CODE.format(explanation=explanation, code=code)
    return ASSISTANT_CODE.format(code=code)


def _examples(problem: Problem, few_shot: Sequence[Problem]) -> list[Problem]:
    # A problem must never be its own example (MBPP's prompt split could be evaluated too),
    # and examples are of its kind: a stdin/stdout program for a stdin/stdout task.
    return [p for p in few_shot if p.key != problem.key and p.stdio == problem.stdio]


def initial_messages(problem: Problem, few_shot: Sequence[Problem] = ()) -> list[Message]:
    """Chat-style messages for a first attempt: each example as a user/assistant pair, then the
    task."""
    messages: list[Message] = []
    for example in _examples(problem, few_shot):
        messages.append(
            {"role": "user", "content": CHAT_TASK.format(task=task_description(example))}
        )
        messages.append({"role": "assistant", "content": format_answer(example.reference)})
    messages.append({"role": "user", "content": CHAT_TASK.format(task=task_description(problem))})
    return messages


def initial_prompt(
    problem: Problem,
    few_shot: Sequence[Problem] = (),
    tokenizer: Any = None,
    style: Style = "base",
) -> str:
    """The prompt for a first attempt at ``problem``.

    ``base``: few-shot completion text ending with "```python\\n" (the tokenizer is not needed).
    ``chat``: ``initial_messages`` rendered by ``render_chat`` with a generation prompt.
    """
    if style == "chat":
        return render_chat(initial_messages(problem, few_shot), tokenizer)
    if style != "base":
        raise ValueError(f"unknown prompt style {style!r}; expected 'base' or 'chat'")
    parts = [
        FEW_SHOT_EXAMPLE.format(task=task_description(ex), code=clean_block(ex.reference))
        for ex in _examples(problem, few_shot)
    ]
    parts.append(BASE_PROMPT_END.format(task=task_description(problem)))
    return "".join(parts)


def format_feedback(verdict: Verdict) -> str:
    """The feedback a refinement prompt shows for ``verdict``, capped in length.

    Built from the structured fields so the wording is the same whatever produced the verdict;
    ``verdict.feedback`` (the sandbox's error line) is used where only it knows the message.
    """
    status = verdict.status
    own = verdict.feedback.strip()
    test = verdict.failed_test.strip()
    test_line = FEEDBACK_FAILED_TEST.format(test=test) if test else ""

    def with_test(message: str) -> str:
        if test_line and test not in message:
            return f"{test_line}\n{message}"
        return message

    if status == "pass":
        text = FEEDBACK_PASS
    elif status == "fail":
        if verdict.expected or verdict.actual:
            text = with_test(
                FEEDBACK_EXPECTED_ACTUAL.format(expected=verdict.expected, actual=verdict.actual)
            )
        else:
            text = with_test(own or FEEDBACK_WRONG_ANSWER)
    elif status == "timeout":
        text = with_test(FEEDBACK_TIMEOUT)
    elif status == "memory":
        text = with_test(FEEDBACK_MEMORY)
    elif status == "syntax":
        text = own or verdict.error_type or "SyntaxError"
    elif status == "error":
        text = with_test(own or verdict.error_type or "Error")
    elif status == "crash":
        text = with_test(own or FEEDBACK_CRASH.format(error_type=verdict.error_type or "unknown"))
    elif status == "no_code":
        text = own or FEEDBACK_NO_CODE
    else:  # sandbox_error and anything newer: never blame the program for the harness
        text = own or FEEDBACK_SANDBOX
    return cap(text)


def add_refine_turn(
    messages: Sequence[Message], wrong_code: str, feedback: str, mode: RefineMode
) -> list[Message]:
    """``messages`` plus the wrong code as an assistant turn and the feedback + instruction as
    the next user turn (also the step of iterative refinement)."""
    if mode not in INSTRUCTIONS:
        raise ValueError(f"unknown refinement mode {mode!r}; expected one of {list(INSTRUCTIONS)}")
    turn = FEEDBACK_TURN.format(feedback=clean_block(feedback), instruction=INSTRUCTIONS[mode])
    return [
        *messages,
        {"role": "assistant", "content": format_answer(wrong_code)},
        {"role": "user", "content": turn},
    ]


def refine_messages(
    problem: Problem, wrong_code: str, feedback: str, mode: RefineMode
) -> list[Message]:
    """The refinement chat: user (task), assistant (wrong code), user (feedback + instruction)."""
    task = {"role": "user", "content": CHAT_TASK.format(task=task_description(problem))}
    return add_refine_turn([task], wrong_code, feedback, mode)


def _has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render_chat(
    messages: Sequence[Message], tokenizer: Any = None, add_generation_prompt: bool = True
) -> str:
    """Messages as text: the tokenizer's chat template when it has one, else the plain layout
    (see the module docstring), which depends on nothing but the messages."""
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
        )
    turns = [
        PLAIN_TURN.format(
            role=PLAIN_ROLES.get(m.get("role", ""), str(m.get("role", "")).capitalize()),
            content=clean_block(str(m.get("content", ""))),
        )
        for m in messages
    ]
    if add_generation_prompt:
        turns.append(PLAIN_GENERATION_PROMPT)
    return PLAIN_SEPARATOR.join(turns)


def split_chat_for_training(
    messages: Sequence[Message], final_answer: str, tokenizer: Any = None
) -> tuple[str, str]:
    """(prompt, completion) for SFT, so that loss falls only on the final assistant answer.

    ``prompt + completion`` is the whole rendered chat; the wrong code in the history belongs to
    the prompt. The completion carries the template's end-of-turn text, if any.
    """
    if messages and messages[-1].get("role") == "assistant":
        raise ValueError("messages must end before the final answer (with a user turn)")
    full_messages = [*messages, {"role": "assistant", "content": final_answer}]
    full = render_chat(full_messages, tokenizer, add_generation_prompt=False)
    prompt = render_chat(messages, tokenizer, add_generation_prompt=True)
    if full.startswith(prompt):
        return prompt, full[len(prompt) :]
    # Some templates render the last assistant turn differently from the generation prompt
    # (reasoning tags, say): cut just before the answer, so the loss still covers only it.
    answer = clean_block(final_answer).strip()
    at = full.rfind(answer) if answer else -1
    if at < 0:
        raise ValueError("the chat template changed the final answer; cannot split it off")
    return full[:at], full[at:]


def assemble_program(problem: Problem, code: str) -> str:
    """The program to run for extracted ``code``.

    Prompts ask for whole functions; HumanEval-style prompts may carry imports and helpers
    before the entry point, which the answer usually omits, so they are put back in front. A
    bare body (no definition of the entry point) is completed EvalPlus-style: prompt + code.
    """
    return problem.with_preamble(_assembled(problem, code))


def _assembled(problem: Problem, code: str) -> str:
    if not problem.prompt.strip() or not problem.entry_point:
        return code
    if not _definition(problem.entry_point, code):
        return problem.program_from_completion(code)
    head = _definition(problem.entry_point, problem.prompt, indented=False)
    prefix = problem.prompt[: head.start()].strip("\n") if head else ""
    if not prefix.strip() or prefix.strip() in code:
        return code
    return f"{prefix}\n\n\n{code}"
