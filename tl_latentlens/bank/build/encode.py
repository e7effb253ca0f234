"""Pass 2 of a bank build: run the model over the planned batches and store the residuals.

Vectors go straight into preallocated memory-mapped ``.npy`` files in the staging directory,
one contiguous row range per batch. After every shard (``shard_batches`` batches) the files are
flushed and the progress record is replaced atomically, so an interrupted build resumes after
the last finished shard and produces the same bytes as an uninterrupted one.

The model never waits for the disk: one writer thread encodes and stores batch ``b`` while the
model runs batch ``b + 1`` (at most one batch waits, so memory stays bounded), and a shard is
recorded only after every one of its writes has finished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format import manifest as mf
from tl_latentlens.bank.format.config import BankConfig
from tl_latentlens.bank.errors import BankError
from tl_latentlens.bank.format.store import RaggedReader
from tl_latentlens.capture import TextActivations, capture_text_batch
from tl_latentlens.models.base import VLM, TextBatch

__all__ = [
    "allocate_vectors",
    "auto_batch_size",
    "encode_batch",
    "encode_batches",
    "pad_token_id",
    "text_batch",
]

logger = logging.getLogger(__name__)


def allocate_vectors(stage: Path, hooks: Sequence[str], n: int, d: int, dtype: str) -> None:
    """Create every hook's zero-filled raw ``vectors.npy``/``norms.npy`` (``dtype``: the raw
    codec, :func:`~tl_latentlens.bank.format.codec.raw_codec`)."""
    for hook in hooks:
        folder = stage / mf.hook_dir(hook)
        folder.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(
            folder / "vectors.npy", mode="w+", dtype=codec.numpy_dtype(dtype), shape=(n, d)
        ).flush()
        np.lib.format.open_memmap(folder / "norms.npy", mode="w+", dtype="<f4", shape=(n,)).flush()


def text_batch(entries: np.ndarray, sentence_ids: RaggedReader, pad_id: int) -> TextBatch:
    """Right-padded batch of the sentences of ``entries``, cut after their last entry, with
    ``keep`` marking exactly the entries (so capture returns them in ``entries`` order)."""
    sid = entries["sentence_id"]
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    ends = np.r_[starts[1:], sid.shape[0]]
    need = entries["position"][ends - 1].astype(np.int64) + 1
    width = int(need.max())
    n = starts.shape[0]
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    keep = torch.zeros((n, width), dtype=torch.bool)
    positions = torch.full((n, width), -1, dtype=torch.long)
    for r, (a, b, length) in enumerate(zip(starts, ends, need)):
        row = np.asarray(sentence_ids[int(sid[a])][:length], dtype=np.int64)
        ids[r, :length] = torch.from_numpy(row)
        mask[r, :length] = 1
        positions[r, :length] = torch.arange(int(length))
        keep[r, torch.from_numpy(entries["position"][a:b].astype(np.int64))] = True
    return TextBatch(input_ids=ids, attention_mask=mask, keep=keep, positions=positions)


def encode_batches(
    vlm: VLM,
    hooks: Sequence[str],
    stage: Path,
    batch_offsets: np.ndarray,
    cfg: BankConfig,
    start_batch: int,
    on_shard: Callable[[int], None],
) -> None:
    """Run batches ``start_batch …`` and write their vectors; ``on_shard(n_done)`` is called
    after each shard is flushed (it records progress)."""
    entries = np.load(stage / mf.ENTRIES, mmap_mode="r")
    sentence_ids = RaggedReader(stage / mf.SENTENCES, "ids", np.int32)
    pad_id = pad_token_id(vlm.tokenizer)
    files = {}
    for hook in hooks:
        folder = stage / mf.hook_dir(hook)
        files[hook] = [
            np.load(folder / "vectors.npy", mmap_mode="r+"),
            np.load(folder / "norms.npy", mmap_mode="r+"),
        ]
    n_batches = batch_offsets.shape[0] - 1
    tokens_run, t0 = 0, time.perf_counter()
    bar = tqdm(
        total=n_batches,
        initial=start_batch,
        desc="bank: encode (pass 2)",
        unit="batch",
        disable=not cfg.progress,
    )
    raw = codec.raw_codec(cfg.dtype)

    def store(lo: int, hi: int, acts: TextActivations) -> None:
        for hook, (stored, norms) in encode_rows(acts, hooks, raw).items():
            files[hook][0][lo:hi] = stored
            files[hook][1][lo:hi] = norms

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bank-writer")
    pending: Future[None] | None = None
    try:
        for shard_start in range(start_batch, n_batches, cfg.shard_batches):
            shard_end = min(shard_start + cfg.shard_batches, n_batches)
            for b in range(shard_start, shard_end):
                lo, hi = int(batch_offsets[b]), int(batch_offsets[b + 1])
                acts, n_tok = run_batch(vlm, hooks, entries[lo:hi], sentence_ids, pad_id)
                if pending is not None:
                    pending.result()  # one batch in flight: raises the writer's error here
                pending = writer.submit(store, lo, hi, acts)
                tokens_run += n_tok
                bar.update(1)
                bar.set_postfix_str(
                    f"{tokens_run / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s"
                )
            if pending is not None:
                pending.result()
                pending = None
            for arrays in files.values():
                for arr in arrays:
                    arr.flush()
            on_shard(shard_end)
    finally:
        writer.shutdown(wait=True)
        bar.close()


def pad_token_id(tokenizer: Any) -> int:
    """The id used to pad text batches (pad, else EOS, else 0)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


