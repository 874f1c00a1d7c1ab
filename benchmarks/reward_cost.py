"""What one RL batch of rewards costs, and how MiniLM similarities spread (method §4).

    .venv/bin/python benchmarks/reward_cost.py               # time batches of 64
    .venv/bin/python benchmarks/reward_cost.py --calibrate   # S_ex spread + suggested range

The batch mimics GRPO-style sampling: 8 wrong solutions x 8 sampled refinements, each wrong
solution with 4 correct refinements (code + explanation) as references. Only CodeBLEU and the
embeddings are timed; executing the candidates is the caller's job (see EXECUTION HOOK).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdlib.training.rewards import (  # noqa: E402
    RewardConfig,
    codebleu_scores,
    explanation_similarities,
    load_embedder,
    score_batch,
)

BASE_PROGRAMS = [
    '''def longest_run(nums):
    """Return the length of the longest run of equal numbers."""
    if not nums:
        return 0
    best = cur = 1
    for i in range(1, len(nums)):
        if nums[i] == nums[i - 1]:
            cur += 1
            best = max(best, cur)
        else:
            cur = 1
    return best
''',
    """def merge_sorted(a, b):
    i = j = 0
    out = []
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    out.extend(a[i:])
    out.extend(b[j:])
    return out
""",
    """def count_vowels(text):
    count = 0
    for ch in text.lower():
        if ch in "aeiou":
            count += 1
    return count
""",
    """def is_prime(n):
    if n < 2:
        return False
    k = 2
    while k * k <= n:
        if n % k == 0:
            return False
        k += 1
    return True
""",
    """def word_lengths(sentence):
    result = {}
    for word in sentence.split():
        result[word] = len(word)
    return result
""",
    """def second_largest(nums):
    uniq = sorted(set(nums))
    if len(uniq) < 2:
        return None
    return uniq[-2]
""",
    """def rotate_left(items, k):
    if not items:
        return []
    k = k % len(items)
    return items[k:] + items[:k]
