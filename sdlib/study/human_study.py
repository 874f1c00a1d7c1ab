"""Stage 6 (method §6): a blinded human study of the models' explanations.

Why it is built this way: the paper's raters scored explanations of *the same* wrong solution
written by each model, without knowing which model wrote which. So the study takes K problems
with a wrong initial solution from one source model's eval outputs, asks every study model for
an Expl.+Refine answer to that very solution, and stores:

* ``study.json``: the design (source, models, problems, seed, raters) and notes (models
  skipped and why, a fallback to collect records); once ``items.jsonl`` exists the study is
  frozen: re-running prepares nothing and changes no assignment.
* ``explanations.jsonl``: a ``ResumableLog`` with one unit per model, so a killed preparation
  resumes without regenerating what it made.
* ``items.jsonl``: what raters see — problem, wrong code, feedback, explanation — under an
  opaque item id, nothing naming the model.
* ``key.jsonl``: the blinding key (item -> model, the full response, the refined code and its
  verdict), kept apart from what the rating UI reads.
* ``assignments.json``: per rater, the items in that rater's own shuffled order; every item
  goes to ``raters_per_item`` raters, load balanced.
* ``ratings/<rater>.jsonl``: see ``sdlib.study.ratings``.
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sdlib.data.jsonl import write_jsonl
from sdlib.data.records import (
    EvalSampleRecord,
    InitialRecord,
    StudyItemRecord,
    StudyKeyRecord,
    read_records,
)
from sdlib.data.resumable import ResumableLog
from sdlib.generation.generator import chat_stop, complete, seed_for
from sdlib.prompting import prompts
from sdlib.prompting.answers import judge_programs, read_answer
from sdlib.runs.context import StageContext
from sdlib.runs.layout import RunLayout
from sdlib.runs.params import STAGE_MODELS, HumanStudyParams, NamedModel, RunParams
from sdlib.study.agreement import bootstrap_ci, cohen_kappa, krippendorff_alpha
from sdlib.study.ratings import all_ratings

RUBRIC: dict[str, dict[int, str]] = {
    "correctness": {
        1: "Totally wrong or misleading about what is wrong with the code",
        2: "Mostly wrong; at most a minor point is right",
        3: "Partly correct: finds a real problem but misses or misstates the main one",
        4: "Mostly correct, with small inaccuracies",
        5: "Totally correct: identifies what is wrong and why",
    },
    "helpfulness": {
        1: "Unhelpful: repeats the error message or is unrelated to the bug",
        2: "Vague: points somewhere near the problem, no usable direction",
        3: "Somewhat helpful: a direction, but a developer must still work out the fix",
        4: "Helpful: a clear hint that leads to the fix",
        5: "Very helpful: at least one clear, actionable hint how to fix it",
    },
}
SCORES = tuple(RUBRIC)
WRONG = ("fail", "error", "timeout", "memory", "syntax", "crash")  # has code that ran wrong


class StudyError(RuntimeError):
    """A study that cannot be prepared as asked (no source, a change after ratings began)."""


def study_dir(run_dir: str | Path) -> Path:
    return RunLayout.of(run_dir).human_study


def _label(entry: str | NamedModel) -> str:
    return entry if isinstance(entry, str) else entry.name


# ------------------------------------------------------------------------------ source ----


def find_source(
    run_dir: str | Path, cfg: HumanStudyParams
) -> tuple[str, list[dict[str, Any]], list[str]]:
    """(source label, its initial records, notes): eval outputs of ``cfg.source_model`` (or
    the first model that has any), else the collect stage's initial solutions."""
    run_dir = Path(run_dir)
    layout = RunLayout.of(run_dir)
    eval_root = layout.eval
    notes: list[str] = []
    available = sorted(
        layout.evaluated_models(),
        key=lambda n: (STAGE_MODELS.index(n) if n in STAGE_MODELS else len(STAGE_MODELS), n),
    )
    if cfg.source_model is not None and cfg.source_model not in available:
        raise StudyError(
            f"human_study.source_model is {cfg.source_model!r} but {eval_root / cfg.source_model} "
            f"holds no initial samples; eval outputs exist for: {available or 'no model'}. Run the "
            "eval stage for it or set source_model to one of those (or null)"
        )
    if available:
        model = cfg.source_model or available[0]
        folders = layout.evaluated(model)
        wanted = [f for f in folders if f.name in cfg.benchmarks]
        if not wanted:
            notes.append(
                f"no eval outputs of {model!r} for {cfg.benchmarks}; using {[f.name for f in folders]}"
            )
            wanted = folders
        records = [
            r
            for f in wanted
            for r in read_records(
                RunLayout.eval_round(f, 0), EvalSampleRecord, resumable=True, missing_ok=True
            )
        ]
        return f"eval/{model}", records, notes
    collected = RunLayout.of(run_dir).initial
    if collected.is_file():
        notes.append(
            f"no eval outputs under {eval_root}: the wrong solutions come from the collect "
            "stage (MBPP *training* problems, the base model's samples). Run the eval stage "
            "and re-prepare in a fresh study folder for the paper's setting."
        )
        return "collect", read_records(collected, InitialRecord, resumable=True), notes
    raise StudyError(
        f"nothing to build a study from: neither {eval_root}/<model>/<benchmark>/initial.jsonl "
        f"nor {collected} exists. Run the eval stage (or at least collect) first."
    )


