"""Every prompt the workbench shows a model, and the parser that reads the model's answers.

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

import ast
import re
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sdlib.execution.problems import Problem
from sdlib.execution.verdict import Verdict, cap

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
STOP_PLAIN_CHAT: tuple[str, ...] = ("\n### User:", "\n### System:")

TEMPLATES: dict[str, str] = {
    "task_text": TASK_TEXT,
    "task_text_from_signature": TASK_TEXT_FROM_SIGNATURE,
    "task_signature": TASK_SIGNATURE,
    "task_tests": TASK_TESTS,
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


def _clean_block(text: str) -> str:
    """Drop surrounding blank lines and trailing whitespace, keep the first line's indent."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip("\n").rstrip()


def task_description(problem: Problem) -> str:
    """The task as a model reads it: text, signature (when there is one) and visible tests."""
    text = _squash(problem.text)
    prompt = _clean_block(problem.prompt)
    if prompt and (not text or text in _squash(prompt)):
        # HumanEval's text is its docstring: showing it twice only costs tokens.
        text = TASK_TEXT_FROM_SIGNATURE
    parts = [TASK_TEXT.format(text=text)]
    if prompt:
        parts.append(TASK_SIGNATURE.format(prompt=prompt))
    tests = [t.strip() for t in problem.visible_tests if t.strip()]
    if tests:
        parts.append(TASK_TESTS.format(tests="\n".join(tests)))
    return "".join(parts)


def base_completion(code: str) -> str:
    """What a base model should write after ``initial_prompt(style="base")``: code, then the
    closing fence (the SFT target for a correct initial solution)."""
    return _clean_block(code) + "\n```"


def format_answer(code: str, explanation: str = "") -> str:
    """An assistant turn holding code (and optionally an explanation before it)."""
    code = _clean_block(code)
    explanation = _clean_block(explanation).strip()
    if explanation:
        return ASSISTANT_EXPLANATION_CODE.format(explanation=explanation, code=code)
    return ASSISTANT_CODE.format(code=code)


def _examples(problem: Problem, few_shot: Sequence[Problem]) -> list[Problem]:
    # A problem must never be its own example (MBPP's prompt split could be evaluated too).
    return [p for p in few_shot if p.key != problem.key]


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
        FEW_SHOT_EXAMPLE.format(task=task_description(ex), code=_clean_block(ex.reference))
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
    turn = FEEDBACK_TURN.format(feedback=_clean_block(feedback), instruction=INSTRUCTIONS[mode])
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
            content=_clean_block(str(m.get("content", ""))),
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
    answer = _clean_block(final_answer).strip()
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
    if not problem.prompt.strip():
        return code
    ep = re.escape(problem.entry_point)
    if not re.search(rf"^\s*(?:async\s+)?def\s+{ep}\s*\(", code, re.M):
        return problem.program_from_completion(code)
    head = re.search(rf"^(?:async\s+)?def\s+{ep}\s*\(", problem.prompt, re.M)
    prefix = problem.prompt[: head.start()].strip("\n") if head else ""
    if not prefix.strip() or prefix.strip() in code:
        return code
    return f"{prefix}\n\n\n{code}"


# --------------------------------------------------------------------------------------------
# Response parsing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedResponse:
    """A model answer split into explanation and code.

    ``code`` always compiles (or is None); ``broken_code`` keeps the best block that does not
    compile, so a caller can still run it for a SyntaxError instead of calling it "no code".
    ``span`` is the chosen block's [start, end) in the original text, fences included (the
    explanation ends at ``span[0]``; RL places the explanation reward there).
    """

    explanation: str
    code: str | None
    reason: str = ""  # why code is None: "empty", "no_code", "syntax_error"
    repair: str = ""  # what was done to make the code usable ("" when nothing)
    broken_code: str | None = None
    span: tuple[int, int] | None = None
    after: str = ""  # text after the chosen block (commentary, tests), stripped

    @property
    def ok(self) -> bool:
        return self.code is not None


