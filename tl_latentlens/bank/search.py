"""Per-hook search: the choice between exact search and routes, and what was done.

``method="auto"`` (the default everywhere) answers with exact search unless the hook has routes
whose calibration proved recall@10 >= :data:`RECALL_BAR` on every calibrated query set *and* the
hook is large enough for routes to pay (:data:`MIN_ROUTED_VECTORS`); on a GPU it is always exact.
Every call reports the method per hook (:class:`HookHits`), so results can say how they were
found.
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
from tl_latentlens.bank.exact import exact_rows, exact_top_k
from tl_latentlens.bank.routes import RouteParams, Routes
from tl_latentlens.bank.vectors import HookVectors

__all__ = [
    "MIN_ROUTED_VECTORS",
    "RECALL_BAR",
    "HookHits",
    "HookSearcher",
    "Method",
]

logger = logging.getLogger(__name__)

Method = Literal["auto", "exact", "routes"]

#: Calibrated recall@10 (against exact search) routes must reach to be used by ``auto``.
RECALL_BAR = 0.98

#: Queries re-ranked together by routes (one decoded union of candidates per group).
RERANK_GROUP = 64

#: Below this many stored vectors ``auto`` searches exactly (cheap, and never wrong).
MIN_ROUTED_VECTORS = 100_000


@dataclass(frozen=True)
class HookHits:
    """Top-k of one hook for a batch of queries.

    Attributes:
        sims: ``[m, k]`` cosine similarities, most similar first (``-inf`` pads).
        rows: ``[m, k]`` stored-vector rows (``-1`` pads).
        method: ``"exact"`` or ``"routes"``.
        n_exact_fallback: Queries that routes sent to exact search (unlike every sample).
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
        if on_device or not self.routes_proven or self.vectors.n < MIN_ROUTED_VECTORS:
            return "exact"
        return "routes"

    def search(
        self,
        queries: Float[np.ndarray, "m d"],
        k: int,
        method: Method = "auto",
        device: str | torch.device | None = None,
        route_params: RouteParams | None = None,
        resident: bool = False,
    ) -> HookHits:
        """Top-``k`` stored vectors of unit float32 ``queries``.

        Args:
            queries: ``[m, d]`` L2-normalised float32.
            k: Neighbours per query.
            method: ``auto`` / ``exact`` / ``routes``.
            device: Torch device for exact search (``None``: CPU).
            route_params: Override the manifest's route parameters for this call.
            resident: Keep the decoded hook in RAM (or on ``device``) for later calls.
        """
        t0 = time.perf_counter()
        chosen = self.choose(method, device)
        k = min(k, self.vectors.n)
        if chosen == "exact":
            sims, rows = self._exact(queries, k, device, resident)
            return HookHits(sims, rows, "exact", 0, time.perf_counter() - t0)
        assert self.routes is not None
        params = route_params or self.route_params
        cands, nearest = self.routes.candidates(queries, params)
        far = nearest < params.min_sample_similarity
        sims = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
        rows = np.full((queries.shape[0], k), -1, dtype=np.int64)
        near = np.flatnonzero(~far)
        if near.size and resident and not self.vectors.is_resident:
            self.vectors.resident()
        # re-rank in groups of queries: the product is [group, union of their candidates]
        for g in range(0, near.size, RERANK_GROUP):
            part = near[g : g + RERANK_GROUP]
            s, r = exact_rows(self.vectors, queries[part], [cands[i] for i in part], k)
            sims[part, : s.shape[1]], rows[part, : r.shape[1]] = s, r
        if far.any():
            s, r = self._exact(queries[far], k, device, resident)
            sims[far], rows[far] = s, r
        return HookHits(sims, rows, "routes", int(far.sum()), time.perf_counter() - t0)

    def _exact(
        self,
        queries: np.ndarray,
        k: int,
        device: str | torch.device | None,
        resident: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cpu" and resident and not self.vectors.is_resident:
            self.vectors.resident()
        cache = self._device_cache.setdefault(str(dev), {}) if resident else None
        return exact_top_k(self.vectors, queries, k, device=dev, device_cache=cache)

    def release(self) -> None:
        """Free resident copies (RAM and device)."""
        self.vectors.drop_resident()
        self._device_cache.clear()
