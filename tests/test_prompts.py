"""Prompt builders and the response parser.

The parser cases are the kinds of answers models really give (chatter, several blocks, cut-off
output, odd fences), because every later stage trusts what ``split_response`` extracts.
"""

from __future__ import annotations

import json
import random

import pytest

from sdlib.execution.problems import Problem
from sdlib.execution.verdict import FEEDBACK_LIMIT, Verdict
from sdlib.prompting.prompts import (
    EXPL_REFINE_INSTRUCTION,
    PLAIN_GENERATION_PROMPT,
    REFINE_INSTRUCTION,
    STOP_BASE,
    TEMPLATES,
    ParsedResponse,
    add_refine_turn,
    assemble_program,
    base_completion,
    format_answer,
    format_feedback,
    initial_messages,
    initial_prompt,
    refine_messages,
    render_chat,
    split_chat_for_training,
    split_response,
)

# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


def mbpp(task_id: int, text: str, entry_point: str, reference: str, test: str) -> Problem:
    return Problem(
        task_id=str(task_id),
        benchmark="mbpp",
        split="prompt" if task_id <= 10 else "train",
        text=text,
        prompt="",
        entry_point=entry_point,
        reference=reference,
        visible_tests=(test,),
    )


SHOTS = (
    mbpp(
        2,
        "Write a function to find the shared elements from the given two lists.",
        "similar_elements",
        "def similar_elements(test_tup1, test_tup2):\n"
        "  res = tuple(set(test_tup1) & set(test_tup2))\n"
        "  return (res) \n",
        "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
    ),
    mbpp(
        3,
        "Write a python function to identify non-prime numbers.",
        "is_not_prime",
        "import math\ndef is_not_prime(n):\n    result = False\n"
        "    for i in range(2,int(math.sqrt(n)) + 1):\n"
        "        if n % i == 0:\n            result = True\n    return result",
        "assert is_not_prime(2) == False",
    ),
    mbpp(
        4,
        "Write a function to find the n largest integers from a given list of numbers, "
        "returned in descending order.",
        "heap_queue_largest",
        "import heapq as hq\ndef heap_queue_largest(nums,n):\n"
        "  largest_nums = hq.nlargest(n, nums)\n  return largest_nums",
        "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65]",
    ),
)

TARGET = mbpp(
    601,
    "Write a function to find the longest chain which can be formed from the given set of pairs.",
    "max_chain_length",
    "def max_chain_length(arr, n):\n    return n\n",
    "assert max_chain_length([Pair(5, 24), Pair(15, 25),Pair(27, 40), Pair(50, 60)], 4) == 3",
)

HUMANEVAL = Problem(
    task_id="HumanEval/0",
    benchmark="humaneval",
    split="test",
    text="Check if in given list of numbers, are any two numbers closer to each other than "
    "given threshold.",
    prompt="from typing import List\n\n\ndef has_close_elements(numbers: List[float], "
    'threshold: float) -> bool:\n    """ Check if in given list of numbers, are any two numbers '
    "closer to each other than\n    given threshold.\n    >>> has_close_elements([1.0, 2.0, "
    '3.0], 0.5)\n    False\n    """\n',
    entry_point="has_close_elements",
    reference="",
)

WRONG = "def max_chain_length(arr, n):\n    return n - 1"
FIXED = "def max_chain_length(arr, n):\n    return n"
FEEDBACK = "Failed test: assert max_chain_length([...], 4) == 3\nExpected: 3\nActual: 4"


