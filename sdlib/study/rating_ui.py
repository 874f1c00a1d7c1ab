"""The raters' interface: ipywidgets in JupyterLab, or a bare web page through Voilà.

Why: raters are not notebook users. One item at a time — the problem, the wrong code
(highlighted), the execution feedback and the explanation — with the rubric on screen, two
rows of 1–5 buttons, a comment box, back / skip / save-and-next and a progress bar. Every
button is a real button (Tab and Enter/Space work) and a one-line keyboard box takes
``4 5 optional comment`` + Enter to save, ``b`` back, ``s`` skip, ``n`` next. A rating is on
disk (``sdlib.study.ratings``, fsynced) before the screen says "saved"; opening the app again
resumes at the first item the rater has not rated. The model behind an item is never shown.

In Voilà: ``voila notebooks/rate.ipynb`` and open ``…/voila/render/rate.ipynb?run=<run>&rater=<name>``
(or ``?study=<folder>``); without ``rater`` the page asks who is rating.
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from sdlib.study.human_study import RUBRIC, SCORES, StudyError, load_assignments, load_items
from sdlib.study.ratings import RatingStore, resume_index

KEYS_HELP = "keyboard: 4 5 [comment] ⏎ save · b ⏎ back · s ⏎ skip · n ⏎ next"


def highlight(code: str) -> str:
    """Python code as HTML with inline colours (no stylesheet needed in Voilà or Lab)."""
    from pygments import highlight as _highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return _highlight(
        code or "",
        PythonLexer(),
        HtmlFormatter(noclasses=True, prestyles="margin:0;font-family:monospace"),
    )


def _pre(text: str) -> str:
    return (
        "<pre style='white-space:pre-wrap;margin:0;background:#f6f6f6;padding:6px;"
        "font-family:monospace'>"
        f"{html.escape(text or '')}</pre>"
    )


def rubric_html() -> str:
    rows = "".join(
        f"<tr><td><b>{n}</b></td><td>{html.escape(RUBRIC['correctness'][n])}</td>"
        f"<td>{html.escape(RUBRIC['helpfulness'][n])}</td></tr>"
        for n in range(1, 6)
    )
    return (
        "<details open><summary><b>Rubric</b></summary><table style='font-size:90%'>"
        "<tr><th></th><th>Correctness: is the explanation right about what is wrong?</th>"
        "<th>Helpfulness: would it help a developer fix the code?</th></tr>"
        f"{rows}</table></details>"
    )


def parse_keys(text: str) -> tuple[str, tuple[int, int, str] | None]:
    """A keyboard-box entry: ("save", (c, h, comment)) | ("back"|"skip"|"next", None) |
    ("error", None). ``45`` and ``4 5`` both mean correctness 4, helpfulness 5."""
    text = text.strip()
    word = text.lower()
    if word in ("b", "back"):
        return "back", None
    if word in ("s", "skip"):
        return "skip", None
    if word in ("n", "next"):
        return "next", None
    head, _, rest = text.partition(" ")
    if len(head) == 2 and head.isdigit():
        scores, comment = head, rest
    else:
        second, _, comment = rest.partition(" ")
        scores = head + second
    if len(scores) == 2 and all(c in "12345" for c in scores):
        return "save", (int(scores[0]), int(scores[1]), comment.strip())
    return "error", None


class RatingApp:
    """One rater's session on one study; ``app.view`` is the widget to display."""

    def __init__(self, study_dir: str | os.PathLike[str], rater: str):
        import ipywidgets as w

        self.study_dir = Path(study_dir)
        self.items = load_items(self.study_dir)
        assignments = load_assignments(self.study_dir)
        if rater not in assignments:
            raise StudyError(
                f"rater {rater!r} is not in this study; its raters are: {sorted(assignments)}"
            )
        self.rater = rater
        self.order: list[str] = assignments[rater]
        self.store = RatingStore(self.study_dir, rater)
        self.chosen: dict[str, int | None] = {s: None for s in SCORES}
        self.shown_at = time.monotonic()

        self.header = w.HTML()
        self.header.add_class("sdlib-progress")
        self.bar = w.IntProgress(min=0, max=max(1, len(self.order)))
        self.problem = w.HTML()
        self.code = w.HTML()
        self.feedback = w.HTML()
        self.explanation = w.HTML()
        self.explanation.add_class("sdlib-explanation")
        self.previous = w.HTML()
        self.buttons: dict[str, list[Any]] = {}
        rows = []
        for score in SCORES:
            row = []
            for n in range(1, 6):
                button = w.Button(
                    description=str(n),
                    tooltip=f"{score} {n}: {RUBRIC[score][n]}",
                    layout=w.Layout(width="42px"),
                )
                button.add_class(f"sdlib-{score}-{n}")
                button.on_click(lambda _, s=score, v=n: self.choose(s, v))
                row.append(button)
            self.buttons[score] = row
            label = w.HTML(f"<b>{score.capitalize()}</b>", layout=w.Layout(width="110px"))
            rows.append(w.HBox([label, *row]))
        self.comment = w.Textarea(
            placeholder="comment (optional)", layout=w.Layout(width="95%", height="60px")
        )
        self.comment.add_class("sdlib-comment")
        self.back_button = w.Button(description="◂ Back", tooltip="previous item")
        self.skip_button = w.Button(description="Skip", tooltip="come back to it later")
        self.save_button = w.Button(
            description="Save ▸ next", button_style="success", tooltip="save and go on"
        )
        for button, name, handler in (
            (self.back_button, "back", self.back),
            (self.skip_button, "skip", self.skip),
            (self.save_button, "save", self.save),
        ):
            button.add_class(f"sdlib-{name}")
            button.on_click(lambda _, h=handler: h())
        self.keys = w.Text(
            placeholder=KEYS_HELP, continuous_update=False, layout=w.Layout(width="95%")
        )
        self.keys.add_class("sdlib-keys")
        self.keys.observe(self._on_keys, names="value")
        self.status = w.HTML()
        self.status.add_class("sdlib-status")
        self.item_box = w.VBox(
            [
                self.problem,
                w.HTML("<b>The code (wrong)</b>"),
                self.code,
                w.HTML("<b>Execution feedback</b>"),
                self.feedback,
                w.HTML("<b>Explanation to rate</b>"),
                self.explanation,
                self.previous,
                w.HTML(rubric_html()),
                *rows,
                self.comment,
            ]
        )
        self.done_box = w.HTML()
        self.done_box.add_class("sdlib-done")
        self.view = w.VBox(
            [
                self.header,
                self.bar,
                self.item_box,
                self.done_box,
                w.HBox([self.back_button, self.skip_button, self.save_button]),
                self.keys,
                self.status,
            ]
        )
        self.index = resume_index(self.order, set(self.store.latest()), self.store.skipped())
        self.render()

    # ----------------------------------------------------------------------- state ----

    @property
    def item(self) -> str | None:
        return self.order[self.index] if self.index < len(self.order) else None

    def choose(self, score: str, value: int | None) -> None:
        self.chosen[score] = value
        for n, button in enumerate(self.buttons[score], start=1):
            button.button_style = "info" if n == value else ""

    def render(self) -> None:
        latest = self.store.latest()
        skipped = self.store.skipped()
        rated = sum(1 for i in self.order if i in latest)
        self.bar.value = rated
        position = min(self.index + 1, len(self.order))
        self.header.value = (
            f"<b>Rater {html.escape(self.rater)}</b> · item {position} of {len(self.order)} · "
            f"<span class='sdlib-rated'>rated {rated}</span> · skipped "
            f"{sum(1 for i in self.order if i in skipped)}"
        )
        item = self.item
        if item is None:
            self.item_box.layout.display = "none"
            self.done_box.layout.display = None
            left = len(self.order) - rated
            self.done_box.value = (
                f"<h3>All {len(self.order)} items rated. Thank you!</h3>"
                if not left
                else f"<h3>End of the list: {left} skipped item(s) left unrated.</h3>"
            ) + "<p>Use ◂ Back to review or change a rating.</p>"
            self.save_button.disabled = self.skip_button.disabled = True
            return
        self.item_box.layout.display = None
        self.done_box.layout.display = "none"
        self.save_button.disabled = self.skip_button.disabled = False
        record = self.items[item]
        parts = [
            f"<h3>Problem ({html.escape(record['benchmark'])} {html.escape(record['task_id'])})</h3>"
        ]
        parts.append(f"<p>{html.escape(record.get('text') or '')}</p>")
        if "def " in (record.get("signature") or ""):
            parts.append(highlight(record["signature"]))
        if record.get("tests"):
            parts.append("<b>Tests shown to the model</b>" + _pre("\n".join(record["tests"])))
        self.problem.value = "".join(parts)
        self.code.value = highlight(record["code"])
        self.feedback.value = _pre(record["feedback"])
        explanation = (record.get("explanation") or "").strip()
        self.explanation.value = (
            _pre(explanation)
            if explanation
            else "<i>(the model wrote no explanation before its code)</i>"
        )
        previous = latest.get(item)
        for score in SCORES:
            self.choose(score, previous[score] if previous else None)
        self.comment.value = previous.get("comment", "") if previous else ""
        self.previous.value = (
            f"<i>You rated this item: correctness {previous['correctness']}, helpfulness "
            f"{previous['helpfulness']}. Saving again replaces it (the earlier rating stays in "
            "the file).</i>"
            if previous
            else ""
        )
        self.back_button.disabled = self.index == 0
        self.shown_at = time.monotonic()

    def _next_index(self) -> int:
        latest = self.store.latest()
        skipped = self.store.skipped()
        for j in range(self.index + 1, len(self.order)):
            if self.order[j] not in latest and self.order[j] not in skipped:
                return j
        return resume_index(self.order, set(latest), skipped)

    # --------------------------------------------------------------------- actions ----

    def save(self, comment: str | None = None) -> bool:
        item = self.item
        if item is None:
            return False
        missing = [s for s in SCORES if self.chosen[s] is None]
        if missing:
            self.status.value = (
                f"<span style='color:#b00'>Choose a {' and a '.join(missing)} score first.</span>"
            )
            return False
        try:
            self.store.rate(
                item,
                self.chosen["correctness"],
                self.chosen["helpfulness"],
                self.comment.value if comment is None else comment,
                seconds=time.monotonic() - self.shown_at,
            )
        except OSError as exc:  # a full disk or lost mount: say so, keep the screen as it is
            self.status.value = (
                f"<span style='color:#b00'>NOT saved: {html.escape(str(exc))}</span>"
            )
            return False
        message = (
            f"<span class='sdlib-saved'>Saved item {self.index + 1}: correctness "
            f"{self.chosen['correctness']}, helpfulness {self.chosen['helpfulness']}.</span>"
        )
        self.index = self._next_index()
        self.render()
        self.status.value = message  # last: "saved" shows once the next item is on screen
        return True

    def skip(self) -> None:
        item = self.item
        if item is None:
            return
        if item not in self.store.latest():
            self.store.skip(item)
        message = f"Skipped item {self.index + 1}."
        self.index = self._next_index()
        self.render()
        self.status.value = message

    def back(self) -> None:
        if self.index > 0:
            self.index -= 1
            self.status.value = ""
            self.render()

    def next(self) -> None:
        if self.index < len(self.order):
            self.index += 1
            self.status.value = ""
            self.render()

    def _on_keys(self, change: dict[str, Any]) -> None:
        text = change["new"]
        if not text.strip():
            return
        # Cleared first, so the box is empty before any reply shows (a fast typist's next
        # command is not wiped by a late reset).
        self.keys.value = ""
        action, args = parse_keys(text)
        if action == "save" and args is not None:
            self.choose("correctness", args[0])
            self.choose("helpfulness", args[1])
            self.save(comment=args[2] or self.comment.value)
        elif action == "back":
            self.back()
        elif action == "skip":
            self.skip()
        elif action == "next":
            self.next()
        else:
            self.status.value = (
                f"<span style='color:#b00'>Not understood: {html.escape(text)}. {KEYS_HELP}</span>"
            )


