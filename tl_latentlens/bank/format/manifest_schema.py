"""The manifest's schema: typed, frozen records of ``manifest.json`` and its validation.

:class:`BankManifest` is what :func:`~tl_latentlens.bank.format.manifest.read_manifest` returns and
:attr:`Bank.manifest <tl_latentlens.bank.Bank.manifest>` holds; :meth:`BankManifest.from_json`
validates (:func:`validate_manifest`: nothing in a manifest is trusted) and
:meth:`BankManifest.to_json` gives the JSON object back exactly. The directory layout, reading,
writing, identity and file checks are in :mod:`tl_latentlens.bank.format.manifest`, which re-exports
these names.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from tl_latentlens import hooks as hk
from tl_latentlens.bank.errors import BankFormatError
from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format.config import FORMAT_VERSION

__all__ = [
    "MANIFEST",
    "BankManifest",
    "BuildInfo",
    "Counts",
    "FileRecord",
    "HnswOptions",
    "HookRecord",
    "HubOrigin",
    "hook_dir",
    "validate_manifest",
]

MANIFEST = "manifest.json"

_REQUIRED = ("format_version", "model", "hooks", "d_model", "dtype", "counts", "files", "hnsw")


# ---- the typed manifest ---------------------------------------------------------------------
_R = TypeVar("_R", bound="_Record")


class _Record:
    """``from_json`` / ``to_json`` of a frozen dataclass of JSON object fields.

    Fields are named as the keys. An optional field left ``None`` is a key the object does not
    have; keys the class does not know (and optional keys holding ``null``) are kept in
    ``extra``, so ``to_json(from_json(obj)) == obj`` exactly: a manifest read and written again
    keeps every byte (files written by other versions included).
    """

    extra: Mapping[str, Any]

    @classmethod
    def from_json(cls: type[_R], obj: Mapping[str, Any]) -> _R:
        """The record of JSON object ``obj`` (a deep copy: editing ``obj`` later changes
        nothing here)."""
        return cls._from(obj)

    @classmethod
    def _from(cls: type[_R], obj: Mapping[str, Any], **converted: Any) -> _R:
        names = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: copy.deepcopy(v) for k, v in obj.items() if k in names and v is not None}
        kw.update(converted)
        extra = {k: copy.deepcopy(v) for k, v in obj.items() if k not in kw}
        return cls(**kw, extra=extra)

    def to_json(self) -> dict[str, Any]:
        """The JSON object (a new, deep copy: editing it does not change this record)."""
        out = copy.deepcopy(dict(self.extra))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and value is not None:
                out[f.name] = _to_json(value)
        return out


def _to_json(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_json()
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    return copy.deepcopy(value)


@dataclass(frozen=True)
class FileRecord(_Record):
    """Size and SHA-256 of one bank file."""

    size: int
    sha256: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HookRecord(_Record):
    """One stored hook.

    Attributes:
        name: The residual hook (``blocks.{l}.hook_resid_pre`` ...).
        layer: Its layer (``hooks.layer_of(name)``; an int, or ``l + 0.5`` for ``resid_mid``).
        dir: Its folder in the bank (``hooks/<name>``).
        n_vectors: Distinct vectors stored (``None``: one per entry, as in old banks).
        n_duplicates: Entries that share a vector with an earlier one.
        routes: Its routes calibration (``calibrate_bank``), ``None`` when uncalibrated.
    """

    name: str
    layer: int | float
    dir: str | None = None
    n_vectors: int | None = None
    n_duplicates: int | None = None
    routes: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Counts(_Record):
    """How much the bank stores."""

    n_entries: int
    n_sentences: int
    n_token_types: int | None = None
    n_full_token_types: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HnswOptions(_Record):
    """hnswlib options of the routes' sample index."""

    library: str | None = None
    space: str | None = None
    M: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None
    build_threads: int | None = None
    deterministic: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildInfo(_Record):
    """How the bank was built.

    Attributes:
        content: The options that decide the content (:attr:`BankConfig.content_options`).
        forward_dtype: dtype of the build's forward passes.
        imported_from: For a bank imported from an official ``latentlens`` index: where from.
    """

    content: Mapping[str, Any] | None = None
    batch_size: int | None = None
    text_column: str | None = None
    split: str | None = None
    dedup: str | None = None
    sampling: str | None = None
    forward_dtype: str | None = None
    imported_from: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HubOrigin(_Record):
    """Where a hub view (a download of some hooks, see :mod:`tl_latentlens.bank.hub.remote`) comes
    from."""

    repo_id: str | None = None
    commit: str | None = None
    hooks_of_repo: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BankManifest(_Record):
    """The manifest of a bank (``manifest.json``), read-only and typed.

    :meth:`from_json` validates (as :func:`validate_manifest`) and :meth:`to_json` gives the
    JSON object back exactly, unknown keys included.

    Attributes:
        format_version: The on-disk format (:data:`~tl_latentlens.bank.format.config.FORMAT_VERSION`).
        model: The model's fingerprint (``VLM.fingerprint()``: name, geometry, weight digests).
        hooks: The stored hooks, in build order.
        d_model: Vector width.
        dtype: Storage dtype name.
        counts: Stored entries and sentences.
        files: Bank-relative path -> size and SHA-256, for every file.
        hnsw: hnswlib options.
        generation: A fresh id per published bank.
        created: ISO time of the build.
        library: Versions of the libraries that built it.
        tokenizer: Tokenizer name, class and vocabulary size.
        layer_convention: The layer numbering (:data:`tl_latentlens.hooks.LAYER_CONVENTION`).
        corpus: What the corpus was (kind, source, fingerprint, sentences read, skipped ...).
        build: How the bank was built.
        hub: Set in a hub view of some hooks.
        extra: Other keys, kept as read.

    Example:
        >>> m = bank.manifest
        >>> m.counts.n_entries, [h.name for h in m.hooks], m.corpus_fingerprint
        >>> m.to_json()["counts"]  # the JSON object
    """

    format_version: int
    model: Mapping[str, Any]
    hooks: tuple[HookRecord, ...]
    d_model: int
    dtype: str
    counts: Counts
    files: Mapping[str, FileRecord]
    hnsw: HnswOptions
    generation: str | None = None
    created: str | None = None
    library: Mapping[str, str | None] | None = None
    tokenizer: Mapping[str, Any] | None = None
    layer_convention: str | None = None
    corpus: Mapping[str, Any] | None = None
    build: BuildInfo | None = None
    hub: HubOrigin | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(  # type: ignore[override]  # one more (optional) argument
        cls, obj: Any, root: str | os.PathLike = "."
    ) -> BankManifest:
        """Validate the JSON object ``obj`` of a bank at ``root`` (named in error messages).

        Raises:
            BankFormatError: Wrong format version, missing or malformed fields.
        """
        validate_manifest(obj, Path(root))
        return cls._from(
            obj,
            hooks=tuple(HookRecord.from_json(h) for h in obj["hooks"]),
            counts=Counts.from_json(obj["counts"]),
            files={rel: FileRecord.from_json(rec) for rel, rec in obj["files"].items()},
            hnsw=HnswOptions.from_json(obj["hnsw"]),
            **{
                key: kind.from_json(obj[key])
                for key, kind in (("build", BuildInfo), ("hub", HubOrigin))
                if isinstance(obj.get(key), Mapping)
            },
        )

    def __getitem__(self, key: str) -> Any:
        """``manifest[key]`` is ``manifest.to_json()[key]`` (a copy): kept for code written
        when :attr:`Bank.manifest <tl_latentlens.bank.Bank.manifest>` was a dict; prefer the
        attributes."""
        return self.to_json()[key]

    @property
    def hook_names(self) -> list[str]:
        """Stored hook names, in build order."""
        return [h.name for h in self.hooks]

    def hook(self, name: str) -> HookRecord:
        """The record of stored hook ``name`` (exact name).

        Raises:
            KeyError: The bank stores no such hook.
        """
        for h in self.hooks:
            if h.name == name:
                return h
        raise KeyError(name)

    @property
    def corpus_fingerprint(self) -> str | None:
        """The fingerprint of the corpus (identical corpora, identical fingerprints)."""
        return (self.corpus or {}).get("fingerprint")