@pytest.fixture(scope="module")
def tokenizer_factory():
    """Real ``PreTrainedTokenizerFast`` objects (a tiny word-level vocabulary) with a given
    chat template: the project's tokenizers carry templates exactly like this."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def make(chat_template: str | None):
        vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "def": 3, "return": 4}
        core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        core.pre_tokenizer = pre_tokenizers.Whitespace()
        tok = PreTrainedTokenizerFast(
            tokenizer_object=core, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
        )
        if chat_template is not None:
            tok.chat_template = chat_template
        return tok

    return make


ZEPHYR_LIKE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


# --------------------------------------------------------------------------------------------
# split_response: messy, real-looking answers
# --------------------------------------------------------------------------------------------


def assert_compiles(code: str | None) -> None:
    assert code is not None
    compile(code, "<test>", "exec")


def test_expl_refine_answer_with_chatter_before_and_after() -> None:
    text = (
        "The code returns `n - 1` instead of the length of the longest chain, so for the four "
        "pairs it answers 3 where 4... wait, it should sort the pairs and count greedily.\n\n"
        "Here is the corrected code:\n\n"
        "```python\n"
        "def max_chain_length(arr, n):\n"
        "    arr = sorted(arr, key=lambda p: p.b)\n"
        "    count, end = 0, float('-inf')\n"
        "    for p in arr:\n"
        "        if p.a > end:\n"
        "            count += 1\n"
        "            end = p.b\n"
        "    return count\n"
        "```\n\n"
        "This version sorts by the second element and picks pairs greedily."
    )
    r = split_response(text, "max_chain_length")
    assert_compiles(r.code)
    assert r.code.startswith("def max_chain_length(arr, n):")
    assert r.code.endswith("    return count")
    assert r.explanation.startswith("The code returns `n - 1`")
    assert r.explanation.endswith("Here is the corrected code:")
    assert "```" not in r.explanation
    assert r.after == "This version sorts by the second element and picks pairs greedily."
    assert r.reason == "" and r.repair == "" and r.ok


def test_refine_answer_is_only_a_block() -> None:
    r = split_response(f"```python\n{FIXED}\n```", "max_chain_length")
    assert r.code == FIXED
    assert r.explanation == ""
    assert r.span == (0, len(f"```python\n{FIXED}\n```"))


@pytest.mark.parametrize("tag", ["py", "Python", "python3", "PYTHON", "py3", "{python}"])
def test_language_tag_variants(tag: str) -> None:
    r = split_response(f"Fixed:\n```{tag}\n{FIXED}\n```\n", "max_chain_length")
    assert r.code == FIXED
    assert r.explanation == "Fixed:"


def test_untagged_fence() -> None:
    r = split_response(f"The loop is off by one.\n```\n{FIXED}\n```", "max_chain_length")
    assert r.code == FIXED
    assert r.explanation == "The loop is off by one."


def test_tilde_fences_with_and_without_tag() -> None:
    assert split_response(f"~~~\n{FIXED}\n~~~").code == FIXED
    r = split_response(f"Use this:\n~~~python\n{FIXED}\n~~~\nDone.")
    assert r.code == FIXED and r.explanation == "Use this:" and r.after == "Done."


def test_quoted_wrong_code_then_fix_takes_the_last_definition() -> None:
    text = (
        "Your code:\n```python\n" + WRONG + "\n```\n"
        "subtracts one from `n`. It should return `n`:\n```python\n" + FIXED + "\n```\n"
    )
    r = split_response(text, "max_chain_length")
    assert r.code == FIXED
    assert r.explanation.startswith("Your code:\n```python\n" + WRONG)
    assert r.explanation.endswith("It should return `n`:")


def test_fix_then_test_block_prefers_the_entry_point() -> None:
    text = (
        f"```python\n{FIXED}\n```\n\nYou can check it with:\n\n```python\n"
        "assert max_chain_length([], 0) == 0\nprint('ok')\n```"
    )
    r = split_response(text, "max_chain_length")
    assert r.code == FIXED
    assert r.after.startswith("You can check it with:")


def test_without_entry_point_a_definition_beats_a_later_usage_block() -> None:
    text = f"```python\n{FIXED}\n```\nUsage:\n```python\nprint(max_chain_length([], 0))\n```"
    assert split_response(text).code == FIXED


def test_entry_point_decides_between_two_definitions() -> None:
    helper = "def helper(x):\n    return x"
    text = f"```python\n{FIXED}\n```\nAnd a helper:\n```python\n{helper}\n```"
    assert split_response(text, "max_chain_length").code == FIXED
    assert split_response(text, "helper").code == helper
    assert split_response(text).code == helper  # no entry point: the last definition


def test_entry_point_bound_by_assignment() -> None:
    text = "```python\nimport math\nmax_chain_length = lambda arr, n: n\n```"
    r = split_response(text + "\n```python\nx = 1\n```", "max_chain_length")
    assert r.code == "import math\nmax_chain_length = lambda arr, n: n"


def test_no_fence_code_only() -> None:
    text = "import math\n\ndef is_not_prime(n):\n    return any(n % i == 0 for i in range(2, n))\n"
    r = split_response(text, "is_not_prime")
    assert r.code == text.strip()
    assert r.explanation == "" and r.after == ""


def test_no_fence_statements_only() -> None:
    r = split_response("n = int(input())\nprint(n * 2)\n")
    assert r.code == "n = int(input())\nprint(n * 2)"


def test_no_fence_chatter_around_code() -> None:
    text = (
        "The function never handles the empty list. Fixed version:\n"
        "from typing import List\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    for i, a in enumerate(numbers):\n"
        "        for b in numbers[i + 1:]:\n"
        "            if abs(a - b) < threshold:\n"
        "                return True\n"
        "    return False\n"
        "\n"
        "This returns False for an empty list, as expected.\n"
    )
    r = split_response(text, "has_close_elements")
    assert_compiles(r.code)
    assert r.code.startswith("from typing import List\ndef has_close_elements(")
    assert r.code.endswith("    return False")
    assert r.explanation == "The function never handles the empty list. Fixed version:"
    assert r.after == "This returns False for an empty list, as expected."


def test_prose_lines_that_start_like_code_are_not_code() -> None:
    text = (
        "import statements are not the problem here.\n"
        "from the traceback we see an IndexError.\n"
        "def is a keyword, but the bug is the loop bound.\n"
    )
    r = split_response(text)
    assert r.code is None and r.reason == "no_code"
    assert r.explanation == text.strip()


def test_truncated_inside_block_is_trimmed_to_compiling_code() -> None:
    text = (
        "The bug: `n - 1`.\n```python\ndef max_chain_length(arr, n):\n"
        "    best = 0\n    for i in range(n):\n        best = max(best, (arr[i]"
    )
    r = split_response(text, "max_chain_length")
    assert r.code == "def max_chain_length(arr, n):\n    best = 0"
    assert "unterminated fence" in r.repair and "trimmed 2 trailing line(s)" in r.repair
    assert r.explanation == "The bug: `n - 1`."


def test_truncated_at_a_line_boundary_keeps_everything() -> None:
    r = split_response(f"```python\n{FIXED}\n", "max_chain_length")
    assert r.code == FIXED
    assert r.repair == "unterminated fence"


def test_truncated_right_after_the_opening_fence() -> None:
    r = split_response("The loop bound is wrong. Here is the fix:\n```python\n")
    assert r.code is None and r.reason == "no_code"
    assert r.explanation == "The loop bound is wrong. Here is the fix:"


def test_truncated_inside_a_docstring_gives_no_code_but_keeps_the_block() -> None:
    text = '```python\ndef max_chain_length(arr, n):\n    """Longest chain of\n    pairs'
    r = split_response(text, "max_chain_length")
    assert r.code is None and r.reason == "syntax_error"
    assert r.broken_code is not None and r.broken_code.startswith("def max_chain_length")


