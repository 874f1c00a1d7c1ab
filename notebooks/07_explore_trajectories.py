# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Explore trajectories
#
# Every record of the run — collection (initial solutions, teacher refinements with the filter stage's verdicts) and evaluation (initial samples and refinement rounds per model and benchmark) — filtered by problem, status, instruction type, round and model. A refinement shows the wrong code it started from and the refined code side by side, the feedback the model was shown, its explanation, and the file and line it came from.

# %% tags=["parameters"]
# Parameters (papermill injects the run's values below this cell)
params_path = "params/smoke.yaml"
run_dir = None  # None: the most recent run under the params' output_dir
stage = "explore"

# %%
from sdlib.runs.layout import RunLayout
from sdlib.runs.notebook import open_stage

params, run_dir = open_stage(params_path, run_dir)  # paths from the project root
run = RunLayout(run_dir)  # where every file of the run is

# %%
import pandas as pd

from sdlib.study import explorer

rows = explorer.load_trajectories(run_dir)
frame = pd.DataFrame(rows)
pd.crosstab([frame["source"], frame["mode"]], frame["status"]) if rows else "no records yet"

# %%
explorer.TrajectoryExplorer(rows).view
