"""Console entry ``tl-latentlens``: explain · build-bank · evaluate · demo · train-connector ·
fetch-data.

Each sub-command is one module of :mod:`tl_latentlens.apps`; this one wires them together.
Only the module of the sub-command being run is imported (the others pull in evaluation,
rendering, training and WordNet code a one-image ``explain`` never uses); ``--help`` without a
sub-command imports them all to list them. A sub-command's ``validate`` runs before its work,
so a missing file or a bad value is reported before any model loads.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import NoReturn

from tl_latentlens.apps import fetch_data  # light: standard library and packaged_data only
from tl_latentlens.apps._args import HelpFormatter
from tl_latentlens.packaged_data import MissingDataError

__all__ = ["SUBCOMMANDS", "build_parser", "main", "run"]

#: Sub-command name -> its module in :mod:`tl_latentlens.apps`, in the order --help lists them.
SUBCOMMANDS = {
    "explain": "explain",
    "build-bank": "build_bank",
    "calibrate-bank": "calibrate_bank",
    "evaluate": "evaluate",
    "demo": "demo",
    "train-connector": "train_connector",
    "fetch-data": "fetch_data",
}


def subcommand_modules(argv: Sequence[str] | None = None) -> list[ModuleType]:
    """The sub-command modules a command line needs: the named sub-command's alone, or all of
    them when ``argv`` names none (``--help``, ``--version``, a typo: argparse lists them).

    The sub-command is the first word that is not an option: the top-level options
    (``--version``, ``-v``, ``-h``) take no values.
    """
    words = [a for a in argv or () if not a.startswith("-")]
    names = [words[0]] if words and words[0] in SUBCOMMANDS else list(SUBCOMMANDS)
    return [importlib.import_module(f"tl_latentlens.apps.{SUBCOMMANDS[n]}") for n in names]


class _Parser(argparse.ArgumentParser):
    """Every (sub-)parser shows defaults in ``--help``, whoever registers it."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def package_version() -> str:
    """The installed tl_latentlens version (``"unknown"`` when not installed)."""
    try:
        return version("tl_latentlens")
    except PackageNotFoundError:
        return "unknown"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``tl-latentlens``: every sub-command, or only the one ``argv``
    names (:func:`subcommand_modules`)."""
    parser = _Parser(prog="tl-latentlens", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in subcommand_modules(argv):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for bad arguments or files)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        validate = getattr(args, "validate", None)
        if validate is not None:
            validate(args)
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"tl-latentlens {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (MissingDataError, fetch_data.FetchError) as e:  # data not (or not yet) fetched
        print(f"tl-latentlens {args.command}: error: {e}", file=sys.stderr)
        return 1


def run() -> NoReturn:
    """Console-script entry (``tl-latentlens``, ``python -m tl_latentlens``): :func:`main`, then
    exit with its status.

    The interpreter's shutdown runs a full garbage collection over every tracked object, about
    500,000 after torch, transformers and TransformerLens are imported: a noticeable part of a
    one-image ``explain`` (``benchmarks/bench_cold_start.py`` measures it). Freezing them first
    leaves that collection nothing to traverse; the objects are still released as the
    interpreter tears down. Tests call :func:`main`, which does not freeze.
    """
    status = main()
    gc.freeze()
    raise SystemExit(status)


if __name__ == "__main__":
    run()