def resolve_study(study: str | None = None, run: str | None = None) -> Path:
    """A study folder from ``study`` (a path; relative = from the project root) or ``run``."""
    from sdlib.runs.layout import RunLayout
    from sdlib.runs.notebook import resolve

    if study:
        return resolve(study)
    if run:
        return RunLayout(resolve("outputs") / run).human_study
    raise StudyError("say which study to open: ?run=<run name> or ?study=<folder>")


def app_from_request(study: str | None = None, rater: str | None = None, run: str | None = None):
    """What ``notebooks/rate.ipynb`` shows: arguments, else the page's query string (Voilà
    passes it as ``QUERY_STRING``), else ``SDLIB_STUDY`` / ``SDLIB_RATER``. Without a rater,
    a chooser; errors are shown on the page, not as a traceback."""
    import ipywidgets as w

    query = {k: v[-1] for k, v in parse_qs(os.environ.get("QUERY_STRING", "")).items()}
    study = study or query.get("study") or os.environ.get("SDLIB_STUDY")
    run = run or query.get("run") or os.environ.get("SDLIB_RUN")
    rater = rater or query.get("rater") or os.environ.get("SDLIB_RATER")
    try:
        folder = resolve_study(study, run)
        raters = sorted(load_assignments(folder))
        if rater:
            return RatingApp(folder, rater).view
    except StudyError as exc:
        return w.HTML(f"<p style='color:#b00'>{html.escape(str(exc))}</p>")
    box = w.VBox()
    picker = w.Dropdown(options=raters, description="Rater")
    start = w.Button(description="Start rating", button_style="success")
    start.add_class("sdlib-start")

    def begin(_: Any) -> None:
        box.children = [RatingApp(folder, picker.value).view]

    start.on_click(begin)
    box.children = [w.HTML("<h3>Who is rating?</h3>"), picker, start]
    return box
