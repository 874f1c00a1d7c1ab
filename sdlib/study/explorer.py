"""Browse a run's trajectories: training ones (collect / filter) and evaluation ones (eval
initial samples and refinement rounds), one flat row per record.

Why: to see *what* a number is made of. Filters by problem, status, instruction type, round
and model; for a refinement, the wrong code it started from and the refined code side by side
as a diff, the feedback the model was shown, its explanation, its own verdict, and where the
record lives (file and line) with its chain of parents.
"""

from __future__ import annotations

import difflib
import html
from pathlib import Path
from typing import Any

from sdlib.data.jsonl import BadLine, iter_jsonl
from sdlib.data.resumable import MARKER
from sdlib.runs.layout import RunLayout

ALL = "(all)"
FILTERS = ("source", "model", "benchmark", "task_id", "mode", "round", "status")


def read_with_lines(path: Path, resumable: bool = True) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of a records file; in a ResumableLog only committed units count
    (a plain file, such as filter/refinements.jsonl, keeps collect's ``_unit`` tags)."""
    rows = [(n, r) for n, r in iter_jsonl(path) if not isinstance(r, BadLine)]
    if not resumable:
        return rows
    committed = {r[MARKER] for _, r in rows if MARKER in r}
    return [(n, r) for n, r in rows if MARKER not in r and r.get("_unit") in committed]


def _row(
    record: dict[str, Any], source: str, model: str, path: Path, line: int, run_dir: Path
) -> dict[str, Any]:
    verdict = record.get("verdict") or {}
    refinement = "mode" in record or "parent" in record
    return {
        "source": source,
        "model": model,
        "benchmark": record.get("benchmark", ""),
        "task_id": str(record.get("task_id", "")),
        "id": record.get("id", ""),
        "parent": record.get("parent"),
        "root": record.get("root"),
        "mode": record.get("mode") or ("?" if refinement else "initial"),
        "round": int(record.get("round", 0) if refinement else 0),
        "status": verdict.get("status", "not executed"),
        "passed": verdict.get("passed"),
        "total": verdict.get("total"),
        "code": record.get("code") or "",
        "explanation": record.get("explanation") or "",
        "feedback": record.get("feedback") or "",
        "file": str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path),
        "line": line,
    }


