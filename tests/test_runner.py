"""The stage runner (sdlib.workbench.runner, sdlib run) and the run manifest, with real papermill runs of
small notebooks built here. Each papermill execution costs a few seconds: the scenario tests
share their runs (9 executions in all)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
import yaml

from sdlib.data.datafiles import FILES
from sdlib.runs.layout import DONE as DONE_NAME
from sdlib.runs.manifest import read_manifest, update_manifest, update_stage
from sdlib.runs.params import STAGES, ParamsError, parse
from sdlib.workbench import runner

ROOT = Path(__file__).resolve().parents[1]

STAGE_BODY = """\
import json, os
from pathlib import Path
from sdlib.runs.params import load
p = load(params_path)
out = Path(run_dir) / stage
out.mkdir(parents=True, exist_ok=True)
(out / "result.json").write_text(json.dumps(
    {"stage": stage, "run_name": p.run_name, "seed": p.seed, "cwd": os.getcwd(),
     "hash_seed": os.environ.get("PYTHONHASHSEED"), "hash": hash("same in every kernel")}))
with open(Path(run_dir) / "executions.log", "a") as log:
    log.write(stage + "\\n")
"""

ADD_SECTION = """\
from sdlib.runs.manifest import update_manifest
update_manifest(run_dir, sandbox={"timeout": p.sandbox.timeout, "isolation": "test"})
"""


def write_notebook(path: Path, *bodies: str) -> None:
    nb = nbformat.v4.new_notebook()
    defaults = nbformat.v4.new_code_cell(
        'params_path = "params.yaml"\nrun_dir = "outputs/run"\nstage = "collect"'
    )
    defaults.metadata["tags"] = ["parameters"]
    nb.cells = [defaults, *(nbformat.v4.new_code_cell(body) for body in bodies)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def notebook_path(root: Path, stage: str) -> Path:
    return root / "notebooks" / f"{STAGES.index(stage) + 1:02d}_{stage}.ipynb"


def write_params(path: Path, **data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def executions(run_dir: Path) -> list[str]:
    log = run_dir / "executions.log"
    return log.read_text().split() if log.is_file() else []


def statuses(result: runner.RunResult) -> dict[str, str]:
    return {s.stage: s.status for s in result.stages}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "sdlib.workbench.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_runs_in_order_skips_redoes_and_forces(tmp_path, data_dir, capsys):
    write_notebook(notebook_path(tmp_path, "collect"), STAGE_BODY, ADD_SECTION)
    for stage in ("filter", "sft"):
        write_notebook(notebook_path(tmp_path, stage), STAGE_BODY)
    params = write_params(
        tmp_path / "p.yaml",
        run_name="t",
        seed=7,
        output_dir=str(tmp_path / "outputs"),
        stages=["collect", "filter", "sft"],
    )
    run_dir = tmp_path / "outputs" / "t"
    go = dict(notebooks_dir=tmp_path / "notebooks")

    # 1. Everything runs, in pipeline order.
    result = runner.run(params, **go)
    assert result.ok and result.exit_code == 0
    assert statuses(result) == {"collect": "done", "filter": "done", "sft": "done"}
    assert executions(run_dir) == ["collect", "filter", "sft"]
    out = json.loads((run_dir / "filter" / "result.json").read_text())
    # every kernel hashes strings alike (set order leaks into CodeBLEU): reruns are identical
    seed = os.environ.get("PYTHONHASHSEED") or runner.KERNEL_HASH_SEED
    hashes = {
        json.loads((run_dir / s / "result.json").read_text())["hash"]
        for s in ("collect", "filter", "sft")
    }
    assert out.pop("hash_seed") == seed and len(hashes) == 1 and out.pop("hash") in hashes
    assert out == {"stage": "filter", "run_name": "t", "seed": 7, "cwd": str(tmp_path)}
    assert (run_dir / "params.yaml").is_file()
    for stage in ("collect", "filter", "sft"):
        assert (run_dir / stage / "DONE.json").is_file()
        assert (run_dir / "notebooks" / notebook_path(tmp_path, stage).name).is_file()

    manifest = read_manifest(run_dir)
    assert result.manifest == run_dir / "manifest.json"
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["git"]["commit"])
    assert isinstance(manifest["git"]["dirty"], bool)
    assert manifest["packages"]["sdlib"] and manifest["packages"]["papermill"]
    assert manifest["packages"]["pydantic"]
    assert "torch" in manifest["packages"]  # null when missing, but always listed
    assert manifest["data"]["sha256"] == {name: FILES[name].sha256 for name in FILES}
    assert manifest["seed"] == 7 and manifest["params"]["seed"] == 7
    assert manifest["python_hash_seed"] == seed
    assert manifest["python"]["version"] and manifest["platform"]["system"]
    assert manifest["prompts"]  # the templates
    assert manifest["sandbox"] == {"timeout": 10.0, "isolation": "test"}  # added by a stage
    for stage in ("collect", "filter", "sft"):
        entry = manifest["stages"][stage]
        assert entry["status"] == "done" and entry["error"] is None
        assert entry["seconds"] > 0 and entry["started"] and entry["finished"]
        assert entry["notebook"].endswith(notebook_path(tmp_path, stage).name)
    printed = capsys.readouterr().out
    assert re.search(r"\[2/3\] filter: done in [\d.]+ s", printed)
    assert f"manifest:           {run_dir / 'manifest.json'}" in printed

    # 2. Unchanged params: nothing runs.
    result = runner.run(params, **go)
    assert set(statuses(result).values()) == {"skipped"}
    assert len(executions(run_dir)) == 3
    assert "collect: skipped (done" in capsys.readouterr().out
    assert read_manifest(run_dir)["stages"]["sft"]["status"] == "done"

    # 3. A deleted stage folder redoes that stage only.
    shutil.rmtree(run_dir / "filter")
    result = runner.run(params, **go)
    assert statuses(result) == {"collect": "skipped", "filter": "done", "sft": "skipped"}
    assert executions(run_dir)[3:] == ["filter"]

    # 4. Changed params redo the stage whose section changed and every later one.
    data = yaml.safe_load(params.read_text())
    data["filter"] = {"include_initial_correct": False}
    write_params(params, **data)
    result = runner.run(params, **go)
    assert statuses(result) == {"collect": "skipped", "filter": "done", "sft": "done"}
    assert executions(run_dir)[4:] == ["filter", "sft"]
    assert "params changed since: filter.include_initial_correct" in capsys.readouterr().out

    # 5. force reruns the selected stages even though they are done.
    result = runner.run(params, stages="collect", force=True, **go)
    assert statuses(result) == {"collect": "done"}
    assert executions(run_dir)[6:] == ["collect"]
    # a stage redone from scratch keeps its earlier outputs beside it, and never resumes them
    (aside,) = run_dir.glob("collect.replaced-*")
    assert (aside / "result.json").is_file() and (aside / DONE_NAME).is_file()
    assert len(list(run_dir.glob("filter.replaced-*"))) == 1  # params changed in step 4
    assert read_manifest(run_dir)["stages"]["collect"]["status"] == "done"


def test_failing_stage_stops_the_run_with_exit_code_1(tmp_path, data_dir):
    write_notebook(
        notebook_path(tmp_path, "collect"),
        STAGE_BODY,
        "from sdlib.runs.notebook import to_terminal\nto_terminal('tiny model: step 1/1')",
    )
    write_notebook(
        notebook_path(tmp_path, "filter"), STAGE_BODY, 'raise ValueError("filter exploded: 42")'
    )
    write_notebook(notebook_path(tmp_path, "sft"), STAGE_BODY)
    write_params(tmp_path / "p.yaml", output_dir="outputs", stages=["collect", "filter", "sft"])

    done = cli("run", "p.yaml", "--run-name", "boom", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    run_dir = tmp_path / "outputs" / "boom"
    assert "filter: failed after" in done.stdout
    # the terminal shows what a stage does, and no kernel transport warning
    assert "    tiny model: step 1/1" in done.stderr
    assert "without encryption" not in done.stdout + done.stderr
    assert "ValueError: filter exploded: 42" in done.stdout
    assert "In [4]" in done.stdout  # parameters, injected parameters, body, the raise
    assert "last lines of the traceback" in done.stdout
    assert "sft" not in executions(run_dir)
    assert executions(run_dir) == ["collect", "filter"]
    assert not (run_dir / "notebooks" / "03_sft.ipynb").exists()
    assert (run_dir / "notebooks" / "02_filter.ipynb").is_file()  # kept for inspection
    assert not (run_dir / "filter" / "DONE.json").exists()

    stages = read_manifest(run_dir)["stages"]
    assert stages["collect"]["status"] == "done"
    assert stages["filter"]["status"] == "failed"
    assert stages["filter"]["error"]["ename"] == "ValueError"
    assert stages["filter"]["error"]["evalue"] == "filter exploded: 42"
    assert stages["sft"]["status"] == "pending"


def test_invalid_params_exit_2_name_the_field_and_run_nothing(tmp_path):
    write_notebook(notebook_path(tmp_path, "collect"), STAGE_BODY)
    write_params(tmp_path / "bad.yaml", output_dir="outputs", sft={"epoch": 3})
    done = cli("run", "bad.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "sft.epoch: unknown field" in done.stderr
    assert not (tmp_path / "outputs").exists()


def test_usage_errors_run_nothing(tmp_path):
    write_params(tmp_path / "p.yaml", output_dir=str(tmp_path / "outputs"))
    with pytest.raises(runner.RunError, match="unknown stage.*colect"):
        runner.run(tmp_path / "p.yaml", stages="colect", notebooks_dir=tmp_path / "notebooks")
    with pytest.raises(runner.RunError, match=re.escape(str(notebook_path(tmp_path, "collect")))):
        runner.run(tmp_path / "p.yaml", notebooks_dir=tmp_path / "notebooks")
    with pytest.raises(runner.RunError, match="plain folder name"):
        runner.run(tmp_path / "p.yaml", run_name="../x", notebooks_dir=tmp_path / "notebooks")
    with pytest.raises(ParamsError, match="does not exist"):
        runner.run(tmp_path / "missing.yaml", notebooks_dir=tmp_path / "notebooks")
    assert not (tmp_path / "outputs").exists()


def test_stage_hashes_depend_on_own_and_earlier_sections():
    base = runner.stage_hashes(parse({}))
    moved = runner.stage_hashes(
        parse({"run_name": "x", "output_dir": "/elsewhere", "stages": ["eval"]})
    )
    assert {s: h for s, (h, _) in base.items()} == {s: h for s, (h, _) in moved.items()}
    changed = runner.stage_hashes(parse({"eval": {"rounds": 1}}))
    assert [s for s in STAGES if changed[s][0] != base[s][0]] == ["eval", "human_study"]
    changed = runner.stage_hashes(parse({"seed": 1}))
    assert all(changed[s][0] != base[s][0] for s in STAGES)


def test_update_manifest_merges_concurrent_writers(tmp_path):
    update_manifest(tmp_path, seed=1, stages={"collect": {"status": "done"}})

    def writer(i: int) -> None:
        for j in range(10):
            update_manifest(tmp_path, **{f"section{i}": {f"k{j}": j}})
            update_stage(tmp_path, f"stage{i}", **{f"f{j}": j})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    manifest = read_manifest(tmp_path)
    assert manifest["seed"] == 1
    for i in range(6):
        assert manifest[f"section{i}"] == {f"k{j}": j for j in range(10)}
        assert manifest["stages"][f"stage{i}"] == {f"f{j}": j for j in range(10)}
    assert manifest["stages"]["collect"] == {"status": "done"}
    assert not list(tmp_path.glob(".manifest.*.tmp"))


def test_a_weak_sandbox_warns_in_the_terminal_or_refuses_before_any_stage(tmp_path):
    write_notebook(notebook_path(tmp_path, "collect"), STAGE_BODY)
    weak = {"isolation": "none"}
    write_params(tmp_path / "warn.yaml", output_dir="outputs", stages=["collect"], sandbox=weak)
    done = cli("run", "warn.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("WARNING: the sandbox is weakened") == 1
    assert "filesystem" in done.stderr and "sandbox.require" in done.stderr
    refuse = {"isolation": "none", "require": ["filesystem", "network"]}
    write_params(tmp_path / "refuse.yaml", output_dir="out2", stages=["collect"], sandbox=refuse)
    done = cli("run", "refuse.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "cannot give the sandbox guarantees" in done.stderr and "network" in done.stderr
    assert not (tmp_path / "out2").exists()  # nothing ran
    write_params(tmp_path / "bad.yaml", output_dir="o", sandbox={"require": ["everything"]})
    done = cli("run", "bad.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "sandbox.require" in done.stderr
