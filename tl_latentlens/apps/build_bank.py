"""``tl-latentlens build-bank``: build a contextual text bank from a corpus.

The arguments and the build live in :mod:`tl_latentlens.bank.cli`; this module registers
them and checks the files before the model loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tl_latentlens.apps._args import UsageError, check_model, check_positive, check_writable_dir
from tl_latentlens.bank.cli import add_build_bank_parser

__all__ = ["add_parser", "validate"]

_FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``build-bank`` (sets ``func`` and ``validate``)."""
    p = add_build_bank_parser(subparsers)
    p.set_defaults(validate=validate)
    return p


def validate(args: argparse.Namespace) -> None:
    """Check the corpus, model and output before the model loads.

    A corpus written as a file name (``.txt``, ``.jsonl``, ``.csv`` ...) or a local path must
    exist; other names are hub datasets, left to the loader.

    Raises:
        UsageError: A missing corpus file or model directory, a bad number.
    """
    corpus = Path(args.corpus).expanduser()
    looks_local = args.corpus.startswith((".", "/", "~")) or corpus.suffix in _FILE_SUFFIXES
    if looks_local and not corpus.exists():
        raise UsageError(f"corpus {args.corpus!r} does not exist")
    check_model(args.model)
    check_positive(args.batch_size, "--batch-size")
    for layer in args.layers or ():
        if layer < 0:
            raise UsageError(f"--layers must be >= 0, got {layer}")
    check_writable_dir(args.out, "out")
