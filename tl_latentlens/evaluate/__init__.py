"""The paper's per-layer interpretability study, reproducible with one command.

Sample visual tokens, run LatentLens, LogitLens and EmbeddingLens at every chosen layer, ask a
judge whether each lens's top-k words describe the patch, and aggregate per layer.

* Judges: :class:`MaskJudge` (ground truth from annotation masks + WordNet, deterministic,
  offline) and :class:`LLMJudge` (a chat model behind an OpenAI-compatible endpoint).
* :func:`run_study` runs everything and writes the outputs; :func:`aggregate` recomputes the
  table from the raw judgements.
* ``tl-latentlens evaluate`` (:mod:`tl_latentlens.apps.evaluate`) is the command line.

Example:
    >>> from tl_latentlens.evaluate import EvalConfig, MaskJudge, load_images, run_study
    >>> result = run_study(lens, load_images(["default"]), MaskJudge(), EvalConfig(), "study")
    >>> result.table
"""

from tl_latentlens.evaluate.config import EvalConfig
from tl_latentlens.evaluate.default_set import load_images
from tl_latentlens.evaluate.hubness import hubness
from tl_latentlens.evaluate.images import EvalImage
from tl_latentlens.evaluate.judges import KINDS, Judge, JudgeCase, MaskJudge, Verdict
from tl_latentlens.evaluate.llm_judge import LLMJudge, LLMJudgeConfig
from tl_latentlens.evaluate.matching import LabelMatcher, MatchRule
from tl_latentlens.evaluate.records import JudgementLog, aggregate
from tl_latentlens.evaluate.report import format_chance, format_table
from tl_latentlens.evaluate.sampling import SamplePlan, sample_plan
from tl_latentlens.evaluate.study import StudyResult, run_study
from tl_latentlens.wordnet import WordNet

__all__ = [
    "KINDS",
    "EvalConfig",
    "EvalImage",
    "Judge",
    "JudgeCase",
    "JudgementLog",
    "LLMJudge",
    "LLMJudgeConfig",
    "LabelMatcher",
    "MaskJudge",
    "MatchRule",
    "SamplePlan",
    "StudyResult",
    "Verdict",
    "WordNet",
    "aggregate",
    "format_chance",
    "format_table",
    "hubness",
    "load_images",
    "run_study",
    "sample_plan",
]
