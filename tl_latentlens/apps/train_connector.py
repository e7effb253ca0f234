"""``tl-latentlens train-connector``: train the embedded default VLM's connector on CPU.

The arguments and the pipeline live in :mod:`tl_latentlens.training.pipeline`; this module
registers them and checks the numbers before anything loads. ``--export`` needs a directory
(``--export package`` overwrites the weights inside the installed package, deliberately).
"""

from __future__ import annotations

import argparse
from typing import Any

from tl_latentlens.apps._args import check_positive, check_writable_dir
from tl_latentlens.training.pipeline import add_arguments, run_from_args

__all__ = ["add_parser", "run", "validate"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train-connector`` (sets ``func`` and ``validate``)."""
    p = subparsers.add_parser(
        "train-connector",
        help="train the default VLM's connector (SmolLM2-135M + EfficientNet-Lite0) on CPU",
        description="Train the connector of the embedded default VLM on Tux Paint stamp captions.",
    )
    add_arguments(p)
    p.set_defaults(func=run, validate=validate)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``train-connector`` from parsed arguments; returns an exit code."""
    return run_from_args(args)


def validate(args: argparse.Namespace) -> None:
    """Check numbers and the export directory before anything loads.

    Raises:
        UsageError: A bad number, or an export path under a file.
    """
    check_positive(args.steps, "--steps")
    check_positive(args.batch_size, "--batch-size")
    if args.export is not None and args.export != "package":
        check_writable_dir(args.export, "--export")
