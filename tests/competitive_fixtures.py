"""APPS and CodeContests rows in their exact public schemas (the hubs are unreachable here),
a dozen problems each: stdin/stdout and call-based, with correct and incorrect Python
solutions, and the cases a loader must count (no tests, no Python 3 reference, several valid
answers, a reference that fails its own tests)."""

from __future__ import annotations

import json
from pathlib import Path

# (question, solutions, incorrect solution, inputs, outputs, fn_name, starter, difficulty)
SUM = "a, b = map(int, input().split())\nprint(a + b)\n"
_APPS = [
    ("Read two integers and print their sum.", [SUM, "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n"],
     "a, b = map(int, input().split())\nprint(a - b)\n", ["1 2\n", "10 -3\n", "0 0\n"], ["3\n", "7\n", "0\n"], None, "", "introductory"),
    ("Print the given string reversed.", ["print(input()[::-1])\n"], "print(input())\n",
     ["abc\n", "racecar\n", "ab\n"], ["cba\n", "racecar\n", "ba\n"], None, "", "introductory"),
    ("The first line holds n, the second n integers. Print the largest.",
     ["input()\nprint(max(map(int, input().split())))\n"], "input()\nprint(min(map(int, input().split())))\n",
     ["3\n1 5 2\n", "1\n-4\n"], ["5\n", "-4\n"], None, "", "interview"),
    ("Print the mean of the integers on the line, as a real number.",
     ["xs = list(map(int, input().split()))\nprint(sum(xs) / len(xs))\n"],
     "xs = list(map(int, input().split()))\nprint(sum(xs) // len(xs))\n",
     ["1 2\n", "1 1 2\n"], ["1.5\n", "1.33333333\n"], None, "", "interview"),
    ("Count the vowels of the word.", ["print(sum(c in 'aeiou' for c in input()))\n"], "print(len(input()))\n",
     ["hello\n", "sky\n"], ["2\n", "0\n"], None, "", "introductory"),
    ("Print the n-th Fibonacci number (F(0) = 0).",
     ["n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)\n"],
     "n = int(input())\nprint(n)\n", ["0\n", "1\n", "10\n"], ["0\n", "1\n", "55\n"], None, "", "interview"),
    ("Print two numbers whose sum is n. If there are multiple answers, print any of them.",
     ["n = int(input())\nprint(0, n)\n"], "print(1)\n", ["4\n"], ["0 4\n"], None, "", "interview"),
    ("Print each word of the line on its own line.", ["for w in input().split():\n    print(w)\n"],
     "print(input()[::-1])\n", ["a b c\n"], [["a", "b", "c"]], None, "", "introductory"),
    ("Complete add(a, b): return a + b.", ["def add(a, b):\n    return a + b\n"],
     "def add(a, b):\n    return a * b\n", [[1, 2], [3, 4]], [[3], [7]], "add", "def add(a, b):\n", "introductory"),
    ("Given nums and target, return the indices of the two numbers adding up to target.",
     ["class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n        for i, x in enumerate(nums):\n"
      "            if target - x in seen:\n                return [seen[target - x], i]\n            seen[x] = i\n"],
     "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n",
     [[[2, 7, 11, 15], 9], [[3, 2, 4], 6]], [[0, 1], [1, 2]], "twoSum",
     "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        ", "interview"),
    ("A problem released without tests.", [SUM], SUM, [], [], None, "", "competition"),
    ("Print the square of n.", ["n = int(input())\nprint(n * n + 1)\n"], "print(0)\n",
     ["2\n"], ["4\n"], None, "", "competition"),  # its reference is wrong: dropped, counted
]  # fmt: skip


def apps_rows() -> list[dict]:
    """codeparrot/apps rows: problem_id, question, solutions and input_output as JSON text,
    difficulty, url, starter_code."""
    rows = []
    for k, (question, solutions, _, inputs, outputs, fn, starter, difficulty) in enumerate(_APPS):
        io = {"inputs": inputs, "outputs": outputs, **({"fn_name": fn} if fn else {})}
        rows.append(
            {
                "problem_id": 4000 + k,
                "question": question,
                "solutions": json.dumps(solutions),
                "input_output": json.dumps(io) if inputs else "",
                "difficulty": difficulty,
                "url": f"https://codeforces.com/problemset/problem/{k}/A",
                "starter_code": starter,
            }
        )
    return rows


def apps_incorrect() -> dict[str, str]:
    """problem_id -> a wrong Python solution."""
    return {f"apps/{4000 + k}": row[2] for k, row in enumerate(_APPS)}


