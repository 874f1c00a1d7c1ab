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
# # 03 · SFT on execution-verified trajectories
#
# Method §3: fine-tune on the filter stage's SFT set, which mixes plain code generation (correct initial solutions) with correct **Refine** and **Expl.+Refine** trajectories. Each chat is split into a prompt (task, the wrong solution as the assistant's first answer, the feedback turn) and a completion (the final answer); with TRL's `completion_only_loss` the loss falls only on the final answer, never on the wrong solution in the history. LoRA by default (`sft.method: lora`), or `full`, or `qlora` (CUDA only). Held-out loss is measured before and after training.

# %% tags=["parameters"]
# Parameters (papermill injects the run's values below this cell)
params_path = "params/smoke.yaml"
run_dir = "outputs/interactive"
stage = "sft"

# %%
from sdlib.runs.layout import RunLayout
from sdlib.runs.notebook import open_stage

params, run_dir = open_stage(params_path, run_dir)  # paths from the project root
run = RunLayout(run_dir)  # where every file of the run is

# %%
from sdlib.training import sft

summary = sft.run_sft(params, run_dir)
summary

# %% [markdown]
# With the embedded default model the numbers below say nothing about the method: it is a tiny model built locally so that every stage gets real data.

# %% [markdown]
# ## What the model is trained on (one refinement record: prompt | completion)

# %%
records = sft.load_sft_records(run_dir)
example = next((r for r in records if r["source"] != "initial"), records[0])
prompt, completion = sft.prompts.split_chat_for_training(
    example["messages"], example["final_answer"]
)
print(prompt)
print("=" * 30, "loss only below this line", "=" * 30)
print(completion)

# %% [markdown]
# ## Loss

# %%
import json

from IPython.display import Image

metrics = json.loads(run.sft_metrics.read_text())
print("records:", metrics["records"])
print(f"held-out loss: {metrics['eval_loss_before']} -> {metrics['eval_loss_after']}")
print(metrics.get("warmup_note", f"warm-up steps: {metrics['warmup_steps']}"))
Image(filename=str(run.sft_loss_plot))