def test_syntax_error_block_is_kept_as_broken_code() -> None:
    text = "Fix:\n```python\ndef max_chain_length(arr, n)\n    return n\n```"
    r = split_response(text, "max_chain_length")
    assert r.code is None and r.reason == "syntax_error"
    assert r.broken_code == "def max_chain_length(arr, n)\n    return n"
    assert r.explanation == "Fix:"


def test_a_compiling_block_wins_over_a_later_broken_one() -> None:
    text = f"```python\n{FIXED}\n```\nShorter:\n```python\ndef max_chain_length(arr, n) n\n```"
    r = split_response(text, "max_chain_length")
    assert r.code == FIXED


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t\n", "\r\n"])
def test_empty_responses(text: str) -> None:
    r = split_response(text)
    assert r == ParsedResponse(explanation="", code=None, reason="empty")


def test_explanation_only() -> None:
    text = (
        "The code fails on the first test because it returns `n - 1`: the greedy count is "
        "never computed. Sorting the pairs by their second element and counting "
        "non-overlapping ones would fix it."
    )
    r = split_response(text, "max_chain_length")
    assert r.code is None and r.reason == "no_code"
    assert r.explanation == text


def test_one_word_answers_compile_but_are_not_code() -> None:
    for text in ["Hello", "Correct.", "True", "Note: see above"]:
        r = split_response(text)
        assert r.code is None, text
        assert r.explanation == text