CPP = '#include <cstdio>\nint main(){int a,b;scanf("%d %d",&a,&b);printf("%d\\n",a+b);}\n'
# (name, description, python3 solutions, incorrect, public, private, generated, rating, other langs)
_CC = [
    ("1_A. Sum", "Print a + b.", [SUM], "print(0)\n", [("1 2\n", "3\n")], [("5 5\n", "10\n")], [("-1 1\n", "0\n")], 800),
    ("2_A. Product", "Print a * b.", ["a, b = map(int, input().split())\nprint(a * b)\n"],
     "a, b = map(int, input().split())\nprint(a + b)\n", [("2 3\n", "6\n")], [("0 9\n", "0\n")], [("7 7\n", "49\n")], 800),
    ("3_B. Sort", "Sort the n numbers of the second line.",
     ["input()\nprint(*sorted(map(int, input().split())))\n"], "input()\nprint(input())\n",
     [("3\n3 1 2\n", "1 2 3\n")], [("2\n2 1\n", "1 2\n")], [("1\n5\n", "5\n")], 1000),
    ("4_A. Palindrome", "Print YES if the word is a palindrome, else NO.",
     ["s = input().strip()\nprint('YES' if s == s[::-1] else 'NO')\n"], "print('YES')\n",
     [("aba\n", "YES\n")], [("ab\n", "NO\n")], [("z\n", "YES\n")], 900),
    ("5_A. Words", "Count the words of the line.", ["print(len(input().split()))\n"], "print(1)\n",
     [("a b c\n", "3\n")], [("x\n", "1\n")], [("p q\n", "2\n")], 800),
    ("6_C. GCD", "Print gcd(a, b).", ["import math\na, b = map(int, input().split())\nprint(math.gcd(a, b))\n"],
     "a, b = map(int, input().split())\nprint(min(a, b))\n", [("12 18\n", "6\n")], [("7 5\n", "1\n")], [("4 4\n", "4\n")], 1200),
    ("7_B. Divide", "Print a / b with enough precision.",
     ["a, b = map(int, input().split())\nprint(a / b)\n"], "a, b = map(int, input().split())\nprint(a // b)\n",
     [("1 3\n", "0.333333333\n")], [("7 2\n", "3.5\n")], [("2 1\n", "2.0\n")], 1100),
    ("8_D. Kadane", "Print the largest sum of a contiguous non-empty part of the array.",
     ["input()\nbest = cur = None\nfor x in map(int, input().split()):\n    cur = x if cur is None or cur < 0 else cur + x\n"
      "    best = cur if best is None else max(best, cur)\nprint(best)\n"],
     "input()\nprint(sum(map(int, input().split())))\n",
     [("3\n-1 2 3\n", "5\n")], [("2\n-5 -2\n", "-2\n")], [("3\n1 -9 4\n", "4\n")], 1500),
    ("9_A. Repeat", "Print the word k times, separated by spaces.",
     ["w, k = input().split()\nprint(' '.join([w] * int(k)))\n"], "w, k = input().split()\nprint(w)\n",
     [("ab 2\n", "ab ab\n")], [("x 1\n", "x\n")], [("q 3\n", "q q q\n")], 800),
    ("10_A. Old", "Print a + b (Python 2 solutions only).", [], "print(0)\n",
     [("1 2\n", "3\n")], [], [], 800),  # no Python 3 reference: dropped, counted
    ("11_B. Any pair", "Print two numbers with sum n. If there are several answers, print any.",
     ["n = int(input())\nprint(0, n)\n"], "print(1)\n", [("4\n", "0 4\n")], [], [], 1000),
    ("12_C. Broken", "Print n squared.", ["n = int(input())\nprint(n * n + 1)\n"], "print(0)\n",
     [("3\n", "9\n")], [], [], 1300),  # its reference is wrong: dropped, counted
]  # fmt: skip


def _tests(pairs) -> dict:
    return {"input": [i for i, _ in pairs], "output": [o for _, o in pairs]}


def codecontests_rows() -> list[dict]:
    """deepmind/code_contests rows with every public field."""
    rows = []
    for k, (name, description, python, wrong, public, private, generated, rating) in enumerate(_CC):
        langs = [2] + [3] * len(python) + ([1] if not python else [])
        codes = [CPP] + python + (["print int(raw_input()) + 1\n"] if not python else [])
        rows.append(
            {
                "name": name,
                "description": description,
                "public_tests": _tests(public),
                "private_tests": _tests(private),
                "generated_tests": _tests(generated),
                "source": 2,
                "difficulty": 7,
                "solutions": {"language": langs, "solution": codes},
                "incorrect_solutions": {"language": [3], "solution": [wrong]},
                "cf_contest_id": k + 1,
                "cf_index": name.split("_")[1][0],
                "cf_points": 500.0,
                "cf_rating": rating,
                "cf_tags": ["implementation"],
                "is_description_translated": False,
                "untranslated_description": "",
                "time_limit": {"seconds": 2, "nanos": 500_000_000 if k == 0 else 0},
                "memory_limit_bytes": 256_000_000,
                "input_file": "",
                "output_file": "",
            }
        )
    return rows


def codecontests_incorrect() -> dict[str, str]:
    return {row[0]: row[3] for row in _CC}


def write(rows: list[dict], folder: Path, split: str, form: str) -> Path:
    """Save rows as the hub or a user would: ``jsonl``, ``parquet`` or ``save_to_disk``."""
    folder.mkdir(parents=True, exist_ok=True)
    if form == "jsonl":
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    if form == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        half = len(rows) // 2  # two shards, as the hub writes them
        for n, part in enumerate((rows[:half], rows[half:])):
            pq.write_table(pa.Table.from_pylist(part), folder / f"{split}-0000{n}-of-00002.parquet")
        return folder
    if form == "save_to_disk":
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(folder / split))
        return folder / split
    raise ValueError(form)
