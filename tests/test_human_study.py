"""Human study (method §6): study preparation on a real tiny model through notebook 06 and
`sdlib run`, blinding, assignment, crash-safe rating storage, resume, agreement statistics
and the optional LLM judge.

The eval stage's outputs are written here in its contract: wrong initial solutions are real
failing mutants of MBPP / HumanEval test-split references, with their real sandbox verdicts."""

from __future__ import annotations

import json
import math
import multiprocessing
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdlib.data.resumable import ResumableLog
from sdlib.prompting import prompts
from sdlib.runs.params import HumanStudyParams, parse
from sdlib.study import human_study
from sdlib.study.agreement import bootstrap_ci, cohen_kappa, krippendorff_alpha
from sdlib.study.ratings import RatingStore, all_ratings, resume_index

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "kind": "tiny",
    "batch_size": 8,
    "tiny": {"n_problems": 3, "steps": 4, "batch_size": 4, "max_len": 768},
}
PARAMS = {
    "run_name": "study",
    "seed": 1,
    "stages": ["human_study"],
    # a barely trained tiny model: what it writes does not matter, only that the stage runs
    "model": TINY,
    "sandbox": {"timeout": 5, "workers": 2},
    "collect": {"n_problems": 3, "exclude_eval_overlap": False},
    "human_study": {
        "n_problems": 4,
        # no sft stage here and the teacher is the model itself: both skipped with a note
        "models": ["base", "sft", "teacher", {"name": "custom7", **TINY}],
        "raters": ["ann", "bob", "cat"],
        "raters_per_item": 2,
        "max_new_tokens": 48,
    },
}


def write_eval_outputs(run_dir: Path, params) -> None:
    """eval/base/<benchmark>/initial.jsonl in the eval contract, from real sandbox runs."""
    from sdlib.data import benchmarks
    from sdlib.data.mutants import mutants
    from sdlib.execution.sandbox import Sandbox

    picks = {"mbpp": ["11", "12", "14", "16"], "humaneval": ["HumanEval/0", "HumanEval/2"]}
    with Sandbox(params.sandbox.config()) as sandbox:
        for benchmark, ids in picks.items():
            problems = benchmarks.load_by_id(benchmark, directory=params.data_directory())
            jobs = []
            for task_id in ids:
                p = problems[task_id]
                jobs.append((p, p.reference))  # a correct sample: never chosen
                for program in list(mutants(p.reference, p.entry_point).values())[:2]:
                    jobs.append((p, program))
            verdicts = sandbox.run_many([(p, prog) for p, prog in jobs])
            with ResumableLog(run_dir / "eval" / "base" / benchmark / "initial.jsonl") as log:
                for task_id in ids:
                    records = []
                    for index, ((p, program), v) in enumerate(zip(jobs, verdicts)):
                        if p.task_id != task_id:
                            continue
                        records.append(
                            {
                                "id": f"{task_id}/s{index}",
                                "task_id": task_id,
                                "index": index,
                                "benchmark": benchmark,
                                "model": "base",
                                "prompt": "",
                                "response": program,
                                "code": program,
                                "solution": program,
                                "verdict": v.to_dict(),
                                "feedback": prompts.format_feedback(v),
                            }
                        )
                    log.commit(task_id, records)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("human_study")
    params_path = folder / "params.yaml"
    params_path.write_text(yaml.safe_dump({**PARAMS, "output_dir": str(folder / "outputs")}))
    params = parse({**PARAMS, "output_dir": str(folder / "outputs")})
    run_dir = folder / "outputs" / "study"
    write_eval_outputs(run_dir, params)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdlib.workbench.cli",
            "run",
            str(params_path),
            "--stages",
            "human_study",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return params, run_dir


# ------------------------------------------------------------------- preparing a study ----


