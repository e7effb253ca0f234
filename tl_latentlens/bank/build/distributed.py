"""Bank builds over several processes with :mod:`torch.distributed` (``torchrun``).

A build with ``N`` ranks (see :func:`~tl_latentlens.bank.build_bank`, which switches to this
mode when a process group of more than one rank is initialised)::

    torchrun --nproc_per_node=8 -m tl_latentlens build-bank --model M --device cuda corpus.txt out

1. Rank 0 takes the build lock of ``out`` and checks an existing bank. Every rank runs pass 1
   (tokenising and selecting, deterministic for a seed) itself, and the ranks compare a digest of
   what they selected, so ranks that read different corpora fail at once.
2. Rank 0 prepares the work folder ``<out>.partial`` exactly as a single-process build does
   (tables, batch plan, zero-filled raw vector files, ``state.json``).
3. The encoding work is cut into *shards* of ``shard_batches`` batches (the same cut as a
   single-process build, so shard boundaries never depend on ``N``). The shards not yet done are
   dealt to the ranks by estimated cost (padded tokens), and each rank writes each of its shards
   into its own folder ``<out>.partial/shards/s0000012`` (built under a temporary name and
   renamed when complete). Those folders are the ranks' resumable progress: a rerun, with any
   number of ranks, encodes only the shards that have no folder yet.
4. Rank 0 copies the shards into the raw vector files in shard order (recording each in
   ``state.json``, then deleting it), finalises the hooks and publishes the bank atomically,
   exactly as a single-process build. Every batch runs the same forward pass whichever rank
   runs it, so the bank's files are byte-identical to a single-process build's whatever ``N``,
   given the same kernels: the same device type and model dtype (and on CPU the same torch
   thread count per process, since CPU kernels may round differently with more threads).

The ranks exchange only small status messages, over a gloo group (it runs on CPU and GPU ranks
alike); vectors travel through the shared file system, which every rank must see at ``out``
(one machine, or a shared mount across nodes). When a rank fails, every rank stops with a
:class:`DistributedBuildError` naming it: a Python error is reported by the failing rank itself,
a rank whose process died is noticed by the others at the next exchange (its connection closes).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tl_latentlens._io import atomic_write_json, fsync_dir, fsync_tree, read_json, sha256_bytes
from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format import manifest as mf
from tl_latentlens.bank.format.config import BankConfig
from tl_latentlens.bank.build.encode import encode_batch, pad_token_id
from tl_latentlens.bank.errors import BankError, CorruptBankError
from tl_latentlens.bank.build.select import Selection
from tl_latentlens.bank.format.store import RaggedReader
from tl_latentlens.models.base import VLM

__all__ = [
    "DEFAULT_TIMEOUT",
    "LOCAL",
    "DistributedBuildError",
    "RankContext",
    "assign_shards",
    "current_context",
    "encode_shards",
    "has_shard_progress",
    "init_from_env",
    "merge_shards",
    "plan_shards",
    "rank_device",
    "selection_digest",
    "shard_ranges",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a rank waits for the others at one exchange. Ranks wait for the slowest one after
#: encoding and for rank 0's merge and finalisation (long for a paper-size bank); a rank whose
#: process dies is noticed at once, whatever this is.
DEFAULT_TIMEOUT = _dt.timedelta(hours=6)

#: Folder of ``<out>.partial`` holding the ranks' finished shards.
SHARDS = "shards"
_SHARD_META = "shard.json"


class DistributedBuildError(BankError):
    """A multi-rank build stopped because a rank failed or died (the message names it)."""


@dataclass(frozen=True)
class RankContext:
    """This process's place in a multi-rank build and the exchanges between ranks.

    Attributes:
        rank: Global rank (``0`` merges and publishes).
        world_size: Number of ranks.
        local_rank: Rank on this machine (picks the GPU).
        group: The gloo process group used for the exchanges (``None``: the default group).

    Example:
        >>> ctx = current_context()          # None unless torch.distributed runs >1 rank
        >>> ctx.agree("my step", work)       # every rank runs work(); any failure stops all
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def gather(self, obj: Any, step: str) -> list[Any]:
        """Every rank's ``obj`` (a small picklable value), in rank order.

        Raises:
            DistributedBuildError: Another rank's process died or stopped answering.
        """
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj, group=self.group)
        except Exception as err:  # noqa: BLE001 - gloo raises RuntimeError/DistBackendError …
            raise DistributedBuildError(
                f"rank {self.rank}: lost the other ranks during {step!r} (a rank's process "
                f"died, was killed or stopped answering: {str(err).splitlines()[0][:300]}). "
                "Rerun the same command: shards that were complete are kept and not encoded again."
            ) from err
        return out

    def agree(self, step: str, fn: Callable[[], T], share: bool = False) -> T:
        """Run ``fn()`` on every rank, then stop every rank if any of them failed.

        Args:
            step: Name of the step (for messages).
            fn: The rank's work.
            share: Return rank 0's result on every rank (it must then be small and picklable).

        Raises:
            DistributedBuildError: Another rank failed (the message names it and its error);
                a rank whose own ``fn`` failed re-raises its own exception.
        """
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as err:  # noqa: BLE001 - reported to the other ranks first
            error = err
        status = None if error is None else f"{type(error).__name__}: {error}"
        payload = (status, result if share and self.is_main and error is None else None)
        everyone = self.gather(payload, step)
        if error is not None:
            raise error
        failed = [(r, s) for r, (s, _) in enumerate(everyone) if s is not None]
        if failed:
            rank, why = failed[0]
            others = f" (and ranks {[r for r, _ in failed[1:]]})" if len(failed) > 1 else ""
            raise DistributedBuildError(f"rank {rank}{others} failed during {step!r}: {why}")
        return everyone[0][1] if share else result


