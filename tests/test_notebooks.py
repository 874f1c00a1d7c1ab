"""The notebooks are source that users edit (issue 13, item 7): each is paired with a
py:percent file (the reviewed, linted source) and the two say the same; and each opens as a
new user opens it, with a kernel started in ``notebooks/`` by JupyterLab or Voilà."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from sdlib.data.resumable import ResumableLog

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STAGES = [p for p in NOTEBOOKS if p.name[:2].isdigit() and not p.name.startswith("07")]


def cells(notebook) -> list[tuple[str, str, list]]:
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in notebook.cells]


def test_the_stage_notebooks_and_the_raters_page_are_all_there():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_collect",
        "02_filter",
        "03_sft",
        "04_rl",
        "05_eval",
        "06_human_study",
        "07_explore_trajectories",
        "rate",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_is_paired_with_its_py_percent_source_and_in_sync(path):
    source = path.with_suffix(".py")
    assert source.is_file(), f"{source} missing: `jupytext --set-formats ipynb,py:percent`"
    notebook = nbformat.read(str(path), as_version=4)
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    paired = jupytext.read(str(source))
    assert cells(paired) == cells(notebook), (
        f"{path.name} and {source.name} differ: run `jupytext --sync notebooks/*.py` "
        "(saving in JupyterLab with jupytext installed keeps both)"
    )
    assert not any(c.get("outputs") for c in notebook.cells), "commit notebooks without outputs"


def project_copy(tmp_path: Path) -> Path:
    """The project as a new user has it: params/ and notebooks/ (sdlib is installed)."""
    for folder in ("params", "notebooks"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def execute(path: Path, first_cells: int | None = None) -> nbformat.NotebookNode:
    """Execute a notebook (or its first cells) as JupyterLab does: the kernel's working
    folder is the notebook's own."""
    notebook = nbformat.read(str(path), as_version=4)
    if first_cells is not None:
        notebook.cells = notebook.cells[:first_cells]
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return notebook


def printed(notebook) -> str:
    return "".join(out.get("text", "") for c in notebook.cells for out in c.get("outputs", []))


def test_stage_notebooks_open_from_their_own_folder(tmp_path):
    # The parameters cell and the cell that opens the run: it used to fail with
    # "params file params/smoke.yaml does not exist" in a kernel started in notebooks/.
    project = project_copy(tmp_path)
    for path in STAGES:
        notebook = execute(project / "notebooks" / path.name, first_cells=3)
        assert f"run smoke: {project / 'outputs' / 'interactive'}" in printed(notebook)
    assert (project / "outputs" / "interactive").is_dir()
    assert not (project / "notebooks" / "outputs").exists()


def make_run(project: Path, name: str) -> Path:
    run = project / "outputs" / name
    (run / "collect").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"run_name": name}))
    return run


def test_the_explorer_opens_the_most_recent_run(tmp_path):
    project = project_copy(tmp_path)
    explorer = project / "notebooks" / "07_explore_trajectories.ipynb"
    with pytest.raises(Exception, match="no run under"):
        execute(explorer, first_cells=3)
    older = make_run(project, "older")
    newer = make_run(project, "newer")
    past = time.time() - 60
    os.utime(older / "manifest.json", (past, past))
    record = {
        "id": "p1-s0",
        "task_id": "1",
        "benchmark": "mbpp",
        "code": "def f():\n    return 1\n",
        "verdict": {"status": "fail", "passed": 0, "total": 1},
        "feedback": "Failed test: f()",
    }
    with ResumableLog(newer / "collect" / "initial.jsonl") as log:  # as collect writes it
        log.commit("p1", [record])
    notebook = execute(explorer)
    text = printed(notebook)
    assert f"run smoke: {newer}" in text
    crosstab = notebook.cells[-2].outputs[0]["data"]["text/plain"]
    assert "collect" in crosstab and "fail" in crosstab
