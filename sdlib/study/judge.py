"""An optional LLM judge that rates the study's explanations with the raters' rubric.

Why: the paper also scored explanations with GPT-4 (MT-Bench style) next to the developers.
The judge sees exactly what raters see (never the model name), answers two lines
``Correctness: N`` / ``Helpfulness: N`` and is stored like a rater, but in its own folder
(``human_study/judge/``) so that it never counts as a human. An answer that cannot be parsed
is kept in ``judge/raw.jsonl`` and counted, not guessed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sdlib.runs.context import StageContext
from sdlib.runs.params import RunParams
from sdlib.study.human_study import RUBRIC, SCORES, load_items, rating_table, study_dir
from sdlib.study.ratings import RatingStore, append_record

JUDGE = "judge"
SYSTEM = "You are an expert Python developer who grades explanations of bugs strictly and fairly."


def judge_messages(item: dict[str, Any]) -> list[dict[str, str]]:
    rubric = "\n".join(
        f"{score.capitalize()}:\n"
        + "\n".join(f"  {n} = {text}" for n, text in RUBRIC[score].items())
        for score in SCORES
    )
    explanation = (item.get("explanation") or "").strip() or "(no explanation given)"
    content = (
        f"A programmer was given this task:\n{item.get('text') or ''}\n\n"
        f"They wrote this code, which is wrong:\n```python\n{item['code']}\n```\n\n"
        f"Running it gave:\n{item['feedback']}\n\n"
        f"Someone explained what is wrong with the code:\n<<<\n{explanation}\n>>>\n\n"
        f"Rate the explanation with this rubric.\n{rubric}\n\n"
        "Answer with exactly two lines and nothing else:\nCorrectness: <1-5>\nHelpfulness: <1-5>"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def parse_scores(text: str) -> tuple[int, int] | None:
    """(correctness, helpfulness) from a judge's answer, or None when it does not say."""
    found = {}
    for score in SCORES:
        m = re.search(rf"{score}\W{{0,10}}([1-5])\b", text or "", re.I)
        if m:
            found[score] = int(m.group(1))
    if len(found) != len(SCORES):
        return None
    return found["correctness"], found["helpfulness"]


def judge_dir(run_dir: str | Path) -> Path:
    return study_dir(run_dir) / JUDGE


def run_judge(params: RunParams, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Judge every item not judged yet (resumable: judged items are on disk)."""
    from sdlib.generation.backends import SamplingParams
    from sdlib.generation.generator import chat_stop, complete, seed_for
    from sdlib.generation.models import make_generator
    from sdlib.prompting import prompts

    spec = params.human_study.judge
    if spec is None:
        raise ValueError("human_study.judge is not set: give it a model spec (kind, ...)")
    items = load_items(study_dir(run_dir))
    store = RatingStore(judge_dir(run_dir), JUDGE)
    todo = [i for i in sorted(items) if i not in store.latest()]
    unparsed = 0
    if todo:
        with StageContext.open(params, run_dir, progress) as ctx:
            # only the embedded default needs the sandbox (to build itself)
            generator = make_generator(
                spec, params, ctx.sandbox if spec.kind == "tiny" else None, progress=progress
            )
        requests = []
        for item in todo:
            messages = judge_messages(items[item])
            requests.append((messages, prompts.render_chat(messages, generator.tokenizer)))
        sampling = SamplingParams(
            n=1,
            temperature=0.0,
            max_new_tokens=32,
            stop=chat_stop(generator),
            seed=seed_for(params.human_study.seed, JUDGE),
        )
        outputs = complete(generator, requests, sampling)
        for item, completions in zip(todo, outputs):
            text = completions[0].text
            scores = parse_scores(text)
            append_record(
                judge_dir(run_dir) / "raw.jsonl",
                {"item": item, "judge": generator.name, "text": text, "parsed": scores},
            )
            if scores is None:
                unparsed += 1
                continue
            store.rate(item, scores[0], scores[1], comment=f"judge {generator.name}")
    return {
        "items": len(items),
        "judged_now": len(todo) - unparsed,
        "unparsed_now": unparsed,
        "judged_total": len(store.latest()),
    }


def agreement_with_humans(study: str | Path) -> dict[str, Any]:
    """Krippendorff's alpha of the judge with the human raters, and the weighted kappa of the
    judge against each human rating of the same item."""
    from sdlib.study.agreement import cohen_kappa, krippendorff_alpha

    study = Path(study)
    judged = RatingStore(study / JUDGE, JUDGE).latest()
    humans = rating_table(study)
    out: dict[str, Any] = {"items_judged": len(judged), "human_ratings": len(humans)}
    for score in SCORES:
        units: dict[str, list[int]] = {}
        for row in humans:
            units.setdefault(row["item"], []).append(row[score])
        with_judge = {i: v + [judged[i][score]] for i, v in units.items() if i in judged}
        pairs = [(judged[r["item"]][score], r[score]) for r in humans if r["item"] in judged]
        alpha = krippendorff_alpha(with_judge, "ordinal")
        kappa = cohen_kappa([a for a, _ in pairs], [b for _, b in pairs], "quadratic")
        out[f"{score}_alpha_with_judge"] = None if alpha != alpha else round(alpha, 3)
        out[f"{score}_kappa_judge_vs_human"] = None if kappa != kappa else round(kappa, 3)
    return out