def test_block_that_is_not_code_is_skipped() -> None:
    text = f"Output:\n```\n3\n```\n```text\nExpected: 4\n```\nFix:\n```python\n{FIXED}\n```"
    assert split_response(text).code == FIXED
    assert split_response("Output:\n```\n3\n```").code is None


def test_other_language_block_is_not_chosen_over_python() -> None:
    text = f"Run:\n```bash\npython main.py\n```\n```python\n{FIXED}\n```\n```text\n4\n```"
    assert split_response(text).code == FIXED


def test_windows_line_endings() -> None:
    text = "Off by one.\r\n\r\n```python\r\n" + FIXED.replace("\n", "\r\n") + "\r\n```\r\nBye.\r\n"
    r = split_response(text, "max_chain_length")
    assert r.code == FIXED
    assert r.explanation == "Off by one."
    assert r.after == "Bye."
    assert "\r" not in r.code + r.explanation
    assert text[r.span[0] :].startswith("```python\r\n")


def test_tabs_consistent_are_kept_and_mixed_are_expanded() -> None:
    tabbed = "def f(xs):\n\tfor x in xs:\n\t\tif x:\n\t\t\treturn x\n\treturn None"
    assert split_response(f"```python\n{tabbed}\n```", "f").code == tabbed
    mixed = "def f(xs):\n\tfor x in xs:\n\t\treturn x\n        return None"
    r = split_response(f"```python\n{mixed}\n```", "f")
    assert_compiles(r.code)
    assert "\t" not in r.code and r.repair == "expanded tabs"


def test_base_completion_closes_the_prompts_fence_and_rambles_on() -> None:
    completion = (
        FIXED + "\n```\n\nYou are an expert Python programmer, and here is your task: Write a "
        "function to sort a list.\nYour code should pass these tests:\n\nassert s([2, 1]) == "
        "[1, 2]\n\n```python\ndef s(xs):\n    return sor"
    )
    r = split_response(completion, "max_chain_length")
    assert r.code == FIXED
    assert r.explanation == ""
    assert r.span[0] == 0
    assert r.after.startswith("You are an expert Python programmer")


def test_base_completion_cut_at_the_stop_string() -> None:
    # Generation stopped at STOP_BASE, so the closing fence never arrived.
    r = split_response(FIXED, "max_chain_length")
    assert r.code == FIXED
    r = split_response(FIXED + "\n    if n > 3:\n        return (n", "max_chain_length")
    assert r.code == FIXED


def test_fences_glued_to_text_and_code() -> None:
    text = "Here is the fixed function:```python\n" + FIXED + "```\nThat's all."
    r = split_response(text, "max_chain_length")
    assert r.code == FIXED
    assert r.explanation == "Here is the fixed function:"
    assert r.after == "That's all."


def test_one_line_block_and_code_in_the_info_string() -> None:
    assert split_response("```python def f(x): return x + 1```").code == "def f(x): return x + 1"
    r = split_response("```def f(x):\n    return x + 1\n```", "f")
    assert r.code == "def f(x):\n    return x + 1"


def test_block_indented_in_a_list_item() -> None:
    text = (
        "1. The bound is wrong.\n2. Fixed code:\n\n   ```python\n   def f(x):\n"
        "       return x + 1\n   ```\n"
    )
    r = split_response(text, "f")
    assert r.code == "def f(x):\n    return x + 1"
    assert r.repair == "dedented"
    assert r.explanation == "1. The bound is wrong.\n2. Fixed code:"


