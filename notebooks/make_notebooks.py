"""Regenerate the stage notebooks: `python notebooks/make_notebooks.py`.

The notebooks are the workbench's face; their logic lives in sdlib, so they are small and
written from here to keep their parameters cell and loading code identical."""

from pathlib import Path

from sdlib.notebook import write_notebook

HERE = Path(__file__).parent

write_notebook(
    HERE / "01_collect.ipynb",
    "collect",
    "# 01 · Collect self-debugging trajectories\n\n"
    "Method §1: a base model samples initial solutions for each *training* problem; each is "
    "executed in the sandbox and identical programs are folded together. For every wrong "
    "solution a teacher (the model itself = self-bootstrap, another model, or an "
    "OpenAI-compatible endpoint) writes **Refine** (fixed code) and **Expl.+Refine** "
    "(explanation, then fixed code) responses. Records are committed as they are made: a "
    "killed run resumes where it stopped.",
    [
        (
            "code",
            "from sdlib import pipeline\nsummary = pipeline.run_collect(params, run_dir)\nsummary",
        ),
        (
            "md",
            "With the embedded default model the numbers below say nothing about the method: "
            "it is a tiny model built locally so that every stage gets real data.",
        ),
        (
            "code",
            "import pandas as pd\nfrom sdlib.resumable import read_committed\n"
            "initial = read_committed(run_dir / 'collect' / 'initial.jsonl')\n"
            "pd.Series([r['verdict']['status'] for r in initial]).value_counts().rename('initial solutions')",
        ),
        (
            "code",
            "examples = [r for r in initial if r['verdict']['status'] != 'pass'][:2]\n"
            "for r in examples:\n    print(r['id'], r['verdict']['status'])\n    print(r['code'])\n    print('--- feedback:', r['feedback'])\n    print()",
        ),
    ],
)

write_notebook(
    HERE / "02_filter.ipynb",
    "filter",
    "# 02 · Filter: keep execution-verified trajectories\n\n"
    "Method §2: every refinement is executed against all tests; only refinements that pass "
    "all of them are kept, and an explanation counts as correct iff its refinement is. The SFT "
    "set is correct initial solutions + correct refinements (both instruction types); the RL "
    "set is everything, success and failure.",
    [
        (
            "code",
            "from sdlib import pipeline, trajectories, plots\n"
            "result = pipeline.run_filter(params, run_dir)\ntable = result['table']",
        ),
        ("md", "## Dataset table (method §1's shape)"),
        (
            "code",
            "import pandas as pd\n"
            "pd.DataFrame([{k: table[k] for k in ('source', 'problems', 'unique', 'correct', 'wrong', 'correct_refinements', 'rate')}])",
        ),
        (
            "code",
            "print('SFT records by source:', table['sft_by_source'])\n"
            "print('RL records:', table['rl_records'])\n"
            "print(f\"filtering: {table['records_per_second']} refinements/s\")",
        ),
        ("md", "## Outcomes, feedback kinds, refinement success by instruction type"),
        (
            "code",
            "fig = plots.filter_overview(\n"
            "    trajectories.outcome_counts(result['initial']),\n"
            "    trajectories.feedback_kinds(result['initial']),\n"
            "    trajectories.success_by_mode(result['judged']),\n"
            "    save=run_dir / 'filter' / 'overview.png',\n)",
        ),
    ],
)
write_notebook(
    HERE / "03_sft.ipynb",
    "sft",
    "# 03 · SFT on execution-verified trajectories\n\n"
    "Method §3: fine-tune on the filter stage's SFT set, which mixes plain code generation "
    "(correct initial solutions) with correct **Refine** and **Expl.+Refine** trajectories. "
    "Each chat is split into a prompt (task, the wrong solution as the assistant's first "
    "answer, the feedback turn) and a completion (the final answer); with TRL's "
    "`completion_only_loss` the loss falls only on the final answer, never on the wrong "
    "solution in the history. LoRA by default (`sft.method: lora`), or `full`, or `qlora` "
    "(CUDA only). Held-out loss is measured before and after training.",
    [
        ("code", "from sdlib import sft\nsummary = sft.run_sft(params, run_dir)\nsummary"),
        (
            "md",
            "With the embedded default model the numbers below say nothing about the method: "
            "it is a tiny model built locally so that every stage gets real data.",
        ),
        ("md", "## What the model is trained on (one refinement record: prompt | completion)"),
        (
            "code",
            "records = sft.load_sft_records(run_dir)\n"
            "example = next((r for r in records if r['source'] != 'initial'), records[0])\n"
            "prompt, completion = sft.prompts.split_chat_for_training(example['messages'], example['final_answer'])\n"
            "print(prompt)\nprint('=' * 30, 'loss only below this line', '=' * 30)\nprint(completion)",
        ),
        ("md", "## Loss"),
        (
            "code",
            "import json\nfrom IPython.display import Image\n"
            "metrics = json.loads((run_dir / 'sft' / 'metrics.json').read_text())\n"
            "print('records:', metrics['records'])\n"
            "print(f\"held-out loss: {metrics['eval_loss_before']} -> {metrics['eval_loss_after']}\")\n"
            "print(metrics.get('warmup_note', f\"warm-up steps: {metrics['warmup_steps']}\"))\n"
            "Image(filename=str(run_dir / 'sft' / 'loss.png'))",
        ),
    ],
)

