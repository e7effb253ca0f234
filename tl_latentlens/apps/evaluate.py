"""``tl-latentlens evaluate``: the per-layer interpretability study.

The arguments and the study live in :mod:`tl_latentlens.evaluate.cli`; this module registers
them and checks files and the judge's settings before the model loads.
"""

from __future__ import annotations

import argparse
from typing import Any

from tl_latentlens.apps._args import (
    UsageError,
    check_bank,
    check_files,
    check_model,
    check_positive,
    check_writable_dir,
)
from tl_latentlens.evaluate.chat_client import require_openai
from tl_latentlens.evaluate.cli import add_evaluate_parser
from tl_latentlens.evaluate.llm_judge import LLMJudgeConfig

__all__ = ["add_parser", "validate"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evaluate`` (sets ``func`` and ``validate``)."""
    p = add_evaluate_parser(subparsers)
    p.set_defaults(validate=validate)
    return p


def validate(args: argparse.Namespace) -> None:
    """Check images, bank, model, numbers and the LLM judge's settings before the model loads.

    Raises:
        UsageError: A missing file, a bad number, an LLM judge without a model name.
        ImportError: ``--judge llm`` without the ``llm`` extra (names the pip command).
    """
    check_writable_dir(args.out, "--out")
    if args.aggregate_only:
        return
    if not args.model or not args.bank:
        raise UsageError("--model and --bank are required (unless --aggregate-only)")
    check_model(args.model)
    check_bank(args.bank)
    check_files(args.images, "images", allow=("default",))
    check_positive(args.k, "-k")
    check_positive(args.patches_per_layer, "--patches-per-layer")
    check_positive(args.judge_workers, "--judge-workers")
    if args.judge == "llm":
        vision = {"auto": None, "yes": True, "no": False}[args.judge_vision]
        LLMJudgeConfig.from_env(base_url=args.judge_url, model=args.judge_model, vision=vision)
        require_openai()
