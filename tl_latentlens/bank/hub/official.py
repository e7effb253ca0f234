"""Import an index saved by the official ``latentlens`` package (PyPI ``latentlens``) as a bank.

The official format (``latentlens.ContextualIndex.save``; the prebuilt indices on the hub for
Llama-3.1, Gemma-2, Qwen2.5, Qwen2.5-VL, Qwen3-VL, Molmo2 … use it: :func:`tl_latentlens.pretrained`
lists them by name, :mod:`.registry`)::

    metadata.json                   {"layers": [1, 2, 4, …], "hidden_dim": 3584}
    layer_<N>/embeddings_cache.pt   torch.save({"embeddings": float16 [n, hidden_dim] (unit rows),
                                                "metadata": [{"token_str", "token_id", "caption",
                                                              "position"}, …]})

Layer ``N`` is Hugging Face ``hidden_states[N]``, which is tl_latentlens layer ``N`` (hook
``hooks.hook_for_layer(N, n_layers)``) for ``N < n_layers``. ``hidden_states[n_layers]`` is taken
*after* the final norm, a tensor no bank hook holds, so such a layer is left out (with a
warning).

The ``.pt`` files are pickles, and unpickling an untrusted file can run arbitrary code:
:func:`import_latentlens` refuses them unless ``trust_pickle=True``, and even then loads them with
``torch.load(weights_only=True)`` (tensors, lists, dicts, strings and numbers only; no code can
run) and falls back to a full unpickle only when that fails, saying so in the log.

The conversion rebuilds the bank's tables: each caption is tokenised with the model's tokenizer
as the official package did (``tokenizer(caption)``, right padding), every entry must find its
token id at its position (entries that do not, e.g. from an index built with left padding or
another tokenizer, are dropped and counted), identical vectors are stored once per hook, and a
few entries are re-encoded with the model to check that the layers map to the right hooks and the
vectors come from this model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from huggingface_hub import hf_hub_download, snapshot_download

from tl_latentlens import hooks as hk
from tl_latentlens._io import FileLock, LockedError, read_json, sha256_file
from tl_latentlens.bank.build.encode import encode_batch, pad_token_id
from tl_latentlens.bank.build.finalize import finalize_hook, remove_raw
from tl_latentlens.bank.build.plan import ENTRY_DTYPE, Plan
from tl_latentlens.bank.build.select import Selection
from tl_latentlens.bank.build.tables import write_tables
from tl_latentlens.bank.errors import (
    BankError,
    BankFormatError,
    BankLockedError,
    BankModelMismatchError,
)
from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format import manifest as mf
from tl_latentlens.bank.format.config import BankConfig
from tl_latentlens.bank.format.store import (
    RaggedReader,
    RaggedWriter,
    file_record,
    publish_dir,
)
from tl_latentlens.bank.hub.registry import UnknownPretrainedError, resolve_source
from tl_latentlens.bank.hub.remote import cache_root
from tl_latentlens.models.base import VLM

__all__ = ["ImportedIndex", "UntrustedPickleError", "import_latentlens", "load_layer_file"]

logger = logging.getLogger(__name__)

CACHE_FILE = "embeddings_cache.pt"
METADATA = "metadata.json"

#: Median cosine between imported vectors and the model's own residuals below which the import
#: is refused (wrong model or layer mapping); float16 storage and bfloat16 builds stay > 0.99.
MIN_COSINE = 0.95


class UntrustedPickleError(BankError):
    """An official index (torch pickles) was given without ``trust_pickle=True``."""


class ImportedIndex(NamedTuple):
    """Where :func:`import_latentlens` put the bank.

    Attributes:
        path: The bank directory.
        written: True when the bank was converted just now (its files were checked as they
            were written), False when ``path`` already held this import.
    """

    path: Path
    written: bool


def _refusal(source: str) -> str:
    return (
        f"{source!r} is an index of the official latentlens package: its layer_N/{CACHE_FILE} "
        "files are Python pickles (torch.save), and unpickling a file can run arbitrary code "
        "hidden in it. Pass trust_pickle=True only if you trust where the files come from; "
        "tl_latentlens then loads them with torch.load(weights_only=True), which cannot run "
        "code, and falls back to a full unpickle only if that fails (it logs which was used)."
    )


def load_layer_file(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """Load one ``embeddings_cache.pt`` (the caller has decided to trust it).

    Returns:
        ``(content, how)``: ``how`` is ``"weights_only"`` (``torch.load(weights_only=True)``:
        no code can run) or ``"full unpickle"`` (the fallback when that fails).
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        how = "weights_only"
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        logger.warning(
            "%s cannot be loaded with torch.load(weights_only=True) (%s); unpickling it fully, "
            "as trust_pickle=True allows",
            path,
            str(err).splitlines()[0][:200],
        )
        obj = torch.load(path, map_location="cpu", weights_only=False)
        how = "full unpickle"
    logger.info("%s: loaded with %s", path, "torch.load(weights_only=True)" if how ==
                "weights_only" else "a full unpickle (weights_only=False)")  # fmt: skip
    if not isinstance(obj, dict) or "embeddings" not in obj or "metadata" not in obj:
        raise BankFormatError(f"{path} is not a latentlens cache (no embeddings/metadata)")
    emb, meta = obj["embeddings"], obj["metadata"]
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or not isinstance(meta, list):
        raise BankFormatError(f"{path}: embeddings must be a 2-D tensor and metadata a list")
    if emb.shape[0] != len(meta):
        raise BankFormatError(f"{path}: {emb.shape[0]} embeddings but {len(meta)} metadata rows")
    return obj, how