def load_trajectories(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's collect, filter and eval outputs as explorer rows; each
    refinement also carries its parent's code and feedback (what the model was shown)."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    rows: list[dict[str, Any]] = []
    if layout.initial.is_file():
        for line, r in read_with_lines(layout.initial):
            rows.append(_row(r, "collect", r.get("model", ""), layout.initial, line, run_dir))
    judged = layout.judged_refinements
    refinements = judged if judged.is_file() else layout.teacher_refinements
    if refinements.is_file():
        for line, r in read_with_lines(refinements, resumable=refinements != judged):
            rows.append(_row(r, "collect", r.get("teacher", ""), refinements, line, run_dir))
    eval_root = layout.eval
    if eval_root.is_dir():
        for model_dir in sorted(p for p in eval_root.iterdir() if p.is_dir()):
            for bench_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                files = [RunLayout.eval_round(bench_dir, 0)] + sorted(
                    bench_dir.glob("round*.jsonl"), key=lambda p: int(p.stem[5:] or 0)
                )
                for path in files:
                    if path.is_file():
                        for line, r in read_with_lines(path):
                            row = _row(r, "eval", model_dir.name, path, line, run_dir)
                            row["benchmark"] = row["benchmark"] or bench_dir.name
                            rows.append(row)

    # ids are unique within one eval folder (humaneval and humaneval+ share task ids)
    def scope(r: dict[str, Any]) -> tuple[str, str, str]:
        return (r["source"], r["model"], r["benchmark"]) if r["source"] == "eval" else ("", "", "")

    by_key = {(*scope(r), r["id"]): r for r in rows}
    for row in rows:
        parent = by_key.get((*scope(row), row["parent"])) if row["parent"] else None
        row["wrong_code"] = parent["code"] if parent else ""
        row["shown_feedback"] = parent["feedback"] if parent else ""
        row["parent_where"] = f"{parent['file']}:{parent['line']}" if parent else ""
    return rows


def filter_rows(rows: list[dict[str, Any]], **criteria: Any) -> list[dict[str, Any]]:
    """Rows matching every given criterion (``None`` or ``"(all)"`` = any)."""
    active = {k: v for k, v in criteria.items() if v not in (None, ALL)}
    unknown = set(active) - set(FILTERS)
    if unknown:
        raise ValueError(f"unknown filter(s) {sorted(unknown)}; filters are {list(FILTERS)}")
    return [r for r in rows if all(r[k] == v for k, v in active.items())]


def diff_html(wrong: str, refined: str) -> str:
    """Side-by-side diff of the wrong and the refined code."""
    table = difflib.HtmlDiff(wrapcolumn=70).make_table(
        (wrong or "").splitlines(), (refined or "").splitlines(), "wrong (parent)", "refined"
    )
    style = (
        "<style>.diff_add{background:#aaffaa}.diff_chg{background:#ffff77}"
        ".diff_sub{background:#ffaaaa}table.diff{font-family:monospace;font-size:85%}</style>"
    )
    return style + table


def detail_html(row: dict[str, Any]) -> str:
    def pre(text: str) -> str:
        return f"<pre style='white-space:pre-wrap;background:#f6f6f6;padding:4px'>{html.escape(text)}</pre>"

    tests = f" ({row['passed']}/{row['total']} tests)" if row.get("total") else ""
    parts = [
        f"<b>{html.escape(row['id'])}</b> · {row['source']} · model {html.escape(str(row['model']))} · "
        f"{row['mode']} · round {row['round']} · <b>{row['status']}</b>{tests}",
        f"<br><small>from <code>{html.escape(row['file'])}:{row['line']}</code>"
        + (
            f"; parent <code>{html.escape(str(row['parent']))}</code> at "
            f"<code>{html.escape(row['parent_where'])}</code>"
            if row["parent"]
            else ""
        )
        + (f"; root <code>{html.escape(str(row['root']))}</code>" if row.get("root") else "")
        + "</small>",
    ]
    if row["parent"]:
        parts += ["<h4>Feedback the model was shown</h4>", pre(row["shown_feedback"])]
        if row["explanation"]:
            parts += ["<h4>Explanation</h4>", pre(row["explanation"])]
        parts += ["<h4>Wrong → refined</h4>", diff_html(row["wrong_code"], row["code"])]
    else:
        parts += ["<h4>Code</h4>", pre(row["code"])]
    parts += ["<h4>Result of executing it</h4>", pre(row["feedback"] or row["status"])]
    return "".join(parts)


class TrajectoryExplorer:
    """Dropdown filters, the matching records, and the selected record in detail."""

    def __init__(self, rows: list[dict[str, Any]], max_listed: int = 500):
        import ipywidgets as w

        self.rows = rows
        self.max_listed = max_listed
        self.filters = {}
        for name in FILTERS:
            values = sorted({r[name] for r in rows}, key=lambda v: (str(type(v)), v))
            self.filters[name] = w.Dropdown(
                options=[ALL, *values], value=ALL, description=name, layout=w.Layout(width="260px")
            )
            self.filters[name].observe(lambda _: self.refresh(), names="value")
        self.count = w.HTML()
        self.listing = w.Select(options=[], rows=12, layout=w.Layout(width="100%"))
        self.listing.observe(lambda _: self.show(), names="value")
        self.detail = w.HTML()
        self.view = w.VBox(
            [
                w.HBox(list(self.filters.values())[:4]),
                w.HBox(list(self.filters.values())[4:]),
                self.count,
                self.listing,
                self.detail,
            ]
        )
        self.refresh()

    def matching(self) -> list[dict[str, Any]]:
        return filter_rows(self.rows, **{k: d.value for k, d in self.filters.items()})

    def refresh(self) -> None:
        found = self.matching()
        shown = found[: self.max_listed]
        self.count.value = f"{len(found)} record(s)" + (
            f", the first {self.max_listed} listed" if len(found) > self.max_listed else ""
        )
        self.listing.options = [
            (f"{r['source']}/{r['model']} {r['id']} · {r['mode']} r{r['round']} · {r['status']}", i)
            for i, r in enumerate(shown)
        ]
        self._shown = shown
        self.listing.value = 0 if shown else None
        self.show()

    def show(self) -> None:
        index = self.listing.value
        self.detail.value = detail_html(self._shown[index]) if index is not None else ""
