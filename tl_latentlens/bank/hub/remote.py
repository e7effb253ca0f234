"""Banks on the Hugging Face model hub: push a bank, download only the hooks you need.

A bank on the hub is its directory as is (JSON, ``.npy``, raw ``.bin`` tables and hnswlib
files: nothing is pickled) plus a ``README.md`` model card. Downloads go through
``huggingface_hub`` and its cache, so ``HF_HUB_OFFLINE=1`` works once a bank was fetched:

* :func:`download_bank` reads ``manifest.json`` at the requested revision, then fetches (with
  ``allow_patterns``) only the shared tables and the files of the requested hooks, all at the
  commit that manifest came from. When only some hooks are asked for, it returns a *view*: a
  small folder under ``$TL_LATENTLENS_CACHE`` (default ``~/.cache/tl_latentlens``) whose
  ``manifest.json`` lists those hooks and whose files link to the hub cache's blobs.
* :func:`push_bank` checks every file against the manifest's SHA-256, then commits the bank
  (deleting files an earlier push left that this bank does not have).

``Bank.from_pretrained`` (in :mod:`tl_latentlens.bank.bank`) calls :func:`download_bank` and
opens the directory it returns with ``verify="full"`` by default: every downloaded file is
hashed and compared with the manifest before use. This module never imports the bank itself.

Example:
    >>> bank = Bank.from_pretrained("org/smollm2-bank", vlm, hooks=[0, 16], revision="v1")
    >>> bank.push_to_hub("me/my-bank")
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tl_latentlens import hooks as hk
from tl_latentlens._io import read_json, replace_dir
from tl_latentlens.bank.errors import BankError, BankFormatError, MissingHookError
from tl_latentlens.bank.format import manifest as mf

__all__ = [
    "HubBankError",
    "cache_root",
    "download_bank",
    "model_card",
    "push_bank",
]

logger = logging.getLogger(__name__)

#: Hub files besides the bank's own that a push writes and keeps.
_HUB_FILES = ("README.md", ".gitattributes")


class HubBankError(BankError):
    """A bank cannot be downloaded from / pushed to the hub (the message says why)."""


def cache_root() -> Path:
    """Folder for tl_latentlens's own cached data (``$TL_LATENTLENS_CACHE``, default
    ``~/.cache/tl_latentlens``)."""
    env = os.environ.get("TL_LATENTLENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tl_latentlens"


def _library() -> dict[str, str]:
    try:
        version = metadata.version("tl_latentlens")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        version = "unknown"
    return {"library_name": "tl_latentlens", "library_version": version}


def resolve_hooks(manifest: mf.BankManifest, hooks: Sequence[str | int] | None) -> list[str]:
    """The manifest's hook names for ``hooks`` (names, equivalent names or layer numbers), in
    the manifest's order; every hook when ``None``.

    Raises:
        MissingHookError: A hook the bank does not store (the message lists the stored ones).
    """
    stored = {h.name: h.layer for h in manifest.hooks}
    if hooks is None:
        return list(stored)
    if isinstance(hooks, (str, int, float)):
        hooks = [hooks]
    want = set()
    for h in hooks:
        if isinstance(h, str) and h in stored:
            want.add(h)
            continue
        try:
            layer = hk.layer_of(h) if isinstance(h, str) else float(h)
        except (TypeError, ValueError):
            layer = None
        match = [name for name, lay in stored.items() if layer is not None and lay == layer]
        if not match:
            listing = ", ".join(f"{n} (layer {lay})" for n, lay in stored.items())
            raise MissingHookError(f"the bank stores no hook for {h!r}; it stores: {listing}")
        want.add(match[0])
    return [name for name in stored if name in want]


def bank_files(manifest: mf.BankManifest, hooks: Sequence[str]) -> list[str]:
    """Files of the shared tables and of ``hooks`` (with their routes when calibrated)."""
    rels = mf.shared_files()
    for hook in hooks:
        rels += mf.hook_files(hook, manifest.dtype, routes=bool(manifest.hook(hook).routes))
    return rels


def download_bank(
    repo_id: str,
    hooks: Sequence[str | int] | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> Path:
    """Fetch a bank (or some of its hooks) from the hub into the hub cache.

    Args:
        repo_id: ``"org/name"`` of a model repository holding a bank.
        hooks: Hook names or layer numbers to fetch; ``None`` fetches every hook.
        revision: Branch, tag or commit (default ``main``).
        cache_dir: The hub cache (default ``HF_HUB_CACHE``).
        token: Hub token (default: the logged-in one).
        endpoint: Hub URL (default ``HF_ENDPOINT`` or huggingface.co).
        local_files_only: Never touch the network (as ``HF_HUB_OFFLINE=1`` does).
        force_download: Fetch the files again even when cached (after a checksum failure).

    Returns:
        A bank directory: the cache snapshot when every hook was asked for, else a view of the
        requested hooks (see the module docstring).

    Raises:
        HubBankError: The repository, revision or files cannot be fetched or are not cached
            (offline).
        BankFormatError: The repository's manifest is not a bank manifest this code reads.
        MissingHookError: A requested hook is not in the bank.

    Example:
        >>> path = download_bank("org/smollm2-bank", hooks=["blocks.0.hook_resid_pre"])
    """
    common: dict[str, Any] = dict(
        revision=revision, cache_dir=cache_dir, token=token, endpoint=endpoint,
        local_files_only=local_files_only, force_download=force_download, **_library(),
    )  # fmt: skip
    where = f"{repo_id!r} (revision {revision or 'main'!r})"
    try:
        manifest_path = Path(hf_hub_download(repo_id, mf.MANIFEST, **common))
    except (LocalEntryNotFoundError, EntryNotFoundError) as err:
        raise HubBankError(
            f"no bank manifest for {where} in the local hub cache or on the hub ({err}); "
            "run once with network access (HF_HUB_OFFLINE unset) to download it"
        ) from err
    except (RepositoryNotFoundError, RevisionNotFoundError, HfHubHTTPError) as err:
        raise HubBankError(f"cannot read the bank {where} from the hub: {err}") from err
    snapshot = manifest_path.parent
    commit = snapshot.name  # hub cache layout: snapshots/<commit>/manifest.json
    try:
        raw = read_json(manifest_path)
    except (OSError, ValueError) as err:
        raise BankFormatError(f"{manifest_path} cannot be read: {err}") from err
    manifest = mf.BankManifest.from_json(raw, snapshot)
    names = resolve_hooks(manifest, hooks)
    rels = bank_files(manifest, names)
    unrecorded = [rel for rel in rels if rel not in manifest.files]
    if unrecorded:
        raise BankFormatError(f"the manifest of {where} has no checksum for {unrecorded[:3]}")
    # the files at the commit the manifest came from, never a newer one
    common["revision"] = commit
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=[mf.MANIFEST, *rels], **common))
    except (LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise HubBankError(
            f"cannot fetch the files of hooks {names} of {where} ({type(err).__name__}: {err}); "
            "offline, only hooks downloaded before are available"
        ) from err
    absent = [rel for rel in rels if not (folder / rel).is_file()]
    if absent:
        raise HubBankError(
            f"{len(absent)} files of {where} are neither on the hub nor cached (first: "
            f"{absent[:3]}); offline, only hooks downloaded before are available"
        )
    logger.info("bank %s at commit %s: hooks %s from %s", repo_id, commit[:12], names, folder)
    if len(names) == len(manifest.hooks):
        return folder
    return _make_view(folder, manifest, names, rels, repo_id, commit)


def _make_view(
    folder: Path,
    manifest: mf.BankManifest,
    names: list[str],
    rels: list[str],
    repo_id: str,
    commit: str,
) -> Path:
    """A bank folder of only ``names``: a manifest listing those hooks and links to the hub
    cache's files (copies where links cannot be made). Rebuilt on every call (links are cheap)
    and swapped in atomically, so a cleaned hub cache never leaves a stale view."""
    key = hashlib.sha256(json.dumps(sorted(names)).encode()).hexdigest()[:16]
    view = cache_root() / "hub-views" / repo_id.replace("/", "--") / commit / key
    view.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=view.parent, prefix=f".{key}-"))
    try:
        for rel in rels:
            src = os.path.realpath(folder / rel)  # the blob behind the snapshot's link
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.symlink(src, dst)
            except OSError:  # e.g. Windows without symlink rights
                shutil.copyfile(src, dst)
        sub = replace(
            manifest,
            hooks=tuple(h for h in manifest.hooks if h.name in names),
            files={rel: manifest.files[rel] for rel in rels},
            hub=mf.HubOrigin(repo_id, commit, len(manifest.hooks)),
        )
        mf.write_manifest(tmp, sub)
        replace_dir(tmp, view)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return view


def model_card(manifest: mf.BankManifest, repo_id: str) -> str:
    """A ``README.md`` for a bank repository: hub metadata and how to load it."""
    model = manifest.model.get("name") or "unknown"
    counts = manifest.counts
    hooks = "\n".join(f"- `{h.name}` (layer {h.layer})" for h in manifest.hooks)
    corpus = manifest.corpus or {}
    return (
        "---\nlibrary_name: tl_latentlens\ntags:\n- latentlens\n- interpretability\n"
        "- transformer-lens\n---\n\n"
        f"# LatentLens bank for `{model}`\n\n"
        "Contextual text-token residuals (a LatentLens bank, format version "
        f"{manifest.format_version}) built with "
        "[tl_latentlens](https://github.com/). No pickles: JSON, `.npy` and raw tables.\n\n"
        f"- sentences: {counts.n_sentences}, stored token occurrences: "
        f"{counts.n_entries}, storage dtype: {manifest.dtype}, d_model: "
        f"{manifest.d_model}\n"
        f"- corpus: {corpus.get('kind', 'unknown')} (fingerprint "
        f"`{str(corpus.get('fingerprint', ''))[:16]}`)\n\n## Hooks\n\n{hooks}\n\n## Use\n\n"
        "```python\nfrom tl_latentlens.bank import Bank\n\n"
        f'bank = Bank.from_pretrained("{repo_id}", vlm, hooks=[0])  # only the hooks you need\n'
        "```\n"
    )


def push_bank(
    root: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload the bank directory ``root`` to the model repository ``repo_id``.

    Every file is checked against the manifest's SHA-256 first, so a corrupted bank is never
    published. The repository is created when missing; ``revision`` names a branch (created
    from ``main`` when missing).

    Returns:
        The commit id.

    Raises:
        CorruptBankError: A file does not match the manifest.
        HubBankError: The hub refused the upload.

    Example:
        >>> push_bank("banks/smollm2", "me/smollm2-bank")
    """
    root = Path(root)
    manifest = mf.read_manifest(root)
    rels = sorted(manifest.files)
    mf.verify_files(root, manifest, rels, full=True)
    api = HfApi(endpoint=endpoint, token=token, **_library())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        try:
            existing = api.list_repo_files(repo_id, revision=revision)
        except (EntryNotFoundError, RevisionNotFoundError):
            existing = []
        keep = set(rels) | {mf.MANIFEST, *_HUB_FILES}
        ops: list[Any] = [
            CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(root / rel))
            for rel in [*rels, mf.MANIFEST]
        ]
        ops.append(CommitOperationAdd("README.md", model_card(manifest, repo_id).encode("utf-8")))
        ops += [CommitOperationDelete(path_in_repo=f) for f in existing if f not in keep]
        info = api.create_commit(
            repo_id,
            ops,
            commit_message=commit_message or f"Upload LatentLens bank ({len(rels)} files)",
            revision=revision,
        )
    except HfHubHTTPError as err:
        raise HubBankError(f"pushing {str(root)!r} to {repo_id!r} failed: {err}") from err
    logger.info("pushed %s to %s (commit %s)", root, repo_id, info.oid)
    return str(info.oid)