def _locate(
    source: str | Path, layers: Sequence[int] | None, hub_options: dict[str, Any]
) -> tuple[Path, str]:
    """The local folder of the index (downloading the needed files of a hub repository) and a
    description of where it came from. ``source`` is a folder or a repository id
    (:func:`~tl_latentlens.bank.hub.registry.resolve_source` has resolved names)."""
    if isinstance(source, Path):
        return source, str(source.resolve())
    meta = Path(hf_hub_download(source, METADATA, **hub_options))
    want = layers if layers is not None else json.loads(meta.read_text())["layers"]
    patterns = [METADATA] + [f"layer_{int(n)}/{CACHE_FILE}" for n in want]
    hub_options = {**hub_options, "revision": meta.parent.name}  # the manifest's commit
    folder = Path(snapshot_download(source, allow_patterns=patterns, **hub_options))
    return folder, f"hf://{source}@{meta.parent.name}"


def import_latentlens(
    name_or_path_or_repo: str | os.PathLike,
    vlm: VLM,
    *,
    trust_pickle: bool = False,
    layers: Sequence[int] | None = None,
    out_dir: str | os.PathLike | None = None,
    dtype: str = "float16",
    overwrite: bool = False,
    check_vectors: int = 8,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> ImportedIndex:
    """Convert an official ``latentlens`` index into a bank directory (no bank is opened here:
    :meth:`Bank.from_latentlens <tl_latentlens.bank.Bank.from_latentlens>` calls this, then
    opens the directory).

    Args:
        name_or_path_or_repo: A folder with ``metadata.json`` and
            ``layer_N/embeddings_cache.pt``, a name of the registry of prebuilt indices
            (:func:`tl_latentlens.pretrained`, e.g. ``"qwen2.5-vl-7b"``) or a hub repository
            id (only the requested layers are downloaded).
        vlm: The model the index was built with (its language model): gives the tokenizer, the
            hook names and ``d_model``, and re-encodes a few entries as a check.
        trust_pickle: Allow loading the pickled ``.pt`` files (required; see the module doc).
        layers: Official layer numbers to import (default: every one in ``metadata.json``).
        out_dir: Bank directory to write (default: under ``$TL_LATENTLENS_CACHE/latentlens-imports``;
            reused when it holds the same import).
        dtype: Storage dtype of the bank (``float16`` is what the official files hold).
        overwrite: Replace a different bank at ``out_dir``.
        check_vectors: Sentences re-encoded with ``vlm`` to check the vectors (0: no check).
        revision: Branch, tag or commit of a hub repository (default: the registry entry's
            pinned revision, else ``main``).
        cache_dir, token, endpoint, local_files_only, force_download: For a hub repository,
            as in :func:`huggingface_hub.snapshot_download`.

    Returns:
        The bank directory (one hook per imported layer) and whether it was written just now.

    Raises:
        UntrustedPickleError: ``trust_pickle`` is False.
        UnknownPretrainedError: ``name_or_path_or_repo`` is no folder, registry name or
            repository id (the message lists the registry's names).
        BankModelMismatchError: ``hidden_dim`` is not the model's ``d_model``, or the vectors
            are not this model's residuals at those layers.
        BankFormatError: The files are not an official index.

    Example:
        >>> path, _ = import_latentlens("indices/qwen2vl", vlm, trust_pickle=True)
        >>> Bank.open(path, vlm).search(visual_vectors, k=5)
    """
    where, entry = resolve_source(name_or_path_or_repo)  # no network: names and paths only
    if entry is not None and entry.format != "latentlens":
        raise UnknownPretrainedError(
            f"{entry.name!r} is a tl_latentlens bank ({entry.repo_id}), not an official "
            f"latentlens index: open it with Bank.from_pretrained({entry.name!r}, vlm)"
        )
    if not trust_pickle:
        raise UntrustedPickleError(_refusal(str(name_or_path_or_repo)))
    BankConfig(dtype=dtype)  # validate early
    if entry is not None:
        revision = revision if revision is not None else entry.revision
        size = f"{entry.size_gb:g} GB for its {len(entry.layers)} layers" if entry.size_gb else (
            "size not stated")  # fmt: skip
        logger.info(
            "pretrained index %r: %s (%s), layers %s, %s%s",
            entry.name, entry.repo_id, entry.model, list(entry.layers), size,
            "" if layers is not None else "; pass layers=[...] to download fewer",
        )  # fmt: skip
    hub_options: dict[str, Any] = dict(
        revision=revision, cache_dir=cache_dir, token=token, endpoint=endpoint,
        local_files_only=local_files_only, force_download=force_download,
    )  # fmt: skip
    folder, source = _locate(where, layers, hub_options)
    meta_path = folder / METADATA
    if not meta_path.is_file():
        raise BankFormatError(f"{folder} has no {METADATA}: not an official latentlens index")
    meta = read_json(meta_path)
    have = sorted(int(n) for n in meta.get("layers", []))
    wanted = sorted(int(n) for n in layers) if layers is not None else have
    if int(meta.get("hidden_dim", -1)) != vlm.d_model:
        raise BankModelMismatchError(
            f"the index {source!r} has hidden_dim {meta.get('hidden_dim')}, the model "
            f"{vlm.fingerprint().get('name')!r} has d_model {vlm.d_model}: it was built with "
            "another model"
            + (f" ({entry.name!r} is an index of {entry.model})" if entry is not None else "")
        )
    missing = [n for n in wanted if not (folder / f"layer_{n}" / CACHE_FILE).is_file()]
    if missing:
        raise BankFormatError(f"{folder} has no layer_N/{CACHE_FILE} for layers {missing}")
    kept = []
    for n in wanted:
        if n < 0 or n > vlm.n_layers:
            raise BankFormatError(f"layer {n} of {source!r} is outside 0..{vlm.n_layers}")
        if n == vlm.n_layers:
            logger.warning(
                "official layer %d is HF hidden_states[%d], taken after the final norm: no bank "
                "hook holds it (layer %d here is before the norm); leaving it out",
                n,
                n,
                n,
            )
            continue
        kept.append(n)
    if not kept:
        raise BankError(f"none of the layers {wanted} of {source!r} can be imported")
    files = {n: folder / f"layer_{n}" / CACHE_FILE for n in kept}
    digest = hashlib.sha256()
    digest.update(meta_path.read_bytes())
    for n, f in files.items():
        digest.update(f"{n}:{sha256_file(f)}".encode())
    digest.update(json.dumps([vlm.fingerprint().get("weights"), dtype]).encode())
    key = digest.hexdigest()
    out = Path(out_dir) if out_dir is not None else (
        cache_root() / "latentlens-imports" / f"{Path(str(where)).name}-{key[:16]}"
    )  # fmt: skip
    out = out.absolute()
    if (out / mf.MANIFEST).is_file():
        try:
            existing = read_json(out / mf.MANIFEST)
        except (OSError, ValueError):
            existing = {}
        if existing.get("corpus", {}).get("fingerprint") == key:
            logger.info("%s already holds this import", out)
            return ImportedIndex(out, written=False)
        if not overwrite:
            raise BankError(
                f"{str(out)!r} holds another bank; pass overwrite=True or another out_dir"
            )
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise BankError(f"{str(out)!r} exists and is not a bank; pass overwrite=True")
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out.with_name(f".{out.name}.lock"))
    try:
        lock.acquire()
    except LockedError as err:
        raise BankLockedError(f"another process writes {str(out)!r} ({err})") from None
    try:
        work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.import-"))
        try:
            stage = _convert(vlm, files, work, dtype, key, source, check_vectors)
            publish_dir(stage, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.release()
    logger.info("imported %s (layers %s) into %s", source, kept, out)
    return ImportedIndex(out, written=True)


def _convert(
    vlm: VLM,
    files: dict[int, Path],
    work: Path,
    dtype: str,
    key: str,
    source: str,
    check_vectors: int,
) -> Path:
    hooks = [hk.hook_for_layer(n, vlm.n_layers) for n in files]
    loaded: dict[int, torch.Tensor] = {}
    how: dict[str, str] = {}
    metadata = None
    for n, f in files.items():
        obj, how[f"layer_{n}"] = load_layer_file(f)
        if metadata is None:
            metadata = obj["metadata"]
        elif obj["metadata"] != metadata:
            raise BankFormatError(
                f"layer {n} of {source!r} stores other entries than layer {next(iter(files))}; a "
                "bank holds the same entries at every hook: import such layers one at a time "
                "(layers=[n], one out_dir each)"
            )
        loaded[n] = obj["embeddings"]
        if loaded[n].shape[1] != vlm.d_model:
            raise BankModelMismatchError(
                f"layer {n} vectors have width {loaded[n].shape[1]}, the model {vlm.d_model}"
            )
    assert metadata is not None
    # ---- sentences and entries, tokenised as the official package did -----------------------
    tok = vlm.tokenizer
    tokenize = _official_tokenization(tok, metadata, source)
    captions: dict[str, int] = {}
    ids_of: list[list[int]] = []
    rows, sid, pos, tid = [], [], [], []
    n_dropped = 0
    for i, m in enumerate(metadata):
        if not isinstance(m, dict) or not isinstance(m.get("caption"), str):
            raise BankFormatError(f"metadata row {i} of {source!r} has no caption")
        caption, p, t = m["caption"], int(m.get("position", -1)), int(m.get("token_id", -1))
        s = captions.get(caption)
        if s is None:
            s = captions[caption] = len(captions)
            ids_of.append(tokenize(caption))
        ids = ids_of[s]
        if not (0 <= p < len(ids) and ids[p] == t):
            # the vector's context is not these ids (left padding, another tokenizer): its
            # sentence cannot be shown, so the entry is left out
            n_dropped += 1
            continue
        rows.append(i)
        sid.append(s)
        pos.append(p)
        tid.append(t)
    if n_dropped:
        logger.warning(
            "%d of %d entries are not at their recorded position under this model's tokenizer "
            "(index built with left padding or another tokenizer?); they are left out",
            n_dropped,
            len(metadata),
        )
    if len(rows) < 0.5 * len(metadata):
        raise BankModelMismatchError(
            f"only {len(rows)} of {len(metadata)} entries of {source!r} match this model's "
            "tokenizer: the index was built with another model"
        )
    # keep only sentences holding entries, in order of first appearance
    used = sorted(set(sid))
    renum = {s: k for k, s in enumerate(used)}
    entries = np.empty(len(rows), dtype=ENTRY_DTYPE)
    entries["sentence_id"] = [renum[s] for s in sid]
    entries["position"] = pos
    entries["token_id"] = tid
    order = np.lexsort((entries["position"], entries["sentence_id"]))  # sentence, then position
    entries = entries[order]
    rows_sorted = np.asarray(rows, dtype=np.int64)[order]
    texts = list(captions)
    spool = work / "spool"
    spool.mkdir()
    tw, iw = RaggedWriter(spool, "texts", np.uint8), RaggedWriter(spool, "ids", np.int32)
    for s in used:
        tw.append(texts[s].encode("utf-8"))
        iw.append(np.asarray(ids_of[s], dtype=np.int32))
    tw.close()
    iw.close()
    n_sent = len(used)
    plan = Plan(
        corpus_index=np.arange(n_sent, dtype=np.int64),
        entries=entries,
        batch_offsets=np.array([0, entries.shape[0]], dtype=np.int64),
    )
    stage = work / "bank"
    stage.mkdir()
    vocab = write_tables(stage, plan, spool, tok)
    # ---- vectors: the official rows in entry order, then the usual per-hook finalisation ----
    raw = codec.raw_codec(dtype)
    finals = {}
    for emb, hook in zip(loaded.values(), hooks):
        folder = stage / mf.hook_dir(hook)
        folder.mkdir(parents=True)
        x = emb.float()[torch.from_numpy(rows_sorted)]
        stored, _, norms = codec.encode(x, raw)
        np.save(folder / "vectors.npy", stored, allow_pickle=False)
        np.save(folder / "norms.npy", norms, allow_pickle=False)
        finals[hook] = finalize_hook(folder, dtype)
        remove_raw(folder)
    if check_vectors:
        _check_vectors(vlm, hooks, stage, entries, loaded, rows_sorted, check_vectors)
    # ---- manifest ----------------------------------------------------------------------------
    cfg = BankConfig(dtype=dtype, max_tokens=512, max_per_token=None)
    selection = Selection(
        sentence=entries["sentence_id"].astype(np.int64),
        position=entries["position"],
        token_id=entries["token_id"],
        n_corpus_sentences=len(captions),
        n_corpus_tokens=len(metadata),
        n_full_types=0,
        corpus_fingerprint=key,
    )
    counts = {
        "n_entries": int(entries.shape[0]),
        "n_sentences": n_sent,
        "n_token_types": int(np.unique(entries["token_id"]).shape[0]),
        "n_full_token_types": 0,
        "vocab_size": vocab,
    }
    manifest = mf.build_manifest(vlm, hooks, cfg, selection, counts, texts, finals)
    imported = {
        "package": "latentlens",
        "source": source,
        "layers": {hk.layer_of(h): h for h in hooks},
        "loaded_with": how,
        "entries_in_index": len(metadata),
        "entries_dropped": n_dropped,
    }
    build = replace(
        manifest.build or mf.BuildInfo(),
        imported_from=imported,
        dedup="as in the official index (token-id prefix, first come per token string)",
        sampling="as in the official index",
    )
    corpus = {**(manifest.corpus or {}), "kind": "latentlens-official-index", "source": source}
    rels = mf.shared_files() + [f for h in hooks for f in mf.hook_files(h, dtype)]
    files = {rel: mf.FileRecord.from_json(file_record(stage / rel)) for rel in rels}
    mf.write_manifest(stage, replace(manifest, corpus=corpus, build=build, files=files))
    return stage


def _official_tokenization(tok: Any, metadata: list[Any], source: str) -> Any:
    """How the index's captions were tokenised: ``tokenizer(caption)`` (what the official
    package calls, truncated to 512 tokens), with or without a leading BOS (a bridge's tokenizer
    may add one the original did not), chosen by which puts the most entries' token ids at their
    recorded positions."""
    bos = tok.bos_token_id

    def plain(text: str) -> list[int]:
        return list(tok(text, truncation=True, max_length=512)["input_ids"])

    def no_bos(text: str) -> list[int]:
        ids = plain(text)
        return ids[1:] if bos is not None and ids[:1] == [bos] else ids

    def with_bos(text: str) -> list[int]:
        ids = plain(text)
        return ids if bos is None or ids[:1] == [bos] else [bos, *ids[:511]]

    sample = [
        m for m in metadata[:500] if isinstance(m, dict) and isinstance(m.get("caption"), str)
    ]
    best, best_hits = plain, -1
    for fn in (plain, no_bos, with_bos):
        hits = 0
        for m in sample:
            ids, p = fn(m["caption"]), int(m.get("position", -1))
            hits += int(0 <= p < len(ids) and ids[p] == int(m.get("token_id", -1)))
        if hits > best_hits:
            best, best_hits = fn, hits
    logger.info(
        "%s: captions tokenised %s (%d of %d sampled entries at their position)",
        source,
        {plain: "as tokenizer(caption)", no_bos: "without BOS", with_bos: "with BOS"}[best],
        best_hits,
        len(sample),
    )
    return best


def _check_vectors(
    vlm: VLM,
    hooks: list[str],
    stage: Path,
    entries: np.ndarray,
    loaded: dict[int, torch.Tensor],
    rows: np.ndarray,
    n_sentences: int,
) -> None:
    """Re-encode the entries of the first ``n_sentences`` sentences with the model and compare
    them with the imported vectors (catches another model or a shifted layer mapping)."""
    stop = int(np.searchsorted(entries["sentence_id"], n_sentences))
    if stop == 0:
        return
    ids = RaggedReader(stage / mf.SENTENCES, "ids", np.int32)
    got, _ = encode_batch(vlm, hooks, entries[:stop], ids, pad_token_id(vlm.tokenizer), "float32")
    for (n, emb), hook in zip(loaded.items(), hooks):
        mine = torch.from_numpy(np.asarray(got[hook][0]))
        theirs = emb.float()[torch.from_numpy(rows[:stop])]
        cos = torch.nn.functional.cosine_similarity(mine, theirs, dim=1)
        median = float(cos.median())
        logger.info("layer %d (%s): median cosine %.5f to the model's residuals", n, hook, median)
        if median < MIN_COSINE:
            raise BankModelMismatchError(
                f"the official layer {n} vectors are not this model's residuals at {hook} "
                f"(median cosine {median:.3f} over {stop} entries): another model or checkpoint"
            )