def test_model_restarts_a_block_without_closing_it() -> None:
    text = f"```python\ndef max_chain_length(arr, n):\n    return (n -\n```python\n{FIXED}\n```"
    assert split_response(text, "max_chain_length").code == FIXED


def test_markdown_block_around_a_python_block() -> None:
    text = f"````markdown\nSolution:\n```python\n{FIXED}\n```\n````"
    assert split_response(text, "max_chain_length").code == FIXED


def test_plain_chat_continuation_after_the_answer() -> None:
    text = f"```python\n{FIXED}\n```\n\n### User:\nThanks! Now write a sort.\n\n### Assistant:\n"
    r = split_response(text, "max_chain_length")
    assert r.code == FIXED and r.after.startswith("### User:")


def test_non_breaking_spaces_and_byte_order_mark() -> None:
    text = "\ufeff```python\ndef f(x):\n\xa0\xa0\xa0\xa0return x\n```"
    r = split_response(text, "f")
    assert r.code == "def f(x):\n    return x"
    assert r.repair == "replaced non-breaking spaces"


def test_code_containing_backticks_in_strings() -> None:
    code = 'def fence(lang):\n    return "```" + lang\n\n\nMARK = "~~~"'
    assert split_response(f"```python\n{code}\n```", "fence").code == code


def test_explanation_only_after_the_code() -> None:
    r = split_response(f"```python\n{FIXED}\n```\nThe old code subtracted one.")
    assert r.explanation == ""
    assert r.after == "The old code subtracted one."


def test_span_marks_the_chosen_block_in_the_original_text() -> None:
    text = "Why: off by one.\n\n```python\n" + FIXED + "\n```\ntrailing"
    r = split_response(text)
    start, end = r.span
    assert text[:start].strip() == r.explanation
    assert text[start:end] == "```python\n" + FIXED + "\n```\n"
    assert text[end:] == "trailing"


def test_never_raises_on_hostile_input() -> None:
    hostile = [
        "```python\n" + "(" * 3000 + "\n```",
        "```python\ndef f():\n    return '\x00'\n```",
        "```" * 500,
        "~~~\n" * 300,
        "\r" * 50 + "def f(:" + "\r",
        "import this is not code\n" * 2000,
        "```python\n" + "\n".join(f"    x{i} = {i}" for i in range(3000)) + "\n    y = (",
        "\udcff\ud800 lone surrogates ```python\nx = '\ud800'\n```",
    ]
    rng = random.Random(0)
    alphabet = "def return ():\n\t `~#'\"\\xyz=+1python\r"
    hostile += [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200))) for _ in range(200)
    ]
    for text in hostile:
        r = split_response(text, "f")
        assert isinstance(r, ParsedResponse)
        if r.code is not None:
            compile(r.code, "<test>", "exec")
        assert (r.code is None) == bool(r.reason)


def test_non_string_input_does_not_raise() -> None:
    assert split_response(None).reason == "empty"  # type: ignore[arg-type]
    assert split_response(b"def f(): pass").code is None  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Initial prompts
# --------------------------------------------------------------------------------------------


def test_base_prompt_shows_each_example_and_ends_at_an_open_fence() -> None:
    prompt = initial_prompt(TARGET, SHOTS)
    positions = []
    for shot in SHOTS:
        assert shot.text in prompt
        assert shot.visible_tests[0] in prompt
        block = "```python\n" + shot.reference.strip("\n").rstrip() + "\n```"
        assert block in prompt
        positions.append(prompt.index(shot.text))
    assert positions == sorted(positions)  # examples in the given order
    assert prompt.index(TARGET.text) > positions[-1]
    assert TARGET.visible_tests[0] in prompt
    assert prompt.endswith(TARGET.visible_tests[0] + "\n\n```python\n")
    assert TARGET.reference not in prompt
    assert prompt.count("```python\n") == len(SHOTS) + 1


def test_base_prompt_never_shows_the_target_as_its_own_example() -> None:
    shot = SHOTS[0]
    prompt = initial_prompt(shot, SHOTS)
    assert prompt.count(shot.text) == 1
    assert shot.reference.strip() not in prompt


