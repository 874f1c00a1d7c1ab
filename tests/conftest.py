"""Shared fixtures: tests read the benchmark files from ../shared/data (or $SDLIB_DATA_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
if "SDLIB_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["SDLIB_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["SDLIB_DATA_DIR"])
    assert (path / "mbpp.jsonl").is_file(), f"benchmark data missing in {path}"
    return path
