"""``build_bank``: corpus -> contextual text bank directory (resumable, written atomically).

Steps: pass 1 (:mod:`~tl_latentlens.bank.build.select`) tokenises and spools the corpus and picks the
entries; the plan (:mod:`~tl_latentlens.bank.build.plan`) orders them into batches; the tables are
written (:mod:`~tl_latentlens.bank.build.tables`); pass 2 (:mod:`~tl_latentlens.bank.build.encode`) runs
the model; an HNSW index is built per hook; the manifest with checksums is written last and the
staged directory is renamed into place.

Work happens in ``<out>.partial/`` next to ``out``: its ``state.json`` (replaced atomically)
records the build's key (model, hooks, options, corpus fingerprint) and progress, so rerunning
an interrupted build with the same arguments continues where it stopped.

One build at a time per ``out``: a lock file ``.<name>.lock`` next to it (owner pid and host)
refuses a second builder while the first runs; the kernel releases it when its owner dies, and
the next build then cleans what the dead one left (spool folders, temp files, a half-done
replace). The finished bank replaces ``out`` crash-safely
(:func:`tl_latentlens._io.replace_dir`).

Called on every rank of a ``torch.distributed`` job of more than one rank (e.g. under
``torchrun``), the build splits pass 2 between the ranks and rank 0 publishes a bank
byte-identical to a single-process one (:mod:`~tl_latentlens.bank.build.distributed`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tl_latentlens import hooks as hk
from tl_latentlens._io import FileLock, LockedError, recover_replace
from tl_latentlens.bank.bank import Bank
from tl_latentlens.bank.build import distributed
from tl_latentlens.bank.build.encode import allocate_vectors, auto_batch_size, encode_batches
from tl_latentlens.bank.build.finalize import finalize_hook, remove_raw
from tl_latentlens.bank.build.plan import make_plan
from tl_latentlens.bank.build.select import Selection, select_entries
from tl_latentlens.bank.build.sources import CorpusStats, iter_corpus
from tl_latentlens.bank.build.tables import write_tables
from tl_latentlens.bank.errors import BankExistsError, BankLockedError, CorruptBankError
from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format import manifest as mf
from tl_latentlens.bank.format.config import FORMAT_VERSION, BankConfig, check_build_dtype
from tl_latentlens.bank.format.store import (
    atomic_save_npy,
    atomic_write_json,
    file_record,
    publish_dir,
    read_json,
)
from tl_latentlens.models.base import VLM

__all__ = ["build_bank"]

logger = logging.getLogger(__name__)


def build_bank(
    vlm: VLM,
    corpus: Any,
    out_dir: str | os.PathLike,
    hooks: Sequence[str] | None = None,
    *,
    max_tokens: int | None = 64,
    batch_size: int | None = None,
    max_per_token: int | None = 50,
    seed: int = 42,
    dtype: str = "float16",
    hnsw_M: int = 16,
    ef_construction: int = 200,
    resume: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> Bank:
    """Build (or open, if it already exists identically) a contextual text bank.

    Args:
        vlm: The model whose language model produces the residuals.
        corpus: Sentences; see :func:`~tl_latentlens.bank.build.sources.iter_corpus` for the kinds.
        out_dir: Bank directory to create.
        hooks: Residual hooks to store; default ``hooks.default_bank_hooks(vlm.n_layers)``.
        max_tokens, batch_size, max_per_token, seed, dtype, hnsw_M, ef_construction: See
            :class:`~tl_latentlens.bank.BankConfig`; ``batch_size=None`` sizes the batches for
            the model's device (:func:`~tl_latentlens.bank.build.encode.auto_batch_size`: the CPU
            default there, as many as fit a share of a GPU's memory on one).
        resume: Continue an interrupted build of the same bank from ``<out>.partial``.
        overwrite: Replace an existing, different bank (or other directory) at ``out_dir``.
        **options: Further :class:`BankConfig` fields (``pca_components``, ``ef_search``,
            ``text_column``, ``split``, ``shard_batches``, ``num_threads``, ``progress``).

    Returns:
        The opened :class:`~tl_latentlens.bank.Bank` (on every rank of a multi-rank job:
        call it on all ranks, with the same arguments).

    Raises:
        BankExistsError: ``out_dir`` holds something else and ``overwrite`` is False.
        DistributedBuildError: In a multi-rank job, another rank failed or died (rerun to
            resume from the finished shards).
        BankLockedError: Another process is building into ``out_dir`` right now.
        CorpusError: The corpus cannot be read.

    Example:
        >>> bank = build_bank(vlm, "captions.txt", "banks/captions", max_per_token=20)
        >>> bank.search(query, k=5)
    """
    check_build_dtype(dtype, "dtype")  # before any work: int8/int8_rotated point to int8_pca
    hooks = _unique_layers(
        vlm.validate_hooks(
            list(hooks) if hooks is not None else hk.default_bank_hooks(vlm.n_layers)
        )
    )
    if batch_size is None:
        batch_size = auto_batch_size(vlm, len(hooks), max_tokens)
    cfg = BankConfig(
        max_tokens=max_tokens, batch_size=batch_size, max_per_token=max_per_token, seed=seed,
        dtype=dtype, hnsw_M=hnsw_M, ef_construction=ef_construction, **options,
    )  # fmt: skip
    out = Path(out_dir).absolute()
    want = {
        "format_version": FORMAT_VERSION,
        "model": vlm.fingerprint(),
        "hooks": list(hooks),
        "options": cfg.content_options,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx = distributed.current_context()
    if ctx is not None:
        return _build_ranks(ctx, vlm, corpus, out, hooks, cfg, want, resume, overwrite)
    lock = FileLock(lock_path(out))
    try:
        lock.acquire()
    except LockedError as err:
        raise BankLockedError(
            f"another build into {str(out)!r} is running ({err}); wait for it to finish or "
            "choose another out_dir"
        ) from None
    try:
        if lock.stale_owner:
            logger.warning(
                "a build into %s by pid %s on %s ended without finishing; cleaning up after it",
                out,
                lock.stale_owner.get("pid"),
                lock.stale_owner.get("host"),
            )
        _clean_leftovers(out)
        return _build_locked(vlm, corpus, out, hooks, cfg, want, resume, overwrite)
    finally:
        lock.release()


def lock_path(out: Path) -> Path:
    """The lock file guarding builds into ``out``."""
    return out.with_name(f".{out.name}.lock")


def _build_locked(
    vlm: VLM,
    corpus: Any,
    out: Path,
    hooks: list[str],
    cfg: BankConfig,
    want: dict[str, Any],
    resume: bool,
    overwrite: bool,
) -> Bank:
    existing = _existing(out, want, overwrite)
    spool = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.spool-"))
    try:
        stats = CorpusStats()
        sentences = iter_corpus(corpus, cfg.text_column, cfg.split, stats)
        selection = select_entries(vlm, sentences, cfg, spool, stats=stats)
        want["corpus_fingerprint"] = selection.corpus_fingerprint
        if existing is not None and not mf.identity_differences(mf.identity(existing), want):
            try:
                logger.info("an identical bank exists at %s; opening it", out)
                return Bank.open(out, vlm)
            except CorruptBankError:
                if not overwrite:
                    raise
                logger.warning("the existing bank at %s is corrupt; rebuilding it", out)
        elif existing is not None and not overwrite:
            raise BankExistsError(_exists_message(out, mf.identity(existing), want))
        stage = _build_stage(vlm, hooks, cfg, selection, spool, out, resume, want, corpus)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    # the work folder is spent once publishing starts: after an atomic exchange it holds the
    # *old* bank, which a later resume must never mistake for finished work
    (stage.parent / "state.json").unlink()
    publish_dir(stage, out)
    skipped = ", ".join(f"{v} {k}" for k, v in sorted(selection.skipped.items())) or "none"
    logger.info(
        "bank written to %s: %d sentences read, %d cut to max_tokens=%s, skipped: %s",
        out,
        selection.n_corpus_sentences,
        selection.n_truncated,
        cfg.max_tokens,
        skipped,
    )
    shutil.rmtree(stage.parent, ignore_errors=True)
    return Bank.open(out, vlm, verify="size")


def _build_ranks(
    ctx: distributed.RankContext,
    vlm: VLM,
    corpus: Any,
    out: Path,
    hooks: list[str],
    cfg: BankConfig,
    want: dict[str, Any],
    resume: bool,
    overwrite: bool,
) -> Bank:
    """A build over the ranks of a ``torch.distributed`` job (see
    :mod:`~tl_latentlens.bank.build.distributed`); every rank returns the published bank."""
    lock = FileLock(lock_path(out))
    work = out.with_name(f"{out.name}.partial")
    local: dict[str, Any] = {}  # rank 0's state between the steps

    def start() -> None:
        if not ctx.is_main:
            return
        try:
            lock.acquire()
        except LockedError as err:
            raise BankLockedError(
                f"another build into {str(out)!r} is running ({err}); wait for it to finish "
                "or choose another out_dir"
            ) from None
        if lock.stale_owner:
            logger.warning(
                "a build into %s by pid %s on %s ended without finishing; cleaning up after it",
                out,
                lock.stale_owner.get("pid"),
                lock.stale_owner.get("host"),
            )
        _clean_leftovers(out)
        local["existing"] = _existing(out, want, overwrite)

    try:
        ctx.agree("start", start)
        spool = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.spool-"))
        try:

            def select() -> Selection:
                stats = CorpusStats()
                sentences = iter_corpus(corpus, cfg.text_column, cfg.split, stats)
                return select_entries(vlm, sentences, cfg, spool, stats=stats)

            selection = ctx.agree("select (pass 1)", select)
            distributed.check_same_selection(ctx, selection)
            want["corpus_fingerprint"] = selection.corpus_fingerprint

            def prepare() -> list[list[int]] | None:
                if not ctx.is_main:
                    return None
                existing = local["existing"]
                if existing is not None and not mf.identity_differences(
                    mf.identity(existing), want
                ):
                    try:
                        Bank.open(out, vlm)
                        logger.info("an identical bank exists at %s; opening it", out)
                        return None
                    except CorruptBankError:
                        if not overwrite:
                            raise
                        logger.warning("the existing bank at %s is corrupt; rebuilding it", out)
                elif existing is not None and not overwrite:
                    raise BankExistsError(_exists_message(out, mf.identity(existing), want))
                _, local["state"] = _prepare_work(
                    vlm, hooks, cfg, selection, spool, out, resume, want
                )
                return distributed.plan_shards(work, local["state"], cfg, ctx.world_size)

            plan = ctx.agree("prepare", prepare, share=True)
            if plan is not None:
                ctx.agree(
                    "encode (pass 2)",
                    lambda: distributed.encode_shards(ctx, vlm, hooks, work, cfg, plan[ctx.rank]),
                )

                def publish() -> None:
                    if not ctx.is_main:
                        return
                    distributed.merge_shards(work, hooks, cfg, local["state"])
                    stage = _finish_stage(vlm, hooks, cfg, selection, work, local["state"], corpus)
                    (work / "state.json").unlink()
                    publish_dir(stage, out)
                    logger.info("bank written to %s by %d ranks", out, ctx.world_size)
                    shutil.rmtree(work, ignore_errors=True)

                ctx.agree("merge and publish", publish)
        finally:
            shutil.rmtree(spool, ignore_errors=True)
        return Bank.open(out, vlm, verify="size")
    finally:
        lock.release()


def _clean_leftovers(out: Path) -> None:
    """Remove what builds killed before finishing left next to ``out`` (call with the lock).

    Finishes an interrupted replace, deletes spool folders, renamed-aside old banks and
    orphaned temp files of atomic writes in ``<out>.partial`` (whose progress is kept)."""
    if recover_replace(out):
        logger.warning("finished an interrupted replace of %s", out)
    name = glob.escape(out.name)
    for pattern in (f".{name}.spool-*", f".{name}.old-*"):
        for path in out.parent.glob(pattern):
            logger.info("removing %s, left by an interrupted build", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    work = out.with_name(f"{out.name}.partial")
    if work.is_dir() and not (work / "state.json").is_file():
        shutil.rmtree(work, ignore_errors=True)  # nothing to resume (or already published)
    elif work.is_dir():
        for path in work.rglob(".*.tmp"):
            path.unlink(missing_ok=True)


def _unique_layers(hooks: list[str]) -> list[str]:
    """Drop hooks naming the same residual as an earlier one (e.g. ``blocks.1.hook_resid_pre``
    after ``blocks.0.hook_resid_post``)."""
    seen: dict[float, str] = {}
    for hook in hooks:
        layer = hk.layer_of(hook)
        if layer in seen:
            logger.warning(
                "%s is the same residual as %s (layer %s); storing it once",
                hook,
                seen[layer],
                layer,
            )
            continue
        seen[layer] = hook
    return list(seen.values())


def _existing(out: Path, want: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The manifest of an existing bank at ``out`` (None if nothing is there); raise early if
    ``out`` is occupied by something that cannot be the bank asked for."""
    if not out.exists():
        return None
    if out.is_dir() and not any(out.iterdir()):
        return None
    manifest = None
    if out.is_dir() and (out / mf.MANIFEST).is_file():
        try:
            manifest = read_json(out / mf.MANIFEST)
        except (OSError, ValueError):
            manifest = None
    if overwrite:
        return manifest
    if manifest is None:
        raise BankExistsError(
            f"{str(out)!r} exists and is not a bank; refusing to replace it (pass overwrite=True)"
        )
    have = mf.identity(manifest)
    if mf.identity_differences(have, want):
        raise BankExistsError(_exists_message(out, have, want))
    return manifest


