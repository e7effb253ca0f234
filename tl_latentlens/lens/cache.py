"""Explanations kept on disk, keyed by everything that decides them.

Explaining an image costs a forward pass, a bank search and the two baselines; reading its
result back costs a JSON parse. :class:`ExplanationCache` stores each result of
:meth:`~tl_latentlens.lens.LatentLens.explain_many` under a key made of

* the image pixels (mode, size, bytes; every image of a multi-image prompt),
* the call's settings (prompt, hooks, k, per-layer, bank hooks, baselines, search method),
* the lens identity: the model fingerprint (its weight digests), the bank manifest (its
  build, hooks and routes calibration) and the result format version,

so a rerun with the same model, bank and settings reads the results back, and any change
computes them again. A corrupt or foreign file is treated as missing (and overwritten).
Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tl_latentlens.lens.results import FORMAT_VERSION, Explanation

__all__ = ["ExplanationCache", "image_digest"]

logger = logging.getLogger(__name__)


def image_digest(images: Any) -> str:
    """SHA-256 of the pixels of a PIL image or a list of them (mode, size and bytes).

    Example:
        >>> image_digest(Image.new("RGB", (2, 2)))[:8]
        '…'
    """
    h = hashlib.sha256()
    for im in images if isinstance(images, (list, tuple)) else [images]:
        if not hasattr(im, "tobytes"):
            raise TypeError(f"expected a PIL image, got {type(im).__name__}")
        h.update(f"{im.mode};{im.size[0]}x{im.size[1]};".encode())
        h.update(im.tobytes())
    return h.hexdigest()


class ExplanationCache:
    """A folder of explanations keyed by image, settings and lens identity.

    Args:
        folder: Where the JSON files live (created on the first write).
        identity: What the lens is (model fingerprint, bank manifest, ...): a JSON-ready
            mapping; results of another identity are never returned.

    Example:
        >>> cache = ExplanationCache("runs/cache", lens.identity())
        >>> key = cache.key(image, {"k": 5})
        >>> cache.get(key) is None
        True
    """

    def __init__(self, folder: str | os.PathLike, identity: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self._identity = _digest({"format_version": FORMAT_VERSION, **dict(identity)})

    def key(self, images: Any, settings: Mapping[str, Any]) -> str:
        """The key of ``images`` explained with ``settings`` by this lens."""
        return _digest(
            {"lens": self._identity, "images": image_digest(images), "settings": dict(settings)}
        )

    def path(self, key: str) -> Path:
        """File of ``key``."""
        return self.folder / f"{key[:32]}.json"

    def get(self, key: str) -> Explanation | None:
        """The stored explanation of ``key``; ``None`` when absent or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return Explanation.load(path)
        except ValueError as e:
            logger.warning("ignoring cached explanation %s: %s", path, e)
            return None

    def put(self, key: str, explanation: Explanation) -> Path:
        """Store ``explanation`` under ``key`` (:meth:`Explanation.save`: an atomic write)."""
        return explanation.save(self.path(key))


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=_jsonable, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return list(obj)
    if hasattr(obj, "to_json"):
        return obj.to_json()
    return str(obj)
