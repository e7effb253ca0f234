"""``tl-latentlens calibrate-bank``: routes for visual-token queries, proven on held-out images.

Example::

    tl-latentlens calibrate-bank banks/wordnet --model default --images stamps/*.png \\
        --unlike photos/*.jpg --prove-on mine/*.png

Captures the visual tokens of the images at every bank layer, gives every bank hook routes
(query-sample routing with exact re-ranking) and records their recall@10 against exact search
on the held-out images, the ``--unlike`` images and your own ``--prove-on`` images in the
manifest. ``search(method="auto")`` uses a hook's routes only where that recall is >= 0.98 on
every set and the hook is large enough to gain; every routed search also audits itself on a
share of its queries and answers exactly where the audit falls short.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from PIL import Image

from tl_latentlens.apps._args import UsageError, check_bank, check_files, check_model
from tl_latentlens.bank import Bank
from tl_latentlens.bank.format.manifest import read_manifest
from tl_latentlens.bank.search.calibrate import calibrate_bank
from tl_latentlens.models.load import load_vlm

__all__ = ["add_parser", "run", "validate"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``calibrate-bank``."""
    p = subparsers.add_parser(
        "calibrate-bank",
        help="give a bank routes for fast visual-token search (recall proven on held-out images)",
        description=__doc__,
    )
    p.add_argument("bank", help="bank directory")
    p.add_argument("--model", default="default", help="the bank's model (load_vlm name or path)")
    p.add_argument("--images", nargs="+", required=True, help="calibration image files")
    p.add_argument("--unlike", nargs="*", default=[], help="held-out images unlike the others")
    p.add_argument(
        "--prove-on",
        nargs="*",
        default=[],
        help="your own images (like the ones you will explain): routes must also pass on them",
    )
    p.add_argument(
        "--text",
        default=None,
        help="file of held-out sentences (one per line, not in the bank): routes must also "
        "pass on their tokens",
    )
    p.add_argument("--prompt", default=None, help="prompt with the image placeholder")
    p.add_argument("--held-out-share", type=float, default=0.2, help="images held out")
    p.add_argument("--max-samples", type=int, default=20_000, help="routing samples per hook")
    p.add_argument("--list-len", type=int, default=200, help="exact neighbours per sample")
    p.add_argument(
        "--hooks",
        nargs="+",
        default=None,
        help="bank hooks to give routes (default: all; samples still come from every layer)",
    )
    p.add_argument("--device", default=None, help="torch device of the model")
    p.set_defaults(func=run, validate=validate)
    return p


def validate(args: argparse.Namespace) -> None:
    """Check the bank, model and images before the model loads."""
    check_bank(args.bank)
    check_model(args.model)
    check_files(args.images, "image")
    check_files(args.unlike, "image")
    check_files(args.prove_on, "image")
    if args.text is not None:
        check_files([args.text], "text")
    if len(args.images) < 2:
        raise UsageError("--images needs at least 2 images (a share is held out)")
    if not 0.0 < args.held_out_share < 1.0:
        raise UsageError(f"--held-out-share must be in (0, 1), got {args.held_out_share}")
    if args.hooks:
        stored = read_manifest(Path(args.bank).expanduser()).hook_names
        unknown = sorted(set(args.hooks) - set(stored))
        if unknown:
            raise UsageError(f"--hooks names hooks the bank does not store: {unknown}; it "
                             f"stores {list(stored)}")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Calibrate and print the recall per hook."""
    vlm = load_vlm(args.model, device=args.device)
    bank = Bank.open(args.bank, vlm)

    def load(paths: list[str]) -> list[Image.Image]:
        return [Image.open(Path(p).expanduser()).convert("RGB") for p in paths]

    prove_on = {}
    if args.unlike:
        prove_on["unlike"] = load(args.unlike)
    if args.prove_on:
        prove_on["prove-on"] = load(args.prove_on)
    cal = calibrate_bank(
        bank, vlm, load(args.images), prompt=args.prompt, held_out_share=args.held_out_share,
        prove_on=prove_on, held_out_text=_sentences(args.text), max_samples=args.max_samples,
        list_len=args.list_len, hooks=args.hooks,
    )  # fmt: skip
    print(json.dumps({h: c.to_dict() for h, c in cal.items()}, indent=2))
    return 0


def _sentences(path: str | None) -> list[str]:
    if path is None:
        return []
    lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]
