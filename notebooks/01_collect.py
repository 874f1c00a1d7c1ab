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
# # 01 · Collect self-debugging trajectories
#
# Method §1: a base model samples initial solutions for each *training* problem; each is executed in the sandbox and identical programs are folded together. For every wrong solution a teacher (the model itself = self-bootstrap, another model, or an OpenAI-compatible endpoint) writes **Refine** (fixed code) and **Expl.+Refine** (explanation, then fixed code) responses. Records are committed as they are made: a killed run resumes where it stopped.

# %% tags=["parameters"]
# Parameters (papermill injects the run's values below this cell)
params_path = "params/smoke.yaml"
run_dir = "outputs/interactive"
stage = "collect"

# %%
from sdlib.runs.layout import RunLayout
from sdlib.runs.notebook import open_stage

params, run_dir = open_stage(params_path, run_dir)  # paths from the project root
run = RunLayout(run_dir)  # where every file of the run is

# %%
from sdlib.stages import pipeline

summary = pipeline.run_collect(params, run_dir)
summary

# %% [markdown]
# With the embedded default model the numbers below say nothing about the method: it is a tiny model built locally so that every stage gets real data.

# %%
import pandas as pd

from sdlib.data.resumable import read_committed

initial = read_committed(run.initial)
pd.Series([r["verdict"]["status"] for r in initial]).value_counts().rename("initial solutions")

# %%
examples = [r for r in initial if r["verdict"]["status"] != "pass"][:2]
for r in examples:
    print(r["id"], r["verdict"]["status"])
    print(r["code"])
    print("--- feedback:", r["feedback"])
    print()