_PY_LANGS = {"", "python", "py", "python3", "py3", "python2", "ipython", "ipython3", "sage"}
_OTHER_LANGS = {
    "bash", "sh", "shell", "console", "text", "txt", "plaintext", "output", "json", "yaml",
    "c", "cpp", "c++", "java", "javascript", "js", "typescript", "ts", "go", "rust", "ruby",
    "diff", "markdown", "md", "html", "sql", "pycon", "python-repl", "doctest", "csharp", "cs",
}  # fmt: skip
_KNOWN_LANGS = _PY_LANGS | _OTHER_LANGS
_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_GLUED_OPEN = re.compile(
    r"^(?P<pre>.*?\S)[ \t]*(?P<fence>`{3,})(?P<lang>[A-Za-z][\w+.#-]*)?[ \t]*$"
)
_CODE_START = re.compile(
    r"^(?:async[ \t]+def[ \t]|def[ \t]|class[ \t]|import[ \t]"
    r"|from[ \t]+[\w.]+[ \t]+import[ \t]|@[A-Za-z_])"
)
# A definition line that is code even when it does not compile ("def f(x)" without a colon).
_BROKEN_DEF = re.compile(r"^(?:(?:async\s+)?def\s+\w+\s*\(|class\s+\w+\s*[:(])")
_STATEMENT_LIKE = re.compile(
    r"^(?:[ \t]+\S|[A-Za-z_][\w.]*(?:\[[^\]]*\])?[ \t]*(?:[-+*/%|&^]?=|\()"
    r"|(?:return|if|elif|else|for|while|try|except|finally|with|assert|raise|print|pass|yield)\b)"
)
_CODE_STATEMENTS: tuple[type, ...] = tuple(
    getattr(ast, name)
    for name in (
        "FunctionDef",
        "AsyncFunctionDef",
        "ClassDef",
        "Import",
        "ImportFrom",
        "Assign",
        "AugAssign",
        "For",
        "AsyncFor",
        "While",
        "If",
        "With",
        "AsyncWith",
        "Try",
        "TryStar",
        "Assert",
        "Raise",
        "Return",
        "Global",
        "Nonlocal",
        "Delete",
        "Match",
    )
    if hasattr(ast, name)
)
_MAX_COMPILES = 1500  # per response, in compiles of up to 10 kB: bounds pathological inputs


def _normalize_lang(info: str) -> tuple[str, str]:
    """Split a fence's info string into (language, code glued onto the fence line)."""
    info = info.strip()
    if not info:
        return "", ""
    head, _, rest = info.partition(" ")
    word = head.strip("{}.").split(":")[0].lower()
    if re.fullmatch(r"(?:python|py)[\d.]*", word):
        word = "python"
    if word in _KNOWN_LANGS:
        return word, rest.strip()
    if re.fullmatch(r"[\w+#.-]+", info):  # an unknown one-word tag
        return word, ""
    return "", info  # "```def f(x):" - the info is code


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit


def _parse(src: str, budget: _Budget) -> tuple[ast.Module | None, int | None]:
    """(tree, None) when ``src`` compiles, else (None, line of the error if known)."""
    if budget.left <= 0:
        return None, None
    budget.left -= 1 + len(src) // 10_000  # compile time grows with the text
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = compile(src, "<response>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
            compile(tree, "<response>", "exec", dont_inherit=True)
        return tree, None
    except SyntaxError as exc:
        return None, exc.lineno
    except Exception:  # null bytes, recursion, memory: not code we can use
        return None, None


def _variants(code: str) -> list[str]:
    """The code, then repairs that do not change its meaning much (indent, tabs, nbsp)."""
    out = [code]
    dedented = textwrap.dedent(code)
    if dedented != code:
        out.append(dedented)
    if "\t" in code:
        out += [textwrap.dedent(code.expandtabs(8)), textwrap.dedent(code.expandtabs(4))]
    if "\xa0" in code:
        out.append(textwrap.dedent(code.replace("\xa0", " ")))
    return out


def _compile_any(code: str, budget: _Budget) -> tuple[str | None, ast.Module | None, int | None]:
    """The first variant of ``code`` that compiles, with its tree; else the error line."""
    lines: list[int | None] = []
    for variant in _variants(code):
        tree, line = _parse(variant, budget)
        if tree is not None:
            return variant, tree, None
        lines.append(line)
    # Only prefixes that fail in every variant may be skipped: the latest error line is safe.
    known = [n for n in lines if n is not None]
    return None, None, (max(known) if known and len(known) == len(lines) else None)


def _looks_like_code(tree: ast.Module) -> bool:
    """Prose can compile ("Hello", "Note: x"); real code has a statement that does something."""
    for node in tree.body:
        if isinstance(node, _CODE_STATEMENTS):
            return True
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            return True
        if isinstance(node, ast.Expr) and isinstance(
            node.value, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)
        ):
            return True
    return False


