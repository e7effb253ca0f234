"""``tl-latentlens train-connector``: train the embedded default VLM's connector on CPU.

The arguments and the pipeline live in :mod:`tl_latentlens.default.pipeline`; this module
registers them and checks the numbers before anything loads. ``--export`` needs a directory
(``--export package`` overwrites the weights inside the installed package, deliberately).
"""

from __future__ import annotations

import argparse
from typing import Any

from tl_latentlens.apps._args import check_positive, check_writable_dir
from tl_latentlens.default.train import add_train_parser

__all__ = ["add_parser", "validate"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train-connector`` (sets ``func`` and ``validate``)."""
    p = add_train_parser(subparsers)
    p.set_defaults(validate=validate)
    return p


def validate(args: argparse.Namespace) -> None:
    """Check numbers and the export directory before anything loads.

    Raises:
        UsageError: A bad number, or an export path under a file.
    """
    check_positive(args.steps, "--steps")
    check_positive(args.batch_size, "--batch-size")
    if args.export is not None and args.export != "package":
        check_writable_dir(args.export, "--export")
