"""Build options of a contextual text bank, and how thoroughly an open checks it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tl_latentlens.bank.errors import BankError

__all__ = [
    "FORMAT_VERSION",
    "RETIRED_DTYPES",
    "STORAGE_DTYPES",
    "BankConfig",
    "RetiredCodecError",
    "Verify",
    "check_build_dtype",
]

#: On-disk format version written to and required in ``manifest.json``.
FORMAT_VERSION = 2

#: Vector storage dtypes a new bank may be built with: name -> bytes per component.
#: ``int8_pca`` is the one compact codec (unit rows centred, 64 principal coefficients in
#: float16, the rest randomly rotated with one int8 scale per row; recall@10 above the 0.98
#: bar against float32 on real residuals, see :mod:`tl_latentlens.bank.format.codec`).
#: Bytes per component exclude ``int8_pca``'s coefficients (2 P bytes per vector).
STORAGE_DTYPES = {"float32": 4, "float16": 2, "int8_pca": 1}

#: Codecs that existing banks may hold (they open and search as before) but new builds do not
#: offer, with why: name -> reason.
RETIRED_DTYPES = {
    "int8_rotated": "its recall@10 sits at the 0.98 bar on some visual queries",
    "int8": "its recall@10 is below the 0.98 bar",
}


class RetiredCodecError(BankError):
    """A build asked for a codec that only old banks hold (``int8``, ``int8_rotated``); the
    message points to ``int8_pca``."""


def check_build_dtype(dtype: str, where: str = "BankConfig.dtype") -> None:
    """Raise unless ``dtype`` is one a new bank may be built with (:data:`STORAGE_DTYPES`).

    Raises:
        RetiredCodecError: A codec only old banks hold.
        ValueError: An unknown dtype.

    Example:
        >>> check_build_dtype("int8_pca")
    """
    if dtype in RETIRED_DTYPES:
        raise RetiredCodecError(
            f"{where}={dtype!r} is no longer offered for new banks ({RETIRED_DTYPES[dtype]}); "
            "build with dtype='int8_pca', the compact codec (1 byte per component plus 64 "
            "float16 principal coefficients per vector). Banks already stored as "
            f"{dtype!r} still open and search as before."
        )
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"{where} must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")


#: How :meth:`~tl_latentlens.bank.Bank.open` checks a bank. ``"full"``: hash every file at
#: open; ``"lazy"``: check sizes at open, hash the shared tables at open and a hook's files on
#: its first use, except files already hashed (by any process of this user) whose stamp (inode,
#: size, modification and status-change times) has not changed since
#: (:func:`tl_latentlens._io.digest_memo`); ``"size"``: sizes only. Every mode checks the manifest, the tables' structure
#: (shapes, dtypes, offsets, ids in range) and every hnswlib header, so no file can crash the
#: process; only "size" trusts the contents (a flipped byte in a vector or a sentence then goes
#: unnoticed): use it only for banks you built yourself.
Verify = Literal["full", "lazy", "size"]

# Fields that decide what a bank contains (compared to decide whether an existing bank "is" the
# one asked for); the others only decide how the build runs.
_CONTENT_FIELDS = ("max_tokens", "max_per_token", "seed", "dtype")


@dataclass(frozen=True)
class BankConfig:
    """Options of :func:`~tl_latentlens.bank.build_bank`.

    Attributes:
        max_tokens: Truncate each sentence to this many tokens (BOS/special ones included);
            ``None`` keeps whole sentences.
        batch_size: Sentences per forward pass.
        max_per_token: At most this many stored occurrences (distinct prefixes) per token id,
            chosen by seeded reservoir sampling; ``None`` stores every distinct prefix.
        seed: Seed of the reservoir sampling and of the HNSW graph.
        dtype: Vector storage: ``"float16"`` (default), ``"float32"`` or ``"int8_pca"`` (the
            compact codec: 1 byte per component plus 64 float16 principal coefficients per
            vector; tie-aware recall@10 against float32 above the 0.98 bar on real residuals,
            see benchmarks/bench_int8_codecs.py and benchmarks/README.md). ``"int8_rotated"``
            and ``"int8"`` are refused (:class:`RetiredCodecError`): banks stored with them
            still open and search as before.
        pca_components: ``int8_pca``'s principal directions per hook (``None``: 64, or a
            quarter of ``d_model`` when that is smaller). More keep more of each vector exactly
            (a little more recall on real residuals, see benchmarks/README.md) for 2 bytes per
            vector each. Only valid with ``dtype="int8_pca"``.
        hnsw_M: hnswlib graph degree of the routes' sample index (:func:`calibrate_bank`).
        ef_construction: Its build-time candidate list size.
        ef_search: Its query-time candidate list size.
        text_column: Column holding the sentences in ``.jsonl``/``.csv`` files and datasets.
        split: Split to load when the corpus is a Hugging Face hub dataset name.
        shard_batches: Batches per shard; progress is recorded (resumable) after each shard.
        num_threads: Threads for hnswlib search; ``None`` uses every CPU core.
        progress: Show ``tqdm`` progress bars.

    Example:
        >>> cfg = BankConfig(max_per_token=20, dtype="float32")
        >>> cfg.bytes_per_component
        4
    """

    max_tokens: int | None = 64
    batch_size: int = 32
    max_per_token: int | None = 50
    seed: int = 42
    dtype: str = "float16"
    pca_components: int | None = None
    hnsw_M: int = 16
    ef_construction: int = 100
    ef_search: int = 64
    text_column: str = "text"
    split: str = "train"
    shard_batches: int = 16
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {
            "batch_size": self.batch_size,
            "hnsw_M": self.hnsw_M,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "shard_batches": self.shard_batches,
        }
        for opt in ("max_tokens", "max_per_token", "num_threads", "pca_components"):
            if getattr(self, opt) is not None:
                positive[opt] = getattr(self, opt)
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BankConfig.{name} must be a positive int, got {value!r}")
        check_build_dtype(self.dtype)
        if self.pca_components is not None and self.dtype != "int8_pca":
            raise ValueError(
                f"BankConfig.pca_components applies to dtype='int8_pca' only (got dtype="
                f"{self.dtype!r}); drop it or build with dtype='int8_pca'"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"BankConfig.seed must be an int, got {self.seed!r}")

    @property
    def bytes_per_component(self) -> int:
        """Bytes one stored vector component takes."""
        return STORAGE_DTYPES[self.dtype]

    @property
    def threads(self) -> int:
        """Thread count for hnswlib (``num_threads`` or every core)."""
        return self.num_threads or os.cpu_count() or 1

    @property
    def content_options(self) -> dict[str, Any]:
        """The options that decide the bank's content (recorded in the manifest)."""
        out = {name: getattr(self, name) for name in _CONTENT_FIELDS}
        if self.pca_components is not None:  # absent otherwise: older manifests compare equal
            out["pca_components"] = self.pca_components
        return out

    @property
    def resume_options(self) -> dict[str, Any]:
        """Options a resumed build must share with the interrupted one (vectors + batching)."""
        names = ("max_tokens", "max_per_token", "seed", "dtype", "batch_size", "shard_batches")
        out = {name: getattr(self, name) for name in names}
        if self.pca_components is not None:
            out["pca_components"] = self.pca_components
        return out

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready."""
        return asdict(self)
