"""Console entry ``tl-latentlens``: demo · build-bank · explain · train-connector · evaluate.

Each sub-command's work lives in its own module; this file only wires arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="explain the visual tokens of image(s) with LatentLens")
    p.add_argument("--model", required=True, help="hub name, local VLM directory or 'default'")
    p.add_argument("--bank", required=True, help="bank directory (tl-latentlens build-bank)")
    p.add_argument("--images", nargs="+", required=True, help="image files")
    p.add_argument("--prompt", default=None, help="prompt with the image placeholder(s)")
    p.add_argument("--hooks", nargs="*", default=None, help="visual hooks (default: bank layers)")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--per-layer", action="store_true", help="search only the same text layer")
    p.add_argument("--exact", action="store_true", help="exact search instead of hnswlib")
    p.add_argument("--out", default="latentlens_out", help="output directory")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from PIL import Image

    from tl_latentlens.bank import Bank
    from tl_latentlens.lens import LatentLens
    from tl_latentlens.models.load import load_vlm

    vlm = load_vlm(args.model, device=args.device)
    lens = LatentLens(vlm, Bank.open(args.bank, vlm=vlm))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        image = Image.open(path).convert("RGB")
        result = lens.explain(
            image,
            args.prompt,
            hooks=args.hooks,
            k=args.k,
            per_layer=args.per_layer,
            exact=args.exact,
        )
        stem = Path(path).stem
        result.save(out / f"{stem}.json")
        result.to_html(out / f"{stem}.html")
        result.save_png(out / f"{stem}_patches.png")
        print(f"{path}: {out / (stem + '.html')}  ({sum(result.timings.values()):.2f}s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tl-latentlens``."""
    parser = argparse.ArgumentParser(prog="tl-latentlens", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    from tl_latentlens.bank.cli import add_build_bank_parser

    add_build_bank_parser(sub)
    _add_explain(sub)
    for module, adder in (
        ("tl_latentlens.default.demo", "add_demo_parser"),
        ("tl_latentlens.default.train", "add_train_parser"),
        ("tl_latentlens.evaluate.cli", "add_evaluate_parser"),
    ):
        try:
            mod = __import__(module, fromlist=[adder])
        except ImportError as e:  # a sub-command whose optional module is absent
            logging.getLogger(__name__).debug("sub-command module %s unavailable: %s", module, e)
            continue
        getattr(mod, adder)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"tl-latentlens {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
