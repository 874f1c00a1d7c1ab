"""Run a workbench's stages: one params file, one notebook per stage, executed with papermill.

``run(params_path)`` (or ``sdlib run PARAMS.yaml``) validates the params, then runs the selected
stages in order, each as ``notebooks/NN_<stage>.ipynb`` with three parameters: ``params_path``
(the resolved params, ``<run_dir>/params.yaml``), ``run_dir`` and ``stage``. The executed
notebooks are kept in ``<run_dir>/notebooks/``; ``<run_dir>/manifest.json`` records the
environment and each stage's status (``sdlib.runs.manifest``).

A stage that succeeded leaves ``<run_dir>/<stage>/DONE.json`` with a hash of the params it
depends on: the global ones (seed, model, teacher, sandbox, ...) and the sections of itself
and of every earlier stage (``run_name``, ``output_dir``, ``data_dir`` and ``stages`` are left
out). A re-run skips a stage whose DONE.json matches; a change to one stage's section redoes
that stage and every later one; deleting a stage's folder redoes that stage alone; ``force``
redoes every selected stage. A stage that raises stops the run: no later stage runs.

Relative paths: ``output_dir`` and a relative ``data_dir`` are taken from the project root (the
folder holding ``notebooks/``), which is also the working directory of every stage notebook.
A relative params path or notebooks folder that does not exist from the current directory is
also looked up from the sdlib project root, so that ``run("params/smoke.yaml")`` works from a
notebook whose working directory is ``notebooks/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdlib.runs import layout
from sdlib.runs.layout import RunLayout
from sdlib.runs.manifest import (
    PROJECT_ROOT,
    build_manifest,
    manifest_path,
    now,
    read_manifest,
    replace_sections,
    update_manifest,
    update_stage,
)
from sdlib.runs.notebook import TERMINAL_ENV
from sdlib.runs.params import STAGES, RunParams, load

__all__ = ["run", "RunResult", "StageResult", "RunError", "stage_hashes", "DONE"]

DONE = layout.DONE
# Params that name where a run lives or which stages an invocation picks, not what it computes.
UNHASHED = ("run_name", "output_dir", "data_dir", "stages")
TRACEBACK_LINES = 15


class RunError(Exception):
    """A run that cannot start (bad stage names, a missing notebook, a busy run folder)."""


@dataclass
class StageResult:
    stage: str
    status: str  # "done" (ran now), "skipped" (done before), "failed", "not run" (after a failure)
    reason: str = ""
    seconds: float | None = None
    notebook: Path | None = None  # the executed notebook
    error: dict[str, Any] | None = None


@dataclass
class RunResult:
    run_dir: Path
    manifest: Path
    notebooks: Path  # executed notebooks
    params_path: Path  # the resolved params every stage read
    stages: list[StageResult] = field(default_factory=list)

    @property
    def failed(self) -> StageResult | None:
        return next((s for s in self.stages if s.status == "failed"), None)

    @property
    def ok(self) -> bool:
        return self.failed is None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def __getitem__(self, stage: str) -> StageResult:
        for result in self.stages:
            if result.stage == stage:
                return result
        raise KeyError(stage)


def stage_hashes(params: RunParams) -> dict[str, tuple[str, dict[str, Any]]]:
    """Per stage: (sha256, the params it was computed from)."""
    data = params.model_dump(mode="json")
    for key in UNHASHED:
        data.pop(key, None)
    out = {}
    for index, stage in enumerate(STAGES):
        later = set(STAGES[index + 1 :])
        subset = {k: v for k, v in data.items() if k not in later}
        text = json.dumps(subset, sort_keys=True, separators=(",", ":"))
        out[stage] = (hashlib.sha256(text.encode()).hexdigest(), subset)
    return out


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the params that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        names = []
        for key in sorted(set(old) | set(new), key=str):
            names += _changed(old.get(key), new.get(key), f"{prefix}{key}.")
        return names
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


def _find(path: str | os.PathLike[str]) -> Path:
    path = Path(path).expanduser()
    if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
        return (PROJECT_ROOT / path).resolve()
    return path.resolve()


def _select(stages: str | Sequence[str] | None, params: RunParams) -> list[str]:
    if stages is None:
        requested = list(params.stages)
    else:
        if isinstance(stages, str):
            stages = stages.split(",")
        requested = [s.strip() for s in stages if s.strip()]
        unknown = [s for s in requested if s not in STAGES]
        if unknown:
            raise RunError(
                f"unknown stage(s): {', '.join(unknown)}; the stages are: {', '.join(STAGES)}"
            )
        dropped = [s for s in requested if s not in params.stages]
        if dropped:
            print(
                f"note: {', '.join(dropped)} not in the params' stages "
                f"({', '.join(params.stages)}): not run",
                flush=True,
            )
    selected = [s for s in STAGES if s in requested and s in params.stages]
    if not selected:
        raise RunError(
            f"no stage to run: asked for {', '.join(requested) or 'none'}, "
            f"the params allow {', '.join(params.stages) or 'none'}"
        )
    return selected


def _read_done(run_dir: Path, stage: str) -> dict[str, Any] | None:
    try:
        done = json.loads(RunLayout(run_dir).done(stage).read_text())
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None


def _status(done: dict[str, Any] | None, digest: str, hashed: dict[str, Any]) -> tuple[bool, str]:
    """(valid, reason) for a stage's DONE.json against the current params."""
    if done is None:
        return False, f"no {DONE}"
    if done.get("params_hash") == digest:
        return True, f"done {done.get('finished', '?')}, params unchanged"
    changed = _changed(done.get("params") or {}, hashed)
    shown = ", ".join(changed[:5]) + (f" (+{len(changed) - 5} more)" if len(changed) > 5 else "")
    return False, f"params changed since: {shown or 'unknown'}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(RunLayout(run_dir).lock, "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"another sdlib run is using {run_dir}; wait for it to end") from None
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


