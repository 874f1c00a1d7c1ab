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
# # 06 · Human study of explanations
#
# Method §6: K problems with a wrong initial solution (from the eval outputs of one source model); every study model explains that same wrong solution (Expl.+Refine prompt). Raters score each explanation 1–5 for correctness and helpfulness without knowing which model wrote it; every explanation gets two raters. Preparing is idempotent: a re-run reuses what exists and never changes items or assignments once they are written. Run headlessly, this notebook prepares the study and summarises whatever ratings exist.

# %% tags=["parameters"]
# Parameters (papermill injects the run's values below this cell)
params_path = "params/smoke.yaml"
run_dir = "outputs/interactive"
stage = "human_study"

# %%
from sdlib.runs.layout import RunLayout
from sdlib.runs.notebook import open_stage

params, run_dir = open_stage(params_path, run_dir)  # paths from the project root
run = RunLayout(run_dir)  # where every file of the run is

# %%
from sdlib.study import human_study, rating_ui

summary = human_study.prepare_study(params, run_dir)
summary

# %% [markdown]
# ## Rate
#
# Each rater opens their own page — Voilà: `voila notebooks/rate.ipynb` then `http://localhost:8866/?run=<run>&rater=<name>` — or sets `rater` below and runs the cell here. Every rating is on disk (fsynced) the moment it is given; reopening resumes where the rater stopped.

# %%
rater = None  # e.g. 'rater1'
study = human_study.study_dir(run_dir)
rating_ui.RatingApp(study, rater).view if rater else print(f"raters: {summary['raters']}")

# %% [markdown]
# ## Results: mean score per model (95% bootstrap CI) and agreement

# %%
import pandas as pd

rows = human_study.rating_table(study)
res = human_study.results(study, rows)
print(f"{res['ratings']} ratings")
pd.DataFrame(res["per_model"])

# %%
res["agreement"]  # Krippendorff's alpha over all items; weighted kappa per rater pair

# %%
if res["per_model"]:
    fig = human_study.plot_results(res, save=study / "scores.png")
else:
    print("no ratings yet")

# %% [markdown]
# ## Optional: an LLM judge with the same rubric
#
# Set `human_study.judge` in the params to a model spec (e.g. `kind: openai`, `base_url`, `model`); its scores are stored as the rater `judge` and compared with the humans.

# %%
if params.human_study.judge is not None:
    from sdlib.study import judge

    print(judge.run_judge(params, run_dir))
    print(judge.agreement_with_humans(study))
else:
    print("no judge configured (human_study.judge)")
