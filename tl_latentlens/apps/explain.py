"""``tl-latentlens explain``: LatentLens explanations of the visual tokens of image files.

Writes, per image, ``<stem>.json`` (the explanation), ``<stem>.html`` (interactive report)
and ``<stem>_patches.png`` into ``--out``. With ``--per-prompt N`` the images go N at a time
into one prompt with N placeholders (files named after the stems joined by ``+``).

Example::

    tl-latentlens explain --model default --bank banks/default --images cat.png --out out
    tl-latentlens explain --model default --bank banks/default --images a.png b.png \
        --per-prompt 2 --prompt "<image> and <image>: what differs?"
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from PIL import Image

from tl_latentlens import hooks as hk
from tl_latentlens.apps._args import (
    UsageError,
    check_bank,
    check_files,
    check_model,
    check_positive,
    check_writable_dir,
)
from tl_latentlens.bank import Bank
from tl_latentlens.lens import LatentLens
from tl_latentlens.models.load import load_vlm

__all__ = ["add_parser", "run", "validate"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``explain`` on an ``argparse`` sub-parser group (sets ``func`` and ``validate``)."""
    p = subparsers.add_parser(
        "explain",
        help="explain the visual tokens of image(s) with LatentLens",
        description=__doc__,
    )
    p.add_argument("--model", required=True, help="hub name, local VLM directory or 'default'")
    p.add_argument("--bank", required=True, help="bank directory (tl-latentlens build-bank)")
    p.add_argument("--images", nargs="+", required=True, help="image files")
    p.add_argument("--prompt", default=None, help="prompt with the image placeholder(s)")
    p.add_argument(
        "--per-prompt",
        type=int,
        default=1,
        help="images per prompt (the prompt needs as many placeholders)",
    )
    p.add_argument("--hooks", nargs="*", default=None, help="visual hooks (default: bank layers)")
    p.add_argument("-k", type=int, default=5, help="neighbours per patch")
    p.add_argument("--per-layer", action="store_true", help="search only the same text layer")
    p.add_argument(
        "--method",
        choices=("auto", "exact", "routes"),
        default="auto",
        help="bank search: auto (routes where the bank proved them, audited on each search), "
        "exact, or routes",
    )
    p.add_argument("--out", default="latentlens_out", help="output directory")
    p.add_argument("--device", default=None, help="torch device (default: CUDA if present)")
    p.set_defaults(func=run, validate=validate)
    return p


def validate(args: argparse.Namespace) -> None:
    """Check the arguments and files before the model loads.

    Raises:
        UsageError: A missing image, model directory or bank, a bad ``-k`` or hook name.
    """
    check_positive(args.k, "-k")
    check_positive(args.per_prompt, "--per-prompt")
    if len(args.images) % args.per_prompt:
        raise UsageError(
            f"{len(args.images)} image(s) do not split into prompts of --per-prompt "
            f"{args.per_prompt}"
        )
    if args.per_prompt > 1 and args.prompt is None:
        raise UsageError("--per-prompt needs a --prompt with that many image placeholders")
    check_model(args.model)
    check_bank(args.bank)
    check_files(args.images, "image")
    for path in args.images:
        if not Path(path).is_file():
            raise UsageError(f"image {path!r} is a directory; give image files")
    for hook in args.hooks or ():
        try:
            hk.layer_of(hook)
        except ValueError as e:
            raise UsageError(f"--hooks: {e}") from e
    check_writable_dir(args.out, "--out")


def run(args: argparse.Namespace) -> int:
    """Explain each image; returns the exit status."""
    vlm = load_vlm(args.model, device=args.device)
    lens = LatentLens(vlm, Bank.open(args.bank, vlm=vlm))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = args.per_prompt
    for start in range(0, len(args.images), n):
        paths = args.images[start : start + n]
        images = [Image.open(path).convert("RGB") for path in paths]
        result = lens.explain(
            images if n > 1 else images[0],
            args.prompt,
            hooks=args.hooks,
            k=args.k,
            per_layer=args.per_layer,
            method=args.method,
        )
        stem = "+".join(Path(path).stem for path in paths)
        result.save(out / f"{stem}.json")
        result.to_html(out / f"{stem}.html")
        result.save_png(out / f"{stem}_patches.png")
        print(f"{' '.join(paths)}: {out / (stem + '.html')}  ({sum(result.timings.values()):.2f}s)")
    return 0
