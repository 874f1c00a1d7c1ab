"""An append-only record log that a killed run (even ``kill -9``) resumes without duplicates
or losses.

Work is committed in units (one problem's samples, one wrong solution's refinements): the
unit's records are appended, then a marker line; all fsynced. On reopening, records of a unit
without its marker (a run killed mid-unit) are dropped and the file is rewritten atomically,
so redoing that unit cannot duplicate anything.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sdlib.data.jsonl import JsonlWriter, read_records_tolerant, write_jsonl

MARKER = "_committed"
# Crash tests: with SDLIB_KILL_AFTER_COMMITS=N set, the process SIGKILLs itself right after
# its N-th commit (all logs together), so a test kills a run at a known point, not in a race.
KILL_AFTER_COMMITS = "SDLIB_KILL_AFTER_COMMITS"
_commits = 0


def _crash_if_asked() -> None:
    global _commits
    limit = os.environ.get(KILL_AFTER_COMMITS)
    if limit:
        _commits += 1
        if _commits >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)


class ResumableLog:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        records = read_records_tolerant(self.path)
        committed = {r[MARKER] for r in records if MARKER in r}
        kept = [r for r in records if MARKER in r or r.get("_unit") in committed]
        self.dropped = len(records) - len(kept)
        if self.dropped:
            write_jsonl(self.path, kept)
        self._records = [r for r in kept if MARKER not in r]
        self.done: set[str] = committed
        self._writer = JsonlWriter(self.path)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Committed records, in the order they were written."""
        return list(self._records)

    def commit(self, unit: str, records: Iterable[dict[str, Any]]) -> None:
        if unit in self.done:
            raise ValueError(f"unit {unit!r} was already committed")
        batch = [{**r, "_unit": unit} for r in records]
        self._writer.write_many([*batch, {MARKER: unit, "n": len(batch)}])
        self._records.extend(batch)
        self.done.add(unit)
        _crash_if_asked()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ResumableLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_committed(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The committed records of a log, read-only (for later stages and notebooks)."""
    records = read_records_tolerant(path)
    committed = {r[MARKER] for r in records if MARKER in r}
    return [r for r in records if MARKER not in r and r.get("_unit") in committed]
