"""A judge model behind an OpenAI-compatible chat endpoint (paper-style prompt).

With ``vision=True`` the judge sees the image with a red box around the 3x3 block of patches
centred on the target patch, a close-up crop of that block, and the top-k candidate words. With
``vision=False`` (text-only endpoints) it gets a textual description instead: the caption if one
is known, the block's position on the grid, and the annotated labels if known. It answers with
one JSON object (see :mod:`tl_latentlens.evaluate.answers`); an unreadable answer is asked
again (``answer_attempts``), then recorded as an ``error`` verdict.

The requests go through the ``openai`` client (the optional extra ``llm``:
``pip install "tl_latentlens[llm]"``; see :mod:`tl_latentlens.evaluate.chat_client`).
Configuration comes from arguments or the environment:

* ``TL_LATENTLENS_JUDGE_BASE_URL``, else ``OPENAI_BASE_URL``: endpoint root, e.g.
  ``http://127.0.0.1:8000/v1`` (neither: OpenAI's own endpoint);
* ``TL_LATENTLENS_JUDGE_MODEL``: model name (required);
* ``TL_LATENTLENS_JUDGE_API_KEY``, else ``OPENAI_API_KEY``: bearer token (optional; never
  written to reports);
* ``TL_LATENTLENS_JUDGE_VISION``: ``0`` for a text-only endpoint (default ``1``).

Example:
    >>> judge = LLMJudge(LLMJudgeConfig.from_env())
    >>> judge.judge(case).kind
    'concrete'
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tl_latentlens.evaluate.answers import MalformedAnswer, parse_answer
from tl_latentlens.evaluate.chat_client import ChatClient, ChatError, RetryPolicy
from tl_latentlens.evaluate.judges import JudgeCase, Verdict
from tl_latentlens.evaluate.marking import (
    block_box,
    crop_box,
    data_url,
    describe_position,
    fit,
    mark_box,
)
from tl_latentlens.wordnet import display_label

__all__ = ["ENV_PREFIX", "LLMJudge", "LLMJudgeConfig", "build_messages"]

logger = logging.getLogger(__name__)

ENV_PREFIX = "TL_LATENTLENS_JUDGE_"

SYSTEM = (
    "You are a careful annotator. You decide whether words proposed by an interpretability "
    "method describe a region of an image. You answer with a single JSON object."
)

INSTRUCTIONS = """Candidate words for this region, best first:
{numbered}

Does at least one candidate describe the region? A candidate counts as
- "concrete": it names an object, part, material or other visible thing in the region;
- "abstract": it names a closely related concept, or an attribute of the region (colour, texture, shape, action);
- "global": it does not fit the region itself but describes something elsewhere in the image.
Unrelated words, function words and word fragments do not count.

