"""JSON Lines that survive crashes: appends are flushed and fsynced, a torn last line left by
a killed writer is recognised, and a corrupt line is reported with its number, never
silently dropped."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def dumps_line(record: dict[str, Any]) -> str:
    """One JSONL line. Text is written as UTF-8, except a record holding a lone surrogate
    (a program's ``raise ValueError(chr(0xD800))``), which is written escaped: JSON allows
    it, UTF-8 does not, and one such sample must not stop a run from writing its results."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)
    return line + "\n"


@dataclass
class BadLine:
    line: int  # 1-based
    error: str
    text: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.error}"


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """Yield (line number, object) for each non-blank line; a line that is not a JSON object
    yields a ``BadLine`` instead of raising."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                yield number, BadLine(number, f"not valid JSON ({exc})", text[:200])
                continue
            if not isinstance(obj, dict):
                yield (
                    number,
                    BadLine(
                        number, f"expected a JSON object, got {type(obj).__name__}", text[:200]
                    ),
                )
                continue
            yield number, obj


def read_jsonl(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[BadLine]]:
    records, bad = [], []
    for _, obj in iter_jsonl(path):
        (bad if isinstance(obj, BadLine) else records).append(obj)
    return records, bad


def read_records_tolerant(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a file this project appended to: a torn *last* line (a killed writer) is
    ignored, any other corrupt line is an error."""
    if not Path(path).exists():
        return []
    records, bad = read_jsonl(path)
    total_lines = sum(1 for _ in open(path, encoding="utf-8", errors="replace"))
    for item in bad:
        if item.line != total_lines:
            raise ValueError(f"{path}: corrupt record at {item}")
    return records


class JsonlWriter:
    """Append records one at a time, durable on return (flush + fsync)."""

    def __init__(self, path: str | os.PathLike[str], fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._repair_torn_tail()
        self._handle = open(self.path, "a", encoding="utf-8")

    def _repair_torn_tail(self) -> None:
        """A writer killed mid-line leaves a partial last line: cut it so appends stay valid."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            handle.truncate(cut)

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(dumps_line(record))
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self._handle.write(dumps_line(record))
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    """Write a whole file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(dumps_line(record))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
