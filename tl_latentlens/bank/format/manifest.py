r"""Bank directory layout, the manifest, identity comparison and file verification.

The manifest is read as a typed, frozen :class:`BankManifest` (records and validation in
:mod:`tl_latentlens.bank.format.manifest_schema`, re-exported here).

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
    hooks/<hook>/vectors.npy           [n_vectors, d_model] float16 | float32 | int8: the hook's
                                       distinct vectors (identical rows stored once)
    hooks/<hook>/norms.npy             float32 norms of the stored (decoded) vectors
    hooks/<hook>/occ_offsets.npy       int64 [n_vectors + 1] \ vector v stands for the entry rows
    hooks/<hook>/occ_entries.npy       int32 [n_entries]     / occ_entries[off[v]:off[v+1]]
    hooks/<hook>/codec.npy             float32 [2, d_model] offset/scale (legacy int8 only)
    hooks/<hook>/codec_centre.npy      float32 [d_model], [d_model, d_model], [n_vectors, 2]:
        codec_rotation.npy, codec_scales.npy   centre, rotation, row step + norm (int8_rotated,
                                               int8_pca)
    hooks/<hook>/codec_components.npy  float32 [P, d_model] principal directions (int8_pca only)
    hooks/<hook>/codec_coeffs.npy      float16 [n_vectors, P] principal coefficients (int8_pca)
    hooks/<hook>/routes/               optional query-sample routes (bank.routes, calibrate_bank):
                                       samples.npy, lists.npy, samples.hnsw (hnswlib, space='ip')
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tl_latentlens import hooks as hk
from tl_latentlens._io import atomic_write_json, sha256_bytes
from tl_latentlens.bank.build.sources import describe_corpus
from tl_latentlens.bank.errors import BankError, BankFormatError, CorruptBankError
from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format.config import FORMAT_VERSION, BankConfig
from tl_latentlens.bank.format.manifest_schema import (
    MANIFEST,
    BankManifest,
    BuildInfo,
    Counts,
    FileRecord,
    HnswOptions,
    HookRecord,
    HubOrigin,
    hook_dir,
    validate_manifest,
)
from tl_latentlens.bank.format.store import read_json, sha256_file
from tl_latentlens.models.digest import VARIANTS

if TYPE_CHECKING:
    from tl_latentlens.bank.build.select import Selection
    from tl_latentlens.models.base import VLM

__all__ = [
    "MANIFEST",
    "BankManifest",
    "BuildInfo",
    "Counts",
    "FileRecord",
    "HnswOptions",
    "HookRecord",
    "HubOrigin",
    "build_manifest",
    "describe_differences",
    "model_differences",
    "hook_dir",
    "hook_files",
    "identity",
    "identity_differences",
    "read_manifest",
    "shared_files",
    "validate_manifest",
    "verify_files",
    "write_manifest",
]

ENTRIES = "entries.npy"
SENTENCES = "sentences"
TOKENS = "tokens"


def hook_files(hook: str, dtype: str, routes: bool = False) -> list[str]:
    """Relative paths of a hook's files (with its routes' files when ``routes``)."""
    names = ["vectors.npy", "norms.npy", "occ_offsets.npy", "occ_entries.npy"]
    names += codec.param_files(dtype)  # the codec's parameter files (1-byte codecs)
    if routes:
        names += ["routes/samples.npy", "routes/lists.npy", "routes/samples.hnsw"]
    return [f"{hook_dir(hook)}/{name}" for name in names]


def shared_files() -> list[str]:
    """Relative paths of the hook-independent tables."""
    ragged = [f"{SENTENCES}/text", f"{SENTENCES}/ids", f"{TOKENS}/strings"]
    out = [ENTRIES, f"{SENTENCES}/corpus_index.npy", f"{TOKENS}/special.npy"]
    for name in ragged:
        out += [f"{name}.bin", f"{name}.offsets.npy"]
    return out


def identity(manifest: BankManifest | Mapping[str, Any]) -> dict[str, Any]:
    """What makes two banks the same bank (execution details and timestamps left out).

    ``manifest`` is a :class:`BankManifest` or a manifest's JSON object (read without
    validation, e.g. of a half-written bank that a build may replace).
    """
    if isinstance(manifest, BankManifest):
        manifest = manifest.to_json()
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


def read_manifest(root: Path) -> BankManifest:
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
    return BankManifest.from_json(manifest, root)


def write_manifest(root: Path, manifest: BankManifest) -> None:
    """Write ``root/manifest.json`` atomically (sorted keys, as every bank's)."""
    atomic_write_json(root / MANIFEST, manifest.to_json())


def identity_differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """How bank identity ``have`` (see :func:`identity`) differs from ``want`` on ``want``'s
    keys; models are compared by :func:`model_differences` (weights, not names or dtypes)."""
    diffs = []
    for key in want:
        if key == "model" and isinstance(have.get(key), dict):
            hooks = want.get("hooks") or have.get("hooks") or []
            diffs += [f"model.{d}" for d in model_differences(have[key], want[key], hooks)]
        else:
            diffs += describe_differences(have, want, keys=[key])
    return diffs


def model_differences(
    have: dict[str, Any], want: dict[str, Any], hooks: Iterable[str]
) -> list[str]:
    """What differs between the bank's model fingerprint ``have`` and a model's ``want``, for
    what shapes the residuals of ``hooks``: geometry, weight processing, and the weight
    digests of the embedding and of every block up to the last hook. The name is not compared
    (a hub id and a local copy of it are the same model).
    """
    diffs = [
        f"{key}: {have.get(key)!r} != {want.get(key)!r}"
        for key in ("n_layers", "d_model", "weight_processing")
        if have.get(key) != want.get(key)
    ]
    n_blocks = max((math.ceil(hk.layer_of(h)) for h in hooks), default=0)
    have_parts = have.get("weights", {}).get("parts", {})
    want_parts = want.get("weights", {}).get("parts", {})
    changed = []
    for part in ["embed"] + [f"blocks.{b}" for b in range(n_blocks)]:
        a, b = have_parts.get(part) or {}, want_parts.get(part) or {}
        if not any(a.get(v) is not None and a.get(v) == b.get(v) for v in VARIANTS):
            changed.append(part)
    if changed:
        diffs.append(
            f"weights of {', '.join(changed)} differ (digests of the embedding and blocks "
            f"0-{n_blocks - 1} are compared, dtype-independently)"
        )
    return diffs


def verify_files(
    root: Path,
    manifest: BankManifest,
    paths: Iterable[str],
    full: bool,
    opened: Callable[[str], Any] | None = None,
) -> None:
    """Check that files exist with the recorded size (and, when ``full``, SHA-256).

    Args:
        opened: ``rel -> bytes-like`` of files already opened (an open bank's snapshot); the
            check then reads those bytes instead of the paths.

    Raises:
        CorruptBankError: A file is missing, has the wrong size or the wrong checksum.
    """
    records = manifest.files
    for rel in paths:
        if rel not in records:
            raise CorruptBankError(f"{root}: manifest has no checksum for {rel}")
        want = records[rel]
        if opened is not None:
            data = opened(rel)
            size = len(memoryview(data).cast("B"))
        else:
            file = root / rel
            if not file.is_file():
                raise CorruptBankError(f"{root}: file {rel} is missing")
            size = os.path.getsize(file)
        if size != want.size:
            raise CorruptBankError(
                f"{root}: file {rel} is {size} bytes, the manifest says {want.size} "
                "(truncated or replaced); rebuild the bank"
            )
        if full:
            digest = sha256_bytes(opened(rel)) if opened is not None else sha256_file(root / rel)
            if digest != want.sha256:
                raise CorruptBankError(
                    f"{root}: file {rel} does not match its SHA-256 checksum (corrupted); "
                    "rebuild the bank"
                )


def build_manifest(
    vlm: VLM,
    hooks: list[str],
    cfg: BankConfig,
    selection: Selection,
    counts: Mapping[str, int],
    corpus: Any,
    finals: Mapping[str, Mapping[str, Any]] | None = None,
) -> BankManifest:
    """The manifest of a freshly built bank, ``files`` left empty until the files are final
    (``dataclasses.replace(manifest, files=...)``).

    Args:
        counts: Entry, sentence and token-type counts, plus ``vocab_size`` (recorded with the
            tokenizer).
        finals: Per hook, what its finalisation recorded (``n_vectors``, ``n_duplicates``).
    """
    tok = vlm.tokenizer
    finals = finals or {}
    return BankManifest(
        format_version=FORMAT_VERSION,
        # a fresh id per published bank: an open Bank detects that its directory was replaced
        generation=uuid.uuid4().hex,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        library={
            name: _version(name)
            for name in ("tl_latentlens", "torch", "transformer-lens", "hnswlib")
        },
        model=vlm.fingerprint(),
        tokenizer={
            "name": str(getattr(tok, "name_or_path", "")),
            "class": type(tok).__name__,
            "vocab_size": counts["vocab_size"],
        },
        layer_convention=hk.LAYER_CONVENTION,
        hooks=tuple(
            HookRecord.from_json(
                {"name": h, "layer": hk.layer_of(h), "dir": hook_dir(h), **finals.get(h, {})}
            )
            for h in hooks
        ),
        d_model=vlm.d_model,
        dtype=cfg.dtype,
        corpus={
            **describe_corpus(corpus, cfg.text_column, cfg.split),
            "fingerprint": selection.corpus_fingerprint,
            "n_sentences": selection.n_corpus_sentences,
            "n_tokens": selection.n_corpus_tokens,
            "n_truncated": selection.n_truncated,
            "skipped": dict(selection.skipped),
        },
        counts=Counts.from_json({k: v for k, v in counts.items() if k != "vocab_size"}),
        build=BuildInfo(
            content=cfg.content_options,
            batch_size=cfg.batch_size,
            text_column=cfg.text_column,
            split=cfg.split,
            dedup="token-id prefix (chained SplitMix64 hash)",
            sampling="per-token-id reservoir with seeded prefix-hash keys",
        ),
        hnsw=HnswOptions(
            library="hnswlib",
            space="cosine",
            M=cfg.hnsw_M,
            ef_construction=cfg.ef_construction,
            ef_search=cfg.ef_search,
            # one insertion thread: hnswlib graphs built by several threads differ run to run
            build_threads=1,
            deterministic=True,
        ),
        files={},
    )


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
