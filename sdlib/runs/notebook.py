"""What the stage notebooks' first cells call. JupyterLab and Voilà start a kernel in
``notebooks/``, papermill (``sdlib run``) in the project root: paths in a notebook's parameters
resolve from the project root either way, and the explorer opens the most recent run."""

from __future__ import annotations

import os
from pathlib import Path

from sdlib.runs.layout import MANIFEST, project_root
from sdlib.runs.params import ParamsError, RunParams
from sdlib.runs.params import load as load_params


def resolve(path: str | os.PathLike[str]) -> Path:
    """A notebook parameter's path: absolute as given, else from the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def latest_run(outputs: str | os.PathLike[str]) -> Path | None:
    """The run folder under ``outputs`` whose manifest was written last (None: no run yet)."""
    folder = resolve(outputs)
    manifests = list(folder.glob(f"*/{MANIFEST}")) if folder.is_dir() else []
    return max(manifests, key=lambda p: p.stat().st_mtime).parent if manifests else None


def open_stage(
    params_path: str | os.PathLike[str], run_dir: str | os.PathLike[str] | None
) -> tuple[RunParams, Path]:
    """The params and run folder of a notebook. ``run_dir=None``: the most recent run under
    the params' ``output_dir`` (the explorer's default), else a clear error."""
    params = load_params(resolve(params_path))
    if run_dir is None:
        found = latest_run(params.run_dir().parent)
        if found is None:
            raise ParamsError(
                f"no run under {params.run_dir().parent} yet: run `make demo` (or "
                "`sdlib run PARAMS.yaml`) first, or set run_dir to a run folder"
            )
        run = found
    else:
        run = resolve(run_dir)
        run.mkdir(parents=True, exist_ok=True)
    print(f"run {params.run_name}: {run}")
    return params, run


TERMINAL_ENV = "SDLIB_TERMINAL"  # set by ``sdlib run`` for its stage kernels


def to_terminal(text: str) -> None:
    """A progress line for the terminal that runs ``sdlib run`` (a stage kernel's own stderr,
    which papermill does not capture); nothing elsewhere (JupyterLab shows the cell's bars)."""
    import os
    import sys

    if os.environ.get(TERMINAL_ENV) == "1" and sys.__stderr__ is not None:
        try:
            sys.__stderr__.write(f"    {text}\n")
            sys.__stderr__.flush()
        except (OSError, ValueError):
            pass
