"""``tl-latentlens build-bank``: build a contextual text bank from a corpus.

This module holds the arguments, checks the files before the model loads, runs the build and,
under ``torchrun``, joins the ranks::

    torchrun --nproc_per_node=8 -m tl_latentlens build-bank --model M --device cuda corpus.txt out

Each rank loads the model on its own device (``--device cuda`` is ``cuda:<LOCAL_RANK>``) and
the build splits the encoding between the ranks (:mod:`tl_latentlens.bank.build.distributed`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tl_latentlens import hooks as hk
from tl_latentlens.apps._args import UsageError, check_model, check_positive, check_writable_dir
from tl_latentlens.bank.build import distributed
from tl_latentlens.bank.build.pipeline import build_bank
from tl_latentlens.bank.format.config import STORAGE_DTYPES, BankConfig
from tl_latentlens.devices import fast_dtype
from tl_latentlens.models.load import load_vlm

__all__ = ["add_build_bank_parser", "add_parser", "run", "run_build_bank", "validate"]

logger = logging.getLogger(__name__)

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


_DEFAULTS = BankConfig()


def _opt_int(text: str) -> int | None:
    """An int, or ``none``/``0`` for "no limit"."""
    if text.lower() in ("none", "0", "all"):
        return None
    return int(text)


def add_build_bank_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``build-bank`` sub-command to an ``argparse`` sub-parser group.

    Example:
        >>> parser = argparse.ArgumentParser(prog="tl-latentlens")
        >>> add_build_bank_parser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["build-bank", "--model", "m", "c.txt", "out"])
    """
    p = subparsers.add_parser(
        "build-bank",
        help="build a contextual text bank (nearest-neighbour targets) from a corpus",
        description="Run the model's language model over a corpus and store, per hook, the "
        "residuals of its tokens (deduplicated by prefix, capped per token id), searched exactly or by calibrated routes.",
    )
    p.add_argument(
        "corpus", help=".txt (one sentence per line), .jsonl/.csv, a saved or hub HF dataset"
    )
    p.add_argument("out", help="bank directory to create")
    p.add_argument(
        "--model", required=True, help="model to load (tl_latentlens.models.load.load_vlm)"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--hooks", nargs="+", help="residual hook names (default: the paper's spread)"
    )
    which.add_argument(
        "--layers", nargs="+", type=int, help="layers 0..n_layers instead of hook names"
    )
    p.add_argument(
        "--max-tokens",
        type=_opt_int,
        default=_DEFAULTS.max_tokens,
        help="truncate sentences (none: no limit)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"sentences per forward pass (default: {_DEFAULTS.batch_size} on a CPU, sized to "
        "the GPU's memory on one)",
    )
    p.add_argument(
        "--max-per-token",
        type=_opt_int,
        default=_DEFAULTS.max_per_token,
        help="cap per token id (none: no cap)",
    )
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    p.add_argument("--dtype", choices=sorted(STORAGE_DTYPES), default=_DEFAULTS.dtype)
    p.add_argument(
        "--pca-components",
        type=int,
        default=None,
        help="int8_pca: principal directions per hook (default: 64; 96 or 128 keep more)",
    )
    p.add_argument("--hnsw-m", dest="hnsw_M", type=int, default=_DEFAULTS.hnsw_M)
    p.add_argument("--ef-construction", type=int, default=_DEFAULTS.ef_construction)
    p.add_argument("--ef-search", type=int, default=_DEFAULTS.ef_search)
    p.add_argument("--text-column", default=_DEFAULTS.text_column)
    p.add_argument("--split", default=_DEFAULTS.split, help="split of a hub dataset")
    p.add_argument("--threads", type=int, default=None, help="hnswlib threads (default: all cores)")
    p.add_argument(
        "--no-resume", dest="resume", action="store_false", help="discard an interrupted build"
    )
    p.add_argument("--device", default=None, help="torch device for the forward passes (e.g. cuda)")
    p.add_argument(
        "--model-dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="dtype of the model's forward passes (auto: bfloat16 where this machine runs it "
        "faster than float32 -- a measured probe on CPUs, the GPU's capability on CUDA -- else "
        "float32; recorded in the manifest)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a different existing bank")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run_build_bank)
    return p


def run_build_bank(args: argparse.Namespace) -> int:
    """Execute ``build-bank``; returns the process exit code (0)."""
    import torch

    dtype = (
        fast_dtype(args.device).dtype
        if args.model_dtype == "auto"
        else getattr(torch, args.model_dtype)
    )
    vlm = load_vlm(args.model, device=args.device, dtype=dtype)
    hooks = args.hooks
    if args.layers:
        hooks = [hk.hook_for_layer(layer, vlm.n_layers) for layer in args.layers]
    bank = build_bank(
        vlm,
        args.corpus,
        args.out,
        hooks,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        max_per_token=args.max_per_token,
        seed=args.seed,
        dtype=args.dtype,
        pca_components=args.pca_components,
        hnsw_M=args.hnsw_M,
        ef_construction=args.ef_construction,
        resume=args.resume,
        overwrite=args.overwrite,
        ef_search=args.ef_search,
        text_column=args.text_column,
        split=args.split,
        num_threads=args.threads,
        progress=args.progress,
    )
    counts = bank.manifest.counts
    logger.info(
        "bank %s: %d entries from %d sentences, hooks %s",
        bank.root,
        counts.n_entries,
        counts.n_sentences,
        ", ".join(f"{h} (layer {layer})" for h, layer in bank.layers.items()),
    )
    return 0