def _has_def(tree: ast.Module) -> bool:
    return any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in ast.walk(tree)
    )


def _defines(tree: ast.Module, name: str | None) -> bool:
    if not name:
        return False
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return True
        elif isinstance(node, ast.AnnAssign):
            if isinstance(node.target, ast.Name) and node.target.id == name:
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name) == name for a in node.names):
                return True
    return False


def _defines_text(code: str, name: str | None) -> bool:
    return bool(name) and bool(
        re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(name or '')}\b", code, re.M)
    )


@dataclass
class _Candidate:
    lines: list[str]  # body lines
    start: int  # span in the original text
    end: int
    fenced: bool
    lang: str
    closed: bool
    index: int = 0
    code: str | None = None
    tree: ast.Module | None = None
    repair: str = ""
    kept: int = 0  # body lines kept after trimming

    @property
    def lang_ok(self) -> bool:
        return self.lang in _PY_LANGS

    @property
    def raw(self) -> str:
        return _clean_block("\n".join(self.lines))


def _best_prefix(
    lines: list[str], entry_point: str | None, budget: _Budget
) -> tuple[str | None, ast.Module | None, int]:
    """The longest prefix of ``lines`` that compiles and is code: (code, tree, lines kept).

    Trimming from the end repairs output cut off mid-line and drops chatter after code. When
    the whole text defines the entry point, a trimmed prefix must still define it.
    """
    full = "\n".join(lines)
    code, tree, error_line = _compile_any(full, budget)
    if code is not None:
        return code, tree, len(lines)
    must_define = _defines_text(full, entry_point)
    k = len(lines) - 1
    if error_line is not None and 0 < error_line < k:
        k = error_line  # a prefix holding the failing line fails the same way
    while k > 0 and budget.left > 0:
        if not lines[k - 1].strip():
            k -= 1
            continue
        code, tree, error_line = _compile_any("\n".join(lines[:k]), budget)
        if code is not None and tree is not None:
            if _looks_like_code(tree) and (not must_define or _defines(tree, entry_point)):
                return code, tree, k
        if error_line is not None and 0 < error_line < k:
            k = error_line
        else:
            k -= 1
    return None, None, 0


def _line_may_start_code(line: str, budget: _Budget) -> bool:
    """Cheap test of a region's first line alone, so prose like "import this first" does not
    cost a compile of the whole rest of the text."""
    opened = sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}")
    if opened > 0 or line.rstrip().endswith("\\") or line.lstrip().startswith("@"):
        return True  # continues on the next lines: cannot be judged alone
    if _parse(line, budget)[0] is not None:
        return True
    return _parse(line + "\n    pass", budget)[0] is not None  # a block header: "def f(x):"


def _split_lines(text: str) -> list[tuple[str, int, int]]:
    """(line, start, end) with ``end`` past the line break; any of \\r\\n, \\r, \\n."""
    out = []
    pos = 0
    for m in re.finditer(r"\r\n|\r|\n", text):
        out.append((text[pos : m.start()], pos, m.end()))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], pos, len(text)))
    return out


