"""Exact top-k cosine search over one hook's stored vectors, on the CPU or a torch device.

One matrix product per block for all queries of a call (float32 accumulation). Rows and
queries are multiplied in the hook's search space (:meth:`HookVectors.to_search`: the identity
except for ``int8_rotated`` and ``int8_pca``, whose stored rows are never rotated back).

* On the CPU the products run in numpy's BLAS, over views of the resident decoded copy
  (:meth:`HookVectors.resident`) or blocks decoded from the memory-mapped file.
* On a device (or on the CPU when a device cache is given) they run through torch, over views
  of the hook kept on the device (``device_cache``) or over blocks streamed to it
  (:func:`stream_rows`: staged in pinned host memory and copied on a side CUDA stream while
  the device multiplies the block before). Device rows are :meth:`HookVectors.stage_rows`'s:
  a float16 hook stays float16 there (half the memory and transfer) and each block is widened
  to float32 and made unit just before its product, the CPU's rows bit for bit. Products run
  in IEEE float32 (TF32 off for the call).

Ties are broken by the lower row on every device (:func:`block_top_k` and
:func:`top_k_sorted` rank with stable sorts, never by ``torch.topk``'s order), so results do
not depend on chunking or device.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_latentlens.bank.format.vectors import CHUNK_ROWS, RESIDENT_BLOCK, HookVectors
from tl_latentlens.devices import full_float32

__all__ = [
    "block_top_k",
    "candidate_union",
    "exact_rows",
    "exact_top_k",
    "stream_rows",
    "top_k_sorted",
]

logger = logging.getLogger(__name__)

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)
Sims = Float[np.ndarray, "m k"]
Rows = Int[np.ndarray, "m k"]
DeviceCache = dict[str, torch.Tensor]

#: Rows multiplied at once from a hook kept on a device: bounds the float32 block a float16
#: hook is widened into before its product.
DEVICE_BLOCK = 65536


def top_k_sorted(
    sims: Float[torch.Tensor, "m n"], rows: Int[torch.Tensor, "m n"], k: int
) -> tuple[Float[torch.Tensor, "m k"], Int[torch.Tensor, "m k"]]:
    """The ``k`` best of each row of ``sims`` (with matching ``rows``), most similar first,
    equal similarities ordered by the lower row, on any device.

    Example:
        >>> top_k_sorted(torch.tensor([[1.0, 2.0, 2.0]]), torch.tensor([[0, 9, 4]]), 2)
        (tensor([[2., 2.]]), tensor([[4, 9]]))
    """
    k = min(k, sims.shape[1])
    # -0.0 equals 0.0, but a radix sort (CUDA's) orders their bits: every zero becomes +0.0
    # so zeros tie by row as they do on the CPU.
    sims = sims + 0.0
    # Sort by row first, then stably by similarity: ties keep ascending row order.
    by_row = torch.argsort(rows, dim=1, stable=True)
    sims, rows = torch.gather(sims, 1, by_row), torch.gather(rows, 1, by_row)
    order = torch.argsort(sims, dim=1, descending=True, stable=True)[:, :k]
    return torch.gather(sims, 1, order), torch.gather(rows, 1, order)


def exact_top_k(
    hv: HookVectors,
    queries: Float[np.ndarray, "m d"],
    k: int,
    *,
    device: str | torch.device = "cpu",
    chunk_rows: int = CHUNK_ROWS,
    device_cache: DeviceCache | None = None,
) -> tuple[Sims, Rows]:
    """Exact top-``k`` of L2-normalised float32 queries over every stored vector of ``hv``.

    Args:
        hv: The hook's vectors.
        queries: ``[m, d]`` unit rows.
        k: Neighbours per query (clipped to the number of stored vectors).
        device: Where the products run.
        chunk_rows: Rows decoded (or streamed to a device) at once.
        device_cache: When given (a dict owned by the caller), the hook is kept on ``device``
            (:meth:`HookVectors.stage_rows`'s rows under ``"rows"``, and the float16 codec's
            inverse norms under ``"scale"``) and reused by later calls; where the device has
            no room for it, the hook is streamed and the dict stays empty. This is the torch
            path every device runs (the CPU without a cache multiplies in numpy).

    Returns:
        ``(similarities, rows)`` ``[m, k]``, most similar first, ties by the lower row.
    """
    dev = torch.device(device)
    q_np = hv.to_search(queries)
    k = min(k, hv.n)
    if dev.type == "cpu" and device_cache is None:
        # numpy's BLAS for the product: less CPU time than torch's on the CPUs we measured
        # (figures in benchmarks/README.md).
        m = q_np.shape[0]
        src = (
            _views(hv.resident(), m, RESIDENT_BLOCK)
            if hv.is_resident
            else hv.search_chunks(chunk_rows)
        )
        return _merge(((s, _product(q_np, b)) for s, b in src), k, m, dev)
    return _torch_top_k(hv, q_np, k, dev, chunk_rows, device_cache)


def _torch_top_k(
    hv: HookVectors,
    q_np: Float[np.ndarray, "m w"],
    k: int,
    dev: torch.device,
    chunk_rows: int,
    device_cache: DeviceCache | None,
) -> tuple[Sims, Rows]:
    """The torch path of :func:`exact_top_k` (search-space queries, ``k`` already clipped)."""
    q = torch.from_numpy(q_np).to(dev)
    m = q.shape[0]
    if device_cache is not None and "rows" not in device_cache:
        _keep_on_device(hv, dev, device_cache)
    # IEEE float32 products on a GPU: with TF32 (a user's or a library's global setting)
    # neighbour ranks would differ from the CPU's
    with full_float32() if dev.type == "cuda" else contextlib.nullcontext():
        if device_cache:
            rows, scale = device_cache["rows"], device_cache.get("scale")
            blocks = (
                (s, _device_product(q, b, scale, s)) for s, b in _views(rows, m, DEVICE_BLOCK)
            )
            return _merge(blocks, k, m, dev)
        scale = torch.from_numpy(hv.inv_norms).to(dev) if hv.device_scaled else None
        streamed = stream_rows(hv, dev, chunk_rows)
        return _merge(((s, _device_product(q, b, scale, s)) for s, b in streamed), k, m, dev)


def _merge(
    blocks: Iterator[tuple[int, torch.Tensor]], k: int, m: int, dev: torch.device
) -> tuple[Sims, Rows]:
    """Top-``k`` over ``(start, [m, c] similarities)`` blocks, kept on ``dev`` until the end."""
    best_s = torch.empty((m, 0), dtype=torch.float32, device=dev)
    best_r = torch.empty((m, 0), dtype=torch.long, device=dev)
    for start, sims in blocks:
        v, i = block_top_k(sims, min(k, sims.shape[1]))
        best_s = torch.cat([best_s, v], dim=1)
        best_r = torch.cat([best_r, i + start], dim=1)
        if best_s.shape[1] > 4 * k:
            best_s, best_r = top_k_sorted(best_s, best_r, k)
    best_s, best_r = top_k_sorted(best_s, best_r, k)
    return best_s.cpu().numpy(), best_r.cpu().numpy().astype(np.int64)


def _device_product(
    q: Float[torch.Tensor, "m w"],
    block: Float[torch.Tensor, "c w"],
    scale: Float[torch.Tensor, " n"] | None,
    start: int,
) -> Float[torch.Tensor, "m c"]:
    """``q @ block.T`` in float32; a float16 ``block`` is first widened and multiplied by its
    rows' inverse norms (``scale[start:]``), in float32 as :meth:`HookVectors.resident` does."""
    if scale is not None:
        block = block.to(torch.float32).mul_(scale[start : start + block.shape[0], None])
    return q @ block.T