def pick_problems(records: list[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    """K problems, one wrong solution each, chosen with ``seed``; benchmarks interleaved so a
    small K still mixes them (the paper's 50 came from MBPP and HumanEval)."""
    by_task: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        verdict = record.get("verdict") or {}
        usable = (record.get("code") or "").strip() and not record.get("no_code")
        if verdict.get("status") in WRONG and usable:
            by_task[(record.get("benchmark", ""), record["task_id"])].append(record)
    rng = random.Random(seed_for(seed, "human_study/problems"))
    per_benchmark: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (benchmark, _), candidates in sorted(by_task.items()):
        candidates = sorted(candidates, key=lambda r: r["id"])
        per_benchmark[benchmark].append(rng.choice(candidates))
    for chosen in per_benchmark.values():
        rng.shuffle(chosen)
    picked: list[dict[str, Any]] = []
    queues = [per_benchmark[b] for b in sorted(per_benchmark)]
    while len(picked) < k and any(queues):
        for queue in queues:
            if queue and len(picked) < k:
                picked.append(queue.pop())
    return picked


# ---------------------------------------------------------------------------- building ----


def _design(cfg: HumanStudyParams, params: RunParams) -> dict[str, Any]:
    return {
        "n_problems": cfg.n_problems,
        "models": [m if isinstance(m, str) else m.model_dump(mode="json") for m in cfg.models],
        "source_model": cfg.source_model,
        "benchmarks": list(cfg.benchmarks),
        "raters": list(cfg.raters),
        "raters_per_item": cfg.raters_per_item,
        "seed": cfg.seed,
        "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens,
        "model": params.model.model_dump(mode="json"),
        "teacher": params.teacher.model_dump(mode="json"),
    }


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def assign(items: list[str], raters: list[str], per_item: int, seed: int) -> dict[str, list[str]]:
    """Every item to ``per_item`` distinct raters, loads within one of each other; each rater
    gets their items in their own shuffled order (so no model is seen first by everyone)."""
    if not 1 <= per_item <= len(raters):
        raise ValueError(f"raters_per_item must be in 1..{len(raters)}, got {per_item}")
    rng = random.Random(seed_for(seed, "human_study/assign"))
    order = list(items)
    rng.shuffle(order)
    out: dict[str, list[str]] = {r: [] for r in raters}
    for i, item in enumerate(order):
        for j in range(per_item):
            out[raters[(i * per_item + j) % len(raters)]].append(item)
    for rater in raters:
        random.Random(seed_for(seed, "human_study/order", rater)).shuffle(out[rater])
    return out


def _problem_lookup(params: RunParams):
    from sdlib.data import benchmarks

    cache: dict[str, dict] = {}

    def get(benchmark: str, task_id: str):
        if benchmark not in cache:
            cache[benchmark] = benchmarks.load_by_id(benchmark, directory=params.data_directory())
        try:
            return cache[benchmark][task_id]
        except KeyError:
            raise StudyError(f"task {task_id!r} not found in benchmark {benchmark!r}") from None

    return get


def _explain_with(
    entry: str | NamedModel,
    problems: list[dict[str, Any]],
    get_problem: Any,
    params: RunParams,
    run_dir: Path,
    sandbox: Any,
    progress: bool,
) -> list[dict[str, Any]]:
    """One Expl.+Refine answer per chosen wrong solution from one model; refined code run."""
    from sdlib.generation.backends import SamplingParams
    from sdlib.generation.models import stage_generator

    cfg = params.human_study
    label = _label(entry)
    generator = stage_generator(entry, params, run_dir, sandbox, progress=progress)
    requests, tasks = [], []
    for source in problems:
        problem = get_problem(source["benchmark"], source["task_id"])
        messages = prompts.refine_messages(
            problem, source["code"], source["feedback"], "expl_refine"
        )
        requests.append((messages, prompts.render_chat(messages, generator.tokenizer)))
        tasks.append(problem)
    sampling = SamplingParams(
        n=1,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        stop=chat_stop(generator),
        seed=seed_for(cfg.seed, "human_study", label),
    )
    outputs = complete(generator, requests, sampling)
    records = []
    for source, problem, (messages, prompt), completions in zip(problems, tasks, requests, outputs):
        completion = completions[0]
        answer = read_answer(problem, completion.text)
        records.append(
            {
                "id": f"{source['id']}/{label}",
                "source_id": source["id"],
                "model": label,
                "generator": generator.name,
                "messages": messages,
                "prompt": prompt,
                "response": completion.text,
                "explanation": answer.explanation,
                "code": answer.code,
                "program": answer.program,
                "parse_reason": answer.parse_reason,
                "finish_reason": completion.finish_reason,
                "completion_tokens": completion.completion_tokens,
            }
        )
    verdicts = judge_programs(
        sandbox,
        [(p, r["program"]) for r, p in zip(records, tasks, strict=True)],
        [r["parse_reason"] for r in records],
    )
    for record, verdict in zip(records, verdicts, strict=True):
        record["verdict"] = verdict.to_dict()
    del generator
    gc.collect()
    return records


def prepare_study(
    params: RunParams, run_dir: str | Path, progress: bool = True, sandbox: Any = None
) -> dict[str, Any]:
    """Build (or reopen) the study folder; idempotent and resumable. Returns a summary."""
    run_dir = Path(run_dir)
    cfg = params.human_study
    folder = study_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    design = _design(cfg, params)
    meta_path = folder / "study.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is not None and meta.get("design") != design:
        if meta.get("frozen") and all_ratings(folder):
            raise StudyError(
                f"{folder} already holds ratings of a study built with other parameters; its "
                "items and assignments must not change under the raters. Use another run name "
                "(or move that folder away) to build a new study."
            )
        for name in ("explanations.jsonl", "items.jsonl", "key.jsonl", "assignments.json"):
            (folder / name).unlink(missing_ok=True)
        meta = None
    if meta is not None and meta.get("frozen"):
        return summary(folder, seconds=time.perf_counter() - start, prepared=False)

    if meta is None:
        source, records, notes = find_source(run_dir, cfg)
        problems = pick_problems(records, cfg.n_problems, cfg.seed)
        if not problems:
            raise StudyError(f"{source} has no wrong initial solution with code to explain")
        if len(problems) < cfg.n_problems:
            notes.append(
                f"asked for {cfg.n_problems} problems, {source} has wrong solutions for only "
                f"{len(problems)}"
            )
        keep = ("id", "task_id", "benchmark", "code", "feedback", "verdict", "model")
        get_problem = _problem_lookup(params)
        shown = []
        for record in problems:
            problem = get_problem(record["benchmark"], record["task_id"])
            shown.append(
                {
                    **{k: record.get(k) for k in keep},
                    "text": problem.text,
                    "signature": problem.prompt,
                    "tests": list(problem.visible_tests),
                }
            )
        meta = {
            "design": design,
            "source": source,
            "problems": shown,
            "notes": notes,
            "skipped_models": {},
            "frozen": False,
        }
        _write_json(meta_path, meta)

    problems = meta["problems"]
    get_problem = _problem_lookup(params)
    with ResumableLog(folder / "explanations.jsonl") as log:
        todo = [m for m in cfg.models if _label(m) not in log.done]
        if todo:
            ctx = StageContext.open(params, run_dir, progress)
            try:
                labels = [_label(m) for m in cfg.models]
                for entry in todo:
                    label = _label(entry)
                    if label == "teacher" and params.teacher.kind == "self" and "base" in labels:
                        why = "the teacher is the model itself (self-bootstrap): it is 'base'"
                        meta["skipped_models"][label] = why
                        _write_json(meta_path, meta)
                        log.commit(
                            label, [{"id": "skipped/teacher", "model": label, "skipped": why}]
                        )
                        continue
                    try:
                        made = _explain_with(
                            entry,
                            problems,
                            get_problem,
                            params,
                            run_dir,
                            sandbox or ctx.sandbox,
                            progress,
                        )
                    except FileNotFoundError as exc:
                        meta["skipped_models"][label] = str(exc)
                        _write_json(meta_path, meta)
                        print(f"skipped model {label!r}: {exc}", flush=True)
                        made = [{"id": f"skipped/{label}", "model": label, "skipped": str(exc)}]
                    log.commit(label, made)
            finally:
                ctx.close()
        explanations = log.records
    write_study(folder, meta, explanations, cfg)
    _write_json(meta_path, {**meta, "frozen": True})
    prepared = summary(folder, seconds=time.perf_counter() - start, prepared=True)
    per_model = Counter(k["model"] for k in load_key(folder).values())
    for model, n in prepared["items_without_explanation"].items():
        if n:
            print(
                f"warning: {n} of {per_model[model]} explanations by {model!r} are empty (it "
                "wrote code first); fine-tune it on Expl.+Refine records (sft stage) before a "
                "real study",
                flush=True,
            )
    return prepared


def write_study(
    folder: Path, meta: dict[str, Any], explanations: list[dict], cfg: HumanStudyParams
) -> None:
    """Write items (blinded), key and assignments from the explanations, deterministically."""
    sources = {p["id"]: p for p in meta["problems"]}
    made = sorted(
        (e for e in explanations if not e.get("skipped")),
        key=lambda e: (e["source_id"], e["model"]),
    )
    if not made:
        raise StudyError(
            "no study model produced an explanation: "
            + "; ".join(f"{m}: {why}" for m, why in meta["skipped_models"].items())
        )
    rng = random.Random(seed_for(cfg.seed, "human_study/items"))
    items, key = [], []
    used: set[str] = set()
    for record in made:
        item = f"{rng.getrandbits(40):010x}"
        while item in used:
            item = f"{rng.getrandbits(40):010x}"
        used.add(item)
        source = sources[record["source_id"]]
        items.append(
            {
                "item": item,
                "task_id": source["task_id"],
                "benchmark": source["benchmark"],
                "text": source["text"],
                "signature": source["signature"],
                "tests": source["tests"],
                "code": source["code"],
                "feedback": source["feedback"],
                "explanation": record["explanation"],
            }
        )
        key.append(
            {
                "item": item,
                "model": record["model"],
                "source_id": record["source_id"],
                "source_status": (source.get("verdict") or {}).get("status"),
                "explanation_id": record["id"],
                "response": record["response"],
                "refined_code": record["code"],
                "refined_status": record["verdict"]["status"],
                "refined_passed": record["verdict"].get("passed"),
                "refined_total": record["verdict"].get("total"),
            }
        )
    items.sort(key=lambda i: i["item"])  # file order reveals nothing about the model
    key.sort(key=lambda k: k["item"])
    write_jsonl(folder / "key.jsonl", key)
    write_jsonl(folder / "items.jsonl", items)
    _write_json(
        folder / "assignments.json",
        assign([i["item"] for i in items], list(cfg.raters), cfg.raters_per_item, cfg.seed),
    )


# ------------------------------------------------------------------------------ reading ----


def load_items(folder: str | Path) -> dict[str, dict[str, Any]]:
    """What raters see, by item id (no model names)."""
    path = Path(folder) / "items.jsonl"
    if not path.is_file():
        raise StudyError(f"{path} does not exist: prepare the study first (notebook 06)")
    return {i["item"]: i for i in read_records(path, StudyItemRecord)}


def load_assignments(folder: str | Path) -> dict[str, list[str]]:
    path = Path(folder) / "assignments.json"
    if not path.is_file():
        raise StudyError(f"{path} does not exist: prepare the study first (notebook 06)")
    return json.loads(path.read_text())


def load_key(folder: str | Path) -> dict[str, dict[str, Any]]:
    """The blinding key: item -> model and the refinement's verdict (not for raters)."""
    path = Path(folder) / "key.jsonl"
    return {k["item"]: k for k in read_records(path, StudyKeyRecord, missing_ok=True)}


def summary(folder: str | Path, seconds: float | None = None, prepared: bool = False) -> dict:
    folder = Path(folder)
    meta = json.loads((folder / "study.json").read_text())
    key = load_key(folder)
    assignments = load_assignments(folder)
    rated = defaultdict(set)
    for rating in all_ratings(folder):
        rated[rating["rater"]].add(rating["item"])
    models = sorted({k["model"] for k in key.values()})
    blank = Counter(
        key[i]["model"] for i, item in load_items(folder).items() if not item["explanation"].strip()
    )
    return {
        "study": str(folder),
        "prepared_now": prepared,
        "source": meta["source"],
        "problems": len(meta["problems"]),
        "models": models,
        "items": len(key),
        # A base model often answers the Expl.+Refine prompt with code alone: raters then see
        # "(no explanation)". Counted so that a study of blanks is noticed before rating.
        "items_without_explanation": {m: blank[m] for m in models},
        "skipped_models": meta["skipped_models"],
        "notes": meta["notes"],
        "raters": {
            r: f"{len(rated[r] & set(items))}/{len(items)} rated"
            for r, items in assignments.items()
        },
        **({"seconds": round(seconds, 2)} if seconds is not None else {}),
    }


def rating_table(folder: str | Path) -> list[dict[str, Any]]:
    """One row per (item, rater): the latest scores joined with the key (model, refinement)."""
    key = load_key(folder)
    rows = []
    for rating in all_ratings(folder):
        k = key.get(rating["item"])
        if k is None:
            continue  # a rating of an item not in this study (should not happen)
        rows.append(
            {
                "item": rating["item"],
                "rater": rating["rater"],
                "model": k["model"],
                "source_id": k["source_id"],
                "refined_status": k["refined_status"],
                "correctness": rating["correctness"],
                "helpfulness": rating["helpfulness"],
                "comment": rating.get("comment", ""),
            }
        )
    return rows


def results(folder: str | Path, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Mean score per model (an item's score is the mean of its raters, as in the paper) with
    95% bootstrap intervals over items; agreement between raters per score."""
    rows = rating_table(folder) if rows is None else rows
    by_item: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_item[row["item"]].append(row)
    per_model = []
    for model in sorted({r["model"] for r in rows}):
        items = [v for v in by_item.values() if v[0]["model"] == model]
        entry: dict[str, Any] = {"model": model, "items": len(items), "ratings": 0}
        entry["ratings"] = sum(len(v) for v in items)
        for score in SCORES:
            means = [statistics.fmean(r[score] for r in v) for v in items]
            lo, hi = bootstrap_ci(means, seed=seed_for(model, score))
            entry[score] = round(statistics.fmean(means), 3) if means else None
            entry[f"{score}_ci"] = (round(lo, 3), round(hi, 3))
        entry["refinement_pass"] = round(
            statistics.fmean(v[0]["refined_status"] == "pass" for v in items), 3
        )
        per_model.append(entry)
    agreement: dict[str, Any] = {
        "items_with_2+_ratings": sum(1 for v in by_item.values() if len(v) >= 2)
    }
    for score in SCORES:
        units = {i: [r[score] for r in v] for i, v in by_item.items()}
        agreement[f"{score}_alpha_ordinal"] = _round(krippendorff_alpha(units, "ordinal"))
        agreement[f"{score}_alpha_interval"] = _round(krippendorff_alpha(units, "interval"))
        pairs = _rater_pairs(by_item, score)
        agreement[f"{score}_kappa_quadratic"] = {
            f"{a}~{b}": _round(cohen_kappa(x, y, "quadratic"))
            for (a, b), (x, y) in sorted(pairs.items())
        }
    return {"per_model": per_model, "agreement": agreement, "ratings": len(rows)}


def _rater_pairs(
    by_item: dict[str, list[dict]], score: str
) -> dict[tuple[str, str], tuple[list[int], list[int]]]:
    pairs: dict[tuple[str, str], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for rows in by_item.values():
        ordered = sorted(rows, key=lambda r: r["rater"])
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                xs, ys = pairs[(a["rater"], b["rater"])]
                xs.append(a[score])
                ys.append(b[score])
    return dict(pairs)


def _round(value: float) -> float | None:
    return None if value != value else round(value, 3)  # NaN -> None (undefined)


def plot_results(res: dict[str, Any], save: Path | None = None):
    """Mean correctness and helpfulness per model with 95% intervals."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    rows = [r for r in res["per_model"] if r["items"]]
    for ax, score in zip(axes, SCORES):
        means = [r[score] for r in rows]
        errors = [
            [m - r[f"{score}_ci"][0] for m, r in zip(means, rows)],
            [r[f"{score}_ci"][1] - m for m, r in zip(means, rows)],
        ]
        ax.bar(range(len(rows)), means, yerr=errors, capsize=4, color="#4C72B0")
        ax.set_xticks(range(len(rows)), [r["model"] for r in rows])
        ax.set_ylim(0, 5.2)
        ax.set_title(f"{score} (1-5), mean of raters, 95% CI")
    fig.tight_layout()
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=110)
    return fig
