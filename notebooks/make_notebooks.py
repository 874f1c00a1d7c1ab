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
        ("code", "from sdlib import pipeline\nsummary = pipeline.run_collect(params, run_dir)\nsummary"),
        ("md", "With the embedded default model the numbers below say nothing about the method: "
               "it is a tiny model built locally so that every stage gets real data."),
        ("code", "import pandas as pd\nfrom sdlib.resumable import read_committed\n"
                 "initial = read_committed(run_dir / 'collect' / 'initial.jsonl')\n"
                 "pd.Series([r['verdict']['status'] for r in initial]).value_counts().rename('initial solutions')"),
        ("code", "examples = [r for r in initial if r['verdict']['status'] != 'pass'][:2]\n"
                 "for r in examples:\n    print(r['id'], r['verdict']['status'])\n    print(r['code'])\n    print('--- feedback:', r['feedback'])\n    print()"),
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
        ("code", "from sdlib import pipeline, trajectories, plots\n"
                 "result = pipeline.run_filter(params, run_dir)\ntable = result['table']"),
        ("md", "## Dataset table (method §1's shape)"),
        ("code", "import pandas as pd\n"
                 "pd.DataFrame([{k: table[k] for k in ('source', 'problems', 'unique', 'correct', 'wrong', 'correct_refinements', 'rate')}])"),
        ("code", "print('SFT records by source:', table['sft_by_source'])\n"
                 "print('RL records:', table['rl_records'])\n"
                 "print(f\"filtering: {table['records_per_second']} refinements/s\")"),
        ("md", "## Outcomes, feedback kinds, refinement success by instruction type"),
        ("code", "fig = plots.filter_overview(\n"
                 "    trajectories.outcome_counts(result['initial']),\n"
                 "    trajectories.feedback_kinds(result['initial']),\n"
                 "    trajectories.success_by_mode(result['judged']),\n"
                 "    save=run_dir / 'filter' / 'overview.png',\n)"),
    ],
)
print("notebooks written")