def run_batch(
    vlm: VLM,
    hooks: Sequence[str],
    entries: np.ndarray,
    sentence_ids: RaggedReader,
    pad_id: int,
) -> tuple[TextActivations, int]:
    """Run one planned batch through the model: the captured residuals of exactly ``entries``
    (checked) and the number of real tokens run."""
    ent = np.asarray(entries)
    batch = text_batch(ent, sentence_ids, pad_id)
    acts = capture_text_batch(vlm, batch, hooks)
    _check_capture(acts, ent)
    return acts, int(batch.attention_mask.sum())


def encode_rows(
    acts: TextActivations, hooks: Sequence[str], raw: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per hook the raw rows ``[n_entries, d_model]`` (codec ``raw``) and their norms."""
    out = {}
    for hook in hooks:
        stored, _, norms = codec.encode(acts.residuals[hook], raw)
        out[hook] = (stored, norms)
    return out


def encode_batch(
    vlm: VLM,
    hooks: Sequence[str],
    entries: np.ndarray,
    sentence_ids: RaggedReader,
    pad_id: int,
    raw: str,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """Run one planned batch: per hook the raw rows ``[len(entries), d_model]`` (codec ``raw``)
    and their norms, in ``entries`` order, plus the number of real tokens run."""
    acts, n_tok = run_batch(vlm, hooks, entries, sentence_ids, pad_id)
    return encode_rows(acts, hooks, raw), n_tok


#: Sentences per forward pass of a build on the CPU (and where no device memory is reported).
CPU_BATCH_SIZE = 32
#: Share of the accelerator's memory a build's batch may take for its activations.
DEVICE_SHARE = 0.25


def auto_batch_size(vlm: VLM, n_hooks: int, max_tokens: int | None) -> int:
    """Sentences per forward pass that keep an accelerator busy without running out of memory.

    On the CPU (or a device that reports no memory): :data:`CPU_BATCH_SIZE`. On a GPU: as many
    ``max_tokens``-long sentences as fit :data:`DEVICE_SHARE` of the device's *total* memory
    (total, not free, so a resumed build plans the same batches) at a generous per-token cost:
    the cached hooks plus a transformer block's working set (``d_model``-wide residual, MLP and
    attention rows), in the model's dtype; rounded down to a power of two, at most 1024.

    Example:
        >>> auto_batch_size(vlm, n_hooks=31, max_tokens=64)   # on a CPU
        32
    """
    dev = vlm.device
    if dev.type != "cuda":
        return CPU_BATCH_SIZE
    total = torch.cuda.get_device_properties(dev).total_memory
    elem = next(vlm.bridge.parameters()).element_size()
    d = int(vlm.d_model)
    per_token = (n_hooks + 16) * d * elem + 4 * int(getattr(vlm.bridge.cfg, "d_mlp", 4 * d)) * elem
    tokens = int(total * DEVICE_SHARE) // max(per_token, 1)
    sentences = max(1, tokens // max(max_tokens or 64, 1))
    return int(min(1024, max(CPU_BATCH_SIZE, 1 << (sentences.bit_length() - 1))))


def _check_capture(acts, ent: np.ndarray) -> None:
    sid = ent["sentence_id"]
    row = np.cumsum(np.r_[0, sid[1:] != sid[:-1]])
    ok = (
        acts.token_id.shape[0] == ent.shape[0]
        and np.array_equal(acts.position.numpy(), ent["position"])
        and np.array_equal(acts.token_id.numpy(), ent["token_id"])
        and np.array_equal(acts.sentence.numpy(), row)
    )
    if not ok:
        raise BankError("internal error: captured tokens do not match the planned entries")