""",
    """def binary_search(arr, target):
    lo, hi = 0, len(arr) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if arr[mid] == target:
            return mid
        if arr[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1
""",
]

MUTATIONS = [
    ("<=", "<"),
    ("+ 1", "+ 2"),
    ("- 1", ""),
    ("return", "return  "),
    ("if ", "if not "),
    ("[-2]", "[-1]"),
    ("k += 1", "k += 2"),
    ("count = 0", "count = 1"),
    ("i += 1", "pass"),
]

EXPLANATION_TEMPLATES = [
    "The code is wrong because the loop bound is off by one, so the last element is never checked.",
    "The comparison uses the wrong operator, which makes the function return the wrong value for equal elements.",
    "The accumulator is initialised incorrectly, so every result is shifted by one.",
    "The function returns too early from inside the loop and never processes the remaining items.",
    "The index is not advanced in one branch, so the loop never terminates and the test times out.",
    "Edge cases such as an empty list are not handled and the code raises an IndexError.",
]


def make_batch(seed: int = 0) -> dict[str, list]:
    """64 candidates with references, like one GRPO generation batch."""
    rng = random.Random(seed)
    candidates, references, explanations, reference_explanations = [], [], [], []
    for base in BASE_PROGRAMS:
        refs = [base] + [base.replace("    ", "  ", 1 + i) for i in range(3)]
        ref_expls = [
            f"{EXPLANATION_TEMPLATES[(i + len(base)) % len(EXPLANATION_TEMPLATES)]} Variant {i}."
            for i in range(4)
        ]
        for _ in range(8):
            old, new = rng.choice(MUTATIONS)
            candidates.append(base.replace(old, new, 1) + f"# sample {rng.random():.3f}\n")
            references.append(refs)
            explanations.append(rng.choice(EXPLANATION_TEMPLATES) + f" ({rng.random():.3f})")
            reference_explanations.append(ref_expls)
    return {
        "candidates": candidates,
        "references": references,
        "explanations": explanations,
        "reference_explanations": reference_explanations,
    }


def pass_fractions_for(batch: dict[str, list]) -> list[float]:
    """EXECUTION HOOK: the real pipeline executes each candidate in the sandbox and passes
    ``Verdict.pass_fraction``. Replace this stand-in with sandbox execution (and time it next
    to the other parts in ``time_batches``) once the executor is wired in."""
    return [(i % 4) / 3 for i in range(len(batch["candidates"]))]


def time_batches(repeats: int) -> None:
    config = RewardConfig()
    t0 = time.perf_counter()
    load_embedder(config.embedding_model, config.embedding_device)
    import codebleu  # noqa: F401  (import cost reported separately from the batch)

    print(f"cold start (imports + embedding model load): {time.perf_counter() - t0:.2f} s")
    import torch

    # Shared CPUs make these numbers noisy: print what else was running.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {load}")
    cb_times, ex_times, total_times = [], [], []
    for seed in range(repeats):
        batch = make_batch(seed)
        fractions = pass_fractions_for(batch)
        t = time.perf_counter()
        codebleu_scores(batch["candidates"], batch["references"], config)
        cb_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        explanation_similarities(batch["explanations"], batch["reference_explanations"], config)
        ex_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        scores = score_batch(
            batch["candidates"],
            batch["references"],
            fractions,
            batch["explanations"],
            batch["reference_explanations"],
            config,
        )
        total_times.append(time.perf_counter() - t)
    n = len(scores)
    print(f"batch of {n} samples, 4 references each, {repeats} batches (median):")
    print(f"  CodeBLEU    {statistics.median(cb_times):.3f} s/batch")
    print(f"  embeddings  {statistics.median(ex_times):.3f} s/batch")
    print(f"  score_batch {statistics.median(total_times):.3f} s/batch (both, excl. execution)")


# Hand-written explanations in the style of a teacher's "Expl.+Refine" answer: per problem,
# two different bugs, three paraphrases each.
CALIBRATION = {
    "sum_even_index": {
        "starts at 1": [
            "The loop starts at index 1, so it adds the elements at odd positions instead of even ones. Start the range at 0.",
            "The code is wrong because `range(1, len(nums), 2)` visits indices 1, 3, 5, which are the odd indices; it should begin at index 0.",
            "It sums the wrong positions: starting from 1 skips index 0 and picks every odd index. Changing the start of the range to 0 fixes it.",
        ],
        "return in loop": [
            "The return statement is indented inside the for loop, so the function returns after the first element is added.",
            "Because `return total` sits in the loop body, the function exits on the first iteration and only returns the first value.",
            "The function stops too early: the return is inside the loop instead of after it, so the sum never accumulates past one element.",
        ],
    },
    "palindrome": {
        "case": [
            "The comparison is case-sensitive, so 'Racecar' is not recognised as a palindrome. Convert the string to lowercase before comparing.",
            "The code fails because it compares the string with its reverse without normalizing case; uppercase 'R' differs from lowercase 'r'.",
            "It should ignore letter case. Calling s.lower() first would make 'Racecar' equal to its reverse.",
        ],
        "slice step": [
            "The slice s[::1] returns the string unchanged, so the function returns True for every input. Use s[::-1] to reverse it.",
            "The reverse is computed wrong: a step of 1 copies the string instead of reversing it, so the comparison is always true.",
            "The bug is the slice step. `s[::1]` is not the reversed string; it needs a step of -1, otherwise every word is reported as a palindrome.",
        ],
    },
    "max_of_list": {
        "init zero": [
            "Initializing the maximum to 0 breaks lists where every number is negative, since 0 is returned. Start from the first element instead.",
            "The code returns 0 for [-3, -1, -7] because the running maximum starts at 0, which is larger than all the elements.",
            "Using 0 as the initial value is wrong for negative inputs; the result should be initialised with nums[0].",
        ],
        "wrong operator": [
            "The comparison is reversed: `if x < best` keeps the smaller value, so the function returns the minimum rather than the maximum.",
            "It uses the less-than operator when updating, which tracks the smallest element. Switch it to greater-than.",
            "The update condition is backwards, so the result is the minimum of the list instead of the largest number.",
        ],
    },
    "count_vowels": {
        "uppercase": [
            "Only lowercase vowels are checked, so the capital 'A' and 'E' in 'ApplE' are not counted.",
            "The vowel set 'aeiou' does not include uppercase letters; the code should lower the character or add 'AEIOU'.",
            "Uppercase vowels are ignored because the membership test is case-sensitive, which makes the count too small.",
        ],
        "reset in loop": [
            "The counter is set to 0 inside the loop, so it is reset on every character and the result is at most 1.",
            "count = 0 is placed in the loop body; it should be initialised once before the loop, otherwise previous vowels are forgotten.",
            "Because the count variable is re-initialised for each character, the function only reports whether the last character is a vowel.",
        ],
    },
    "factorial": {
        "no base case": [
            "There is no base case, so the recursion never stops and raises RecursionError. Return 1 when n is 0.",
            "The function calls itself forever because it never checks for n == 0; a base case returning 1 is needed.",
            "Maximum recursion depth is exceeded since the recursion has no stopping condition.",
        ],
        "base returns 0": [
            "The base case returns 0, and since every result is multiplied by it, the factorial is always 0. It should return 1.",
            "factorial(0) is defined as 1, but the code returns 0, which makes every product zero.",
            "All outputs are 0 because the recursion ends by multiplying with 0; change the base value to 1.",
        ],
    },
    "merge_sorted": {
        "drops tail": [
            "After the while loop ends, the leftover elements of the longer list are never appended, so the result is missing items.",
            "The code stops when one list is exhausted and drops the rest of the other list; extend the result with a[i:] and b[j:].",
            "Remaining elements are lost: once either index reaches the end, the tail of the other list must still be added.",
        ],
        "no increment": [
            "The index j is never incremented when an element of b is taken, so the loop runs forever and times out.",
            "Timeout happens because in the else branch the code appends b[j] but forgets j += 1.",
            "The loop never advances through the second list, causing an infinite loop; increment j after appending.",
        ],
    },
}


def _spread(values: list[float]) -> str:
    qs = statistics.quantiles(values, n=10)
    return (
        f"n={len(values):3d} min {min(values):.2f}  p10 {qs[0]:.2f}  median "
        f"{statistics.median(values):.2f}  p90 {qs[-1]:.2f}  max {max(values):.2f}"
    )


def calibrate() -> None:
    """Pairwise cosine spread and the leave-one-out S_ex that the reward actually sees."""
    config = RewardConfig()
    bugs = [(p, b, texts) for p, by_bug in CALIBRATION.items() for b, texts in by_bug.items()]
    texts = [t for _, _, ts in bugs for t in ts]
    label = [(p, b) for p, b, ts in bugs for _ in ts]
    model = load_embedder(config.embedding_model, config.embedding_device)
    vec = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    same_bug, same_problem, other_problem = [], [], []
    for i, j in itertools.combinations(range(len(texts)), 2):
        sim = float(vec[i] @ vec[j])
        if label[i] == label[j]:
            same_bug.append(sim)
        elif label[i][0] == label[j][0]:
            same_problem.append(sim)
        else:
            other_problem.append(sim)
    print("pairwise cosine, MiniLM (all-MiniLM-L6-v2):")
    print(f"  (a) same bug, paraphrased       {_spread(same_bug)}")
    print(f"  (b) other bug, same problem     {_spread(same_problem)}")
    print(f"  (c) other problem's bug         {_spread(other_problem)}")

    # S_ex as the reward computes it: one explanation against the *other* explanations of a
    # bug (leave-one-out when it is the same bug).
    cands, refs, kinds = [], [], []
    for p, b, ts in bugs:
        for k, t in enumerate(ts):
            for p2, b2, ts2 in bugs:
                if (p2, b2) == (p, b):
                    cands.append(t)
                    refs.append(ts[:k] + ts[k + 1 :])
                    kinds.append("a")
                else:
                    cands.append(t)
                    refs.append(ts2)
                    kinds.append("b" if p2 == p else "c")
    s_ex = explanation_similarities(cands, refs, config)
    by_kind = {k: [s for s, kk in zip(s_ex, kinds, strict=True) if kk == k] for k in "abc"}
    print("S_ex (mean over the references of one bug):")
    print(f"  (a) same bug (leave-one-out)    {_spread(by_kind['a'])}")
    print(f"  (b) other bug, same problem     {_spread(by_kind['b'])}")
    print(f"  (c) other problem's bug         {_spread(by_kind['c'])}")
    pos, neg = by_kind["a"], by_kind["b"]
    best = max(
        (t / 100 for t in range(0, 101)),
        key=lambda t: sum(s >= t for s in pos) + sum(s < t for s in neg),
    )
    acc = (sum(s >= best for s in pos) + sum(s < best for s in neg)) / (len(pos) + len(neg))
    print(f"  threshold separating (a) from (b) best: {best:.2f} (accuracy {acc:.0%})")
    for name, cfg in [("paper (50,35,3)", RewardConfig.paper()), ("default", config)]:
        lo, hi = cfg.similarity_range
        means = {}
        for k in "abc":
            rewards = [
                (cfg.expl_scale * s - cfg.expl_offset) / cfg.expl_divisor for s in by_kind[k]
            ]
            means[k] = statistics.mean(min(max(r, -5), 5) for r in rewards)
        print(
            f"  mapping {name:16s} range [{lo:.2f}, {hi:.2f}]: mean R_expl "
            f"(a) {means['a']:+.2f}  (b) {means['b']:+.2f}  (c) {means['c']:+.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="batches to time")
    parser.add_argument("--calibrate", action="store_true", help="print MiniLM S_ex spread")
    args = parser.parse_args()
    if args.calibrate:
        calibrate()
    else:
        time_batches(args.repeats)


if __name__ == "__main__":
    main()
