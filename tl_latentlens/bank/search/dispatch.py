"""Per-hook search: the choice between exact search and routes, and what was done.

``method="auto"`` (the default everywhere) answers with exact search unless the hook has routes
whose calibration proved recall@10 >= :data:`RECALL_BAR` on every calibrated query set; on a GPU
it is always exact. Routed queries are re-ranked in groups, and a group whose candidates are
too many for routes to pay (:func:`routes_pay`) is searched exactly instead, as is a query
unlike every sample. Every call reports the method per hook and how many queries went exact
(:class:`HookHits`), so results can say how they were found.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_latentlens.bank.errors import BankQueryError
from tl_latentlens.bank.format.vectors import HookVectors
from tl_latentlens.bank.search.exact import candidate_union, exact_rows, exact_top_k
from tl_latentlens.bank.search.routes import RouteParams, Routes
from tl_latentlens.devices import device_key

__all__ = [
    "RECALL_BAR",
    "HookHits",
    "HookSearcher",
    "Method",
    "routes_pay",
]

logger = logging.getLogger(__name__)

Method = Literal["auto", "exact", "routes"]

#: Calibrated recall@10 (against exact search) routes must reach to be used by ``auto``.
RECALL_BAR = 0.98

#: Queries re-ranked together by routes (one decoded union of candidates per group). Each
#: query of a group multiplies the group's whole union, so smaller groups multiply less but
#: gather more rows; measured on the demo bank (cross-layer visual queries x 10 hooks, 1 thread,
#: CPU time; benchmarks/bench_routes_batching.py): 490 queries, k=5: groups of 8: 748 ms,
#: 16: 597, 32: 543, 64: 607, 128: 663; 980 queries, k=10: 1835, 1456, 1326, 1319, 1307.
RERANK_GROUP = 32

#: Cost of gathering one candidate row for re-ranking, in query-row products: gathering a
#: 576-wide float32 row (~0.23 us) costs about as much as 16 query products with it
#: (~14 ns each at ~40 GMAC/s), measured on this project's 2-core CPU.
GATHER_COST = 16


def routes_pay(n_candidates: int, n_queries: int, n_vectors: int) -> bool:
    """Whether re-ranking ``n_candidates`` rows for ``n_queries`` queries costs less than
    multiplying them with all ``n_vectors`` stored vectors.

    Example:
        >>> routes_pay(10_000, 49, 500_000), routes_pay(60_000, 1, 70_000)
        (True, False)
    """
    return n_candidates * (n_queries + GATHER_COST) < n_vectors * n_queries


@dataclass(frozen=True)
class HookHits:
    """Top-k of one hook for a batch of queries.

    Attributes:
        sims: ``[m, k]`` cosine similarities, most similar first (``-inf`` pads).
        rows: ``[m, k]`` stored-vector rows (``-1`` pads).
        method: ``"exact"`` or ``"routes"``.
        n_exact_fallback: Queries that routes sent to exact search (unlike every sample, or in
            a group whose candidates were too many for routes to pay).
        seconds: Wall time of the search.
    """

    sims: Float[np.ndarray, "m k"]
    rows: Int[np.ndarray, "m k"]
    method: str
    n_exact_fallback: int = 0
    seconds: float = 0.0


class HookSearcher:
    """Search one hook: exact (CPU or device) or routed with exact re-ranking.

    Args:
        vectors: The hook's stored vectors.
        routes: Its routes, if the bank was calibrated.
        route_params: How routes run (from the manifest).
        calibrated_recall: Recall@10 of routes per calibration query set (from the manifest).
    """

    def __init__(
        self,
        vectors: HookVectors,
        routes: Routes | None = None,
        route_params: RouteParams | None = None,
        calibrated_recall: dict[str, float] | None = None,
    ) -> None:
        self.vectors = vectors
        self.routes = routes
        self.route_params = route_params or RouteParams()
        self.calibrated_recall = dict(calibrated_recall or {})
        #: Hooks kept on devices, one cache per physical device (:func:`device_key`).
        self._device_cache: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def routes_proven(self) -> bool:
        """Whether calibration showed routes meet :data:`RECALL_BAR` on every query set."""
        return (
            self.routes is not None
            and bool(self.calibrated_recall)
            and min(self.calibrated_recall.values()) >= RECALL_BAR
        )

    def choose(self, method: Method, device: str | torch.device | None) -> str:
        """The method ``auto`` resolves to (``exact`` / ``routes``)."""
        if method == "exact":
            return "exact"
        if method == "routes":
            if self.routes is None:
                raise BankQueryError(
                    "this hook has no routes; calibrate the bank (calibrate_bank) or search "
                    "with method='exact'"
                )
            return "routes"
        if method != "auto":
            raise BankQueryError(f"method must be 'auto', 'exact' or 'routes', got {method!r}")
        on_device = device is not None and torch.device(device).type != "cpu"
        if on_device or not self.routes_proven:
            return "exact"
        return "routes"

    def device_nbytes(self, key: str) -> int:
        """Device memory this hook holds on the device named ``key`` (a :func:`device_key`;
        0 when it is not kept there)."""
        return sum(t.nbytes for t in self._device_cache.get(key, {}).values())

    def lookup_key(self, params: RouteParams | None = None) -> tuple | None:
        """Key of this hook's nearest-sample lookups in a ``lookups`` dict (see
        :meth:`search`): hooks with the same sample graph and search beam share them."""
        if self.routes is None or self.routes.samples_key is None:
            return None
        params = params or self.route_params
        return (self.routes.samples_key, max(params.ef, params.probe))

    def search(
        self,
        queries: Float[np.ndarray, "m d"],
        k: int,
        method: Method = "auto",
        device: str | torch.device | None = None,
        route_params: RouteParams | None = None,
        resident: bool = False,
        lookups: dict[tuple, tuple[np.ndarray, np.ndarray]] | None = None,
        *,
        device_resident: bool = False,
    ) -> HookHits:
        """Top-``k`` stored vectors of unit float32 ``queries``.

        Args:
            queries: ``[m, d]`` L2-normalised float32.
            k: Neighbours per query.
            method: ``auto`` / ``exact`` / ``routes``.
            device: Torch device for exact search (``None``: CPU).
            route_params: Override the manifest's route parameters for this call.
            resident: Keep the decoded hook in RAM for later calls on the CPU (exact search
                there, re-ranking routed queries).
            lookups: A dict the caller keeps for one batch of queries across hooks: the
                nearest samples found for a sample graph are stored there and reused by every
                hook whose routes share that graph (cross-layer search looks them up once).
            device_resident: Keep the hook on ``device`` (not the CPU) for later calls, with
                no decoded copy in RAM for it; else it is streamed there on every call (a hook
                already kept there is used either way).
        """
        t0 = time.perf_counter()
        chosen = self.choose(method, device)
        k = min(k, self.vectors.n)
        if chosen == "exact":
            sims, rows = self._exact(queries, k, device, resident, device_resident)
            return HookHits(sims, rows, "exact", 0, time.perf_counter() - t0)
        assert self.routes is not None
        params = route_params or self.route_params
        lookup = None
        if lookups is not None and self.routes.samples_key is not None:
            # a lookup made for a bigger probe holds this one's nearest samples as its first
            # columns (hnswlib searches with ef = max(ef, probe): the same beam for both)
            key = self.lookup_key(params)
            need = min(params.probe, self.routes.n_samples)
            got = lookups.get(key)
            if got is None or got[0].shape[1] < need:
                got = lookups[key] = self.routes.lookup(queries, params)
            lookup = (got[0][:, :need], got[1])
        picked, nearest = self.routes.candidates(queries, params, lookup)
        m = queries.shape[0]
        sims = np.full((m, k), -np.inf, dtype=np.float32)
        rows = np.full((m, k), -1, dtype=np.int64)
        to_exact = [np.flatnonzero(nearest < params.min_sample_similarity)]
        near = np.flatnonzero(nearest >= params.min_sample_similarity)
        if near.size and resident and not self.vectors.is_resident:
            self.vectors.resident()
        # re-rank in groups of queries: the product is [group, union of their candidates]
        for g in range(0, near.size, RERANK_GROUP):
            part = near[g : g + RERANK_GROUP]
            cands = picked[part]
            union = candidate_union(cands, self.vectors.n)
            if method == "auto" and not routes_pay(union.size, part.size, self.vectors.n):
                to_exact.append(part)
                continue
            s, r = exact_rows(self.vectors, queries[part], cands, k, union)
            sims[part, : s.shape[1]], rows[part, : r.shape[1]] = s, r
        exact_q = np.sort(np.concatenate(to_exact))
        if exact_q.size:
            s, r = self._exact(queries[exact_q], k, device, resident, device_resident)
            sims[exact_q], rows[exact_q] = s, r
        # auto that routed nothing was exact search, plainly
        method = "exact" if method == "auto" and exact_q.size == m else "routes"
        fallback = 0 if method == "exact" else int(exact_q.size)
        return HookHits(sims, rows, method, fallback, time.perf_counter() - t0)

    def _exact(
        self,
        queries: np.ndarray,
        k: int,
        device: str | torch.device | None,
        resident: bool,
        device_resident: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cpu":
            if resident and not self.vectors.is_resident:
                self.vectors.resident()
            return exact_top_k(self.vectors, queries, k)
        # "cuda" and "cuda:0" are one GPU: one cache, and the products run on the device named
        # by its key
        key = device_key(dev)
        cache = self._device_cache.get(key)
        if device_resident and cache is None:
            cache = self._device_cache[key] = {}
        # an empty cache is one whose fill found no room on the device: stream unless asked again
        use = cache if device_resident or cache else None
        return exact_top_k(self.vectors, queries, k, device=key, device_cache=use)

    def release(self) -> None:
        """Free resident copies (RAM and device)."""
        self.vectors.drop_resident()
        self._device_cache.clear()
