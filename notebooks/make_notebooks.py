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

write_notebook(
    HERE / "05_eval.ipynb",
    "eval",
    "# 05 · Evaluate: pass@k with self-refinement\n\n"
    "Method §5: each model (`eval.models`: the base model, the SFT and RL outputs of this run, "
    "the teacher, or any Hugging Face model or OpenAI-compatible endpoint) draws "
    "`eval.samples_per_task` samples per task at `eval.temperature` on MBPP (test split), "
    "HumanEval, MBPP+ and HumanEval+. Every failing sample then gets one more model call per "
    "round in each setting: **Refine**, **Expl.+Refine** (iterative, up to `eval.rounds` "
    "rounds), and **Resample**, a fresh sample: the baseline with the same number of model "
    "calls. pass@k uses the unbiased estimator with each failed sample replaced by its "
    "refinement. Generation and execution overlap; a killed eval resumes where it stopped.",
    [
        (
            "code",
            "from sdlib import refinement_eval, eval_report, plots\n"
            "summary = refinement_eval.run_eval(params, run_dir)\n"
            "summary['pipeline']['total']",
        ),
        (
            "md",
            "With the embedded default model the numbers below say nothing about the method: "
            "the tiny model is trained on 24 training problems and solves no evaluation task.",
        ),
        ("md", "## pass@1 / pass@10 in the shape of the paper's Table 2"),
        (
            "code",
            "from IPython.display import Markdown, Image\n"
            "Markdown(eval_report.table2_markdown(summary))",
        ),
        ("md", "## Success refinement rate (share of wrong samples fixed in round 1)"),
        ("code", "Markdown(eval_report.refinement_rate_markdown(summary))"),
        ("md", "## pass@1 by round: refinement against resampling with the same calls"),
        ("code", "Image(filename=str(run_dir / 'eval' / 'pass_by_round.png'))"),
        ("code", "Image(filename=str(run_dir / 'eval' / 'refinement_rate.png'))"),
        (
            "md",
            "## Where the time went\n\nPer model: seconds of generation (main thread) and of "
            "execution (the sandbox's worker thread), and how much of the execution ran while "
            "the model was generating (`execution_hidden_s`): the pipeline's gain over running "
            "them one after the other.",
        ),
        (
            "code",
            "import pandas as pd\n"
            "pd.DataFrame({m: {k: v for k, v in t.items() if k != 'benchmarks'}\n"
            "              for m, t in summary['pipeline']['per_model'].items()}).T",
        ),
        ("md", "## One refinement chain"),
        (
            "code",
            "first = summary['models'][0]\n"
            "initial, later = refinement_eval.load_rounds(run_dir / 'eval' / first / params.eval.benchmarks[0], params.eval.rounds)\n"
            "chain = [r for records in later for r in records if r['mode'] == 'expl_refine'][:1]\n"
            "for r in chain:\n"
            "    print(r['prompt'][-1200:])\n    print('---- response ----')\n    print(r['response'][:800])\n"
            "    print('---- verdict:', r['verdict']['status'])",
        ),
        (
            "code",
            "print('summary:', run_dir / 'eval' / 'summary.json')\n"
            "print('table:  ', run_dir / 'eval' / 'table.md')\n"
            "print('plots:  ', run_dir / 'eval' / 'pass_by_round.png', run_dir / 'eval' / 'refinement_rate.png')",
        ),
    ],
)

write_notebook(
    HERE / "06_human_study.ipynb",
    "human_study",
    "# 06 · Human study of explanations\n\n"
    "Method §6: K problems with a wrong initial solution (from the eval outputs of one source "
    "model); every study model explains that same wrong solution (Expl.+Refine prompt). Raters "
    "score each explanation 1–5 for correctness and helpfulness without knowing which model "
    "wrote it; every explanation gets two raters. Preparing is idempotent: a re-run reuses "
    "what exists and never changes items or assignments once they are written. Run headlessly, "
    "this notebook prepares the study and summarises whatever ratings exist.",
    [
        (
            "code",
            "from sdlib import human_study, rating_ui\n"
            "summary = human_study.prepare_study(params, run_dir)\nsummary",
        ),
        (
            "md",
            "## Rate\n\nEach rater opens their own page — Voilà: `voila notebooks/rate.ipynb` then "
            "`http://localhost:8866/?run=<run>&rater=<name>` — or sets `rater` below and runs "
            "the cell here. Every rating is on disk (fsynced) the moment it is given; reopening "
            "resumes where the rater stopped.",
        ),
        (
            "code",
            "rater = None  # e.g. 'rater1'\n"
            "study = human_study.study_dir(run_dir)\n"
            "rating_ui.RatingApp(study, rater).view if rater else print(f'raters: {summary[\"raters\"]}')",
        ),
        ("md", "## Results: mean score per model (95% bootstrap CI) and agreement"),
        (
            "code",
            "import pandas as pd\n"
            "rows = human_study.rating_table(study)\nres = human_study.results(study, rows)\n"
            "print(f\"{res['ratings']} ratings\")\n"
            "pd.DataFrame(res['per_model'])",
        ),
        (
            "code",
            "res['agreement']  # Krippendorff's alpha over all items; weighted kappa per rater pair",
        ),
        (
            "code",
            "if res['per_model']:\n"
            "    fig = human_study.plot_results(res, save=study / 'scores.png')\n"
            "else:\n    print('no ratings yet')",
        ),
        (
            "md",
            "## Optional: an LLM judge with the same rubric\n\nSet `human_study.judge` in the "
            "params to a model spec (e.g. `kind: openai`, `base_url`, `model`); its scores are "
            "stored as the rater `judge` and compared with the humans.",
        ),
        (
            "code",
            "if params.human_study.judge is not None:\n"
            "    from sdlib import judge\n"
            "    print(judge.run_judge(params, run_dir))\n"
            "    print(judge.agreement_with_humans(study))\n"
            "else:\n    print('no judge configured (human_study.judge)')",
        ),
    ],
)

write_notebook(
    HERE / "07_explore_trajectories.ipynb",
    "explore",
    "# 07 · Explore trajectories\n\n"
    "Every record of the run — collection (initial solutions, teacher refinements with the "
    "filter stage's verdicts) and evaluation (initial samples and refinement rounds per model "
    "and benchmark) — filtered by problem, status, instruction type, round and model. A "
    "refinement shows the wrong code it started from and the refined code side by side, the "
    "feedback the model was shown, its explanation, and the file and line it came from.",
    [
        (
            "code",
            "import pandas as pd\nfrom sdlib import explorer\n"
            "rows = explorer.load_trajectories(run_dir)\n"
            "frame = pd.DataFrame(rows)\n"
            "pd.crosstab([frame['source'], frame['mode']], frame['status']) if rows else 'no records yet'",
        ),
        ("code", "explorer.TrajectoryExplorer(rows).view"),
    ],
)

from sdlib.rating_ui import write_rate_notebook  # noqa: E402

write_rate_notebook(HERE / "rate.ipynb")

print("notebooks written")