write_notebook(
    HERE / "04_rl.ipynb",
    "rl",
    "# 04 · RL: PPO with per-token rewards\n\n"
    "Method §4: the policy (the SFT adapter when there is one, else a fresh LoRA adapter on the "
    "base model) samples a refinement for each wrong solution of the RL set; the code is "
    "executed in the sandbox (S_ut) and compared with the correct refinements of the same wrong "
    "solution (CodeBLEU, S_cb); the explanation with their explanations (embeddings, S_ex). "
    "R_expl goes on the last explanation token, R_code on the final token, a KL penalty to the "
    "adapter-free reference on every token. `rl.algorithm: grpo | rloo` runs trl's trainers with "
    "R_code + R_expl as one sequence-level reward, for comparison.",
    [
        (
            "code",
            "from sdlib import rl\nsummary = rl.run_rl(params, run_dir)\n"
            "{k: v for k, v in summary.items() if k not in ('reward_config', 'ppo_config')}",
        ),
        ("md", "With the embedded default model the numbers below say nothing about the method."),
        ("md", "## Reward, pass rate and KL per step"),
        (
            "code",
            "import pandas as pd\n"
            "metrics = pd.DataFrame(rl.read_metrics(run_dir)).drop(columns=['ppo', 'trl'], errors='ignore')\n"
            "metrics[[c for c in ('step', 'reward_mean', 'r_code_mean', 'r_expl_mean', 'pass_rate', "
            "'no_code_rate', 'kl', 'policy_loss', 'value_loss', 'loss') if c in metrics]]",
        ),
        ("code", "fig = rl.plot_rewards(rl.read_metrics(run_dir))"),
        (
            "md",
            "## Where a step's time goes\n\n`reward_share` = (execution + CodeBLEU + embeddings) / "
            "whole step; step 0 includes loading the embedding model and CodeBLEU's parser.",
        ),
        (
            "code",
            "metrics[['step', *[c for c in metrics if c.startswith('seconds_')], 'reward_share']]",
        ),
        ("md", "## Samples"),
        (
            "code",
            "samples = pd.read_json(run_dir / 'rl' / 'samples.jsonl', lines=True)\n"
            "samples.groupby('mode')[['r_code', 'r_expl', 's_ut', 's_cb', 's_ex']].mean()",
        ),
        (
            "code",
            "for _, s in samples[samples['mode'] == 'expl_refine'].tail(2).iterrows():\n"
            "    print(f\"--- {s['prompt']} ({s['status']}, R_code {s['r_code']:.2f}, R_expl {s['r_expl']})\")\n"
            "    print(s['response'][:800])\n    print()",
        ),
    ],
)

print("notebooks written")
