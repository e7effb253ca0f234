"""The :class:`Bank`: open, validate and search a contextual text bank on disk."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import tempfile
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tl_latentlens import hooks as hk
from tl_latentlens._io import FileLock, LockedError, Stamp, digest_memo, file_stamp, recover_replace
from tl_latentlens.bank.errors import (
    BankModelMismatchError,
    BankQueryError,
    CorruptBankError,
    MissingHookError,
)
from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format import manifest as mf
from tl_latentlens.bank.format.config import Verify
from tl_latentlens.bank.format.store import NpyFormatError, RaggedReader, npy_from_buffer
from tl_latentlens.bank.format.vectors import (
    DEFAULT_RESIDENT_BYTES,
    DEVICE_RESERVE_BYTES,
    DEVICE_SHARE,
    HookVectors,
)
from tl_latentlens.bank.hub import registry
from tl_latentlens.bank.results import Neighbour, SearchReport
from tl_latentlens.bank.search.dispatch import HookHits, HookSearcher, Method
from tl_latentlens.bank.search.query import merge_top_k, prepare_queries
from tl_latentlens.bank.search.routes import RouteParams, Routes
from tl_latentlens.devices import device_key, free_device_bytes

if TYPE_CHECKING:
    from tl_latentlens.models.base import VLM

__all__ = ["Bank", "Verify"]

logger = logging.getLogger(__name__)


class Bank:
    """A contextual text bank: per hook, residuals of corpus tokens searched exactly or by routes.

    Open one with :meth:`open`; build one with :func:`~tl_latentlens.bank.build_bank`.

    An open bank reads a snapshot: every file is memory-mapped at open, so a bank published
    later at the same path (a rebuild) does not change what this object returns.

    Example:
        >>> bank = Bank.open("banks/smollm", vlm)
        >>> hits = bank.search(acts.residuals["blocks.0.hook_resid_pre"], k=5)
        >>> hits[0][0].token, hits[0][0].layer, hits[0][0].highlighted()
    """

    def __init__(
        self,
        root: Path,
        manifest: mf.BankManifest,
        verify: Verify,
        maps: dict[str, Any] | None = None,
        stats: dict[str, Stamp] | None = None,
    ) -> None:
        self.root = root
        self._manifest = manifest
        self._verify = verify
        self._verified: set[str] = set()
        self._hook_vectors: dict[str, HookVectors] = {}
        self._searchers: dict[str, HookSearcher] = {}
        self._vector_of_entry: dict[str, np.ndarray] = {}
        self._sentence_cache: dict[int, tuple[str, ...]] = {}
        #: RAM (bytes) exact search may use to keep hooks decoded between calls.
        self.resident_bytes = DEFAULT_RESIDENT_BYTES
        #: Device memory (bytes, per device) exact search on a device (``device="cuda"``) may
        #: use to keep hooks there between calls, apart from :attr:`resident_bytes`; ``None``:
        #: a share (:data:`~tl_latentlens.bank.format.vectors.DEVICE_SHARE`) of the device's free
        #: memory when the bank first searches there. Either way a hook goes resident only
        #: while the device has it free with room to spare; hooks over the budget are
        #: streamed to the device on every call.
        self.device_resident_bytes: int | None = None
        self._device_budgets: dict[str, int] = {}
        self._streamed_noted: set[tuple[str, str]] = set()
        self._layers = {h.name: h.layer for h in manifest.hooks}
        self._maps = maps if maps is not None else {}
        self._stats = stats if stats is not None else {}
        self._arrays: dict[str, np.ndarray] = {}

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, vlm: VLM | None = None, *, verify: Verify = "lazy") -> Bank:
        """Open and validate a bank directory.

        Args:
            path: The bank directory.
            vlm: When given, the bank must have been built with this model
                (:meth:`check_model`).
            verify: How thoroughly to check file checksums (see :data:`Verify`).

        Raises:
            BankError: No such directory or no manifest.
            BankFormatError: Unreadable, malformed manifest or another format version.
            CorruptBankError: A file is missing, truncated, malformed or corrupted.
            BankModelMismatchError: ``vlm`` is not the bank's model.

        Example:
            >>> bank = Bank.open("banks/smollm2", vlm, verify="full")
        """
        if verify not in ("full", "lazy", "size"):
            raise ValueError(f"verify must be 'full', 'lazy' or 'size', got {verify!r}")
        root = Path(path)
        _finish_interrupted_replace(root)
        manifest = mf.read_manifest(root)
        maps, stats = _map_files(root, manifest)
        bank = cls(root, manifest, verify, maps, stats)
        every = mf.shared_files() + [f for h in bank.hooks for f in bank._hook_files(h)]
        mf.verify_files(root, manifest, every, full=False, opened=bank._bytes)
        if verify != "size":
            bank._check_digests(mf.shared_files())
        if verify == "full":
            for hook in bank.hooks:
                bank._ensure_verified(hook)
        bank._check_shapes()
        if vlm is not None:
            bank.check_model(vlm)
        return bank

    def _bytes(self, rel: str) -> Any:
        """The bytes of bank file ``rel`` as mapped at open."""
        if rel not in self._maps:
            raise CorruptBankError(f"{self.root}: file {rel} is missing")
        return self._maps[rel]

    def _array(self, rel: str) -> np.ndarray:
        """The ``.npy`` bank file ``rel`` as a read-only array over the snapshot (cached)."""
        if rel not in self._arrays:
            try:
                self._arrays[rel] = npy_from_buffer(self._bytes(rel))
            except NpyFormatError as err:
                raise CorruptBankError(f"{self.root}: file {rel} is malformed: {err}") from None
        return self._arrays[rel]

    @contextlib.contextmanager
    def _stable_file(self, rel: str) -> Iterator[str]:
        """A path holding the snapshot's bytes of ``rel``, for libraries that only read paths
        (hnswlib): the file in the bank while it is the one mapped at open, else a temp copy."""
        path = self.root / rel
        try:
            st = os.stat(path)
            same = file_stamp(st) == self._stats.get(rel)
        except OSError:
            same = False
        if same:
            yield str(path)
            return
        logger.warning("%s was replaced since it was opened; reading the opened bank's copy", path)
        fd, tmp = tempfile.mkstemp(prefix=".tl_latentlens-", suffix=f"-{Path(rel).name}")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(memoryview(self._bytes(rel)).cast("B"))
            yield tmp
        finally:
            os.unlink(tmp)

    def _check_shapes(self) -> None:
        """Check every table's dtype, shape and internal consistency (ids in range, offsets
        monotonic), so that no malformed file can crash a later lookup."""
        n, d = self._manifest.counts.n_entries, self.d_model
        bad = self._table_problem(n)
        if bad:
            raise CorruptBankError(f"{self.root}: {bad}; rebuild the bank")
        for hook in self.hooks:
            bad = self._hook_problem(hook, n, d)
            if bad:
                raise CorruptBankError(f"{self.root}: {hook}: {bad}; rebuild the bank")

    def _hook_files(self, hook: str) -> list[str]:
        routes = self._manifest.hook(self.resolve_hook(hook)).routes
        return mf.hook_files(hook, self.dtype, routes=bool(routes))

    def _hook_problem(self, hook: str, n: int, d: int) -> str | None:
        """What is wrong with a hook's files (shapes, dtypes, occurrence table), if anything."""
        folder = mf.hook_dir(hook)
        n_vec = self.n_vectors(hook)
        want = np.dtype(codec.numpy_dtype(self.dtype))
        vec = self._array(f"{folder}/vectors.npy")
        if vec.shape != (n_vec, d) or vec.dtype != want:
            return f"vectors are {vec.dtype} {vec.shape}, expected {want} {(n_vec, d)}"
        norms = self._array(f"{folder}/norms.npy")
        if norms.shape != (n_vec,) or norms.dtype != np.dtype("<f4"):
            return f"norms are {norms.dtype} {norms.shape}, expected float32 {(n_vec,)}"
        off = self._array(f"{folder}/occ_offsets.npy")
        ent = self._array(f"{folder}/occ_entries.npy")
        if off.shape != (n_vec + 1,) or off.dtype != np.dtype("<i8"):
            return f"occ_offsets is {off.dtype} {off.shape}, expected int64 {(n_vec + 1,)}"
        if ent.shape != (n,) or ent.dtype != np.dtype("<i4"):
            return f"occ_entries is {ent.dtype} {ent.shape}, expected int32 {(n,)}"
        if n_vec and (off[0] != 0 or off[-1] != n or (np.diff(off) <= 0).any()):
            return "occ_offsets is not a strictly increasing table from 0 to n_entries"
        if n and (int(ent.min()) < 0 or int(ent.max()) >= n):
            return "occ_entries holds entry rows out of range"
        return codec.params_problem(self.dtype, self._codec_params(hook), n_vec, d)

    def _codec_params(self, hook: str) -> dict[str, np.ndarray]:
        """The codec's parameter arrays of ``hook`` by file name (none for the float codecs)."""
        folder = mf.hook_dir(hook)
        return {name: self._array(f"{folder}/{name}") for name in codec.param_files(self.dtype)}

    def _table_problem(self, n: int) -> str | None:
        e = self.entries
        fields = ("sentence_id", "position", "token_id")
        if e.dtype.names != fields or any(e.dtype[f] != np.dtype("<i4") for f in fields):
            return f"entries.npy has dtype {e.dtype}, expected int32 fields {fields}"
        if e.shape != (n,):
            return f"entries.npy has shape {e.shape}, expected {(n,)}"
        n_sent = self.n_sentences
        for name, reader in (("text", self._texts), ("ids", self._sentence_ids)):
            why = reader.check()
            if why is None and len(reader) != n_sent:
                why = f"{len(reader)} items, the manifest says {n_sent} sentences"
            if why:
                return f"sentences/{name} is malformed ({why})"
        if self._sentence_ids.data.dtype != np.dtype("<i4"):
            return "sentences/ids.bin must hold int32 token ids"
        strings = RaggedReader.from_arrays(
            self._array(f"{mf.TOKENS}/strings.offsets.npy"),
            self._bytes(f"{mf.TOKENS}/strings.bin"),
        )
        why = strings.check()
        if why:
            return f"tokens/strings is malformed ({why})"
        vocab = len(strings)
        if self._array(f"{mf.SENTENCES}/corpus_index.npy").shape != (n_sent,):
            return "sentences/corpus_index.npy does not have one row per sentence"
        special = self._array(f"{mf.TOKENS}/special.npy")
        if special.shape != (vocab,) or special.dtype != np.bool_:
            return (
                f"tokens/special.npy is {special.dtype} {special.shape}, expected bool {(vocab,)}"
            )
        ids = self._sentence_ids
        if ids.data.shape[0] and (int(np.min(ids.data)) < 0 or int(np.max(ids.data)) >= vocab):
            return f"sentences/ids holds token ids outside 0..{vocab - 1}"
        if n:
            sid, pos, tok = (np.asarray(e[f]) for f in fields)
            if sid.min() < 0 or sid.max() >= n_sent:
                return f"entries reference sentences outside 0..{n_sent - 1}"
            lengths = np.diff(np.asarray(ids.offsets))
            if pos.min() < 0 or (pos >= lengths[sid]).any():
                return "entries reference token positions past their sentence's end"
            flat = np.asarray(ids.offsets)[sid] + pos
            if not np.array_equal(np.asarray(ids.data)[flat], tok):
                return "entries' token ids do not match their sentences"
        return None

    def _ensure_verified(self, hook: str) -> None:
        if hook in self._verified:
            return
        if self._verify != "size":
            self._check_digests(self._hook_files(hook))
        self._verified.add(hook)

    def _check_digests(self, paths: list[str]) -> None:
        """SHA-256 check of ``paths`` (as mapped at open). ``"lazy"`` skips a file whose stamp
        at open is one it had when its digest was last confirmed (:class:`DigestMemo`):
        re-hashing every hook on each process start was a visible share of a cold ``explain``
        (``benchmarks/bench_cold_start.py``)."""
        memo = digest_memo() if self._verify == "lazy" else None
        records = self._manifest.files
        todo = list(paths)
        if memo is not None:
            todo = [
                rel
                for rel in todo
                if rel not in records or memo.lookup(self._stats.get(rel)) != records[rel].sha256
            ]
        if not todo:
            return
        mf.verify_files(self.root, self._manifest, todo, full=True, opened=self._bytes)
        if memo is not None:
            memo.record(
                (self._stats[rel], records[rel].sha256) for rel in todo if rel in self._stats
            )

    def check_model(self, vlm: VLM) -> None:
        """Raise unless ``vlm`` has the weights the bank was built with.

        Compares dtype-independent digests of the embedding and of every block up to the
        bank's last hook (see :meth:`tl_latentlens.models.VLM.fingerprint`), not the name: the
        same weights loaded in another dtype or from a local copy are accepted.

        Raises:
            BankModelMismatchError: The message names what differs and how to fix it.
        """
        have, want = self._manifest.model, vlm.fingerprint()
        diffs = mf.model_differences(have, want, self.hooks)
        if diffs:
            raise BankModelMismatchError(
                f"bank {str(self.root)!r} was built with another model ({have.get('name')!r}) "
                f"than the one given ({want.get('name')!r}): " + "; ".join(diffs) + ". Load the "
                "model the bank was built with, or build a bank for this model with "
                "build_bank(vlm, corpus, out_dir) (overwrite=True to replace this one)."
            )
        if have.get("name") != want.get("name"):
            logger.info(
                "bank model %r and given model %r have the same weights",
                have.get("name"),
                want.get("name"),
            )

    # ---- metadata ---------------------------------------------------------------------------
    @property
    def manifest(self) -> mf.BankManifest:
        """The manifest, typed and read-only (:class:`~tl_latentlens.bank.format.manifest.BankManifest`);
        ``bank.manifest.to_json()`` is its JSON object (a copy).

        Example:
            >>> bank.manifest.counts.n_entries, bank.manifest.corpus_fingerprint
        """
        return self._manifest

    @property
    def hooks(self) -> list[str]:
        """Stored hook names, in build order."""
        return list(self._layers)

    @property
    def layers(self) -> dict[str, int | float]:
        """Hook name -> layer (tl_latentlens convention, see :mod:`tl_latentlens.hooks`)."""
        return dict(self._layers)

    @property
    def d_model(self) -> int:
        """Vector width."""
        return int(self._manifest.d_model)

    @property
    def dtype(self) -> str:
        """Storage dtype name."""
        return str(self._manifest.dtype)

    @property
    def n_sentences(self) -> int:
        """Stored sentences."""
        return int(self._manifest.counts.n_sentences)

    def n_entries(self, hook: str | None = None) -> int:
        """Corpus token occurrences stored (every hook stores the same entries)."""
        if hook is not None:
            self.resolve_hook(hook)
        return int(self._manifest.counts.n_entries)

    def n_vectors(self, hook: str | int) -> int:
        """Distinct vectors stored for ``hook`` (identical rows, e.g. every occurrence of a
        token at the input layer, are stored once)."""
        name = self.resolve_hook(hook)
        n_vectors = self._manifest.hook(name).n_vectors
        return int(n_vectors if n_vectors is not None else self.n_entries())

    def hook_info(self, hook: str | int) -> dict[str, Any]:
        """The manifest's record of ``hook`` (layer, distinct vectors, routes calibration) as its
        JSON object (a copy; typed: ``bank.manifest.hook(name)``)."""
        return self._manifest.hook(self.resolve_hook(hook)).to_json()

    def resolve_hook(self, hook: hk.HookKey) -> str:
        """The stored hook for a name, an equivalent name of the same layer, or a layer number
        (:func:`tl_latentlens.hooks.resolve_hook`).

        Raises:
            MissingHookError: The bank stores no such hook/layer (the message lists what it
                stores).
            BankQueryError: ``hook`` is neither a name nor a finite layer number.
        """
        try:
            return hk.resolve_hook(hook, self._layers, where="the bank stores")
        except hk.HookKeyError as err:
            raise BankQueryError(str(err)) from None
        except hk.UnknownHookError as err:
            raise MissingHookError(str(err)) from None

    # ---- tables -----------------------------------------------------------------------------
    @cached_property
    def entries(self) -> np.ndarray:
        """Entries table (memory-mapped): fields ``sentence_id``, ``position``, ``token_id``."""
        return self._array(mf.ENTRIES)

    def vectors(self, hook: str) -> np.ndarray:
        """Distinct stored vectors of ``hook`` (memory-mapped ``[n_vectors, d_model]``, storage
        dtype; decode with :meth:`decoded`)."""
        hook = self.resolve_hook(hook)
        return self._array(f"{mf.hook_dir(hook)}/vectors.npy")

    def norms(self, hook: str) -> np.ndarray:
        """Norms of the stored (decoded) vectors of ``hook`` (memory-mapped float32)."""
        return self._array(f"{mf.hook_dir(self.resolve_hook(hook))}/norms.npy")

    def decoded(self, hook: str, rows: Any = slice(None)) -> np.ndarray:
        """Stored vectors of ``hook`` at ``rows`` as float32 (not normalised)."""
        hv = self.hook_vectors(hook)
        idx = np.arange(hv.n)[rows] if isinstance(rows, slice) else np.asarray(rows)
        return hv.decode(np.atleast_1d(idx), unit=False).reshape(*np.shape(idx), self.d_model)

    @cached_property
    def _entry_fields(self) -> np.ndarray:
        """``[n_entries, 3]`` int32 (sentence_id, position, token_id): plain rows are much
        faster to index than the structured table when building neighbour lists."""
        e = self.entries
        return np.stack([e["sentence_id"], e["position"], e["token_id"]], axis=1)

    def entry_vectors(self, hook: str, entries: Any = slice(None)) -> np.ndarray:
        """The vectors of entry rows ``entries`` (corpus occurrences, rows of
        :attr:`entries`) at ``hook`` as float32: ``[len(entries), d_model]``."""
        name = self.resolve_hook(hook)
        if name not in self._vector_of_entry:
            hv = self.hook_vectors(name)
            off, ent = hv._occurrences()
            owner = np.empty(self.n_entries(), dtype=np.int64)
            owner[np.asarray(ent, dtype=np.int64)] = np.repeat(
                np.arange(hv.n), np.diff(np.asarray(off))
            )
            self._vector_of_entry[name] = owner
        rows = self._vector_of_entry[name][entries]
        return self.decoded(name, np.atleast_1d(rows))

    def hook_vectors(self, hook: str | int) -> HookVectors:
        """Decoded access to ``hook``'s stored vectors (cached per bank object)."""
        name = self.resolve_hook(hook)
        if name not in self._hook_vectors:
            self._ensure_verified(name)
            folder = mf.hook_dir(name)
            self._hook_vectors[name] = HookVectors(
                self._array(f"{folder}/vectors.npy"),
                self._array(f"{folder}/norms.npy"),
                self.dtype,
                self._codec_params(name) or None,
                self._array(f"{folder}/occ_offsets.npy"),
                self._array(f"{folder}/occ_entries.npy"),
            )
        return self._hook_vectors[name]

    def _ragged(self, name: str, dtype: Any) -> RaggedReader:
        return RaggedReader.from_arrays(
            self._array(f"{name}.offsets.npy"), self._bytes(f"{name}.bin"), dtype
        )

    @cached_property
    def _texts(self) -> RaggedReader:
        return self._ragged(f"{mf.SENTENCES}/text", np.uint8)

    @cached_property
    def _sentence_ids(self) -> RaggedReader:
        return self._ragged(f"{mf.SENTENCES}/ids", np.int32)

    @cached_property
    def _token_strings(self) -> list[str]:
        reader = self._ragged(f"{mf.TOKENS}/strings", np.uint8)
        return [reader.text(i) for i in range(len(reader))]

    def sentence(self, i: int) -> str:
        """Text of stored sentence ``i``."""
        return self._texts.text(int(i))

    def sentence_token_ids(self, i: int) -> np.ndarray:
        """Token ids of stored sentence ``i`` as the model saw them (truncated to ``max_tokens``)."""
        return np.asarray(self._sentence_ids[int(i)])

    def sentence_tokens(self, i: int) -> tuple[str, ...]:
        """Tokens of stored sentence ``i`` as strings (cached: neighbour lists repeat them)."""
        i = int(i)
        got = self._sentence_cache.get(i)
        if got is None:
            strings = self._token_strings
            got = tuple(strings[t] for t in self.sentence_token_ids(i).tolist())
            if len(self._sentence_cache) > 100_000:
                self._sentence_cache.clear()
            self._sentence_cache[i] = got
        return got

    def token_string(self, token_id: int) -> str:
        """``tokenizer.decode([token_id])`` as recorded at build time."""
        return self._token_strings[int(token_id)]

    def neighbour(self, hook: str, row: int, similarity: float, max_contexts: int = 8) -> Neighbour:
        """The :class:`Neighbour` of stored vector ``row`` of ``hook``: its first occurrence,
        with how many corpus occurrences share the vector and (up to ``max_contexts``) where
        the others are."""
        occ = self.hook_vectors(hook).occurrences(int(row))
        e = self._entry_fields[int(occ[0])]
        sid, token_id, position = int(e[0]), int(e[2]), int(e[1])
        others = self._entry_fields[occ[1 : 1 + max_contexts]]
        return Neighbour(
            token=self.token_string(token_id),
            token_id=token_id,
            sentence=self.sentence(sid),
            sentence_id=sid,
            position=position,
            sentence_tokens=self.sentence_tokens(sid),
            similarity=float(similarity),
            hook=hook,
            layer=self._layers[hook],
            n_occurrences=int(occ.shape[0]),
            other_contexts=tuple((int(o[0]), int(o[1])) for o in others),
        )

    # ---- search -----------------------------------------------------------------------------
    def searcher(self, hook: str | int) -> HookSearcher:
        """The :class:`~tl_latentlens.bank.search.dispatch.HookSearcher` of ``hook`` (routes loaded when
        the bank was calibrated)."""
        name = self.resolve_hook(hook)
        if name not in self._searchers:
            routes, params, recall = None, None, None
            cal = self._manifest.hook(name).routes
            if cal:
                folder = mf.hook_dir(name)
                with self._stable_file(f"{folder}/routes/samples.hnsw") as path:
                    routes = Routes.from_arrays(
                        self._array(f"{folder}/routes/lists.npy"), path, self.d_model, _threads()
                    )
                record = self._manifest.files.get(f"{folder}/routes/samples.hnsw")
                routes.samples_key = record.sha256 if record is not None else None
                params = RouteParams(**cal["params"])
                recall = dict(cal.get("recall_at_10", {}))
            self._searchers[name] = HookSearcher(
                self.hook_vectors(name), routes, params, recall, name=name
            )
        return self._searchers[name]

    def _search_rows(
        self,
        queries: np.ndarray,
        hook: str,
        k: int,
        method: Method = "auto",
        device: str | torch.device | None = None,
        lookups: dict | None = None,
        seed: int | None = None,
    ) -> HookHits:
        """Top-``k`` stored vectors of L2-normalised float32 ``queries`` in one hook
        (``lookups``, ``seed``: see :meth:`~tl_latentlens.bank.search.dispatch.HookSearcher.search`)."""
        on_device = device is not None and torch.device(device).type != "cpu"
        return self.searcher(hook).search(
            queries,
            k,
            method,
            device,
            resident=self._fits_resident(hook),
            lookups=lookups,
            device_resident=on_device and self._fits_resident(hook, device),
            seed=seed,
        )

    def _shared_lookups(
        self, q: np.ndarray, hooks: list[str], method: Method, device: str | torch.device | None
    ) -> dict:
        """Nearest samples of ``q``, looked up once per sample graph that several of ``hooks``
        route by (cross-layer search: every hook calibrated with the same visual tokens), at
        the biggest probe any of them uses; each hook reads its own probe's first columns."""
        groups: dict[tuple, list[HookSearcher]] = {}
        for name in hooks:
            searcher = self.searcher(name)
            key = searcher.lookup_key()
            if key is not None and searcher.choose(method, device) == "routes":
                groups.setdefault(key, []).append(searcher)
        lookups: dict = {}
        for key, members in groups.items():
            if len(members) > 1:
                widest = max(members, key=lambda s: s.route_params.probe)
                assert widest.routes is not None
                lookups[key] = widest.routes.lookup(q, widest.route_params)
        return lookups

    def _fits_resident(self, hook: str, device: str | torch.device | None = None) -> bool:
        """Whether ``hook`` stays decoded between calls: in RAM (``device`` ``None`` or the
        CPU) within :attr:`resident_bytes`, or on ``device`` within its own budget
        (:meth:`_fits_device`)."""
        if device is not None and torch.device(device).type != "cpu":
            return self._fits_device(hook, torch.device(device))
        hv = self.hook_vectors(hook)
        if hv.is_resident:
            return True
        used = sum(v.nbytes_decoded() for v in self._hook_vectors.values() if v.is_resident)
        return used + hv.nbytes_decoded() <= self.resident_bytes

    def _fits_device(self, hook: str, device: torch.device) -> bool:
        """Keep ``hook`` on ``device`` while the hooks kept there fit the device budget
        (:attr:`device_resident_bytes`) and the device has the hook free with
        :data:`~tl_latentlens.bank.format.vectors.DEVICE_RESERVE_BYTES` to spare. A device that
        reports no free memory follows the budget alone (by default :attr:`resident_bytes`)."""
        key = device_key(device)
        if self.searcher(hook).device_nbytes(key):
            return True
        need = self.hook_vectors(hook).nbytes_device()
        used = sum(s.device_nbytes(key) for s in self._searchers.values())
        free = free_device_bytes(device)
        budget = self.device_resident_bytes
        if budget is None:
            if key not in self._device_budgets:
                share = self.resident_bytes if free is None else int(free * DEVICE_SHARE)
                self._device_budgets[key] = share
                logger.info("device budget for resident hooks on %s: %d bytes", key, share)
            budget = self._device_budgets[key]
        fits = used + need <= budget and (free is None or need + DEVICE_RESERVE_BYTES <= free)
        if not fits and (hook, key) not in self._streamed_noted:
            self._streamed_noted.add((hook, key))
            logger.info(
                "%s (%d bytes) does not fit on %s (budget %d, in use %d, free %s): streamed "
                "on every call",
                hook,
                need,
                key,
                budget,
                used,
                free,
            )
        return fits

    def search(
        self,
        vectors: Any,
        hook: str | int | Sequence[str | int] | None = None,
        k: int = 5,
        *,
        method: Method = "auto",
        device: str | torch.device | None = None,
        seed: int | None = None,
    ) -> SearchReport:
        """Nearest contextual text tokens of each query vector, and how each hook was searched.

        Args:
            vectors: ``[n, d_model]`` or ``[d_model]``, torch or numpy (L2-normalised here).
            hook: One stored hook (or an equivalent name / a layer number); ``None`` (every
                stored hook) or a list searches across hooks: the top ``k`` of all of them,
                merged by similarity, each tagged with its hook and layer.
            k: Neighbours per query (distinct stored vectors; a vector shared by several
                corpus occurrences is returned once, with ``n_occurrences``).
            method: ``"auto"`` (default): exact search, unless the hook has routes whose
                calibration proved recall@10 >= 0.98 and it is large enough for them to pay;
                a routed hook audits itself (a few of its queries are also searched exactly)
                and is answered exactly when the audit falls below the bar. ``"exact"``;
                ``"routes"`` (approximate, needs :func:`calibrate_bank`; audited, never
                replaced by exact search).
            device: Torch device for exact search (``"cuda"``: the products run there; the
                results equal the CPU's, ties included). Hooks stay on the device between
                calls within :attr:`device_resident_bytes`; the others are streamed to it.
            seed: Seed of the audit's draw of queries (default: from the queries' bytes, so
                the same call audits the same queries).

        Returns:
            A :class:`~tl_latentlens.bank.results.SearchReport`: per query row its ``k``
            :class:`Neighbour` (``report[i]``, ``report.neighbours``), most similar first,
            and per searched hook its method, exact fallbacks, audit and seconds.

        Raises:
            BankQueryError: Bad shape/dimension, non-finite or zero queries, ``k <= 0``,
                unknown ``method``.
            MissingHookError: A hook the bank does not store.

        Example:
            >>> report = bank.search(torch.randn(576), hook="blocks.3.hook_resid_post", k=3)
            >>> report[0][0].token, report.methods, report.audit_recall
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
            raise BankQueryError(f"k must be a positive int, got {k!r}")
        if method not in ("auto", "exact", "routes"):
            raise BankQueryError(f"method must be 'auto', 'exact' or 'routes', got {method!r}")
        if hook is None:
            hooks = self.hooks
        elif isinstance(hook, (str, int, float, np.integer, np.floating)):
            hooks = [self.resolve_hook(hook)]
        else:
            hooks = list(dict.fromkeys(self.resolve_hook(h) for h in hook))
            if not hooks:
                raise BankQueryError("hook list is empty")
        q = prepare_queries(vectors, self.d_model)
        if q.shape[0] == 0:
            return SearchReport([], {}, {}, {})
        lookups = self._shared_lookups(q, hooks, method, device)
        hits = {
            name: self._search_rows(q, name, int(k), method, device, lookups, seed)
            for name in hooks
        }
        merged = merge_top_k([(h.sims, h.rows) for h in hits.values()], int(k))
        audited = {name: h for name, h in hits.items() if h.audit_recall is not None}
        return SearchReport(
            neighbours=[
                [self.neighbour(hooks[h], row, sim) for h, row, sim in per if row >= 0]
                for per in merged
            ],
            methods={name: h.method for name, h in hits.items()},
            exact_fallback={name: h.n_exact_fallback for name, h in hits.items()},
            seconds={name: h.seconds for name, h in hits.items()},
            audit_recall={name: float(h.audit_recall) for name, h in audited.items()},  # type: ignore[arg-type]
            audited={name: h.n_audited for name, h in audited.items()},
            audit_failed={name: h.audit_failed for name, h in audited.items()},
        )

    # ---- the hub and the official indices (bank/hub/remote.py, official.py, registry.py) ----
    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        vlm: VLM | None = None,
        *,
        hooks: Sequence[str | int] | None = None,
        revision: str | None = None,
        verify: Verify = "full",
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        endpoint: str | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
    ) -> Bank:
        """Download a bank from the Hugging Face hub (only ``hooks``, names or layer numbers,
        plus the shared tables) and open it, every file checked against the manifest's
        SHA-256. Works offline from the hub cache (``HF_HUB_OFFLINE=1``).

        Args:
            repo_id: ``"org/name"`` of a model repository holding a tl_latentlens bank, or
                the registry name of a published one (:func:`tl_latentlens.pretrained`; an
                official ``latentlens`` index is imported with :meth:`from_latentlens`).
            vlm: When given, the bank must have been built with this model (:meth:`check_model`).
            hooks: Hook names or layer numbers to fetch; ``None`` fetches every hook.
            revision: Branch, tag or commit (default ``main``).
            verify: How the opened bank is checked (see :data:`Verify`).
            cache_dir, token, endpoint, local_files_only, force_download: See
                :func:`tl_latentlens.bank.hub.remote.download_bank`.

        Raises:
            HubBankError: The repository, revision or files cannot be fetched (or, offline,
                are not cached).
            UnknownPretrainedError: ``repo_id`` names an official ``latentlens`` index (the
                message says to use :meth:`from_latentlens`).
            CorruptBankError: A downloaded file does not match the manifest's SHA-256 (the
                message says how to download it again).
            MissingHookError: A requested hook is not in the bank.

        Example:
            >>> bank = Bank.from_pretrained("org/smollm2-bank", vlm, hooks=[0, 16])
        """
        # lazy: huggingface_hub is imported only when the hub is used
        from tl_latentlens.bank.hub import remote as hub

        indices = registry.pretrained()
        entry = indices.find(repo_id) or indices.find_repo(repo_id)
        if entry is not None and entry.format == "latentlens":
            raise registry.UnknownPretrainedError(
                f"{repo_id!r} is an index of the official latentlens package ({entry.repo_id}, "
                f"{entry.model}), not a tl_latentlens bank: import it with "
                f"Bank.from_latentlens({entry.name!r}, vlm, trust_pickle=True)"
            )
        if entry is not None:  # a published bank by its registry name
            repo_id, revision = entry.repo_id, revision or entry.revision
        path = hub.download_bank(
            repo_id, hooks, revision=revision, cache_dir=cache_dir, token=token,
            endpoint=endpoint, local_files_only=local_files_only, force_download=force_download,
        )  # fmt: skip
        try:
            return cls.open(path, vlm, verify=verify)
        except CorruptBankError as err:
            raise CorruptBankError(
                f"{err} (downloaded from the hub repository {repo_id!r}; pass "
                "force_download=True to fetch it again)"
            ) from err

    def push_to_hub(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        endpoint: str | None = None,
        commit_message: str | None = None,
    ) -> str:
        """Upload this bank to the model repository ``repo_id`` (created if missing); returns
        the commit id. ``revision`` names a branch (created when missing); see
        :func:`tl_latentlens.bank.hub.remote.push_bank`.

        Example:
            >>> bank.push_to_hub("me/smollm2-bank")
        """
        # lazy: huggingface_hub is imported only when the hub is used
        from tl_latentlens.bank.hub import remote as hub

        return hub.push_bank(
            self.root, repo_id, revision=revision, private=private, token=token,
            endpoint=endpoint, commit_message=commit_message,
        )  # fmt: skip

    @classmethod
    def from_latentlens(
        cls,
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
    ) -> Bank:
        """Convert an index of the official ``latentlens`` package (``metadata.json`` +
        ``layer_N/embeddings_cache.pt``) into a bank and open it: a local folder, a name of the
        registry of prebuilt indices (:func:`tl_latentlens.pretrained`) or a hub repository id.
        Its files are torch pickles: without ``trust_pickle=True`` this refuses.

        Args:
            name_or_path_or_repo: A folder, a registry name (``"qwen2.5-vl-7b"``) or
                ``"org/name"`` on the hub.
            vlm: The model the index was built with (its tokenizer, hooks and a re-encoding
                check; the opened bank is checked against it too).
            trust_pickle, layers, out_dir, dtype, overwrite, check_vectors, revision,
                cache_dir, token, endpoint, local_files_only, force_download: See
                :func:`tl_latentlens.bank.hub.official.import_latentlens`.

        Raises:
            UnknownPretrainedError: Not a folder, a registry name or a repository id (the
                message lists the registry's names).
            UntrustedPickleError: ``trust_pickle`` is False.
            BankModelMismatchError: The index was built with another model.

        Example:
            >>> bank = Bank.from_latentlens("qwen2.5-vl-7b", vlm, trust_pickle=True,
            ...                             layers=[8, 16])
        """
        # lazy: official imports torch's unpickler, huggingface_hub and the build's writers
        from tl_latentlens.bank.hub import official

        imported = official.import_latentlens(
            name_or_path_or_repo, vlm, trust_pickle=trust_pickle, layers=layers,
            out_dir=out_dir, dtype=dtype, overwrite=overwrite, check_vectors=check_vectors,
            revision=revision, cache_dir=cache_dir, token=token, endpoint=endpoint,
            local_files_only=local_files_only, force_download=force_download,
        )  # fmt: skip
        # a bank written just now was checked while it was written: sizes suffice
        return cls.open(imported.path, vlm, verify="size" if imported.written else "lazy")

    def close(self) -> None:
        """Free resident decoded vectors and loaded routes; they reload on the next search.
        Memory-mapped tables need no closing."""
        for searcher in self._searchers.values():
            searcher.release()
        self._searchers.clear()
        for hv in self._hook_vectors.values():
            hv.drop_resident()

    def __enter__(self) -> Bank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Bank({str(self.root)!r}, model={self._manifest.model.get('name')!r}, "
            f"hooks={len(self.hooks)}, entries={self.n_entries()}, dtype={self.dtype})"
        )


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _finish_interrupted_replace(root: Path) -> None:
    """Complete a replace of ``root`` that a killed build left half done (with its lock)."""
    journal = root.with_name(f".{root.name}.replace.json")
    if not journal.is_file():
        return
    try:
        with FileLock(root.with_name(f".{root.name}.lock")):
            if recover_replace(root):
                logger.warning("finished an interrupted replace of %s", root)
    except LockedError:
        pass  # its builder is alive and will finish it


def _map_files(root: Path, manifest: mf.BankManifest) -> tuple[dict[str, Any], dict[str, Stamp]]:
    """Memory-map every file the manifest lists (read-only; the descriptors are closed at
    once, the mappings keep the files readable even after the directory is replaced), with
    each file's stamp as opened."""
    maps: dict[str, Any] = {}
    stats: dict[str, Stamp] = {}
    for rel in manifest.files:
        try:
            with open(root / rel, "rb") as f:
                st = os.fstat(f.fileno())
                stats[rel] = file_stamp(st)
                maps[rel] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if st.st_size else b""
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue  # reported as missing by verify_files
        except OSError as err:
            raise CorruptBankError(f"{root}: cannot read {rel}: {err}") from err
    return maps, stats