def hook_dir(hook: str) -> str:
    """Relative directory of a hook's files."""
    return f"hooks/{hook}"


def validate_manifest(manifest: Any, path: Path) -> None:
    """Check the manifest's format version, required fields and their types and values.

    Nothing in a manifest is trusted: hook names must be residual hooks whose recorded layer is
    the layer of the name, file paths must stay inside the bank, counts and options must be
    numbers of the right kind.

    Raises:
        BankFormatError: Wrong version, missing or malformed fields (the message names them).
    """
    where = path / MANIFEST
    if not isinstance(manifest, dict):
        raise BankFormatError(f"{where} is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BankFormatError(
            f"{path} is a bank of format version {version!r}; this tl_latentlens reads version "
            f"{FORMAT_VERSION}. Rebuild it with build_bank(..., overwrite=True)."
        )
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise BankFormatError(f"{where} lacks the fields {missing}")
    problems = _problems(manifest)
    if problems:
        raise BankFormatError(
            f"{where} is malformed ({'; '.join(problems)}); rebuild the bank with "
            "build_bank(..., overwrite=True)"
        )


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _count(value: Any, positive: bool = False) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (value > 0 if positive else value >= 0)


def _safe_rel(rel: Any) -> bool:
    if not isinstance(rel, str) or not rel or "\\" in rel or rel.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def _problems(m: dict[str, Any]) -> list[str]:
    out: list[str] = []
    hooks = m["hooks"]
    if not isinstance(hooks, list) or not hooks:
        out.append(f"'hooks' must be a non-empty list, got {hooks!r:.60}")
    else:
        names, layers = set(), set()
        for h in hooks:
            if not isinstance(h, dict) or not isinstance(h.get("name"), str):
                out.append(f"hook entry {h!r:.60} has no name")
                continue
            name = h["name"]
            try:
                layer = hk.layer_of(name)
            except ValueError:
                out.append(f"hook {name!r:.60} is not a residual-stream hook")
                continue
            have = h.get("layer")
            if isinstance(have, bool) or not isinstance(have, (int, float)) or have != layer:
                out.append(f"hook {name} is recorded at layer {have!r}, but it is layer {layer}")
            if h.get("dir", hook_dir(name)) != hook_dir(name):
                out.append(f"hook {name} has dir {h.get('dir')!r}, expected {hook_dir(name)!r}")
            if name in names or layer in layers:
                out.append(f"hook {name} (layer {layer}) is listed twice")
            for key in ("n_vectors", "n_duplicates"):
                if h.get(key) is not None and not _count(h[key]):
                    out.append(f"hook {name}: {key} must be a non-negative int, got {h[key]!r:.40}")
            if h.get("routes") is not None and not isinstance(h["routes"], dict):
                out.append(f"hook {name}: 'routes' must be an object")
            names.add(name)
            layers.add(layer)
    if not _count(m["d_model"], positive=True):
        out.append(f"'d_model' must be a positive int, got {m['d_model']!r:.40}")
    try:
        codec.numpy_dtype(m["dtype"])
    except Exception:  # noqa: BLE001 - any failure means an unknown codec
        out.append(f"unknown storage dtype {m['dtype']!r:.40}")
    counts = m["counts"]
    if not isinstance(counts, dict):
        out.append("'counts' must be an object")
    else:
        for key in ("n_entries", "n_sentences"):
            if not _count(counts.get(key)):
                out.append(f"counts.{key} must be a non-negative int, got {counts.get(key)!r:.40}")
    hnsw = m["hnsw"]
    if not isinstance(hnsw, dict):
        out.append("'hnsw' must be an object")
    else:
        for key in ("ef_search", "M"):
            if key in hnsw and not _count(hnsw[key], positive=True):
                out.append(f"hnsw.{key} must be a positive int, got {hnsw[key]!r:.40}")
    files = m["files"]
    if not isinstance(files, dict):
        out.append("'files' must be an object")
    else:
        for rel, rec in files.items():
            if not _safe_rel(rel):
                out.append(f"file path {rel!r:.80} leaves the bank directory")
            elif (
                not isinstance(rec, dict)
                or not _count(rec.get("size"))
                or not isinstance(rec.get("sha256"), str)
                or not _SHA256.match(rec["sha256"])
            ):
                out.append(f"file {rel} has no valid size/sha256 record")
    for key in ("corpus", "build", "hub", "library", "tokenizer"):
        if key in m and not isinstance(m[key], dict):
            out.append(f"'{key}' must be an object")
    model = m["model"]
    parts = model.get("weights", {}).get("parts") if isinstance(model, dict) else None
    if not isinstance(parts, dict) or not all(isinstance(v, dict) for v in parts.values()):
        out.append("'model.weights.parts' (the per-part weight digests) is missing")
    return out
