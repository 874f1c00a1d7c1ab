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
# # 05 · Evaluate: pass@k with self-refinement
#
# Method §5: each model (`eval.models`: the base model, the SFT and RL outputs of this run, the teacher, or any Hugging Face model or OpenAI-compatible endpoint) draws `eval.samples_per_task` samples per task at `eval.temperature` on MBPP (test split), HumanEval, MBPP+ and HumanEval+. Every failing sample then gets one more model call per round in each setting: **Refine**, **Expl.+Refine** (iterative, up to `eval.rounds` rounds), and **Resample**, a fresh sample: the baseline with the same number of model calls. pass@k uses the unbiased estimator with each failed sample replaced by its refinement. Generation and execution overlap; a killed eval resumes where it stopped.

# %% tags=["parameters"]
# Parameters (papermill injects the run's values below this cell)
params_path = "params/smoke.yaml"
run_dir = "outputs/interactive"
stage = "eval"

# %%
from sdlib.runs.layout import RunLayout
from sdlib.runs.notebook import open_stage

params, run_dir = open_stage(params_path, run_dir)  # paths from the project root
run = RunLayout(run_dir)  # where every file of the run is

# %%
from sdlib.stages import eval_report, refinement_eval

summary = refinement_eval.run_eval(params, run_dir)
summary["pipeline"]["total"]

# %% [markdown]
# With the embedded default model the numbers below say nothing about the method: the tiny model is trained on 24 training problems and solves no evaluation task.

# %% [markdown]
# ## pass@1 / pass@10 in the shape of the paper's Table 2

# %%
from IPython.display import Image, Markdown

Markdown(eval_report.table2_markdown(summary))

# %% [markdown]
# ## Success refinement rate (share of wrong samples fixed in round 1)

# %%
Markdown(eval_report.refinement_rate_markdown(summary))

# %% [markdown]
# ## pass@1 by round: refinement against resampling with the same calls

# %%
Image(filename=str(run.eval_plots[0]))

# %%
Image(filename=str(run.eval_plots[1]))

# %% [markdown]
# ## Where the time went
#
# Per model: seconds of generation (main thread) and of execution (the sandbox's worker thread), and how much of the execution ran while the model was generating (`execution_hidden_s`): the pipeline's gain over running them one after the other.

# %%
import pandas as pd

pd.DataFrame(
    {
        m: {k: v for k, v in t.items() if k != "benchmarks"}
        for m, t in summary["pipeline"]["per_model"].items()
    }
).T

# %% [markdown]
# ## One refinement chain

# %%
first = summary["models"][0]
initial, later = refinement_eval.load_rounds(
    run.eval_setting(first, params.eval.benchmarks[0]), params.eval.rounds
)
chain = [r for records in later for r in records if r["mode"] == "expl_refine"][:1]
for r in chain:
    print(r["prompt"][-1200:])
    print("---- response ----")
    print(r["response"][:800])
    print("---- verdict:", r["verdict"]["status"])

# %%
print("summary:", run.eval_summary)
print("table:  ", run.eval_table)
print("plots:  ", *run.eval_plots)
