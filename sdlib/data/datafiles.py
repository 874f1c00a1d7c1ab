"""Where benchmark files live, how they are fetched, and how a missing one is reported.

The data directory is, in order: an explicit argument, ``$SDLIB_DATA_DIR``, ``~/.cache/sdlib/data``.
A missing file is downloaded from its public source and checked against its sha256; offline,
the error names the file, the path it was looked for at and where it comes from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "SDLIB_DATA_DIR"
DEFAULT_DIR = Path("~/.cache/sdlib/data")


@dataclass(frozen=True)
class DataFile:
    name: str
    url: str
    sha256: str
    what: str


FILES: dict[str, DataFile] = {
    f.name: f
    for f in (
        DataFile(
            "mbpp.jsonl",
            "https://raw.githubusercontent.com/google-research/google-research/master/mbpp/mbpp.jsonl",
            "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
            "MBPP, original release (974 problems)",
        ),
        DataFile(
            "HumanEvalPlus-v0.1.10.jsonl.gz",
            "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus-v0.1.10.jsonl.gz",
            "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
            "HumanEval+ v0.1.10 (EvalPlus release)",
        ),
        DataFile(
            "MbppPlus-v0.2.0.jsonl.gz",
            "https://github.com/evalplus/mbppplus_release/releases/download/v0.2.0/MbppPlus-v0.2.0.jsonl.gz",
            "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63",
            "MBPP+ v0.2.0 (EvalPlus release)",
        ),
    )
}


def cache_dir() -> Path:
    """Where computed data (expected outputs, verified references) is cached."""
    return Path(os.environ.get("SDLIB_CACHE_DIR", "~/.cache/sdlib")).expanduser()


class DataFileMissing(FileNotFoundError):
    """A benchmark file is absent and could not be downloaded."""


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    return DEFAULT_DIR.expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_file(name: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """Return the local path of a benchmark file, downloading it when it is missing."""
    spec = FILES[name]
    folder = data_dir(directory)
    path = folder / name
    if path.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(spec.url, timeout=30) as response:
            with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
                shutil.copyfileobj(response, tmp)
        got = sha256_of(Path(tmp.name))
        if got != spec.sha256:
            os.unlink(tmp.name)
            raise DataFileMissing(
                f"{name}: downloaded from {spec.url} but its sha256 is {got}, "
                f"expected {spec.sha256}; the file was not kept."
            )
        os.replace(tmp.name, path)
        return path
    except DataFileMissing:
        raise
    except OSError as exc:  # URLError is an OSError
        raise DataFileMissing(
            f"Benchmark file {name} ({spec.what}) is missing: looked for {path} "
            f"(data directory from {_source(directory)}). Downloading it from {spec.url} "
            f"failed: {exc}. Fix: copy the file there, or set {ENV_VAR} to a folder that "
            f"holds it."
        ) from None


def _source(directory: str | os.PathLike[str] | None) -> str:
    if directory:
        return "the data_dir argument/parameter"
    if os.environ.get(ENV_VAR):
        return f"${ENV_VAR}"
    return f"the default; set ${ENV_VAR} to change it"


def file_hashes(names: list[str], directory: str | os.PathLike[str] | None = None) -> dict:
    """sha256 of each data file a run used, for its manifest."""
    out = {}
    for name in names:
        path = data_dir(directory) / name
        out[name] = sha256_of(path) if path.is_file() else None
    return out
