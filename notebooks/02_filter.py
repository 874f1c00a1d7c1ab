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
# # 02 · Filter: keep execution-verified trajectories
#
# Method §2: every refinement is executed against all tests; only refinements that pass all of them are kept, and an explanation counts as correct iff its refinement is. The SFT set is correct initial solutions + correct refinements (both instruction types); the RL set is everything, success and failure.

# %% tags=["parameters"]
# Parameters (papermill injects the run's values below this cell)
params_path = "params/smoke.yaml"
run_dir = "outputs/interactive"
stage = "filter"

# %%
from sdlib.runs.layout import RunLayout
from sdlib.runs.notebook import open_stage

params, run_dir = open_stage(params_path, run_dir)  # paths from the project root
run = RunLayout(run_dir)  # where every file of the run is

# %%
from sdlib.runs import plots
from sdlib.stages import pipeline, trajectories

result = pipeline.run_filter(params, run_dir)
table = result["table"]

# %% [markdown]
# ## Dataset table per source (method §1's shape; the paper's rate beside ours)

# %%
import pandas as pd

COLUMNS = (
    "source",
    "problems",
    "unique",
    "correct",
    "wrong",
    "wrong_refined",
    "correct_refinements",
    "rate",
    "paper_rate",
    "rate_of_all_wrong",
)
rows = list(table["by_source"].values())
if len(rows) > 1:
    rows.append(table)  # all sources together
pd.DataFrame([{k: row.get(k) for k in COLUMNS} for row in rows])

# %%
print("wrong but never sent for refinement:", table["wrong_not_refined"])
print("SFT records by source:", table["sft_by_source"])
print("RL records:", table["rl_records"])
print(f"filtering: {table['records_per_second']} refinements/s")

# %% [markdown]
# ## Outcomes, feedback kinds, refinement success by instruction type

# %%
fig = plots.filter_overview(
    trajectories.outcome_counts(result["initial"]),
    trajectories.feedback_kinds(result["initial"]),
    trajectories.success_by_mode(result["judged"]),
    save=run.filter_overview,
)