def test_notebook_prepares_a_blinded_study(run):
    params, run_dir = run
    study = human_study.study_dir(run_dir)
    meta = json.loads((study / "study.json").read_text())
    assert meta["frozen"] and meta["source"] == "eval/base"
    assert "run the sft stage" in meta["skipped_models"]["sft"]
    assert "self-bootstrap" in meta["skipped_models"]["teacher"]
    problems = meta["problems"]
    assert len(problems) == 4
    assert {p["benchmark"] for p in problems} == {"mbpp", "humaneval"}  # interleaved
    assert all(p["verdict"]["status"] != "pass" for p in problems)

    items = human_study.load_items(study)
    key = human_study.load_key(study)
    assert len(items) == 8 and set(items) == set(key)  # 4 problems x (base, custom7)
    assert {k["model"] for k in key.values()} == {"base", "custom7"}
    raw = (study / "items.jsonl").read_text()
    assert "model" not in raw and "custom7" not in raw and '"base"' not in raw
    for item in items.values():  # every model explains the same wrong code
        source = next(p for p in problems if p["id"] == key[item["item"]]["source_id"])
        assert item["code"] == source["code"] and item["feedback"] == source["feedback"]
    responses = [k["response"] for k in key.values()]
    assert all(isinstance(r, str) and r for r in responses)  # generated (a 4-step model: blanks)
    blank = {m: 0 for m in ("base", "custom7")}
    for item in items.values():
        blank[key[item["item"]]["model"]] += not item["explanation"].strip()
    assert human_study.summary(study)["items_without_explanation"] == blank

    executed = run_dir / "notebooks" / "06_human_study.ipynb"
    assert executed.is_file() and (run_dir / "human_study" / "DONE.json").is_file()
    assert "no ratings yet" in executed.read_text()


def test_assignment_two_raters_per_item_balanced_and_shuffled(run):
    _, run_dir = run
    assignments = human_study.load_assignments(human_study.study_dir(run_dir))
    counts: dict[str, int] = {}
    for order in assignments.values():
        assert len(order) == len(set(order))
        for item in order:
            counts[item] = counts.get(item, 0) + 1
    assert set(counts.values()) == {2} and len(counts) == 8
    loads = sorted(len(v) for v in assignments.values())
    assert loads[-1] - loads[0] <= 1

    items = [f"i{n}" for n in range(50)]
    a = human_study.assign(items, ["r1", "r2"], 2, seed=0)
    assert a == human_study.assign(items, ["r1", "r2"], 2, seed=0)  # deterministic
    assert sorted(a["r1"]) == sorted(a["r2"]) == sorted(items)
    assert a["r1"] != a["r2"]  # each rater has their own order
    with pytest.raises(ValueError, match="raters_per_item"):
        human_study.assign(items, ["r1"], 2, seed=0)


def test_rerun_is_idempotent_and_changes_after_ratings_are_refused(run):
    params, run_dir = run
    study = human_study.study_dir(run_dir)
    before = {p.name: p.read_bytes() for p in study.iterdir() if p.is_file()}
    summary = human_study.prepare_study(params, run_dir, progress=False)
    assert summary["prepared_now"] is False  # nothing generated again: the files are the same
    after = {p.name: p.read_bytes() for p in study.iterdir() if p.is_file()}
    assert before == after

    RatingStore(study, "ann").rate(human_study.load_assignments(study)["ann"][0], 3, 3)
    changed = params.model_copy(
        update={"human_study": params.human_study.model_copy(update={"n_problems": 3})}
    )
    with pytest.raises(human_study.StudyError, match="already holds ratings"):
        human_study.prepare_study(changed, run_dir, progress=False)


def test_no_source_is_a_clear_error(tmp_path):
    with pytest.raises(human_study.StudyError, match="Run the eval stage"):
        human_study.find_source(tmp_path, HumanStudyParams())
    (tmp_path / "eval" / "base" / "mbpp").mkdir(parents=True)
    (tmp_path / "eval" / "base" / "mbpp" / "initial.jsonl").write_text("")
    with pytest.raises(human_study.StudyError, match="eval outputs exist for: \\['base'\\]"):
        human_study.find_source(tmp_path, HumanStudyParams(source_model="rl"))


def test_params_are_validated():
    with pytest.raises(ValueError, match="raters_per_item"):
        parse({"human_study": {"raters": ["a"], "raters_per_item": 2}})
    with pytest.raises(ValueError, match="unknown model"):
        parse({"human_study": {"models": ["gpt"]}})
    with pytest.raises(ValueError, match="raters must be unique"):
        parse({"human_study": {"raters": ["a/b", "c"]}})


# ---------------------------------------------------------------------------- storage ----


