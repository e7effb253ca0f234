"""Pass 2 of a bank build: run the model over the planned batches and store the residuals.

Vectors go straight into preallocated memory-mapped ``.npy`` files in the staging directory,
one contiguous row range per batch. After every shard (``shard_batches`` batches) the files are
flushed and the progress record is replaced atomically, so an interrupted build resumes after
the last finished shard and produces the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tl_latentlens.bank import codec
from tl_latentlens.bank import manifest as mf
from tl_latentlens.bank.config import BankConfig
from tl_latentlens.bank.errors import BankError
from tl_latentlens.bank.store import RaggedReader
from tl_latentlens.capture import capture_text_batch
from tl_latentlens.models.base import VLM, TextBatch

__all__ = ["allocate_vectors", "encode_batch", "encode_batches", "pad_token_id", "text_batch"]

logger = logging.getLogger(__name__)


def allocate_vectors(stage: Path, hooks: Sequence[str], n: int, d: int, dtype: str) -> None:
    """Create every hook's zero-filled raw ``vectors.npy``/``norms.npy`` (``dtype``: the raw
    codec, :func:`~tl_latentlens.bank.codec.raw_codec`)."""
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
    try:
        for shard_start in range(start_batch, n_batches, cfg.shard_batches):
            shard_end = min(shard_start + cfg.shard_batches, n_batches)
            for b in range(shard_start, shard_end):
                lo, hi = int(batch_offsets[b]), int(batch_offsets[b + 1])
                rows, n_tok = encode_batch(vlm, hooks, entries[lo:hi], sentence_ids, pad_id, raw)
                for hook, (stored, norms) in rows.items():
                    files[hook][0][lo:hi] = stored
                    files[hook][1][lo:hi] = norms
                tokens_run += n_tok
                bar.update(1)
                bar.set_postfix_str(
                    f"{tokens_run / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s"
                )
            for arrays in files.values():
                for arr in arrays:
                    arr.flush()
            on_shard(shard_end)
    finally:
        bar.close()


def pad_token_id(tokenizer: Any) -> int:
    """The id used to pad text batches (pad, else EOS, else 0)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


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
    ent = np.asarray(entries)
    batch = text_batch(ent, sentence_ids, pad_id)
    acts = capture_text_batch(vlm, batch, hooks)
    _check_capture(acts, ent)
    out = {}
    for hook in hooks:
        stored, _, norms = codec.encode(acts.residuals[hook], raw)
        out[hook] = (stored, norms)
    return out, int(batch.attention_mask.sum())


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
