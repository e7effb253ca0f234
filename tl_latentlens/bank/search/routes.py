"""Query-sample routes: approximate search that is right for visual-token queries.

Visual tokens are out-of-distribution queries for a graph built from text tokens (their best
cosine to any text token can be ~0.2), the known weak spot of graph indexes in cross-modal
search: hnswlib over the text vectors alone finds only a small share of the true top-10 of a
layer-0 visual token (benchmarks/bench_bank_search.py). Visual tokens are, however, close to *each other*. Routes use that, in the spirit
of query-aware indexes for out-of-distribution queries (RoarGraph, OOD-DiskANN), while keeping
hnswlib as the index library:

* **samples**: query vectors of the kind that will be asked (visual tokens of calibration
  images, at every layer they may come from, plus stored text vectors for text-like queries),
  each with its *exact* top-``L`` stored vectors, computed once;
* an hnswlib index over the samples (sample-to-query search is in-distribution);
* a query takes the lists of its ``probe`` nearest samples, and their union is re-ranked
  exactly against the stored vectors;
* a query whose nearest sample is less similar than ``min_sample_similarity`` is answered by
  exact search instead (it is unlike anything the routes were calibrated on).

Files (``hooks/<hook>/routes/``): ``samples.npy`` (float16 unit rows), ``lists.npy`` (int32
``[n_samples, L]``, most similar first) and ``samples.hnsw``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import hnswlib
import numpy as np
from jaxtyping import Float, Int

from tl_latentlens._io import atomic_save_npy
from tl_latentlens.bank.search.index import load_hnsw

__all__ = [
    "ROUTE_FILES",
    "RouteParams",
    "Routes",
    "lookup_samples",
    "route_candidates",
    "write_routes",
]

logger = logging.getLogger(__name__)

ROUTE_FILES = ("routes/samples.npy", "routes/lists.npy", "routes/samples.hnsw")


@dataclass(frozen=True)
class RouteParams:
    """How routed search runs (recorded in the manifest, chosen by calibration).

    Attributes:
        probe: Nearest samples whose lists are re-ranked per query.
        list_len: Entries of each sample's list that are used (<= the stored length).
        min_sample_similarity: Queries whose nearest sample is less similar go to exact search.
        ef: hnswlib ``ef`` for the sample lookup.
    """

    probe: int = 16
    list_len: int = 128
    min_sample_similarity: float = 0.5
    ef: int = 32

    def __post_init__(self) -> None:
        for name in ("probe", "list_len", "ef"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"RouteParams.{name} must be a positive int, got {value!r}")
        if not -1.0 <= float(self.min_sample_similarity) <= 1.0:
            raise ValueError(
                "RouteParams.min_sample_similarity must be in [-1, 1], got "
                f"{self.min_sample_similarity!r}"
            )

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready fields."""
        return asdict(self)


def write_routes(
    folder: Path,
    samples: Float[np.ndarray, "s d"],
    lists: Int[np.ndarray, "s L"],
    *,
    seed: int = 0,
    M: int = 16,
    ef_construction: int = 100,
) -> None:
    """Write a hook's routes: unit ``samples`` and their exact top-``L`` ``lists``.

    The hnswlib graph over the samples is built single-threaded, so it is reproducible.
    """
    folder = Path(folder) / "routes"
    folder.mkdir(parents=True, exist_ok=True)
    unit = samples / np.maximum(np.linalg.norm(samples, axis=1, keepdims=True), 1e-30)
    unit16 = unit.astype(np.float16)
    index = hnswlib.Index(space="ip", dim=unit.shape[1])
    index.init_index(
        max_elements=max(1, unit.shape[0]), M=M, ef_construction=ef_construction, random_seed=seed
    )
    index.set_num_threads(1)
    index.add_items(unit16.astype(np.float32), np.arange(unit.shape[0]), num_threads=1)
    atomic_save_npy(folder / "samples.npy", unit16)
    atomic_save_npy(folder / "lists.npy", lists.astype(np.int32))
    tmp = folder / f".samples.hnsw.{os.getpid()}.tmp"  # hnswlib writes to a path only
    index.save_index(str(tmp))
    os.replace(tmp, folder / "samples.hnsw")


class Routes:
    """A hook's routes, loaded (small: samples and lists only, never the stored vectors).

    Example:
        >>> routes = Routes(folder, d_model=576)
        >>> picked, nearest = routes.candidates(unit_queries, RouteParams())
    """

    def __init__(self, folder: Path, d_model: int, threads: int = 1) -> None:
        folder = Path(folder) / "routes"
        lists = np.load(folder / "lists.npy", mmap_mode="r", allow_pickle=False)
        self._init(lists, folder / "samples.hnsw", d_model, threads)

    @classmethod
    def from_arrays(
        cls, lists: np.ndarray, index_path: str | os.PathLike, d_model: int, threads: int = 1
    ) -> Routes:
        """Routes from an opened ``lists`` array and the path of ``samples.hnsw``."""
        routes = cls.__new__(cls)
        routes._init(lists, Path(index_path), d_model, threads)
        return routes

    def _init(self, lists: np.ndarray, index_path: Path, d_model: int, threads: int) -> None:
        self.lists = lists
        n = int(lists.shape[0])
        self.index = load_hnsw(index_path, d_model, n, threads, space="ip")
        self.threads = threads
        self.n_samples = n
        #: Identity of the sample graph (the SHA-256 of ``samples.hnsw``, set by the bank):
        #: hooks whose routes share it find the same nearest samples for the same queries.
        self.samples_key: str | None = None

    def lookup(
        self, queries: Float[np.ndarray, "m d"], params: RouteParams
    ) -> tuple[Int[np.ndarray, "m p"], Float[np.ndarray, " m"]]:
        """Per query, its ``probe`` nearest samples and the similarity of the nearest."""
        return lookup_samples(self.index, queries, params, self.threads)

    def candidates(
        self,
        queries: Float[np.ndarray, "m d"],
        params: RouteParams,
        lookup: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[Int[np.ndarray, "m c"], Float[np.ndarray, " m"]]:
        """Per query, its candidate rows (the lists of its nearest samples, concatenated:
        ``-1`` pads, repeats possible) and the similarity of its nearest sample.
        ``lookup``: :meth:`lookup` of the same queries, when the caller has it."""
        return route_candidates(self.index, self.lists, queries, params, self.threads, lookup)


def lookup_samples(
    index: hnswlib.Index, queries: Float[np.ndarray, "m d"], params: RouteParams, threads: int = 1
) -> tuple[Int[np.ndarray, "m p"], Float[np.ndarray, " m"]]:
    """See :meth:`Routes.lookup`."""
    probe = min(params.probe, index.get_current_count())
    index.set_ef(max(params.ef, probe))
    labels, dist = index.knn_query(queries, k=probe, num_threads=threads)
    return labels, (1.0 - dist[:, 0]).astype(np.float32)


def route_candidates(
    index: hnswlib.Index,
    lists: np.ndarray,
    queries: Float[np.ndarray, "m d"],
    params: RouteParams,
    threads: int = 1,
    lookup: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Int[np.ndarray, "m c"], Float[np.ndarray, " m"]]:
    """See :meth:`Routes.candidates`."""
    labels, nearest = (
        lookup if lookup is not None else lookup_samples(index, queries, params, threads)
    )
    width = min(params.list_len, lists.shape[1])
    picked = np.asarray(lists[labels.reshape(-1)])[:, :width].reshape(labels.shape[0], -1)
    return picked, nearest