def _exists_message(out: Path, have: dict[str, Any], want: dict[str, Any]) -> str:
    diffs = mf.identity_differences(have, want)
    return (
        f"a different bank exists at {str(out)!r} (existing != requested: {'; '.join(diffs)}); "
        "pass overwrite=True to replace it or choose another out_dir"
    )


def _resume_key(want: dict[str, Any], cfg: BankConfig) -> str:
    blob = json.dumps({**want, "resume": cfg.resume_options}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _build_stage(
    vlm: VLM,
    hooks: list[str],
    cfg: BankConfig,
    selection: Selection,
    spool: Path,
    out: Path,
    resume: bool,
    want: dict[str, Any],
    corpus: Any,
) -> Path:
    work, state = _prepare_work(vlm, hooks, cfg, selection, spool, out, resume, want)
    stage, state_path = work / "bank", work / "state.json"

    def record(done: int) -> None:
        state["batches_done"] = done
        atomic_write_json(state_path, state)

    if distributed.has_shard_progress(work, state):
        # an interrupted multi-rank build: finish it from its shards, here on one rank
        ctx = distributed.LOCAL
        todo = distributed.plan_shards(work, state, cfg, ctx.world_size)
        distributed.encode_shards(ctx, vlm, hooks, work, cfg, todo[0])
        distributed.merge_shards(work, hooks, cfg, state)
    elif state["batches_done"] < state["n_batches"]:
        offsets = np.load(work / "batch_offsets.npy")
        encode_batches(vlm, hooks, stage, offsets, cfg, state["batches_done"], record)
    return _finish_stage(vlm, hooks, cfg, selection, work, state, corpus)


def _prepare_work(
    vlm: VLM,
    hooks: list[str],
    cfg: BankConfig,
    selection: Selection,
    spool: Path,
    out: Path,
    resume: bool,
    want: dict[str, Any],
) -> tuple[Path, dict[str, Any]]:
    """The work folder ``<out>.partial`` and its state: resumed when its key matches, else
    (re)created with the tables and zero-filled raw vector files."""
    work = out.with_name(f"{out.name}.partial")
    stage, state_path = work / "bank", work / "state.json"
    key = _resume_key(want, cfg)
    state = read_json(state_path) if state_path.is_file() else None
    if state is not None and resume and state.get("key") == key:
        logger.info("resuming the build in %s after batch %d", work, state["batches_done"])
        return work, state
    if work.exists():
        reason = "resume=False" if not resume else "it was started with other arguments"
        logger.warning("discarding the interrupted build in %s (%s)", work, reason)
        shutil.rmtree(work)
    stage.mkdir(parents=True)
    plan = make_plan(selection, cfg.batch_size)
    vocab = write_tables(stage, plan, spool, vlm.tokenizer)
    atomic_save_npy(work / "batch_offsets.npy", plan.batch_offsets)
    allocate_vectors(stage, hooks, plan.n_entries, vlm.d_model, codec.raw_codec(cfg.dtype))
    state = {
        "key": key,
        "batches_done": 0,
        "n_batches": plan.n_batches,
        "indexed": [],
        "counts": {
            "n_entries": plan.n_entries,
            "n_sentences": int(plan.corpus_index.shape[0]),
            "n_token_types": int(np.unique(plan.entries["token_id"]).shape[0]),
            "n_full_token_types": selection.n_full_types,
            "vocab_size": vocab,
        },
    }
    atomic_write_json(state_path, state)
    return work, state


def _finish_stage(
    vlm: VLM,
    hooks: list[str],
    cfg: BankConfig,
    selection: Selection,
    work: Path,
    state: dict[str, Any],
    corpus: Any,
) -> Path:
    """Finalize every hook (resumable per hook) and write the manifest; returns the stage."""
    stage, state_path = work / "bank", work / "state.json"
    # Per hook: identical rows stored once, the bank's codec applied (resumable per hook).
    finals = state.setdefault("finalized", {})
    for hook in hooks:
        folder = stage / mf.hook_dir(hook)
        if hook not in finals:
            finals[hook] = finalize_hook(folder, cfg.dtype, cfg.pca_components)
            atomic_write_json(state_path, state)
        remove_raw(folder)
    manifest = mf.build_manifest(vlm, hooks, cfg, selection, state["counts"], corpus, finals)
    # the forward passes' dtype (bfloat16 builds are faster; the model fingerprint is
    # dtype-independent, so such a bank opens with the float32 model and vice versa)
    forward = str(next(vlm.bridge.parameters()).dtype).replace("torch.", "")
    rels = mf.shared_files() + [f for h in hooks for f in mf.hook_files(h, cfg.dtype)]
    _remove_unlisted(stage, set(rels))
    files = {rel: mf.FileRecord.from_json(file_record(stage / rel)) for rel in rels}
    build = replace(manifest.build or mf.BuildInfo(), forward_dtype=forward)
    mf.write_manifest(stage, replace(manifest, build=build, files=files))
    return stage


def _remove_unlisted(stage: Path, rels: set[str]) -> None:
    """Delete files in the staged bank that the manifest will not list (temp files of writes
    killed before a resume), so nothing unchecked is published."""
    for path in sorted(stage.rglob("*")):
        rel = path.relative_to(stage).as_posix()
        if path.is_file() and rel not in rels and rel != mf.MANIFEST:
            logger.info("removing %s from the staged bank (not a bank file)", rel)
            path.unlink()