def _fenced_blocks(
    lines: list[tuple[str, int, int]], budget: _Budget
) -> tuple[list[_Candidate], list[int]]:
    """Fenced code blocks, and the indices of lines that lie outside every block."""
    blocks: list[_Candidate] = []
    outside: list[int] = []
    i = 0

    # A base-style completion starts with code and closes a fence the prompt opened.
    first = next((j for j, (s, _, _) in enumerate(lines) if _FENCE.match(s)), None)
    if first is not None and not _FENCE.match(lines[first][0]).group("info").strip():
        pre = [s for s, _, _ in lines[:first]]
        starts = [s for s in pre if s.strip()]
        if starts and "```" not in "".join(pre) and "~~~" not in "".join(pre):
            _, tree, _ = _compile_any("\n".join(pre), budget)
            if _CODE_START.match(starts[0].lstrip()) or (
                tree is not None and _looks_like_code(tree)
            ):
                blocks.append(
                    _Candidate(
                        pre,
                        lines[0][1],
                        lines[first][2],
                        fenced=True,
                        lang="",
                        closed=True,
                    )
                )
                i = first + 1

    current: _Candidate | None = None
    fence = ""
    while i < len(lines):
        text, start, end = lines[i]
        if current is None:
            m = _FENCE.match(text)
            if m:
                fence = m.group("fence")
                info = m.group("info")
                if "`" in info and fence[0] == "`":
                    # "```python x = 1```": a one-line block; other backticks are inline code.
                    one = re.fullmatch(r"(?P<body>.*?[^`\s].*?)[ \t]*`{3,}[ \t]*", info)
                    if one:
                        lang, glued = _normalize_lang(one.group("body"))
                        blocks.append(_Candidate([glued], start, end, True, lang, closed=True))
                    else:
                        outside.append(i)
                    i += 1
                    continue
                lang, glued = _normalize_lang(info)
                current = _Candidate([], start, end, fenced=True, lang=lang, closed=False)
                if glued:
                    current.lines.append(glued)
                i += 1
                continue
            g = _GLUED_OPEN.match(text)
            if g and "```" not in g.group("pre"):
                fence = g.group("fence")
                lang, _ = _normalize_lang(g.group("lang") or "")
                at = start + g.start("fence")
                current = _Candidate([], at, end, fenced=True, lang=lang, closed=False)
                i += 1
                continue
            outside.append(i)
            i += 1
            continue
        # Inside a block: a closing fence, a glued closing fence, or a new opening fence.
        stripped = text.strip()
        m = _FENCE.match(text)
        if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
            current.closed, current.end = True, end
            blocks.append(current)
            current = None
        elif m and m.group("fence")[0] == fence[0] and _normalize_lang(m.group("info"))[0]:
            # "```python" while a block is open: the model restarted; close and reopen.
            current.closed, current.end = True, start
            blocks.append(current)
            current = None
            continue  # reprocess this line as an opening fence
        elif fence[0] == "`" and re.search(r"[^`]`{3,}[ \t]*$", text):
            current.lines.append(re.sub(r"`{3,}[ \t]*$", "", text).rstrip())
            current.closed, current.end = True, end
            blocks.append(current)
            current = None
        else:
            current.lines.append(text)
            current.end = end
        i += 1
    if current is not None:
        blocks.append(current)
    return blocks, outside


def _unfenced_regions(
    lines: list[tuple[str, int, int]], indices: list[int], entry_point: str | None, budget: _Budget
) -> tuple[list[_Candidate], list[_Candidate]]:
    """Code outside fences: (regions that compile, regions that start like code but do not).

    A region starts at a line beginning with def/class/import/from ... import/@ and ends where
    the longest compiling prefix ends, so chatter after the code is left out.
    """
    # Contiguous runs of outside lines (fences split them).
    runs: list[list[int]] = []
    for j in indices:
        if runs and runs[-1][-1] == j - 1:
            runs[-1].append(j)
        else:
            runs.append([j])
    good: list[_Candidate] = []
    broken: list[_Candidate] = []
    for run in runs:
        p = 0
        while p < len(run) and budget.left > 0:
            text = lines[run[p]][0]
            if not _CODE_START.match(text):
                p += 1
                continue
            code, tree, kept = None, None, 0
            if _line_may_start_code(text, budget):
                body = [lines[j][0] for j in run[p:]]
                code, tree, kept = _best_prefix(body, entry_point, budget)
            elif not _BROKEN_DEF.match(text):
                p += 1  # "import this module first" is prose, not a broken program
                continue
            if code is not None:
                used = run[p : p + kept]
                good.append(
                    _Candidate(
                        body[:kept],
                        lines[used[0]][1],
                        lines[used[-1]][2],
                        fenced=False,
                        lang="",
                        closed=True,
                        code=code,
                        tree=tree,
                        kept=kept,
                    )
                )
                p += kept
                continue
            q = p + 1  # a broken region: keep going while lines look like code
            while q < len(run) and (
                not lines[run[q]][0].strip() or _STATEMENT_LIKE.match(lines[run[q]][0])
            ):
                q += 1
            used = run[p:q]
            broken.append(
                _Candidate(
                    [lines[j][0] for j in used],
                    lines[used[0]][1],
                    lines[used[-1]][2],
                    fenced=False,
                    lang="",
                    closed=True,
                )
            )
            p = q
    return good, broken


def _evaluate_block(block: _Candidate, entry_point: str | None, budget: _Budget) -> None:
    code, tree, kept = _best_prefix(block.lines, entry_point, budget)
    block.code, block.tree, block.kept = code, tree, kept
    notes = []
    if not block.closed:
        notes.append("unterminated fence")
    if code is not None and kept < len(block.lines):
        dropped = sum(1 for s in block.lines[kept:] if s.strip())
        if dropped:
            notes.append(f"trimmed {dropped} trailing line(s)")
    original = "\n".join(block.lines[:kept])
    if code is not None and code != original:
        if code == textwrap.dedent(original):
            notes.append("dedented")
        elif "\t" in original and "\t" not in code:
            notes.append("expanded tabs")
        else:
            notes.append("replaced non-breaking spaces")
    block.repair = "; ".join(notes)