def test_ratings_append_last_wins_and_history_is_kept(tmp_path):
    store = RatingStore(tmp_path, "ann")
    store.rate("x", 2, 3, "first")
    store.skip("y")
    store.rate("x", 4, 5, "changed my mind")
    assert store.latest()["x"]["correctness"] == 4
    assert [e["action"] for e in store.events()] == ["rate", "skip", "rate"]
    assert store.skipped() == {"y"}
    with pytest.raises(ValueError, match="correctness must be one of"):
        store.rate("x", 6, 1)
    with pytest.raises(ValueError, match="helpfulness"):
        store.rate("x", 1, True)
    assert len(store.events()) == 3  # nothing written for refused ratings


def test_torn_tail_loses_nothing_saved(tmp_path):
    store = RatingStore(tmp_path, "ann")
    store.rate("a", 1, 2)
    with open(store.path, "a") as handle:  # a kernel killed in the middle of a write
        handle.write('{"action": "rate", "item": "b", "corr')
    assert set(store.latest()) == {"a"}  # the torn line is ignored on reading
    store.rate("c", 3, 4)  # and cut off by the next append
    assert set(store.latest()) == {"a", "c"}
    assert all(line.startswith("{") for line in store.path.read_text().splitlines())


def test_killed_writer_loses_no_saved_rating(tmp_path):
    """A rating process killed with SIGKILL: every rating it was told was saved is on disk."""
    code = (
        "import sys\nfrom sdlib.study.ratings import RatingStore\n"
        "store = RatingStore(sys.argv[1], 'ann')\n"
        "for i in range(100000):\n"
        "    store.rate(f'item{i}', 1 + i % 5, 1 + i % 5, 'c' * 2000)\n"
        "    print(i, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    acknowledged = [int(proc.stdout.readline()) for _ in range(40)]
    proc.kill()
    proc.wait()
    saved = RatingStore(tmp_path, "ann").latest()
    assert {f"item{i}" for i in acknowledged} <= set(saved)
    RatingStore(tmp_path, "ann").rate("after", 5, 5)  # the file stays appendable
    assert "after" in RatingStore(tmp_path, "ann").latest()


def _hammer(args: tuple[str, str, int]) -> None:
    folder, rater, n = args
    store = RatingStore(folder, rater)
    for i in range(n):
        store.rate(f"{rater}-{i}", 1 + i % 5, 1 + (i * 3) % 5, "x" * (i % 300))


def test_concurrent_writers_never_overwrite(tmp_path):
    """Two raters on one folder, and the same rater in two tabs, all writing at once."""
    jobs = [(str(tmp_path), "ann", 150), (str(tmp_path), "bob", 150), (str(tmp_path), "ann", 150)]
    with multiprocessing.get_context("fork").Pool(3) as pool:
        pool.map(_hammer, jobs)
    ann = RatingStore(tmp_path, "ann").events()
    bob = RatingStore(tmp_path, "bob").events()
    assert len(ann) == 300 and len(bob) == 150
    assert len(all_ratings(tmp_path)) == 150 + 150  # ann's two tabs rated the same 150 ids


def test_resume_index():
    order = ["a", "b", "c", "d"]
    assert resume_index(order, set(), set()) == 0
    assert resume_index(order, {"a", "b"}, set()) == 2
    assert resume_index(order, {"a"}, {"b"}) == 2  # skipped ones come last
    assert resume_index(order, {"a", "c", "d"}, {"b"}) == 1
    assert resume_index(order, set(order), set()) == 4  # all done


def test_rating_app_resumes_from_disk(run):
    """The widget app (no browser): rate, reopen, continue where the rater stopped."""
    from sdlib.study.rating_ui import RatingApp, parse_keys

    _, run_dir = run
    study = human_study.study_dir(run_dir)
    app = RatingApp(study, "bob")
    order = app.order
    assert app.index == 0
    assert not app.save()  # no scores chosen: refused
    app.choose("correctness", 5)
    app.choose("helpfulness", 4)
    assert app.save()
    app.skip()
    reopened = RatingApp(study, "bob")
    assert reopened.index == 2 and "rated 1" in reopened.header.value
    reopened.keys.value = "2 2 vague"
    assert RatingStore(study, "bob").latest()[order[2]]["comment"] == "vague"
    assert parse_keys("45") == ("save", (4, 5, ""))
    assert parse_keys("4 5 off by one") == ("save", (4, 5, "off by one"))
    assert parse_keys("9 9")[0] == "error" and parse_keys("b")[0] == "back"
    with pytest.raises(human_study.StudyError, match="not in this study"):
        RatingApp(study, "zed")


# -------------------------------------------------------------------------- agreement ----


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the worked example:
# 4 observers, 12 units, missing values; published alphas 0.743 / 0.815 / 0.849.
RELIABILITY = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def test_krippendorff_alpha_matches_published_values():
    units = [[row[u] for row in RELIABILITY if row[u] is not None] for u in range(12)]
    assert round(krippendorff_alpha(units, "nominal"), 3) == 0.743
    assert round(krippendorff_alpha(units, "ordinal"), 3) == 0.815
    assert round(krippendorff_alpha(units, "interval"), 3) == 0.849
    assert math.isnan(krippendorff_alpha([[3, 3], [3, 3]]))  # no variation: undefined


def test_weighted_kappa_matches_scikit_learn():
    from sklearn.metrics import cohen_kappa_score

    rng = random.Random(0)
    a = [rng.randint(1, 5) for _ in range(60)]
    b = [min(5, max(1, x + rng.choice([-1, 0, 0, 1, 2]))) for x in a]
    for weights in (None, "linear", "quadratic"):
        assert cohen_kappa(a, b, weights) == pytest.approx(cohen_kappa_score(a, b, weights=weights))
    assert math.isnan(cohen_kappa([3], [3]))


def test_bootstrap_ci_brackets_the_mean():
    values = [1, 2, 2, 3, 3, 3, 4, 4, 5, 5]
    lo, hi = bootstrap_ci(values)
    assert lo < sum(values) / len(values) < hi
    assert bootstrap_ci(values) == bootstrap_ci(values)  # seeded


def test_results_per_model_and_agreement(tmp_path):
    """Results from ratings on a hand-built key: the teacher's explanations are rated higher."""
    from sdlib.data.jsonl import write_jsonl

    key = [
        {"item": f"i{n}", "model": "teacher" if n % 2 else "base", "source_id": f"p{n // 2}",
         "refined_status": "pass" if n % 2 else "fail"}
        for n in range(20)
    ]  # fmt: skip
    write_jsonl(tmp_path / "key.jsonl", key)
    for rater, shift in (("ann", 0), ("bob", 1)):
        store = RatingStore(tmp_path, rater)
        for n, k in enumerate(key):
            base = 4 if k["model"] == "teacher" else 2
            score = min(5, base + (shift if n % 3 == 0 else 0))
            store.rate(k["item"], score, score)
    res = human_study.results(tmp_path)
    by_model = {r["model"]: r for r in res["per_model"]}
    assert by_model["teacher"]["correctness"] > by_model["base"]["correctness"]
    lo, hi = by_model["base"]["correctness_ci"]
    assert lo <= by_model["base"]["correctness"] <= hi
    assert by_model["teacher"]["refinement_pass"] == 1.0
    agreement = res["agreement"]
    assert agreement["items_with_2+_ratings"] == 20
    assert 0.5 < agreement["correctness_alpha_ordinal"] < 1
    assert "ann~bob" in agreement["correctness_kappa_quadratic"]


# ------------------------------------------------------------------------------ judge ----


def test_judge_parsing_and_a_real_judge_run(run):
    from sdlib.study import judge

    assert judge.parse_scores("Correctness: 4\nHelpfulness: 2") == (4, 2)
    assert judge.parse_scores("**correctness** - 5, helpfulness=1") == (5, 1)
    assert judge.parse_scores("I think it is fine") is None

    params, run_dir = run
    params = params.model_copy(
        update={"human_study": params.human_study.model_copy(update={"judge": params.model})}
    )
    summary = judge.run_judge(params, run_dir, progress=False)
    raw = (judge.judge_dir(run_dir) / "raw.jsonl").read_text().splitlines()
    assert len(raw) == summary["items"] == 8  # every answer kept, parsed or not
    assert summary["judged_now"] + summary["unparsed_now"] == 8
    humans = {r["rater"] for r in human_study.rating_table(human_study.study_dir(run_dir))}
    assert "judge" not in humans  # the judge never counts as a human rater
    assert "correctness_alpha_with_judge" in judge.agreement_with_humans(
        human_study.study_dir(run_dir)
    )
