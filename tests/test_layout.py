"""One run layout (issue 13, item 3): ``sdlib.runs.layout.RunLayout`` knows every folder and file
of a run, and no other module or notebook spells one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdlib.runs.layout import STAGES, RunLayout, project_root
from sdlib.runs.params import parse

ROOT = Path(__file__).resolve().parents[1]
FILE_NAMES = (
    "initial.jsonl",
    "refinements.jsonl",
    "sft.jsonl",
    "rl.jsonl",
    "table.json",
    "metrics.json",
    "metrics.jsonl",
    "samples.jsonl",
    "summary.json",
    "table.md",
    "DONE.json",
    "manifest.json",
    "params.yaml",
)


def test_every_file_of_a_run_lies_in_its_stage_folder(tmp_path):
    run = RunLayout(tmp_path / "run")
    assert run.initial.parent == run.teacher_refinements.parent == run.collect
    assert {run.judged_refinements.parent, run.sft_set.parent, run.rl_set.parent} == {run.filter}
    assert run.sft_model.parent == run.sft and run.rl_model.parent == run.rl
    setting = run.eval_setting("base", "mbpp")
    assert setting == run.eval / "base" / "mbpp"
    assert RunLayout.eval_round(setting, 0).name == "initial.jsonl"
    assert RunLayout.eval_round(setting, 2).name == "round2.jsonl"
    assert [run.done(s).parent for s in STAGES] == [run.root / s for s in STAGES]
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        run.stage("train")


def test_no_module_or_notebook_but_the_layout_spells_a_run_file():
    sources = [*sorted((ROOT / "sdlib").rglob("*.py")), *sorted((ROOT / "notebooks").glob("*.py"))]
    pattern = re.compile("|".join(rf"[\"'/]{re.escape(name)}[\"']" for name in FILE_NAMES))
    spelled = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources
        if path.name != "layout.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert not spelled, "spell these through sdlib.runs.layout.RunLayout:\n" + "\n".join(spelled)


def test_a_relative_output_dir_is_taken_from_the_project_root(tmp_path, monkeypatch):
    params = parse({"run_name": "r", "output_dir": "outputs"}, "inline")
    monkeypatch.chdir(ROOT / "notebooks")  # where JupyterLab starts a kernel
    assert project_root() == ROOT
    assert params.run_dir() == ROOT / "outputs" / "r"
    assert params.run_dir(tmp_path) == tmp_path / "outputs" / "r"
