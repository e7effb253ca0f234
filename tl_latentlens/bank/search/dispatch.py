"""Per-hook search: the choice between exact search and routes, and what was done.

``method="auto"`` (the default everywhere) answers with exact search unless the hook has routes
whose calibration proved recall@10 >= :data:`RECALL_BAR` on every calibrated query set; on a GPU
it is always exact. Routed queries are re-ranked in groups, and a group whose candidates are
too many for routes to pay (:func:`routes_pay`) is searched exactly instead, as is a query
unlike every sample. Every call reports the method per hook and how many queries went exact
(:class:`HookHits`), so results can say how they were found.

Routes are proven on the calibration's query sets, not on the user's: every routed call audits
itself. A random share of the queries it routed (:data:`AUDIT_SHARE`, at least
:data:`AUDIT_MIN`) is also searched exactly, their tie-aware recall@10 estimates the call's
recall (queries answered exactly count as found), and ``auto`` answers the hook of a call whose
estimate falls below :data:`RECALL_BAR` exactly, with a warning. The share is drawn with a seed
taken from the queries' bytes (or the caller's ``seed``): the same call audits the same queries.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_latentlens.bank.errors import BankQueryError
from tl_latentlens.bank.format.vectors import HookVectors
from tl_latentlens.bank.search.exact import candidate_union, exact_rows, exact_top_k
from tl_latentlens.bank.search.recall import tie_aware_recall_per_query
from tl_latentlens.bank.search.routes import RouteParams, Routes
from tl_latentlens.devices import device_key

__all__ = [
    "AUDIT_MIN",
    "AUDIT_SHARE",
    "RECALL_BAR",
    "audit_size",
    "HookHits",
    "HookSearcher",
    "Method",
    "routes_pay",
]

logger = logging.getLogger(__name__)

Method = Literal["auto", "exact", "routes"]

#: Calibrated recall@10 (against exact search) routes must reach to be used by ``auto``.
RECALL_BAR = 0.98

#: Share of a routed call's queries the audit also searches exactly (see the module docstring).
AUDIT_SHARE = 0.03

#: Fewest queries an audit searches exactly (all routed queries when the call routed fewer).
AUDIT_MIN = 8

#: Neighbours the audit compares (recall@10, the calibration's measure).
AUDIT_K = 10

#: Queries re-ranked together by routes (one decoded union of candidates per group). Each
#: query of a group multiplies the group's whole union, so smaller groups multiply less but
#: gather more rows; 32 was the cheapest size for one image's queries on the demo bank and
#: close to the cheapest for two (benchmarks/bench_routes_batching.py; figures in
#: benchmarks/README.md).
RERANK_GROUP = 32

#: Cost of gathering one candidate row for re-ranking, in query-row products: gathering a
#: 576-wide float32 row costs about as much as 16 query products with it, measured on this
#: project's 2-core CPU (figures in benchmarks/README.md).
GATHER_COST = 16


def routes_pay(n_candidates: int, n_queries: int, n_vectors: int) -> bool:
    """Whether re-ranking ``n_candidates`` rows for ``n_queries`` queries costs less than
    multiplying them with all ``n_vectors`` stored vectors.

    Example:
        >>> routes_pay(10_000, 49, 500_000), routes_pay(60_000, 1, 70_000)
        (True, False)
    """
    return n_candidates * (n_queries + GATHER_COST) < n_vectors * n_queries


def audit_size(n_queries: int, n_routed: int) -> int:
    """Queries a call of ``n_queries`` queries, ``n_routed`` of them routed, audits:
    :data:`AUDIT_SHARE` of the call, at least :data:`AUDIT_MIN`, at most the routed ones.

    Example:
        >>> audit_size(1960, 1500), audit_size(49, 40), audit_size(49, 3)
        (59, 8, 3)
    """
    want = max(AUDIT_MIN, math.ceil(AUDIT_SHARE * n_queries))
    return min(n_routed, want)


def audit_seed(queries: np.ndarray, name: str = "", seed: int | None = None) -> list[int]:
    """Seed of a call's audit draw: the caller's ``seed`` or a checksum of the queries' bytes,
    mixed with the hook's name (each hook of a call audits its own share)."""
    base = int(seed) if seed is not None else zlib.crc32(np.ascontiguousarray(queries).data)
    return [base & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8"))]


@dataclass(frozen=True)
class HookHits:
    """Top-k of one hook for a batch of queries.

    Attributes:
        sims: ``[m, k]`` cosine similarities, most similar first (``-inf`` pads).
        rows: ``[m, k]`` stored-vector rows (``-1`` pads).
        method: ``"exact"`` or ``"routes"`` (``"exact"`` also when the audit of a routed
            ``auto`` call failed and the hook was answered exactly).
        n_exact_fallback: Queries that routes sent to exact search (unlike every sample, or in
            a group whose candidates were too many for routes to pay).
        seconds: Wall time of the search (the audit included).
        audit_recall: Tie-aware recall@10 of the routed answer estimated by the audit (queries
            answered exactly count as found); ``None`` when nothing was routed.
        n_audited: Routed queries the audit also searched exactly.
        audit_failed: The audit's estimate fell below :data:`RECALL_BAR` (``auto`` then
            answered the hook exactly).
        audit_seconds: Wall time of the audit.
    """

    sims: Float[np.ndarray, "m k"]
    rows: Int[np.ndarray, "m k"]
    method: str
    n_exact_fallback: int = 0
    seconds: float = 0.0
    audit_recall: float | None = None
    n_audited: int = 0
    audit_failed: bool = False
    audit_seconds: float = 0.0


class HookSearcher:
    """Search one hook: exact (CPU or device) or routed with exact re-ranking.

    Args:
        vectors: The hook's stored vectors.
        routes: Its routes, if the bank was calibrated.
        route_params: How routes run (from the manifest).
        calibrated_recall: Recall@10 of routes per calibration query set (from the manifest).
        name: The hook's name (for the audit's seed and warnings).
    """

    def __init__(
        self,
        vectors: HookVectors,
        routes: Routes | None = None,
        route_params: RouteParams | None = None,
        calibrated_recall: dict[str, float] | None = None,
        name: str = "",
    ) -> None:
        self.vectors = vectors
        self.name = name
        self._audit_warned = False
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
        audit: bool = True,
        seed: int | None = None,
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
            audit: Audit a routed answer (see the module docstring); calibration, which
                measures routes against exact search itself, turns it off.
            seed: Seed of the audit's draw (default: from the queries' bytes).
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
        if method == "auto" and exact_q.size == m:
            return HookHits(sims, rows, "exact", 0, time.perf_counter() - t0)
        fallback = int(exact_q.size)
        if not audit:
            return HookHits(sims, rows, "routes", fallback, time.perf_counter() - t0)
        routed = np.setdiff1d(np.arange(m), exact_q, assume_unique=True)
        t_audit = time.perf_counter()
        recall, n_audited = self._audit(
            queries, picked, routed, device, resident, device_resident, seed
        )
        failed = recall < RECALL_BAR
        if failed:
            self._warn_audit(recall, n_audited, m, method)
        if failed and method == "auto":
            # the routes failed on these queries: the hook's answer for the call is exact
            s, r = self._exact(queries[routed], k, device, resident, device_resident)
            sims[routed], rows[routed] = s, r
            method, fallback = "exact", 0
        else:
            method = "routes"
        now = time.perf_counter()
        return HookHits(
            sims, rows, method, fallback, now - t0, recall, n_audited, failed, now - t_audit
        )

    def _audit(
        self,
        queries: np.ndarray,
        picked: np.ndarray,
        routed: np.ndarray,
        device: str | torch.device | None,
        resident: bool,
        device_resident: bool,
        seed: int | None,
    ) -> tuple[float, int]:
        """Estimated recall@10 of a call whose ``routed`` queries were re-ranked among their
        ``picked`` candidates (the others were answered exactly), from an exact search of a
        random share of the routed ones; and how many were audited."""
        m = queries.shape[0]
        n = audit_size(m, routed.size)
        if n == 0:
            return 1.0, 0
        rng = np.random.default_rng(audit_seed(queries, self.name, seed))
        chosen = np.sort(rng.choice(routed, size=n, replace=False))
        k10 = min(AUDIT_K, self.vectors.n)
        # a query's routed answer depends only on its own candidates: re-ranking the chosen
        # ones alone at k=10 gives the call's answer for them, extended to ten places
        approx, _ = exact_rows(self.vectors, queries[chosen], picked[chosen], k10)
        truth, _ = self._exact(queries[chosen], k10, device, resident, device_resident)
        per_query = tie_aware_recall_per_query(approx, truth)
        return float(1.0 - routed.size / m * (1.0 - per_query.mean())), int(n)

    def _warn_audit(self, recall: float, n_audited: int, m: int, method: str) -> None:
        """Warn (once per hook, then at INFO) that the audit failed."""
        what = "answered exactly" if method == "auto" else "kept routed (method='routes')"
        log = logger.info if self._audit_warned else logger.warning
        self._audit_warned = True
        log(
            "%s: routes' audited recall@10 %.3f on %d of %d queries is below %.2f: %s. These "
            "queries are unlike the ones the routes were calibrated on; recalibrate with "
            "images like yours (calibrate_bank(bank, vlm, images, prove_on={'mine': "
            "your_images}))",
            self.name or "hook",
            recall,
            n_audited,
            m,
            RECALL_BAR,
            what,
        )

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