def test_base_prompt_zero_shot_and_signature_problems() -> None:
    assert initial_prompt(TARGET).startswith("You are an expert Python programmer")
    prompt = initial_prompt(HUMANEVAL, SHOTS[:1])
    assert HUMANEVAL.prompt.rstrip() in prompt
    assert prompt.count("given threshold.") == 1  # the docstring is not shown twice
    assert prompt.endswith("```python\n")


def test_base_completion_round_trips_through_the_parser() -> None:
    prompt = initial_prompt(TARGET, SHOTS)
    completion = base_completion(FIXED + "\n\n")
    assert completion == FIXED + "\n```"
    assert STOP_BASE[0] in completion
    assert split_response(completion, TARGET.entry_point).code == FIXED
    assert not prompt.endswith(" ")


def test_chat_prompt_without_tokenizer_uses_the_plain_layout() -> None:
    prompt = initial_prompt(TARGET, SHOTS[:2], style="chat")
    assert prompt.startswith("### User:\n")
    assert prompt.endswith("\n\n" + PLAIN_GENERATION_PROMPT)
    assert prompt.count("### User:") == 3 and prompt.count("### Assistant:") == 3
    assert SHOTS[1].reference.strip() in prompt
    assert prompt == render_chat(initial_messages(TARGET, SHOTS[:2]))


def test_chat_prompt_with_a_chat_template(tokenizer_factory) -> None:
    tok = tokenizer_factory(ZEPHYR_LIKE)
    prompt = initial_prompt(TARGET, (), tokenizer=tok, style="chat")
    assert prompt.startswith("<|user|>\nYou are an expert Python programmer")
    assert prompt.endswith("</s>\n<|assistant|>\n")
    assert TARGET.visible_tests[0] in prompt


def test_tokenizer_without_chat_template_falls_back_to_plain(tokenizer_factory) -> None:
    tok = tokenizer_factory(None)
    assert initial_prompt(TARGET, style="chat", tokenizer=tok) == initial_prompt(
        TARGET, style="chat"
    )


def test_unknown_style_is_rejected() -> None:
    with pytest.raises(ValueError):
        initial_prompt(TARGET, style="instruct")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Refinement chats
# --------------------------------------------------------------------------------------------


def test_refine_messages_put_the_wrong_code_in_the_history() -> None:
    messages = refine_messages(TARGET, WRONG, FEEDBACK, "refine")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert TARGET.text in messages[0]["content"]
    assert messages[1]["content"] == f"```python\n{WRONG}\n```"
    assert FEEDBACK in messages[2]["content"]
    assert WRONG not in messages[2]["content"]
    assert messages[0]["content"] == initial_messages(TARGET)[0]["content"]


def test_refine_and_expl_refine_instructions_differ() -> None:
    refine = refine_messages(TARGET, WRONG, FEEDBACK, "refine")[-1]["content"]
    expl = refine_messages(TARGET, WRONG, FEEDBACK, "expl_refine")[-1]["content"]
    assert refine != expl
    assert refine.endswith(REFINE_INSTRUCTION) and EXPL_REFINE_INSTRUCTION not in refine
    assert expl.endswith(EXPL_REFINE_INSTRUCTION) and REFINE_INSTRUCTION not in expl
    assert "explain" in expl.lower() and "explain" not in REFINE_INSTRUCTION.lower()
    with pytest.raises(ValueError):
        refine_messages(TARGET, WRONG, FEEDBACK, "explain")  # type: ignore[arg-type]


def test_iterative_refinement_appends_turns() -> None:
    first = refine_messages(TARGET, WRONG, FEEDBACK, "expl_refine")
    second = add_refine_turn(
        first, "def max_chain_length(arr, n):\n    return 0", "Actual: 0", "refine"
    )
    assert second[:3] == first
    assert [m["role"] for m in second[3:]] == ["assistant", "user"]


