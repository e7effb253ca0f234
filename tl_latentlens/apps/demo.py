"""``tl-latentlens demo``: LatentLens on the embedded default VLM, offline.

The arguments and the run live in :mod:`tl_latentlens.default.demo`; this module registers
them and checks the files before the model loads.
"""

from __future__ import annotations

import argparse
from typing import Any

from tl_latentlens.apps._args import check_bank, check_files, check_model, check_positive
from tl_latentlens.default.demo import add_demo_parser

__all__ = ["add_parser", "validate"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo`` (sets ``func`` and ``validate``)."""
    p = add_demo_parser(subparsers)
    p.set_defaults(validate=validate)
    return p


def validate(args: argparse.Namespace) -> None:
    """Check images, bank, model and numbers before the model loads.

    Raises:
        UsageError: A missing file or a bad number.
    """
    check_model(args.model)
    check_bank(args.bank)
    check_files(args.images, "image")
    check_positive(args.k, "-k")
