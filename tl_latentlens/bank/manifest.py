"""Bank directory layout, the manifest, identity comparison and file verification.

A bank directory::

    manifest.json                      format version, model fingerprint, hooks + layers, counts,
                                       build/hnsw options, corpus fingerprint, file checksums
    entries.npy                        [n_entries] (sentence_id, position, token_id), int32 each;
                                       row i of every hook's vectors is entry i
    sentences/text.bin|.offsets.npy    UTF-8 text of each stored sentence (ragged)
    sentences/ids.bin|.offsets.npy     int32 token ids of each stored sentence (ragged)
    sentences/corpus_index.npy         corpus index of each stored sentence
    tokens/strings.bin|.offsets.npy    tokenizer.decode([id]) for every token id (ragged)
    tokens/special.npy                 bool, special token ids
    hooks/<hook>/vectors.npy           [n_entries, d_model] float16 | float32 | uint8 (float8)
    hooks/<hook>/norms.npy             float32 norms of the stored vectors
    hooks/<hook>/scales.npy            float32 per-vector scales (float8 only)
    hooks/<hook>/index.hnsw            hnswlib index, space='cosine', labels = entry rows
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tl_latentlens import hooks as hk
from tl_latentlens.bank import codec
from tl_latentlens.bank.config import FORMAT_VERSION, BankConfig
from tl_latentlens.bank.errors import BankError, BankFormatError, CorruptBankError
from tl_latentlens.bank.sources import describe_corpus
from tl_latentlens.bank.store import read_json, sha256_file

if TYPE_CHECKING:
    from tl_latentlens.bank.select import Selection
    from tl_latentlens.models.base import VLM

__all__ = [
    "MANIFEST",
    "build_manifest",
    "describe_differences",
    "hook_dir",
    "hook_files",
    "identity",
    "read_manifest",
    "shared_files",
    "validate_manifest",
    "verify_files",
]

MANIFEST = "manifest.json"
ENTRIES = "entries.npy"
SENTENCES = "sentences"
TOKENS = "tokens"

_REQUIRED = ("format_version", "model", "hooks", "d_model", "dtype", "counts", "files", "hnsw")


def hook_dir(hook: str) -> str:
    """Relative directory of a hook's files."""
    return f"hooks/{hook}"


def hook_files(hook: str, dtype: str) -> list[str]:
    """Relative paths of a hook's files."""
    names = ["vectors.npy", "norms.npy", "index.hnsw"]
    if codec.has_scales(dtype):
        names.insert(2, "scales.npy")
    return [f"{hook_dir(hook)}/{name}" for name in names]


def shared_files() -> list[str]:
    """Relative paths of the hook-independent tables."""
    ragged = [f"{SENTENCES}/text", f"{SENTENCES}/ids", f"{TOKENS}/strings"]
    out = [ENTRIES, f"{SENTENCES}/corpus_index.npy", f"{TOKENS}/special.npy"]
    for name in ragged:
        out += [f"{name}.bin", f"{name}.offsets.npy"]
    return out


def identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What makes two banks the same bank (execution details and timestamps left out)."""
    return {
        "format_version": manifest.get("format_version"),
        "model": manifest.get("model"),
        "hooks": [h["name"] for h in manifest.get("hooks", [])],
        "options": manifest.get("build", {}).get("content"),
        "corpus_fingerprint": manifest.get("corpus", {}).get("fingerprint"),
    }


def describe_differences(
    have: dict[str, Any], want: dict[str, Any], keys: Iterable[str] | None = None
) -> list[str]:
    """Human-readable ``key: have != want`` lines for differing (nested one level) fields."""
    lines = []
    for key in keys if keys is not None else sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    lines.append(f"{key}.{sub}: {a.get(sub)!r} != {b.get(sub)!r}")
        else:
            lines.append(f"{key}: {a!r} != {b!r}")
    return lines


def read_manifest(root: Path) -> dict[str, Any]:
    """Read and validate ``root/manifest.json``.

    Raises:
        BankError: No such directory or no manifest.
        BankFormatError: Unreadable manifest, other format version or missing fields.
    """
    if not root.is_dir():
        raise BankError(f"no bank at {str(root)!r}: the directory does not exist")
    if not (root / MANIFEST).is_file():
        raise BankError(f"{str(root)!r} is not a bank: it has no {MANIFEST}")
    try:
        manifest = read_json(root / MANIFEST)
    except (OSError, ValueError) as err:
        raise BankFormatError(f"{root / MANIFEST} cannot be read: {err}") from err
    validate_manifest(manifest, root)
    return manifest


def validate_manifest(manifest: Any, path: Path) -> None:
    """Check the manifest's format version and required fields.

    Raises:
        BankFormatError: Wrong version or missing fields.
    """
    if not isinstance(manifest, dict):
        raise BankFormatError(f"{path / MANIFEST} is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BankFormatError(
            f"{path} is a bank of format version {version!r}; this tl_latentlens reads version "
            f"{FORMAT_VERSION}. Rebuild it with build_bank(..., overwrite=True)."
        )
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise BankFormatError(f"{path / MANIFEST} lacks the fields {missing}")


def verify_files(root: Path, manifest: dict[str, Any], paths: Iterable[str], full: bool) -> None:
    """Check that files exist with the recorded size (and, when ``full``, SHA-256).

    Raises:
        CorruptBankError: A file is missing, has the wrong size or the wrong checksum.
    """
    records = manifest["files"]
    for rel in paths:
        if rel not in records:
            raise CorruptBankError(f"{root}: manifest has no checksum for {rel}")
        file = root / rel
        if not file.is_file():
            raise CorruptBankError(f"{root}: file {rel} is missing")
        size = os.path.getsize(file)
        want = records[rel]
        if size != want["size"]:
            raise CorruptBankError(
                f"{root}: file {rel} is {size} bytes, the manifest says {want['size']} "
                "(truncated or replaced); rebuild the bank"
            )
        if full and sha256_file(file) != want["sha256"]:
            raise CorruptBankError(
                f"{root}: file {rel} does not match its SHA-256 checksum (corrupted); "
                "rebuild the bank"
            )


def build_manifest(
    vlm: VLM,
    hooks: list[str],
    cfg: BankConfig,
    selection: Selection,
    counts: dict[str, int],
    corpus: Any,
) -> dict[str, Any]:
    """The manifest of a freshly built bank (without ``files``, added once they are final)."""
    tok = vlm.tokenizer
    return {
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "library": {
            name: _version(name)
            for name in ("tl_latentlens", "torch", "transformer-lens", "hnswlib")
        },
        "model": vlm.fingerprint(),
        "tokenizer": {
            "name": str(getattr(tok, "name_or_path", "")),
            "class": type(tok).__name__,
            "vocab_size": counts["vocab_size"],
        },
        "layer_convention": hk.LAYER_CONVENTION,
        "hooks": [{"name": h, "layer": hk.layer_of(h), "dir": hook_dir(h)} for h in hooks],
        "d_model": vlm.d_model,
        "dtype": cfg.dtype,
        "corpus": {
            **describe_corpus(corpus, cfg.text_column, cfg.split),
            "fingerprint": selection.corpus_fingerprint,
            "n_sentences": selection.n_corpus_sentences,
            "n_tokens": selection.n_corpus_tokens,
        },
        "counts": {k: v for k, v in counts.items() if k != "vocab_size"},
        "build": {
            "content": cfg.content_options,
            "batch_size": cfg.batch_size,
            "text_column": cfg.text_column,
            "split": cfg.split,
            "dedup": "token-id prefix (chained SplitMix64 hash)",
            "sampling": "per-token-id reservoir with seeded prefix-hash keys",
        },
        "hnsw": {
            "library": "hnswlib",
            "space": "cosine",
            "M": cfg.hnsw_M,
            "ef_construction": cfg.ef_construction,
            "ef_search": cfg.ef_search,
        },
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
