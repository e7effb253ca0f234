"""What every sub-command shares: the help format and checks run before any model loads.

Checks raise :class:`UsageError` (a ``ValueError``): the command line prints it with the
sub-command's name and exits with status 2, as argparse does for its own errors.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from tl_latentlens.bank.format.manifest import MANIFEST

__all__ = [
    "HelpFormatter",
    "UsageError",
    "check_bank",
    "check_dir",
    "check_files",
    "check_model",
    "check_positive",
    "check_writable_dir",
]


class UsageError(ValueError):
    """A command-line argument names a missing file, a bad value, ..."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (``None`` and off-by-default flags left out); keeps the
    line breaks of descriptions (their examples)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0 or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def check_files(paths: Iterable[str], what: str, allow: Iterable[str] = ()) -> None:
    """Each of ``paths`` is an existing file or folder (or one of the words in ``allow``).

    Raises:
        UsageError: Naming the first one that is missing.
    """
    allowed = set(allow)
    for p in paths:
        if p not in allowed and not Path(p).expanduser().exists():
            raise UsageError(f"{what} {p!r} does not exist")


def check_dir(path: str | None, what: str) -> None:
    """``path`` is an existing directory.

    Raises:
        UsageError: It is missing or a file.
    """
    if path is None:
        return
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UsageError(
            f"{what} {path!r} is not a directory" + ("" if p.exists() else " (missing)")
        )


def check_bank(path: str | None) -> None:
    """``path`` is a bank directory (it holds the bank's manifest).

    Raises:
        UsageError: Missing, or not a bank.
    """
    if path is None:
        return
    check_dir(path, "bank")
    if not (Path(path).expanduser() / MANIFEST).is_file():
        raise UsageError(
            f"bank {path!r} has no {MANIFEST}: not a bank (build one with tl-latentlens build-bank)"
        )


def check_writable_dir(path: str, what: str) -> None:
    """``path`` is a directory or can be made one (its nearest existing parent is a directory).

    Raises:
        UsageError: ``path`` or one of its parents is a file.
    """
    p = Path(path).expanduser().absolute()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise UsageError(f"{what} {path!r}: {str(q)!r} is a file, not a directory")
            return


def check_model(name: str | None) -> None:
    """``name`` is ``default``, a hub name (``owner/model``) or an existing directory.

    A name written as a local path (``./x``, ``/x``, ``~/x``, or more than one ``/``) must
    exist; hub names are left to the loader.

    Raises:
        UsageError: A local-looking path that does not exist.
    """
    if name is None or name == "default":
        return
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise UsageError(f"model directory {name!r} does not exist")


def check_positive(value: int | None, flag: str) -> None:
    """``value`` is ``None`` or at least 1.

    Raises:
        UsageError: It is 0 or negative.
    """
    if value is not None and value < 1:
        raise UsageError(f"{flag} must be at least 1, got {value}")