def _keep_on_device(hv: HookVectors, dev: torch.device, cache: DeviceCache) -> None:
    """Fill ``cache`` with the hook's device rows (no decoded host copy is made for it); on
    an out-of-memory error leave it empty, so the search streams instead."""
    try:
        rows = torch.empty((hv.n, hv.width), dtype=hv.device_dtype, device=dev)
        for start, block in stream_rows(hv, dev, CHUNK_ROWS):
            rows[start : start + block.shape[0]].copy_(block)
        scale = torch.from_numpy(hv.inv_norms).to(dev) if hv.device_scaled else None
    except torch.OutOfMemoryError:
        logger.warning(
            "no room on %s for a %d x %d hook (%d bytes); streaming it instead",
            dev,
            hv.n,
            hv.width,
            hv.nbytes_device(),
        )
        return
    cache["rows"] = rows
    if scale is not None:
        cache["scale"] = scale
    logger.info("kept a %d x %d %s hook on %s", hv.n, hv.width, hv.device_dtype, dev)


class _CopyLane:
    """Host-to-device copies of :func:`stream_rows`: on CUDA into pinned buffers, copied
    without blocking on a side stream, ordered against the compute stream by events;
    elsewhere the same calls are plain copies and the events are ``None``."""

    def __init__(self, dev: torch.device) -> None:
        self.cuda = dev.type == "cuda"
        if self.cuda:
            self.main = torch.cuda.current_stream(dev)
            self.side = torch.cuda.Stream(dev)

    def host_buffer(self, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        # pinned only where a CUDA copy reads it (torch's pinned allocator caches these)
        return torch.empty(shape, dtype=dtype, pin_memory=self.cuda)

    def copy(
        self, dst: torch.Tensor, src: torch.Tensor, after: torch.cuda.Event | None
    ) -> torch.cuda.Event | None:
        """Copy ``src`` into ``dst`` once the compute stream has passed ``after``; returns
        the copy's completion event."""
        if not self.cuda:
            dst.copy_(src)
            return None
        if after is not None:
            self.side.wait_event(after)
        with torch.cuda.stream(self.side):
            dst.copy_(src, non_blocking=True)
        return self.side.record_event()

    def compute_waits(self, event: torch.cuda.Event | None) -> None:
        """The compute stream waits for ``event`` (a copy) before its next work."""
        if event is not None:
            self.main.wait_event(event)

    def compute_mark(self) -> torch.cuda.Event | None:
        """An event after the work queued on the compute stream so far."""
        return self.main.record_event() if self.cuda else None

    @staticmethod
    def host_waits(event: torch.cuda.Event | None) -> None:
        """Block this thread until ``event`` (a copy reading a host buffer) is done."""
        if event is not None:
            event.synchronize()


def stream_rows(
    hv: HookVectors, device: str | torch.device, chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, rows on device)`` over the whole hook, :meth:`HookVectors.stage_rows`'s rows
    ``chunk_rows`` at a time, double buffered.

    Each chunk is written straight from the memory-mapped file into one of two host buffers
    (pinned on CUDA) and copied to one of two device buffers on a side stream: the copy of
    chunk ``i + 1`` runs while the caller's products of chunk ``i`` do. Events order the
    reuse of each buffer (a host buffer is refilled once its copy is done, a device buffer
    once the products queued on it are). On a device without CUDA streams the same steps run
    as plain copies. A yielded tensor is valid until the caller asks for the next one.

    Example:
        >>> for start, rows in stream_rows(hv, "cuda"):
        ...     sims = queries @ rows.float().T
    """
    dev = torch.device(device)
    n, size = hv.n, max(1, min(chunk_rows, hv.n))
    starts = list(range(0, n, size))
    lane = _CopyLane(dev)
    shape = (size, hv.width)
    host = [lane.host_buffer(shape, hv.device_dtype) for _ in range(min(2, len(starts)))]
    on_dev = [torch.empty(shape, dtype=hv.device_dtype, device=dev) for _ in host]
    copied: list[torch.cuda.Event | None] = [None] * len(host)
    released: list[torch.cuda.Event | None] = [None] * len(host)

    def stage(c: int) -> None:
        slot, start = c % 2, starts[c]
        stop = min(start + size, n)
        lane.host_waits(copied[slot])  # its previous copy has read the host buffer
        hv.stage_rows(start, stop, host[slot][: stop - start].numpy())
        copied[slot] = lane.copy(
            on_dev[slot][: stop - start], host[slot][: stop - start], released[slot]
        )

    for c in range(len(host)):
        stage(c)
    for c, start in enumerate(starts):
        slot = c % 2
        lane.compute_waits(copied[slot])
        yield start, on_dev[slot][: min(size, n - start)]
        released[slot] = lane.compute_mark()  # the caller has queued its work on this chunk
        if c + 2 < len(starts):
            stage(c + 2)


#: Columns per group whose maximum :func:`block_top_k` looks at first: faster than
#: ``torch.topk`` for small k on one image's real similarity block, without 64's loss at large
#: k (benchmarks/bench_exact_scan.py; figures in benchmarks/README.md).
TOPK_GROUP = 32


def block_top_k(
    sims: Float[torch.Tensor, "m n"], k: int
) -> tuple[Float[torch.Tensor, "m k"], Int[torch.Tensor, "m k"]]:
    """The ``k`` largest similarities of each row with their columns (lower columns first
    among equal values, as :func:`top_k_sorted` orders them, on any device), in a fraction of
    ``torch.topk``'s time on the CPU.

    Each row's columns are taken in groups of :data:`TOPK_GROUP`. If ``t`` is the row's
    ``k``-th largest group maximum, ``k`` groups hold a value >= ``t``, so the row's ``k``-th
    largest value is >= ``t`` and each of its ``k`` largest values (ties included) lies in a
    group whose maximum is >= ``t``: only those groups' columns (and the ragged tail) are
    ranked, by :func:`top_k_sorted`. Which groups ``torch.topk`` returns among equal maxima
    does not matter: every group at or above ``t`` is taken. A block too narrow for groups to
    pay is ranked whole.

    Example:
        >>> v, i = block_top_k(torch.randn(4, 1000), 5)
    """
    m, n = sims.shape
    dev = sims.device
    groups = n // TOPK_GROUP
    if groups <= 2 * (k + 1):
        return top_k_sorted(sims, torch.arange(n, device=dev).expand(m, -1), k)
    head = groups * TOPK_GROUP
    maxima = sims[:, :head].reshape(m, groups, TOPK_GROUP).amax(dim=2)
    t = torch.topk(maxima, k, dim=1, sorted=True).values[:, -1:]
    # every group at or above t (more than k where maxima tie at t)
    wide = int((maxima >= t).sum(dim=1).max())
    which = torch.topk(maxima, wide, dim=1, sorted=False).indices
    picked = (which[:, :, None] * TOPK_GROUP + torch.arange(TOPK_GROUP, device=dev)).reshape(m, -1)
    if head < n:  # the ragged tail is always ranked
        picked = torch.cat([picked, torch.arange(head, n, device=dev).expand(m, -1)], dim=1)
    return top_k_sorted(torch.gather(sims, 1, picked), picked, k)


def _product(q: np.ndarray, block: np.ndarray) -> torch.Tensor:
    out = np.empty((q.shape[0], block.shape[0]), dtype=np.float32)
    np.matmul(q, block.T, out=out)
    return torch.from_numpy(out)


#: Largest ``[queries, rows]`` similarity block (float32 elements: 128 MiB).
MAX_SIMS = 1 << 25


def _views(rows: ArrayOrTensor, m: int, block: int) -> Iterator[tuple[int, ArrayOrTensor]]:
    """Row blocks (views) of ``block`` rows of a resident hook, smaller for big query batches
    so the similarity block stays within :data:`MAX_SIMS`."""
    step = max(4096, min(block, MAX_SIMS // max(m, 1)))
    for start in range(0, rows.shape[0], step):
        yield start, rows[start : start + step]


def candidate_union(candidates: Int[np.ndarray, "m c"], n: int) -> Int[np.ndarray, " u"]:
    """Sorted distinct valid rows (``-1`` pads left out) of ``candidates`` over a hook of ``n``
    stored vectors: a mask over the hook instead of a hash-based :func:`numpy.unique`
    (cheaper for a query group's candidates; benchmarks/README.md)."""
    mask = np.zeros(n + 1, dtype=bool)
    mask[np.asarray(candidates).ravel()] = True  # a -1 pad marks the extra last slot
    mask[n] = False
    return np.flatnonzero(mask)


def exact_rows(
    hv: HookVectors,
    queries: Float[np.ndarray, "m d"],
    candidates: Int[np.ndarray, "m c"],
    k: int,
    union: Int[np.ndarray, " u"] | None = None,
) -> tuple[Sims, Rows]:
    """Exact re-rank: top-``k`` of each query among its own candidate rows.

    ``candidates`` holds each query's rows (``-1`` pads; repeats are harmless). All candidates
    of the call are decoded once (their union) and multiplied by all queries in one product;
    each query then reads only its own candidates' similarities. A query with fewer than
    ``k`` distinct candidates is padded with similarity ``-inf`` and row ``-1``. Ties are
    ordered by the lower row, as in :func:`exact_top_k`. ``union`` (sorted distinct valid
    rows of ``candidates``), when the caller has it, is not computed again.

    Written in numpy: these are small arrays, and small torch operations with several threads
    on a busy CPU cost many times more (figures in benchmarks/README.md).
    """
    m = queries.shape[0]
    rows = np.sort(np.asarray(candidates, dtype=np.int64).reshape(m, -1), axis=1)
    rows[:, 1:][rows[:, 1:] == rows[:, :-1]] = -1  # a row listed twice counts once
    if union is None:
        union = candidate_union(rows, hv.n)
    sims = np.empty((m, union.size + 1), dtype=np.float32)
    np.matmul(hv.to_search(queries), hv.search_rows(union).T, out=sims[:, :-1])
    sims[:, -1] = -np.inf  # the column every pad reads
    # stored row -> its column in ``sims``: a lookup table over the hook (a pad, -1, reads its
    # last slot: the -inf column); cheaper than a binary search of the union per candidate
    col_of = np.full(hv.n + 1, union.size, dtype=np.int32)
    col_of[union] = np.arange(union.size, dtype=np.int32)
    cand = np.take_along_axis(sims, col_of[rows], axis=1)
    kk = min(k + 8, cand.shape[1])  # spare places so ties at the k-th place sort by row
    part = np.argpartition(-cand, kk - 1, axis=1)[:, :kk]
    s, r = np.take_along_axis(cand, part, 1), np.take_along_axis(rows, part, 1)
    order = np.lexsort((r, -s), axis=-1)[:, : min(k, kk)]
    s, r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
    r[np.isinf(s)] = -1
    if s.shape[1] < k:  # fewer candidate places than k
        pad = k - s.shape[1]
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
        r = np.pad(r, ((0, 0), (0, pad)), constant_values=-1)
    return s, r
