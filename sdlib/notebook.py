"""Helpers for building the stage notebooks (kept as code so that every notebook has the same
parameters cell and stays short)."""

from __future__ import annotations

from pathlib import Path

PARAMETERS = '''# Parameters (papermill injects the run's values below this cell)
params_path = "params/smoke.yaml"
run_dir = "outputs/interactive"
stage = "{stage}"'''

LOAD = """from pathlib import Path
from sdlib import params as P
params = P.load(params_path)
run_dir = Path(run_dir)
run_dir.mkdir(parents=True, exist_ok=True)
print(f"run {params.run_name}: {run_dir}")"""


def write_notebook(path: Path, stage: str, title: str, cells: list[tuple[str, str]]) -> None:
    """cells: ("md" | "code", source)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells.append(nbformat.v4.new_markdown_cell(title))
    parameters = nbformat.v4.new_code_cell(PARAMETERS.format(stage=stage))
    parameters.metadata["tags"] = ["parameters"]
    nb.cells.append(parameters)
    nb.cells.append(nbformat.v4.new_code_cell(LOAD))
    for kind, source in cells:
        cell = (
            nbformat.v4.new_markdown_cell(source)
            if kind == "md"
            else nbformat.v4.new_code_cell(source)
        )
        nb.cells.append(cell)
    stable_ids(nb, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def stable_ids(nb, prefix: str) -> None:
    """Cell ids derived from the position, so regenerating a notebook changes nothing in git."""
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"{prefix}-{index:02d}"