#: The context of a single-process build.
LOCAL = RankContext()

_GLOO_GROUPS: dict[int, Any] = {}


def current_context() -> RankContext | None:
    """The rank context of the running ``torch.distributed`` job, or ``None`` when no process
    group of more than one rank is initialised (a single-process build).

    With a non-gloo default group (e.g. NCCL), a gloo group for the status exchanges is created
    once; that is a collective call, so every rank must reach it (``build_bank`` does).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world <= 1:
        return None
    group = None
    if dist.get_backend() != "gloo":
        key = id(dist.group.WORLD)
        if key not in _GLOO_GROUPS:
            _GLOO_GROUPS[key] = dist.new_group(backend="gloo", timeout=DEFAULT_TIMEOUT)
        group = _GLOO_GROUPS[key]
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return RankContext(rank=dist.get_rank(), world_size=world, local_rank=local, group=group)


def init_from_env(timeout: _dt.timedelta = DEFAULT_TIMEOUT) -> RankContext | None:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``), with the gloo backend.

    Returns:
        The rank context, or ``None`` outside ``torchrun`` (or with one rank).

    Example:
        >>> ctx = init_from_env()   # in a script started by torchrun --nproc_per_node=2
        >>> ctx.rank, ctx.world_size
        (0, 2)
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_available():  # pragma: no cover - torch without distributed support
        raise DistributedBuildError("this torch build has no torch.distributed support")
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=timeout)
    return current_context()


def rank_device(device: str | None, ctx: RankContext | None) -> str | None:
    """The device of this rank's model.

    ``cuda`` (or no device, which means CUDA when present, as for every loader) becomes
    ``cuda:<LOCAL_RANK mod visible GPUs>``: one GPU per rank, and ranks share GPUs round-robin
    when there are more ranks than GPUs (logged). An explicit ``cuda:K`` or ``cpu`` is kept.

    Raises:
        DistributedBuildError: CUDA was asked for (``cuda`` or ``cuda:K``) but this rank sees
            no such GPU.

    Example:
        >>> rank_device("cuda", RankContext(rank=3, world_size=8, local_rank=3))  # 8 GPUs
        'cuda:3'
    """
    if ctx is None or ctx.world_size <= 1:
        return device
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device is None:
        if n_gpus == 0:
            return None
        device = "cuda"
    parsed = torch.device(device)
    if parsed.type != "cuda":
        return device
    if parsed.index is not None and parsed.index < n_gpus:
        return device
    if n_gpus == 0 or parsed.index is not None:
        raise DistributedBuildError(
            f"rank {ctx.rank} was asked for {device} but sees {n_gpus} CUDA device(s): check "
            "CUDA_VISIBLE_DEVICES, or pass --device cuda (one GPU per rank) or --device cpu"
        )
    if ctx.world_size > n_gpus and ctx.local_rank == 0:
        logger.warning(
            "%d ranks share %d GPU(s) round-robin (ranks on one GPU divide its memory)",
            ctx.world_size,
            n_gpus,
        )
    return f"cuda:{ctx.local_rank % n_gpus}"


def selection_digest(selection: Selection) -> str:
    """SHA-256 of what pass 1 chose (corpus fingerprint and the chosen occurrences)."""
    parts = [
        selection.corpus_fingerprint.encode("ascii"),
        np.ascontiguousarray(selection.sentence, dtype="<i8").tobytes(),
        np.ascontiguousarray(selection.position, dtype="<i4").tobytes(),
        np.ascontiguousarray(selection.token_id, dtype="<i4").tobytes(),
    ]
    return sha256_bytes(b"|".join(parts))


def check_same_selection(ctx: RankContext, selection: Selection) -> None:
    """Raise unless every rank selected the same entries from the same corpus."""
    digests = ctx.gather(selection_digest(selection), "compare pass 1")
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise DistributedBuildError(
            f"ranks {odd} selected other entries than rank 0: every rank must read the same "
            "corpus (same file contents, same --text-column/--split) with the same options"
        )


# ---- shards ----------------------------------------------------------------------------------
def shard_ranges(n_batches: int, shard_batches: int) -> list[tuple[int, int]]:
    """``(first batch, end batch)`` of every shard, in order."""
    return [(s, min(s + shard_batches, n_batches)) for s in range(0, n_batches, shard_batches)]


def _shard_costs(
    entries: np.ndarray, batch_offsets: np.ndarray, ranges: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Estimated cost of each shard: padded tokens (sentences x width) of its batches."""
    sid, pos = np.asarray(entries["sentence_id"]), np.asarray(entries["position"])
    costs = np.zeros(len(ranges), dtype=np.int64)
    for i, (b0, b1) in enumerate(ranges):
        for b in range(b0, b1):
            lo, hi = int(batch_offsets[b]), int(batch_offsets[b + 1])
            if hi > lo:
                n_sent = int(np.count_nonzero(np.diff(sid[lo:hi]))) + 1
                costs[i] += n_sent * (int(pos[lo:hi].max()) + 1)
    return costs


