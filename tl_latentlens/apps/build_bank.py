"""``tl-latentlens build-bank``: build a contextual text bank from a corpus.

The arguments and the build live in :mod:`tl_latentlens.bank.cli`; this module registers
them, checks the files before the model loads and, under ``torchrun``, joins the ranks::

    torchrun --nproc_per_node=8 -m tl_latentlens build-bank --model M --device cuda corpus.txt out

Each rank loads the model on its own device (``--device cuda`` is ``cuda:<LOCAL_RANK>``) and
the build splits the encoding between the ranks (:mod:`tl_latentlens.bank.distributed`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tl_latentlens.apps._args import UsageError, check_model, check_positive, check_writable_dir
from tl_latentlens.bank import distributed
from tl_latentlens.bank.cli import add_build_bank_parser, run_build_bank

__all__ = ["add_parser", "run", "validate"]

_FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``build-bank`` (sets ``func`` and ``validate``)."""
    p = add_build_bank_parser(subparsers)
    p.set_defaults(validate=validate, func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the bank; under ``torchrun`` (``WORLD_SIZE`` > 1) as one rank of the build.

    Returns:
        The exit status (0).
    """
    ctx = distributed.init_from_env()
    try:
        if ctx is not None:
            args.device = distributed.rank_device(args.device, ctx)
            if args.device is not None and torch.device(args.device).type == "cuda":
                torch.cuda.set_device(torch.device(args.device))
            args.progress = args.progress and ctx.rank == 0  # one progress bar, not N
        return run_build_bank(args)
    finally:
        if ctx is not None and dist.is_initialized():
            dist.destroy_process_group()


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