def test_render_chat_plain_layout_is_exact_and_deterministic() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "\nTask\n"},
        {"role": "assistant", "content": "```python\nx = 1\n```\n\n"},
        {"role": "user", "content": "Fix it."},
    ]
    expected = (
        "### System:\nBe brief.\n\n### User:\nTask\n\n### Assistant:\n```python\nx = 1\n```"
        "\n\n### User:\nFix it.\n\n### Assistant:\n"
    )
    assert render_chat(messages) == expected
    assert render_chat(messages) == render_chat([dict(m) for m in messages])
    assert (
        render_chat(messages, add_generation_prompt=False)
        == expected[: -len("\n\n### Assistant:\n")]
    )


def test_split_for_training_plain_layout() -> None:
    messages = refine_messages(TARGET, WRONG, FEEDBACK, "expl_refine")
    answer = format_answer(FIXED, "It subtracts one from `n`.")
    prompt, completion = split_chat_for_training(messages, answer)
    full = render_chat(
        [*messages, {"role": "assistant", "content": answer}], add_generation_prompt=False
    )
    assert prompt + completion == full
    assert completion == answer
    assert prompt == render_chat(messages)
    assert WRONG in prompt and WRONG not in completion
    assert prompt.endswith("### Assistant:\n")  # a token boundary before the answer
    parsed = split_response(completion, TARGET.entry_point)
    assert parsed.code == FIXED and parsed.explanation == "It subtracts one from `n`."


def test_split_for_training_with_a_chat_template(tokenizer_factory) -> None:
    tok = tokenizer_factory(ZEPHYR_LIKE)
    messages = refine_messages(TARGET, WRONG, FEEDBACK, "refine")
    answer = format_answer(FIXED)
    prompt, completion = split_chat_for_training(messages, answer, tok)
    full = tok.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=False
    )
    assert prompt + completion == full
    assert completion == answer + "</s>\n"
    assert WRONG in prompt and WRONG not in completion
    assert prompt == render_chat(messages, tok)


def test_split_for_training_when_the_template_renders_the_answer_differently(
    tokenizer_factory,
) -> None:
    # Like reasoning models: the generation prompt opens a think block the history never has.
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n<think>\n{% endif %}"
    )
    tok = tokenizer_factory(template)
    messages = refine_messages(TARGET, WRONG, FEEDBACK, "refine")
    answer = format_answer(FIXED)
    prompt, completion = split_chat_for_training(messages, answer, tok)
    full = render_chat([*messages, {"role": "assistant", "content": answer}], tok, False)
    assert prompt + completion == full
    assert completion == answer + "</s>\n"


def test_split_for_training_rejects_a_finished_chat() -> None:
    messages = [
        *refine_messages(TARGET, WRONG, FEEDBACK, "refine"),
        {"role": "assistant", "content": "x"},
    ]
    with pytest.raises(ValueError):
        split_chat_for_training(messages, "y")


# --------------------------------------------------------------------------------------------
# Feedback, programs, templates
# --------------------------------------------------------------------------------------------


def test_feedback_for_a_wrong_answer_shows_test_expected_and_actual() -> None:
    v = Verdict(
        status="fail", passed=0, total=3, failed_test="assert f(2) == 4", expected="4", actual="5"
    )
    assert format_feedback(v) == "Failed test: assert f(2) == 4\nExpected: 4\nActual: 5"


def test_feedback_for_errors_timeouts_and_the_rest() -> None:
    err = Verdict(
        status="error",
        failed_test="assert f([]) == 0",
        feedback="IndexError: list index out of range",
        error_type="IndexError",
    )
    assert format_feedback(err) == (
        "Failed test: assert f([]) == 0\nIndexError: list index out of range"
    )
    syntax = Verdict(status="syntax", feedback="SyntaxError: expected ':' (line 1)")
    assert format_feedback(syntax) == "SyntaxError: expected ':' (line 1)"
    assert format_feedback(Verdict(status="timeout")).startswith("Timeout")
    assert "MemoryError" in format_feedback(Verdict(status="memory"))
    assert "SIGSEGV" in format_feedback(Verdict(status="crash", error_type="SIGSEGV"))
    assert format_feedback(Verdict(status="no_code")) == "No code was found in the answer."
    assert format_feedback(Verdict(status="fail", failed_test="assert g()")).startswith(
        "Failed test: assert g()"
    )
    for status in ("pass", "sandbox_error"):
        assert format_feedback(Verdict(status=status))  # type: ignore[arg-type]