_ANSI = re.compile("\x1b\\[(K|.*?m)")


def _error_of(exc: BaseException) -> dict[str, Any]:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        lines = _ANSI.sub("", "\n".join(exc.traceback or [])).rstrip().splitlines()
        return {
            "ename": exc.ename,
            "evalue": exc.evalue,
            "cell_index": exc.cell_index,
            "execution_count": exc.exec_count,
            "traceback_tail": lines[-TRACEBACK_LINES:],
        }
    if isinstance(exc, KeyboardInterrupt):
        return {"ename": "KeyboardInterrupt", "evalue": "interrupted", "traceback_tail": []}
    return {"ename": type(exc).__name__, "evalue": str(exc), "traceback_tail": []}


def _print_error(stage: str, error: dict[str, Any], notebook: Path) -> None:
    where = ""
    if error.get("cell_index") is not None:
        where = (
            f" in cell In [{error.get('execution_count')}] "
            f"(cell {error['cell_index']} of the executed notebook, counting from 0)"
        )
    print(f"  {stage} failed{where}: {error['ename']}: {error['evalue']}", flush=True)
    if error["traceback_tail"]:
        print("  last lines of the traceback:", flush=True)
        for line in error["traceback_tail"]:
            print(f"    {line}", flush=True)
    print(f"  executed notebook: {notebook}", flush=True)


