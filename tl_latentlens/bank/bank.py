"""The :class:`Bank`: open, validate and search a contextual text bank on disk."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tl_latentlens import hooks as hk
from tl_latentlens.bank import index as ix
from tl_latentlens.bank import manifest as mf
from tl_latentlens.bank.errors import (
    BankModelMismatchError,
    BankQueryError,
    CorruptBankError,
    MissingHookError,
)
from tl_latentlens.bank.query import merge_top_k, prepare_queries
from tl_latentlens.bank.results import Neighbour
from tl_latentlens.bank.store import RaggedReader

__all__ = ["Bank", "Verify"]

logger = logging.getLogger(__name__)

#: ``"full"``: hash every file at open; ``"lazy"``: check sizes at open, hash the shared tables
#: at open and a hook's files on its first use; ``"size"``: sizes only.
Verify = Literal["full", "lazy", "size"]


class Bank:
    """A contextual text bank: per hook, residuals of corpus tokens plus an HNSW index.

    Open one with :meth:`open`; build one with :func:`~tl_latentlens.bank.build_bank`.

    Example:
        >>> bank = Bank.open("banks/smollm", vlm)
        >>> hits = bank.search(acts.residuals["blocks.0.hook_resid_pre"], k=5)
        >>> hits[0][0].token, hits[0][0].layer, hits[0][0].highlighted()
    """

    def __init__(self, root: Path, manifest: dict[str, Any], verify: Verify) -> None:
        self.root = root
        self._manifest = manifest
        self._verify = verify
        self._verified: set[str] = set()
        self._indexes: dict[str, Any] = {}
        self._layers = {h["name"]: h["layer"] for h in manifest["hooks"]}

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, vlm: Any = None, *, verify: Verify = "lazy") -> Bank:
        """Open and validate a bank directory.

        Args:
            path: The bank directory.
            vlm: When given, the bank must have been built with this model
                (:meth:`check_model`).
            verify: How thoroughly to check file checksums (see :data:`Verify`).

        Raises:
            BankError: No such directory or no manifest.
            BankFormatError: Unreadable manifest or another format version.
            CorruptBankError: A file is missing, truncated or corrupted.
            BankModelMismatchError: ``vlm`` is not the bank's model.
        """
        if verify not in ("full", "lazy", "size"):
            raise ValueError(f"verify must be 'full', 'lazy' or 'size', got {verify!r}")
        root = Path(path)
        manifest = mf.read_manifest(root)
        bank = cls(root, manifest, verify)
        every = mf.shared_files() + [f for h in bank.hooks for f in mf.hook_files(h, bank.dtype)]
        mf.verify_files(root, manifest, every, full=False)
        if verify != "size":
            mf.verify_files(root, manifest, mf.shared_files(), full=True)
        if verify == "full":
            for hook in bank.hooks:
                bank._ensure_verified(hook)
        bank._check_shapes()
        if vlm is not None:
            bank.check_model(vlm)
        return bank

    def _check_shapes(self) -> None:
        n, d = self._manifest["counts"]["n_entries"], self.d_model
        if self.entries.shape != (n,):
            raise CorruptBankError(
                f"{self.root}: entries.npy has {self.entries.shape[0]} rows, expected {n}"
            )
        for hook in self.hooks:
            shape = self.vectors(hook).shape
            if shape != (n, d):
                raise CorruptBankError(
                    f"{self.root}: {hook} vectors have shape {shape}, expected {(n, d)}"
                )

    def _ensure_verified(self, hook: str) -> None:
        if hook in self._verified:
            return
        if self._verify != "size":
            mf.verify_files(self.root, self._manifest, mf.hook_files(hook, self.dtype), full=True)
        self._verified.add(hook)

    def check_model(self, vlm: Any) -> None:
        """Raise unless ``vlm`` is the model the bank was built with.

        Raises:
            BankModelMismatchError: The message names every differing fingerprint field.
        """
        have, want = self._manifest["model"], vlm.fingerprint()
        diffs = mf.describe_differences(have, want)
        if diffs:
            raise BankModelMismatchError(
                f"bank {str(self.root)!r} was built with a different model; fingerprint fields "
                "differ (bank != given): " + "; ".join(diffs)
            )

    # ---- metadata ---------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest (a copy)."""
        return dict(self._manifest)

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
        return int(self._manifest["d_model"])

    @property
    def dtype(self) -> str:
        """Storage dtype name."""
        return str(self._manifest["dtype"])

    @property
    def n_sentences(self) -> int:
        """Stored sentences."""
        return int(self._manifest["counts"]["n_sentences"])

    def n_entries(self, hook: str | None = None) -> int:
        """Stored vectors of ``hook`` (every hook stores the same entries)."""
        if hook is not None:
            self.resolve_hook(hook)
        return int(self._manifest["counts"]["n_entries"])

    def resolve_hook(self, hook: str | int) -> str:
        """The stored hook for a name, an equivalent name of the same layer, or a layer number.

        Raises:
            MissingHookError: The bank stores no such hook/layer.
        """
        if isinstance(hook, str) and hook in self._layers:
            return hook
        layer = hook if isinstance(hook, (int, float)) else hk.layer_of(hook)
        for name, have in self._layers.items():
            if have == layer:
                return name
        stored = ", ".join(f"{h} (layer {lay})" for h, lay in self._layers.items())
        raise MissingHookError(f"the bank stores no hook for {hook!r}; it stores: {stored}")

    # ---- tables -----------------------------------------------------------------------------
    @cached_property
    def entries(self) -> np.ndarray:
        """Entries table (memory-mapped): fields ``sentence_id``, ``position``, ``token_id``."""
        return np.load(self.root / mf.ENTRIES, mmap_mode="r")

    def vectors(self, hook: str) -> np.ndarray:
        """Stored vectors of ``hook`` (memory-mapped ``[n_entries, d_model]``, storage dtype)."""
        hook = self.resolve_hook(hook)
        return np.load(self.root / mf.hook_dir(hook) / "vectors.npy", mmap_mode="r")

    def norms(self, hook: str) -> np.ndarray:
        """Norms of the stored vectors of ``hook`` (memory-mapped float32)."""
        return np.load(
            self.root / mf.hook_dir(self.resolve_hook(hook)) / "norms.npy", mmap_mode="r"
        )

    def scales(self, hook: str) -> np.ndarray | None:
        """Per-vector scales (codecs that store them) or ``None``."""
        path = self.root / mf.hook_dir(self.resolve_hook(hook)) / "scales.npy"
        return np.load(path, mmap_mode="r") if path.is_file() else None

    def decoded(self, hook: str, rows: Any = slice(None)) -> np.ndarray:
        """Stored vectors of ``hook`` at ``rows`` as float32."""
        from tl_latentlens.bank import codec

        scales = self.scales(hook)
        return codec.decode(
            self.vectors(hook)[rows], None if scales is None else scales[rows], self.dtype
        )

    @cached_property
    def _texts(self) -> RaggedReader:
        return RaggedReader(self.root / mf.SENTENCES, "text", np.uint8)

    @cached_property
    def _sentence_ids(self) -> RaggedReader:
        return RaggedReader(self.root / mf.SENTENCES, "ids", np.int32)

    @cached_property
    def _token_strings(self) -> list[str]:
        reader = RaggedReader(self.root / mf.TOKENS, "strings", np.uint8)
        return [reader.text(i) for i in range(len(reader))]

    def sentence(self, i: int) -> str:
        """Text of stored sentence ``i``."""
        return self._texts.text(int(i))

    def sentence_token_ids(self, i: int) -> np.ndarray:
        """Token ids of stored sentence ``i`` as the model saw them (truncated to ``max_tokens``)."""
        return np.asarray(self._sentence_ids[int(i)])

    def sentence_tokens(self, i: int) -> tuple[str, ...]:
        """Tokens of stored sentence ``i`` as strings."""
        return tuple(self.token_string(t) for t in self.sentence_token_ids(i).tolist())

    def token_string(self, token_id: int) -> str:
        """``tokenizer.decode([token_id])`` as recorded at build time."""
        return self._token_strings[int(token_id)]

    def neighbour(self, hook: str, row: int, similarity: float) -> Neighbour:
        """The :class:`Neighbour` of entry ``row`` of ``hook``."""
        e = self.entries[int(row)]
        sid, token_id = int(e["sentence_id"]), int(e["token_id"])
        return Neighbour(
            token=self.token_string(token_id),
            token_id=token_id,
            sentence=self.sentence(sid),
            sentence_id=sid,
            position=int(e["position"]),
            sentence_tokens=self.sentence_tokens(sid),
            similarity=float(similarity),
            hook=hook,
            layer=self._layers[hook],
        )

    # ---- search -----------------------------------------------------------------------------
    def _index(self, hook: str) -> Any:
        if hook not in self._indexes:
            self._ensure_verified(hook)
            self._indexes[hook] = ix.load_hnsw(
                self.root / mf.hook_dir(hook) / "index.hnsw",
                self.d_model,
                self.n_entries(),
                _threads(),
            )
        return self._indexes[hook]

    def search_rows(
        self, queries: np.ndarray, hook: str, k: int, exact: bool = False, ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of normalised queries in one hook: ``(similarities, entry rows)``."""
        k = min(k, self.n_entries())
        if exact:
            self._ensure_verified(hook)
            return ix.exact_search(
                self.vectors(hook), self.scales(hook), self.norms(hook), self.dtype, queries, k
            )
        ef = int(ef or self._manifest["hnsw"]["ef_search"])
        return ix.hnsw_search(self._index(hook), queries, k, ef, _threads())

    def search(
        self,
        vectors: Any,
        hook: str | int | Sequence[str | int] | None = None,
        k: int = 5,
        exact: bool = False,
        ef: int | None = None,
    ) -> list[list[Neighbour]]:
        """Nearest contextual text tokens of each query vector.

        Args:
            vectors: ``[n, d_model]`` or ``[d_model]``, torch or numpy (L2-normalised here).
            hook: One stored hook (or an equivalent name / a layer number); ``None`` (every
                stored hook) or a list searches across hooks: the top ``k`` of all of them,
                merged by similarity, each tagged with its hook and layer.
            k: Neighbours per query.
            exact: Exact chunked matmul instead of the HNSW index.
            ef: HNSW candidate list size for this call (default: the manifest's ``ef_search``;
                always at least ``k``).

        Returns:
            One list of ``k`` :class:`Neighbour` per query row, most similar first.

        Raises:
            BankQueryError: Bad shape/dimension, non-finite or zero queries, ``k <= 0``.
            MissingHookError: A hook the bank does not store.

        Example:
            >>> bank.search(torch.randn(576), hook="blocks.3.hook_resid_post", k=3)[0]
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
            raise BankQueryError(f"k must be a positive int, got {k!r}")
        if hook is None:
            hooks = self.hooks
        elif isinstance(hook, (str, int)):
            hooks = [self.resolve_hook(hook)]
        else:
            hooks = list(dict.fromkeys(self.resolve_hook(h) for h in hook))
            if not hooks:
                raise BankQueryError("hook list is empty")
        q = prepare_queries(vectors, self.d_model)
        if q.shape[0] == 0:
            return []
        per_hook = [self.search_rows(q, name, int(k), exact, ef) for name in hooks]
        return [
            [self.neighbour(hooks[h], row, sim) for h, row, sim in hits]
            for hits in merge_top_k(per_hook, int(k))
        ]

    def close(self) -> None:
        """Free the loaded HNSW indexes (each holds about its file size in RAM); they reload on
        the next search. Memory-mapped tables need no closing."""
        self._indexes.clear()

    def __enter__(self) -> Bank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Bank({str(self.root)!r}, model={self._manifest['model'].get('name')!r}, "
            f"hooks={len(self.hooks)}, entries={self.n_entries()}, dtype={self.dtype})"
        )


def _threads() -> int:
    return max(1, torch.get_num_threads())