Answer with one JSON object and nothing else, for example
{{"interpretable": "yes", "candidates": [2], "kind": "concrete"}}
where "candidates" lists the numbers of all candidates that count and "kind" is the kind of the best one.
If none counts, answer {{"interpretable": "no", "candidates": [], "kind": "none"}}."""


@dataclass(frozen=True)
class LLMJudgeConfig:
    """Settings of :class:`LLMJudge`.

    Attributes:
        base_url: Endpoint root (``.../v1``; ``None``: ``OPENAI_BASE_URL``, else OpenAI's).
        model: Model name.
        api_key: Bearer token (not recorded in reports).
        vision: Send images (``image_url`` parts); ``False``: a textual description.
        timeout_s: Socket timeout per HTTP attempt.
        retry: Transport/HTTP retry policy.
        answer_attempts: Times to ask when the answer is unreadable.
        temperature: Sampling temperature of the first ask.
        retry_temperature: Temperature of re-asks after an unreadable answer.
        max_tokens: Answer length limit.
        block: Side of the boxed patch block (3: the paper's 3x3).
        image_px: Longest side of the full image sent.
        crop_px: Longest side of the crop sent.
    """

    base_url: str | None
    model: str
    api_key: str | None = field(default=None, repr=False)
    vision: bool = True
    timeout_s: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    answer_attempts: int = 3
    temperature: float = 0.0
    retry_temperature: float = 0.7
    max_tokens: int = 120
    block: int = 3
    image_px: int = 512
    crop_px: int = 224

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("the LLM judge needs a model name")
        if self.answer_attempts < 1:
            raise ValueError(f"answer_attempts must be >= 1, got {self.answer_attempts}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> LLMJudgeConfig:
        """Read ``TL_LATENTLENS_JUDGE_*`` and ``OPENAI_*`` (module docstring); ``overrides`` win.

        Raises:
            ValueError: No model name.
        """
        env = os.environ if env is None else env
        kw: dict[str, Any] = {
            "base_url": env.get(ENV_PREFIX + "BASE_URL") or env.get("OPENAI_BASE_URL") or None,
            "model": env.get(ENV_PREFIX + "MODEL"),
            "api_key": env.get(ENV_PREFIX + "API_KEY") or env.get("OPENAI_API_KEY") or None,
        }
        if ENV_PREFIX + "VISION" in env:
            kw["vision"] = env[ENV_PREFIX + "VISION"].strip().lower() not in ("0", "false", "no")
        kw.update({k: v for k, v in overrides.items() if v is not None})
        if not kw.get("model"):
            raise ValueError(
                f"LLM judge: set {ENV_PREFIX}MODEL (or pass model / --judge-model); the "
                f"endpoint is {ENV_PREFIX}BASE_URL or OPENAI_BASE_URL (default: OpenAI's)"
            )
        return cls(**kw)

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings without the API key."""
        d = asdict(self)
        d.pop("api_key")
        d["api_key_set"] = bool(self.api_key)
        return d


def build_messages(case: JudgeCase, cfg: LLMJudgeConfig) -> list[dict[str, Any]]:
    """The chat messages for one case (images as base64 ``image_url`` parts when ``vision``)."""
    numbered = "\n".join(f"{i + 1}. {c.strip() or repr(c)}" for i, c in enumerate(case.candidates))
    question = INSTRUCTIONS.format(numbered=numbered)
    rows, cols = case.grid
    where = describe_position(case.grid, case.row, case.col)
    if cfg.vision:
        if case.image is None:
            raise ValueError("a vision judge needs the image")
        image = fit(case.image, cfg.image_px)
        box = block_box(image.size, case.grid, case.row, case.col, cfg.block)
        intro = (
            "The first picture shows an image with a red box around a region "
            f"(the {where} of the image). The second picture is a close-up of that region."
        )
        content: list[dict[str, Any]] = [
            {"type": "text", "text": intro},
            {"type": "image_url", "image_url": {"url": data_url(mark_box(image, box))}},
            {
                "type": "image_url",
                "image_url": {"url": data_url(crop_box(image, box, cfg.crop_px))},
            },
            {"type": "text", "text": question},
        ]
        user: Any = content
    else:
        lines = ["The image itself cannot be shown; here is what is known about it."]
        if case.caption:
            lines.append(f"Caption: {case.caption}")
        if case.image_labels:
            names = dict.fromkeys(display_label(lab) for lab in case.image_labels)
            lines.append("Objects annotated in the image: " + ", ".join(names))
        lines.append(
            f"The image is divided into a grid of {rows} x {cols} patches. The region is the "
            f"block of up to {cfg.block} x {cfg.block} patches around row {case.row + 1}, "
            f"column {case.col + 1} (the {where} of the image)."
        )
        if case.label:
            lines.append(f"Annotated content of the region: {display_label(case.label)}.")
        user = "\n".join(lines) + "\n\n" + question
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


class LLMJudge:
    """Judge with a chat model (see the module docstring).

    Args:
        config: The settings.
        client: A :class:`ChatClient` to use instead of one built from ``config``.

    Raises:
        MissingExtraError: ``openai`` (the extra ``llm``) is not installed.
    """

    name = "llm"
    needs_labels = False

    def __init__(self, config: LLMJudgeConfig, client: ChatClient | None = None) -> None:
        self.config = config
        self.client = client or ChatClient(
            config.base_url,
            config.model,
            api_key=config.api_key,
            timeout_s=config.timeout_s,
            retry=config.retry,
        )

    def describe(self) -> dict[str, Any]:
        """Name and settings (no API key)."""
        return {"name": self.name, **self.config.describe()}

    def with_config(self, **changes: Any) -> LLMJudge:
        """A copy with some settings changed (a new client)."""
        return LLMJudge(replace(self.config, **changes))

    def judge(self, case: JudgeCase) -> Verdict:
        """Ask the model; re-ask on unreadable answers; errors become ``error`` verdicts."""
        if not case.candidates:
            return Verdict.failed("no candidates to judge")
        try:
            messages = build_messages(case, self.config)
        except ValueError as e:
            return Verdict.failed(str(e))
        raw, problem = "", ""
        for attempt in range(self.config.answer_attempts):
            temp = self.config.temperature if attempt == 0 else self.config.retry_temperature
            try:
                raw = self.client.chat(
                    messages, max_tokens=self.config.max_tokens, temperature=temp
                )
            except ChatError as e:
                logger.warning("judge request failed for %s: %s", case.image_id, e)
                return Verdict.failed(f"request failed: {e}", raw=raw)
            try:
                return parse_answer(raw, case.candidates)
            except MalformedAnswer as e:
                problem = str(e)
                logger.info("unreadable judge answer (attempt %d): %s", attempt + 1, problem)
        return Verdict.failed(
            f"unreadable answer after {self.config.answer_attempts} attempts: {problem}", raw=raw
        )