def test_feedback_is_capped() -> None:
    v = Verdict(status="error", feedback="ValueError: " + "x" * 5000)
    assert len(format_feedback(v)) <= FEEDBACK_LIMIT


def test_assemble_program_restores_prompt_imports() -> None:
    code = "def has_close_elements(numbers, threshold):\n    return False"
    program = assemble_program(HUMANEVAL, code)
    assert program.startswith("from typing import List\n")
    assert program.endswith(code)
    compile(program, "<test>", "exec")
    body = "    return False\n"
    assert assemble_program(HUMANEVAL, body) == HUMANEVAL.prompt + body
    assert assemble_program(TARGET, FIXED) == FIXED


def test_templates_are_recorded_and_serializable() -> None:
    assert TEMPLATES["refine_instruction"] == REFINE_INSTRUCTION
    assert TEMPLATES["expl_refine_instruction"] == EXPL_REFINE_INSTRUCTION
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in TEMPLATES.items())
    assert json.loads(json.dumps(TEMPLATES)) == TEMPLATES


def test_unfenced_definition_with_a_comment_on_its_header() -> None:
    text = "Try this:\ndef f(x):  # don't forget 'x'\n    return x + 1\nIt adds one."
    r = split_response(text, "f")
    assert r.code == "def f(x):  # don't forget 'x'\n    return x + 1"
    assert r.explanation == "Try this:" and r.after == "It adds one."


# ------------------------------------------------------------------- golden prompts (issue 16)


def test_golden_mbpp_prompt_is_the_benchmarks_own(data_dir):
    """MBPP as its paper prompts it (Austin et al. 2021): the task text, then all three tests;
    no "signature" (MBPP has none) and no test twice."""
    from sdlib.data import benchmarks
    from sdlib.prompting.prompts import task_description

    problem = benchmarks.load_by_id("mbpp")["11"]
    assert task_description(problem) == (
        "You are an expert Python programmer, and here is your task: Write a python function "
        "to remove first and last occurrence of a given character from the string.\n"
        "Your code should pass these tests:\n\n"
        'assert remove_Occ("hello","l") == "heo"\n'
        'assert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"\n'
    )
    plus = benchmarks.load("mbpp+", task_ids=["Mbpp/2"], directory=data_dir)[0]
    text = task_description(plus)
    assert "signature" not in text and text.count("assert ") == 1  # EvalPlus's prompt: one test


def test_golden_humaneval_prompt_keeps_its_signature(data_dir):
    from sdlib.data import benchmarks
    from sdlib.prompting.prompts import task_description

    problem = benchmarks.load_by_id("humaneval")["HumanEval/0"]
    assert task_description(problem) == (
        "You are an expert Python programmer, and here is your task: Complete the following "
        "Python function.\n"
        "Write the complete function, starting from this signature and docstring:\n"
        "```python\n" + problem.prompt.strip("\n").rstrip() + "\n```\n"
    )


def test_plain_chat_stops_at_any_new_turn_header() -> None:
    """Gemma 3 270M, answering a refinement chat in the plain layout, closed its code block
    and went on with a new "### Assistant:" turn up to max_new_tokens (collect, issue 15)."""
    from sdlib.generation.backends import truncate_at_stop
    from sdlib.prompting.prompts import STOP_PLAIN_CHAT

    written = "```python\ndef find_min(a,b):\n    return a\n```\n\n### Assistant:\nmore"
    text, hit = truncate_at_stop(written, STOP_PLAIN_CHAT)
    assert hit and text == "```python\ndef find_min(a,b):\n    return a\n```\n"
    for role in ("User", "System", "Assistant"):
        assert truncate_at_stop(f"x\n### {role}:\ny", STOP_PLAIN_CHAT) == ("x", True)
