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
# # 04 · RL: PPO with per-token rewards
#
# Method §4: the policy (the SFT adapter when there is one, else a fresh LoRA adapter on the base model) samples a refinement for each wrong solution of the RL set; the code is executed in the sandbox (S_ut) and compared with the correct refinements of the same wrong solution (CodeBLEU, S_cb); the explanation with their explanations (embeddings, S_ex). R_expl goes on the last explanation token, R_code on the final token, a KL penalty to the adapter-free reference on every token. `rl.algorithm: grpo | rloo` runs trl's trainers with R_code + R_expl as one sequence-level reward, for comparison.

# %% tags=["parameters"]
# Parameters (papermill injects the run's values below this cell)
params_path = "params/smoke.yaml"
run_dir = "outputs/interactive"
stage = "rl"

# %%
from sdlib.runs.layout import RunLayout
from sdlib.runs.notebook import open_stage

params, run_dir = open_stage(params_path, run_dir)  # paths from the project root
run = RunLayout(run_dir)  # where every file of the run is

# %%
from sdlib.runs import plots
from sdlib.training import rl

summary = rl.run_rl(params, run_dir)
{k: v for k, v in summary.items() if k not in ("reward_config", "ppo_config")}

# %% [markdown]
# With the embedded default model the numbers below say nothing about the method.

# %% [markdown]
# ## Reward, pass rate and KL per step

# %%
import pandas as pd

metrics = pd.DataFrame(rl.read_metrics(run_dir)).drop(columns=["ppo", "trl"], errors="ignore")
metrics[
    [
        c
        for c in (
            "step",
            "reward_mean",
            "r_code_mean",
            "r_expl_mean",
            "pass_rate",
            "no_code_rate",
            "kl",
            "policy_loss",
            "value_loss",
            "loss",
        )
        if c in metrics
    ]
]

# %%
fig = plots.plot_rewards(rl.read_metrics(run_dir))

# %% [markdown]
# ## Where a step's time goes
#
# `reward_share` = (execution + CodeBLEU + embeddings) / whole step; step 0 includes loading the embedding model and CodeBLEU's parser.

# %%
metrics[["step", *[c for c in metrics if c.startswith("seconds_")], "reward_share"]]

# %% [markdown]
# ## Samples

# %%
samples = pd.read_json(run.rl_samples, lines=True)
samples.groupby("mode")[["r_code", "r_expl", "s_ut", "s_cb", "s_ex"]].mean()

# %%
for _, s in samples[samples["mode"] == "expl_refine"].tail(2).iterrows():
    print(f"--- {s['prompt']} ({s['status']}, R_code {s['r_code']:.2f}, R_expl {s['r_expl']})")
    print(s["response"][:800])
    print()