def _ipc_kernel_manager():
    """Kernels over local sockets (not TCP on loopback): no network port, and no "running
    over TCP without encryption" warning at every stage. The sockets live in the temp folder
    (removed when the kernel shuts down), never in the project."""
    import tempfile
    import uuid

    from jupyter_client.manager import KernelManager

    class IPCKernelManager(KernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault(
                "ip", os.path.join(tempfile.gettempdir(), f"sdlib-kernel-{uuid.uuid4().hex}")
            )
            super().__init__(**kwargs)

    return IPCKernelManager


KERNEL_HASH_SEED = "0"  # PYTHONHASHSEED of every stage kernel, unless the caller set one


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the duration (a kernel started inside inherits them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(
    params_path: str | os.PathLike[str],
    stages: str | Sequence[str] | None = None,
    run_name: str | None = None,
    force: bool = False,
    notebooks_dir: str | os.PathLike[str] = Path("notebooks"),
    kernel: str = "python3",
) -> RunResult:
    """Run the selected stages (``stages`` ∩ the params' stages, in pipeline order).

    Raises ``ParamsError`` for invalid params and ``RunError`` when the run cannot start; in
    both cases nothing runs. A stage that fails is reported in the result (``exit_code`` 1).
    """
    params_file = _find(params_path)
    overrides = {"run_name": run_name} if run_name is not None else None
    params = load(params_file, overrides)
    name = params.run_name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise RunError(f"run_name {name!r} must be a plain folder name")
    selected = _select(stages, params)

    notebooks_in = _find(notebooks_dir)
    project_root = notebooks_in.parent
    run_dir = params.run_dir(project_root).resolve()

    hashes = stage_hashes(params)
    plan: list[tuple[str, bool, str]] = []  # (stage, run it, reason)
    for stage in selected:
        valid, reason = _status(_read_done(run_dir, stage), *hashes[stage])
        if force:
            plan.append((stage, True, "forced"))
        else:
            plan.append((stage, not valid, reason))

    notebook_of = {
        stage: notebooks_in / f"{STAGES.index(stage) + 1:02d}_{stage}.ipynb" for stage in STAGES
    }
    missing = [str(notebook_of[s]) for s, todo, _ in plan if todo and not notebook_of[s].is_file()]
    if missing:
        raise RunError("stage notebook(s) not found: " + ", ".join(missing))

    last = next((s for s, todo, _ in reversed(plan) if todo), None)
    if last is not None:
        for earlier in STAGES[: STAGES.index(last)]:
            if earlier in params.stages and earlier not in selected:
                valid, why = _status(_read_done(run_dir, earlier), *hashes[earlier])
                if not valid:
                    print(
                        f"note: {earlier} is not selected and not done with these params "
                        f"({why}); the stages after it read its outputs as they are",
                        flush=True,
                    )

    if any(todo for _, todo, _ in plan):
        check_sandbox(params)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir):
        return _execute(
            params, params_file, plan, notebook_of, run_dir, project_root, kernel, force, hashes
        )


def check_sandbox(params: RunParams) -> dict[str, Any]:
    """Before any stage runs: refuse a machine that lacks a required guarantee, and say once,
    on the terminal, what a weakened sandbox leaves uncontained (the notebooks' own output is
    not where a user looks first)."""
    from sdlib.execution.sandbox import (
        Sandbox,
        SandboxUnavailable,
        check_guarantees,
        isolation_warning,
        warn_if_weakened,
    )

    config = params.sandbox.config()
    try:
        with Sandbox(replace(config, workers=1, require=())) as probe:
            isolation = probe.isolation
    except SandboxUnavailable as exc:
        raise RunError(str(exc)) from None
    try:
        check_guarantees(isolation, config.require)
    except SandboxUnavailable as exc:
        raise RunError(str(exc)) from None
    if isolation_warning(isolation):
        warn_if_weakened(isolation)
    return isolation


def _results_of(run_dir: Path) -> list[tuple[str, Path]]:
    """Where a run's headline results are, for the last lines of its output."""
    run = RunLayout(run_dir)
    candidates = [
        ("eval summary table", run.eval_table),
        ("eval summary json", run.eval_summary),
        *(("eval plots", plot) for plot in run.eval_plots),
        ("human study", run.human_study),
    ]
    return [(label, path) for label, path in candidates if path.exists()]


def _execute(
    params: RunParams,
    params_file: Path,
    plan: list[tuple[str, bool, str]],
    notebook_of: dict[str, Path],
    run_dir: Path,
    project_root: Path,
    kernel: str,
    force: bool,
    hashes: dict[str, tuple[str, dict[str, Any]]],
) -> RunResult:
    from papermill import execute_notebook

    from sdlib.runs.params import dump

    resolved = RunLayout(run_dir).params
    dump(params, resolved)
    executed_dir = RunLayout(run_dir).notebooks
    executed_dir.mkdir(exist_ok=True)

    manifest = build_manifest(params, run_dir, project_root)
    if "created" in read_manifest(run_dir):
        manifest.pop("created")
    manifest.pop("stages")
    manifest["invocation"] = {
        "started": now(),
        "params_file": str(params_file),
        "stages": [s for s, _, _ in plan],
        "force": force,
        "argv": sys.argv,
    }
    replace_sections(run_dir, **manifest)
    commit = manifest["git"]["commit"]

    result = RunResult(run_dir, manifest_path(run_dir), executed_dir, resolved)
    print(f"run {params.run_name}: stages {', '.join(s for s, _, _ in plan)}", flush=True)
    for stage, todo, _ in plan:
        digest = hashes[stage][0]
        out_nb = executed_dir / notebook_of[stage].name
        if todo:
            update_stage(
                run_dir,
                stage,
                status="pending",
                started=None,
                finished=None,
                seconds=None,
                notebook=str(out_nb),
                error=None,
                params_hash=digest,
            )
        else:
            done = _read_done(run_dir, stage) or {}
            update_stage(
                run_dir,
                stage,
                status="done",
                started=done.get("started"),
                finished=done.get("finished"),
                seconds=done.get("seconds"),
                notebook=done.get("notebook", str(out_nb)),
                error=None,
                params_hash=digest,
                git_commit=done.get("git_commit"),
            )

    total = len(plan)
    failed = False
    # String hashing order leaks into results (codebleu's dataflow match iterates sets of
    # names): every stage kernel starts with the same hash seed, so a rerun is identical.
    hash_seed = os.environ.get("PYTHONHASHSEED") or KERNEL_HASH_SEED
    update_manifest(run_dir, python_hash_seed=hash_seed)
    for number, (stage, todo, reason) in enumerate(plan, 1):
        out_nb = executed_dir / notebook_of[stage].name
        head = f"[{number}/{total}] {stage}"
        if failed:
            result.stages.append(StageResult(stage, "not run", "an earlier stage failed"))
            continue
        if not todo:
            print(f"{head}: skipped ({reason})", flush=True)
            result.stages.append(StageResult(stage, "skipped", reason, notebook=out_nb))
            continue
        stage_dir = RunLayout(run_dir).stage(stage)
        if (stage_dir / DONE).is_file():
            # Forced, or its params changed: start afresh, or the stage's crash-safe logs
            # would resume from records made under the old params (or an upstream model that
            # has since been retrained). The old outputs are kept beside it.
            stamp, n = time.strftime("%Y%m%dT%H%M%S"), 1
            aside = RunLayout(run_dir).replaced(stage, stamp)
            while aside.exists():
                n += 1
                aside = RunLayout(run_dir).replaced(stage, f"{stamp}-{n}")
            stage_dir.rename(aside)
            print(f"{head}: earlier outputs moved to {aside}", flush=True)
        stage_dir.mkdir(exist_ok=True)
        started = now()
        update_stage(run_dir, stage, status="running", started=started, git_commit=commit)
        print(f"{head}: running {notebook_of[stage]} ({reason})", flush=True)
        t0 = time.perf_counter()
        try:
            with _environment(PYTHONHASHSEED=hash_seed, **{TERMINAL_ENV: "1"}):  # inherited
                execute_notebook(
                    str(notebook_of[stage]),
                    str(out_nb),
                    parameters={
                        "params_path": str(resolved),
                        "run_dir": str(run_dir),
                        "stage": stage,
                    },
                    kernel_name=kernel,
                    kernel_manager_class=_ipc_kernel_manager(),
                    cwd=str(project_root),
                    progress_bar=True,
                    log_output=False,
                )
        except BaseException as exc:  # noqa: BLE001 - every failure is recorded, then re-raised or reported
            seconds = round(time.perf_counter() - t0, 3)
            error = _error_of(exc)
            update_stage(
                run_dir, stage, status="failed", finished=now(), seconds=seconds, error=error
            )
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
                raise
            print(f"{head}: failed after {seconds:.1f} s", flush=True)
            _print_error(stage, error, out_nb)
            result.stages.append(StageResult(stage, "failed", reason, seconds, out_nb, error))
            failed = True
            continue
        seconds = round(time.perf_counter() - t0, 3)
        finished = now()
        _write_json(
            stage_dir / DONE,
            {
                "stage": stage,
                "params_hash": hashes[stage][0],
                "params": hashes[stage][1],
                "started": started,
                "finished": finished,
                "seconds": seconds,
                "notebook": str(out_nb),
                "git_commit": commit,
            },
        )
        update_stage(run_dir, stage, status="done", finished=finished, seconds=seconds)
        print(f"{head}: done in {seconds:.1f} s", flush=True)
        result.stages.append(StageResult(stage, "done", reason, seconds, out_nb))

    print(f"run folder:         {run_dir}", flush=True)
    print(f"manifest:           {result.manifest}", flush=True)
    print(f"executed notebooks: {executed_dir}", flush=True)
    for label, path in _results_of(run_dir):
        print(f"{label + ':':<20}{path}", flush=True)
    if failed:
        print(f"run stopped: {result.failed.stage} failed", flush=True)
    return result
