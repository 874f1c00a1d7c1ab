"""Human ratings on disk: one append-only JSON Lines file per rater, durable the moment a
rating is given.

Why this shape: a rating session lives in a browser tab whose kernel may die at any time, and
several raters may work on the same study folder at once. So every rating is one line appended
under an exclusive lock, flushed and fsynced before the UI says "saved"; nothing is ever
rewritten; a rater's file is touched by no one else; the last rating of an item wins while the
earlier ones stay in the file (the history of changed minds). A line torn by a crash is
cut off by the next append and ignored on reading.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlib.data.jsonl import read_records_tolerant

SCALE = (1, 2, 3, 4, 5)
ACTIONS = ("rate", "skip")


def ratings_dir(study_dir: str | os.PathLike[str]) -> Path:
    return Path(study_dir) / "ratings"


def ratings_path(study_dir: str | os.PathLike[str], rater: str) -> Path:
    return ratings_dir(study_dir) / f"{rater}.jsonl"


def append_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line: exclusive lock, torn-tail repair, one write, fsync (file and, on
    creation, its folder). Durable when this returns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, size - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":  # a writer died mid-line: drop its partial line
                with open(path, "rb") as handle:
                    data = handle.read()
                os.ftruncate(fd, data.rfind(b"\n") + 1)
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock
    if created:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True)
class Rating:
    item: str
    rater: str
    correctness: int
    helpfulness: int
    comment: str = ""


def _check_score(name: str, value: Any) -> int:
    if isinstance(value, bool) or value not in SCALE:
        raise ValueError(f"{name} must be one of {list(SCALE)}, got {value!r}")
    return int(value)


class RatingStore:
    """One rater's ratings of one study: append with ``rate``/``skip``, read the latest state.

    Reading always goes back to the file, so two tabs of the same rater (or a resumed kernel)
    see what the other saved."""

    def __init__(self, study_dir: str | os.PathLike[str], rater: str):
        if not rater or "/" in rater or rater.startswith("."):
            raise ValueError(f"rater name {rater!r} must be a plain name")
        self.study_dir = Path(study_dir)
        self.rater = rater
        self.path = ratings_path(study_dir, rater)

    def events(self) -> list[dict[str, Any]]:
        """Every saved line, in order (the torn last line of a crash is ignored)."""
        return read_records_tolerant(self.path)

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        full = {
            **record,
            "rater": self.rater,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        }
        append_record(self.path, full)
        return full

    def rate(
        self,
        item: str,
        correctness: int,
        helpfulness: int,
        comment: str = "",
        seconds: float | None = None,
    ) -> dict[str, Any]:
        return self._append(
            {
                "action": "rate",
                "item": item,
                "correctness": _check_score("correctness", correctness),
                "helpfulness": _check_score("helpfulness", helpfulness),
                "comment": comment or "",
                "seconds": None if seconds is None else round(seconds, 1),
            }
        )

    def skip(self, item: str) -> dict[str, Any]:
        return self._append({"action": "skip", "item": item})

    def latest(self) -> dict[str, dict[str, Any]]:
        """item -> its last rating (skips do not undo a rating)."""
        return latest_ratings(self.events())

    def skipped(self) -> set[str]:
        rated = self.latest()
        return {e["item"] for e in self.events() if e.get("action") == "skip"} - set(rated)


def latest_ratings(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("action") == "rate":
            out[event["item"]] = event
    return out


def resume_index(order: list[str], rated: set[str], skipped: set[str]) -> int:
    """Where a rater picks up: the first item neither rated nor skipped, else the first
    skipped one, else the end (``len(order)``: all done)."""
    for index, item in enumerate(order):
        if item not in rated and item not in skipped:
            return index
    for index, item in enumerate(order):
        if item not in rated:
            return index
    return len(order)


def all_ratings(study_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The latest rating of every (rater, item) in a study, every rater's file."""
    folder = ratings_dir(study_dir)
    out: list[dict[str, Any]] = []
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.jsonl")):
        out.extend(latest_ratings(read_records_tolerant(path)).values())
    return out