def _normalize_text(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def split_response(text: str, entry_point: str | None = None) -> ParsedResponse:
    """Split a model's answer into explanation and code; never raises.

    Candidates are fenced blocks (any tag, ``` or ~~~, closed or cut off), code before a bare
    closing fence (base-style completions), and unfenced code. The chosen one compiles and is
    preferred, in order: defines ``entry_point``, defines any function or class, is Python (or
    untagged), comes last. Cut-off code is trimmed back to its longest compiling prefix. The
    explanation is the text before the chosen code; ``reason`` says why code is None ("empty",
    "no_code", "syntax_error", or "parser_error: ..." should the parser itself fail).
    """
    try:
        return _split_response(text, entry_point)
    except Exception as exc:  # a parser bug must not stop a collection run
        return ParsedResponse(
            explanation=_normalize_text(str(text)) if text is not None else "",
            code=None,
            reason=f"parser_error: {type(exc).__name__}",
        )


def _split_response(text: str, entry_point: str | None) -> ParsedResponse:
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if not text.strip():
        return ParsedResponse(explanation="", code=None, reason="empty")
    budget = _Budget(_MAX_COMPILES)
    # A byte-order mark is dropped from the line it sits on; offsets still index ``text``.
    lines = [(s.replace("\ufeff", ""), a, b) for s, a, b in _split_lines(text)]

    blocks, outside = _fenced_blocks(lines, budget)
    for block in blocks:
        _evaluate_block(block, entry_point, budget)

    regions: list[_Candidate] = []
    broken_regions: list[_Candidate] = []
    if not blocks:
        whole = [s for s, _, _ in lines]
        code, tree, _ = _compile_any("\n".join(whole), budget)
        if code is not None and tree is not None and _looks_like_code(tree):
            nonblank = [t for t in lines if t[0].strip()]
            regions.append(
                _Candidate(
                    whole,
                    nonblank[0][1],
                    nonblank[-1][2],
                    fenced=False,
                    lang="",
                    closed=True,
                    code=code,
                    tree=tree,
                    kept=len(whole),
                )
            )
    if not regions:
        regions, broken_regions = _unfenced_regions(lines, outside, entry_point, budget)

    candidates = sorted(blocks + regions, key=lambda c: c.start)
    for n, c in enumerate(candidates):
        c.index = n

    usable = [
        c
        for c in candidates
        if c.code is not None
        and c.tree is not None
        and c.code.strip()
        and (_looks_like_code(c.tree) or (c.fenced and c.lang == "python"))
    ]
    if usable:
        best = max(
            usable,
            key=lambda c: (
                _defines(c.tree, entry_point),
                _has_def(c.tree),
                c.lang_ok,
                c.index,
            ),
        )
        end = best.end
        return ParsedResponse(
            explanation=_normalize_text(text[: best.start]),
            code=_clean_block(best.code or ""),
            repair=best.repair,
            span=(best.start, end),
            after=_normalize_text(text[end:]),
        )

    broken = [
        c
        for c in blocks + broken_regions
        if c.code is None
        and c.lang_ok
        and c.raw.strip()
        and (
            c.lang == "python"
            or not c.fenced
            or _CODE_START.match(c.raw.lstrip())
            or _STATEMENT_LIKE.match(c.raw.lstrip())
        )
    ]
    if broken:
        best = max(
            broken,
            key=lambda c: (
                _defines_text(c.raw, entry_point),
                bool(re.search(r"^\s*(?:def|class)\s", c.raw, re.M)),
                c.start,
            ),
        )
        return ParsedResponse(
            explanation=_normalize_text(text[: best.start]),
            code=None,
            reason="syntax_error",
            broken_code=best.raw,
            span=(best.start, best.end),
            after=_normalize_text(text[best.end :]),
        )
    # An answer cut off right after opening its code block: the dangling fence is no explanation.
    dangling = [b for b in blocks if b.fenced and not b.closed and not b.raw.strip()]
    cut = dangling[-1].start if dangling else len(text)
    return ParsedResponse(explanation=_normalize_text(text[:cut]), code=None, reason="no_code")