def assign_shards(todo: Sequence[int], costs: np.ndarray, world_size: int) -> list[list[int]]:
    """Deal shards to ranks: the costliest first, each to the least loaded rank (ties: the
    lowest rank), so every rank gets about the same work. Deterministic.

    Example:
        >>> assign_shards([0, 1, 2, 3], np.array([8, 5, 4, 3]), 2)
        [[0, 3], [1, 2]]
    """
    load = [0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for s in sorted(todo, key=lambda s: (-int(costs[s]), s)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        out[r].append(s)
        load[r] += int(costs[s])
    return [sorted(x) for x in out]


def _shard_dir(work: Path, shard: int) -> Path:
    return work / SHARDS / f"s{shard:07d}"


def _complete_shards(work: Path) -> set[int]:
    """Shards whose folder is complete (it was renamed into place with its metadata)."""
    root = work / SHARDS
    if not root.is_dir():
        return set()
    out = set()
    for path in root.iterdir():
        if path.name.startswith("s") and (path / _SHARD_META).is_file():
            try:
                out.add(int(path.name[1:]))
            except ValueError:
                continue
    return out


def _done_shards(work: Path, state: dict[str, Any], ranges: Sequence[tuple[int, int]]) -> set[int]:
    """Shards whose rows are in the raw files (a single-process prefix or merged) or in a
    complete shard folder."""
    prefix = {i for i, (_, b1) in enumerate(ranges) if b1 <= state["batches_done"]}
    return prefix | set(state.get("merged", [])) | _complete_shards(work)


def has_shard_progress(work: Path, state: dict[str, Any]) -> bool:
    """Whether an interrupted multi-rank build left shards or merged ones in ``work``."""
    return bool(state.get("merged")) or bool(_complete_shards(work))


def plan_shards(
    work: Path, state: dict[str, Any], cfg: BankConfig, world_size: int
) -> list[list[int]]:
    """The shards still to encode, dealt to ``world_size`` ranks (call on rank 0 only: it also
    removes the temporary folders of shards that a dead rank left unfinished)."""
    root = work / SHARDS
    root.mkdir(exist_ok=True)
    for path in root.iterdir():
        if path.name.startswith("."):  # a shard being written when its rank died
            shutil.rmtree(path, ignore_errors=True)
    offsets = np.load(work / "batch_offsets.npy")
    ranges = shard_ranges(int(offsets.shape[0]) - 1, cfg.shard_batches)
    done = _done_shards(work, state, ranges)
    todo = [i for i in range(len(ranges)) if i not in done]
    entries = np.load(work / "bank" / mf.ENTRIES, mmap_mode="r")
    costs = _shard_costs(entries, offsets, ranges)
    plan = assign_shards(todo, costs, world_size)
    logger.info(
        "%d of %d shards done; %d to encode on %d rank(s) (%s)",
        len(done),
        len(ranges),
        len(todo),
        world_size,
        ", ".join(f"rank {r}: {len(p)} shards, {int(costs[p].sum())} padded tokens"
                  for r, p in enumerate(plan)),
    )  # fmt: skip
    return plan


def encode_shards(
    ctx: RankContext,
    vlm: VLM,
    hooks: Sequence[str],
    work: Path,
    cfg: BankConfig,
    shards: Sequence[int],
) -> int:
    """Encode this rank's ``shards`` into shard folders; returns the tokens run."""
    stage = work / "bank"
    offsets = np.load(work / "batch_offsets.npy")
    ranges = shard_ranges(int(offsets.shape[0]) - 1, cfg.shard_batches)
    entries = np.load(stage / mf.ENTRIES, mmap_mode="r")
    sentence_ids = RaggedReader(stage / mf.SENTENCES, "ids", np.int32)
    pad_id = pad_token_id(vlm.tokenizer)
    raw = codec.raw_codec(cfg.dtype)
    n_batches = sum(ranges[s][1] - ranges[s][0] for s in shards)
    tokens, t0 = 0, time.perf_counter()
    bar = tqdm(
        total=n_batches,
        desc=f"bank: encode (rank {ctx.rank}/{ctx.world_size})",
        unit="batch",
        position=ctx.local_rank,
        disable=not cfg.progress,
    )
    try:
        for s in shards:
            b0, b1 = ranges[s]
            lo, hi = int(offsets[b0]), int(offsets[b1])
            out = {
                h: (
                    np.empty((hi - lo, vlm.d_model), dtype=codec.numpy_dtype(raw)),
                    np.empty(hi - lo, dtype="<f4"),
                )
                for h in hooks
            }
            for b in range(b0, b1):
                a, z = int(offsets[b]) - lo, int(offsets[b + 1]) - lo
                rows, n_tok = encode_batch(vlm, hooks, entries[lo + a : lo + z], sentence_ids,
                                           pad_id, raw)  # fmt: skip
                for h, (stored, norms) in rows.items():
                    out[h][0][a:z] = stored
                    out[h][1][a:z] = norms
                tokens += n_tok
                bar.update(1)
                bar.set_postfix_str(f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s")
            _write_shard(work, s, (b0, b1), (lo, hi), list(hooks), out, ctx.rank)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    logger.info(
        "rank %d: %d shards, %d tokens in %.1f s (%.0f tok/s)",
        ctx.rank,
        len(shards),
        tokens,
        seconds,
        tokens / max(seconds, 1e-9),
    )
    return tokens


def _write_shard(
    work: Path,
    shard: int,
    batches: tuple[int, int],
    rows: tuple[int, int],
    hooks: list[str],
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    rank: int,
) -> None:
    """Write one finished shard: into a temporary folder, fsynced, then renamed into place (a
    folder named ``s<shard>`` is always complete)."""
    final = _shard_dir(work, shard)
    tmp = final.with_name(f".{final.name}.rank{rank}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for j, hook in enumerate(hooks):
        vectors, norms = arrays[hook]
        np.save(tmp / f"{j}.vectors.npy", vectors, allow_pickle=False)
        np.save(tmp / f"{j}.norms.npy", norms, allow_pickle=False)
    meta = {"shard": shard, "batches": list(batches), "rows": list(rows), "hooks": hooks,
            "rank": rank}  # fmt: skip
    atomic_write_json(tmp / _SHARD_META, meta)
    fsync_tree(tmp)
    try:
        os.rename(tmp, final)
    except OSError:  # another rank of an earlier run finished the same shard: keep that one
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / _SHARD_META).is_file():
            raise
    fsync_dir(final.parent)


def merge_shards(work: Path, hooks: Sequence[str], cfg: BankConfig, state: dict[str, Any]) -> None:
    """Copy every complete shard into the raw vector files, in shard order (rank 0).

    Each merged shard is recorded in ``state.json`` before its folder is deleted, so an
    interrupted merge resumes without losing or repeating work.

    Raises:
        CorruptBankError: A shard's files do not have the planned shape (the folder is removed,
            so a rerun encodes that shard again).
    """
    stage, state_path = work / "bank", work / "state.json"
    offsets = np.load(work / "batch_offsets.npy")
    ranges = shard_ranges(int(offsets.shape[0]) - 1, cfg.shard_batches)
    done = _done_shards(work, state, ranges)
    missing = [i for i in range(len(ranges)) if i not in done]
    if missing:
        raise DistributedBuildError(
            f"{len(missing)} shards (first: {missing[:5]}) were never written; rerun the build"
        )
    merged = set(state.get("merged", []))
    prefix = {i for i, (_, b1) in enumerate(ranges) if b1 <= state["batches_done"]}
    todo = sorted(_complete_shards(work) - merged - prefix)
    files = {}
    for hook in hooks:
        folder = stage / mf.hook_dir(hook)
        files[hook] = (
            np.load(folder / "vectors.npy", mmap_mode="r+"),
            np.load(folder / "norms.npy", mmap_mode="r+"),
        )
    raw = codec.numpy_dtype(codec.raw_codec(cfg.dtype))
    for s in tqdm(todo, desc="bank: merge shards", unit="shard", disable=not cfg.progress):
        folder = _shard_dir(work, s)
        b0, b1 = ranges[s]
        lo, hi = int(offsets[b0]), int(offsets[b1])
        meta = read_json(folder / _SHARD_META)
        if meta.get("rows") != [lo, hi] or meta.get("hooks") != list(hooks):
            shutil.rmtree(folder, ignore_errors=True)
            raise CorruptBankError(f"shard {s} in {folder} is not the planned shard; rerun")
        for j, hook in enumerate(hooks):
            vec = np.load(folder / f"{j}.vectors.npy", mmap_mode="r", allow_pickle=False)
            nrm = np.load(folder / f"{j}.norms.npy", mmap_mode="r", allow_pickle=False)
            if (
                vec.shape != (hi - lo, files[hook][0].shape[1])
                or vec.dtype != raw
                or (nrm.shape != (hi - lo,))
            ):
                shutil.rmtree(folder, ignore_errors=True)
                raise CorruptBankError(f"shard {s} ({folder}) has malformed files; rerun")
            files[hook][0][lo:hi] = vec
            files[hook][1][lo:hi] = nrm
        for vectors, norms in files.values():
            vectors.flush()
            norms.flush()
        state.setdefault("merged", []).append(s)
        atomic_write_json(state_path, state)
        shutil.rmtree(folder)
    state["batches_done"] = state["n_batches"]
    state["merged"] = []
    atomic_write_json(state_path, state)
    shutil.rmtree(work / SHARDS, ignore_errors=True)
