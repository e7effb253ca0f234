"""The default bank: a contextual bank of the default corpus for a model, cached, built on first
use (what :meth:`tl_latentlens.LatentLens.default` and the demo open).

The default corpus (:mod:`tl_latentlens.default.bank_corpus`: Tux Paint captions, visual
phrases, WordNet example sentences and glosses) needs no download. The bank's directory name
carries the model's fingerprint, the corpus version and size, so another model or size gets its
own bank; an interrupted build resumes.

Example:
    >>> from tl_latentlens import load_default_vlm
    >>> bank = default_bank(load_default_vlm())
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tl_latentlens.bank import FORMAT_VERSION, Bank, build_bank
from tl_latentlens.bank.search.calibrate import CALIBRATION_POLICY
from tl_latentlens.default.assets import cache_dir
from tl_latentlens.default.bank_corpus import CORPUS_VERSION, default_corpus
from tl_latentlens.devices import PrecisionChoice, fast_dtype
from tl_latentlens.models.base import VLM

__all__ = [
    "CALIBRATE_FROM",
    "DEFAULT_PER_TOKEN",
    "DEFAULT_SENTENCES",
    "Calibrator",
    "bank_precision",
    "default_bank",
    "default_bank_dir",
    "default_encoder",
]

logger = logging.getLogger(__name__)

#: Default-corpus sentences of the default bank.
DEFAULT_SENTENCES = 12_000
#: Stored contexts per token type in the default bank.
DEFAULT_PER_TOKEN = 20

#: Default banks of at least this many sentences get routes; smaller ones are searched exactly.
#: At the default size routes do not pay for the committed connector (its visual tokens are
#: spread out, so most image queries would fall back to exact search) and calibrating would
#: cost most of a first run: ``benchmarks/bench_explain.py`` and
#: ``benchmarks/bench_calibration.py``, tables in ``benchmarks/README.md``.
CALIBRATE_FROM = 50_000

#: Gives a default bank routes: ``(bank, vlm, bank_sentences) -> None`` (the demo's
#: ``calibrate_default_bank`` proves them on images and text the bank was not calibrated on).
Calibrator = Callable[[Bank, VLM, int], None]


def default_bank_dir(
    vlm: VLM, max_sentences: int = DEFAULT_SENTENCES, max_per_token: int = DEFAULT_PER_TOKEN
) -> Path:
    """Where :func:`default_bank` keeps the default corpus bank of ``vlm`` (in the cache)."""
    fp = vlm.fingerprint()
    name = (
        f"default-{CORPUS_VERSION}-v{FORMAT_VERSION}-{fp['embedding_sha256']}-"
        f"{fp['weight_processing']}-{max_sentences}-{max_per_token}"
    )
    return cache_dir() / "banks" / name


def bank_precision(vlm: VLM, requested: str | None = None) -> PrecisionChoice:
    """The dtype of a bank build's forward passes: ``requested`` or what
    :func:`~tl_latentlens.devices.fast_dtype` measures as fastest on the model's device (a
    cached probe: bfloat16 only where this machine runs it faster than float32). Logged with
    its reason."""
    choice = PrecisionChoice(requested, "requested") if requested else fast_dtype(vlm.device)
    logger.info("bank forward passes: %s (%s)", choice.dtype_name, choice.reason)
    return choice


def default_bank(
    vlm: VLM,
    max_sentences: int | None = None,
    max_per_token: int = DEFAULT_PER_TOKEN,
    encoder: Callable[[], VLM] | None = None,
    *,
    calibrate: Calibrator | None = None,
    progress: bool = True,
) -> Bank:
    """The default corpus bank of ``vlm`` in the cache, built on first use.

    Args:
        vlm: The model the bank is for.
        max_sentences: Default-corpus sentences (``None``: :data:`DEFAULT_SENTENCES`, read
            when called).
        max_per_token: Stored contexts per token type.
        encoder: Makes the model that runs the build's forward passes (default: ``vlm``),
            called only when the bank must be built (e.g. a bfloat16 copy where
            :func:`bank_precision` finds bfloat16 faster; see :func:`default_encoder`).
        calibrate: Gives a bank of at least :data:`CALIBRATE_FROM` sentences routes when they
            are missing or were proven on another model's visual tokens. Without it such a
            bank is searched exactly.
        progress: Show progress bars while building.

    Returns:
        The opened bank.

    Example:
        >>> bank = default_bank(vlm)                       # 12,000 sentences, exact search
    """
    if max_sentences is None:
        max_sentences = DEFAULT_SENTENCES
    out = default_bank_dir(vlm, max_sentences, max_per_token)
    if (out / "manifest.json").is_file():
        bank = Bank.open(out, vlm)
    else:
        corpus = default_corpus(max_sentences)
        logger.info("building the default bank (%d sentences) at %s", len(corpus), out)
        builder = encoder() if encoder is not None else vlm
        bank = build_bank(
            builder, corpus, out, max_per_token=max_per_token, batch_size=32, progress=progress
        )
        if builder is not vlm:
            bank = Bank.open(out, vlm)  # the same weights (dtype-independent digests)
    if max_sentences < CALIBRATE_FROM or _routes_current(bank, vlm):
        return bank
    if calibrate is None:
        logger.info("default bank %s has no current routes: it is searched exactly", out.name)
        return bank
    calibrate(bank, vlm, max_sentences)
    return Bank.open(out, vlm)


def _routes_current(bank: Bank, vlm: VLM) -> bool:
    """Every hook has routes of the current calibration policy, proven on ``vlm``'s visual
    tokens (a new connector needs new routes)."""
    return all(
        r.get("policy", 1) >= CALIBRATION_POLICY
        and r.get("queries_from") == vlm.visual_fingerprint()
        for r in (bank.hook_info(h).get("routes") or {} for h in bank.hooks)
    )


def default_encoder(
    load: Callable[..., VLM], vlm: VLM, precision: PrecisionChoice | None
) -> Callable[[], VLM] | None:
    """A loader of the model in ``precision`` for a bank's forward passes (``load(device=,
    dtype=)``), or ``None`` where ``vlm`` already runs in it (then no second copy is loaded)."""
    if precision is None or precision.dtype == next(vlm.bridge.parameters()).dtype:
        return None
    return partial(load, device=vlm.device, dtype=precision.dtype)
