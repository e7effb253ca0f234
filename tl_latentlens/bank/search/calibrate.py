"""Calibrate a hook's routes on sample queries and measure their recall against exact search.

:func:`calibrate_hook` takes *sample* query vectors (e.g. visual tokens of calibration images at
every layer they may be searched from) and *held-out* query sets (other images, images unlike
the samples, text-like queries), computes the samples' exact top-``L`` lists, writes the routes
and measures tie-aware recall@10 of routed search (exact fallback included) on every held-out
set for each ``probe`` in ``probes``. The smallest probe whose recall reaches the bar on every
set is chosen; if none does, the largest is recorded and ``auto`` keeps searching exactly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from jaxtyping import Float
from tqdm.auto import tqdm

from tl_latentlens import hooks as hk
from tl_latentlens._io import locked
from tl_latentlens.bank.format import manifest as mf
from tl_latentlens.bank.format.store import file_record
from tl_latentlens.bank.format.vectors import DEFAULT_RESIDENT_BYTES, HookVectors
from tl_latentlens.bank.search.dispatch import GATHER_COST, RECALL_BAR, RERANK_GROUP, HookSearcher
from tl_latentlens.bank.search.exact import exact_top_k
from tl_latentlens.bank.search.recall import tie_aware_recall_per_query
from tl_latentlens.bank.search.routes import ROUTE_FILES, RouteParams, Routes, write_routes
from tl_latentlens.capture import capture_image, capture_text

__all__ = [
    "HookCalibration",
    "calibrate_bank",
    "calibrate_bank_with_images",
    "calibrate_hook",
    "unit_rows",
    "visual_tokens",
]

if TYPE_CHECKING:
    from tl_latentlens.bank.bank import Bank
    from tl_latentlens.models.base import VLM

logger = logging.getLogger(__name__)

#: Queries per exact-search call while computing sample lists.
_BATCH = 512


def unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalised float32 rows (scaled by their max first, so huge values cannot overflow);
    all-zero rows are dropped."""
    x = np.asarray(x, dtype=np.float32)
    x = x[np.isfinite(x).all(axis=1)]
    peak = np.abs(x).max(axis=1, keepdims=True)
    x = x[peak[:, 0] > 0] / peak[peak[:, 0] > 0]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@dataclass(frozen=True)
class HookCalibration:
    """What calibration measured and chose for one hook (recorded in the manifest).

    Attributes:
        params: The chosen :class:`RouteParams`.
        recall: Held-out set name -> recall@10 of routed search with ``params``.
        fallback: Held-out set name -> share of queries sent to exact search.
        frontier: Per probe tried, ``{set: recall}``.
        fallback_frontier: Per probe tried, ``{set: share sent to exact search}``.
        cost: Per probe tried, the expected search cost of one image-like query in stored
            vectors multiplied (:func:`expected_cost`); the cheapest probe that meets the
            recall bar is chosen.
        n_samples: Routing samples (visual + text).
        list_len: Stored length of each sample's list.
        seconds: Calibration wall time.
    """

    params: RouteParams
    recall: dict[str, float]
    fallback: dict[str, float]
    frontier: dict[int, dict[str, float]] = field(default_factory=dict)
    n_samples: int = 0
    list_len: int = 0
    seconds: float = 0.0
    fallback_frontier: dict[int, dict[str, float]] = field(default_factory=dict)
    cost: dict[int, float] = field(default_factory=dict)

    @property
    def proven(self) -> bool:
        """Recall reaches :data:`RECALL_BAR` on every held-out set."""
        return bool(self.recall) and min(self.recall.values()) >= RECALL_BAR

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record."""
        return {
            "params": self.params.to_dict(),
            "recall_at_10": {k: round(v, 5) for k, v in self.recall.items()},
            "exact_fallback": {k: round(v, 5) for k, v in self.fallback.items()},
            "frontier": {
                str(p): {k: round(v, 5) for k, v in r.items()} for p, r in self.frontier.items()
            },
            "fallback_frontier": {
                str(p): {k: round(v, 5) for k, v in r.items()}
                for p, r in self.fallback_frontier.items()
            },
            "expected_cost": {str(p): round(c, 1) for p, c in self.cost.items()},
            "n_samples": self.n_samples,
            "list_len": self.list_len,
            "recall_bar": RECALL_BAR,
            "proven": self.proven,
            "policy": CALIBRATION_POLICY,
            "seconds": round(self.seconds, 2),
        }


#: How the probe is chosen (recorded in the manifest; a bank calibrated under an older policy
#: can be calibrated again): 3 = the cheapest probe by :func:`expected_cost` among those that
#: meet the recall bar, probes tried in ascending order until one lowers the best cost by
#: less than :data:`GAIN` (and at most :data:`MAX_QUERIES` queries per held-out set);
#: 2 tried every probe on every query, 1 chose the smallest probe that met the bar.
CALIBRATION_POLICY = 3

#: A probe that lowers the best expected cost so far to no less than this share of it ends the
#: search for a bigger one. Measured on the demo bank (10 hooks, probes 2-32, policy 2): the
#: probes after such a step lowered the cost by at most 19 % (blocks.29), mostly not at all,
#: while the bigger probes cost most of the calibration time.
GAIN = 0.95

#: Held-out queries per set calibration measures recall on (drawn at random from a bigger set):
#: the demo's held-out images give 23,520 visual tokens (48 images x 10 layers), and the ground
#: truth and routed search of each set cost time in proportion.
MAX_QUERIES = 4000


def expected_cost(
    probe: int, list_len: int, n_vectors: int, fallback: Mapping[str, float]
) -> float:
    """Expected cost of one query, in stored vectors multiplied: a routed query re-ranks up to
    ``probe * list_len`` candidates (each also gathered, :data:`GATHER_COST` per group of
    :data:`RERANK_GROUP`), a query sent to exact search multiplies all ``n_vectors``.
    ``fallback`` holds the share sent to exact search per held-out set; the sets of image
    tokens are averaged (text-like sets go to exact search by design and would hide the
    difference between probes), or all sets when there are only text-like ones.

    Example:
        >>> expected_cost(2, 200, 46_000, {"photos": 0.3}) > expected_cost(8, 200, 46_000, {"photos": 0.05})
        True
    """
    visual = [v for k, v in fallback.items() if "text" not in k] or list(fallback.values())
    f = float(np.mean(visual)) if visual else 0.0
    routed = min(probe * list_len * (1 + GATHER_COST / RERANK_GROUP), n_vectors)
    return (1 - f) * routed + f * n_vectors


def _lists(hv: HookVectors, samples: np.ndarray, list_len: int, progress: bool) -> np.ndarray:
    out = np.empty((samples.shape[0], min(list_len, hv.n)), dtype=np.int32)
    for s in tqdm(
        range(0, samples.shape[0], _BATCH), desc="bank: route lists", disable=not progress
    ):
        _, rows = exact_top_k(hv, samples[s : s + _BATCH], list_len)
        out[s : s + rows.shape[0]] = rows
    return out


def _exact_sims(hv: HookVectors, q: np.ndarray, k: int) -> np.ndarray:
    parts = [exact_top_k(hv, q[s : s + _BATCH], k)[0] for s in range(0, q.shape[0], _BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, k), np.float32)


def calibrate_hook(
    folder: Path,
    codec: str,
    samples: np.ndarray,
    held_out: Mapping[str, np.ndarray],
    *,
    text_samples: int = 0,
    text_noise: float = 0.05,
    list_len: int = 200,
    probes: Sequence[int] = (2, 4, 8, 16, 32),
    sample_quantile: float = 0.005,
    seed: int = 0,
    progress: bool = True,
    resident_bytes: int = DEFAULT_RESIDENT_BYTES,
    max_queries: int = MAX_QUERIES,
) -> HookCalibration:
    """Build and measure the routes of the hook stored in ``folder``.

    Args:
        folder: The hook folder (``vectors.npy`` …); routes are written to ``folder/routes``.
        codec: The bank's codec.
        samples: ``[s, d]`` sample queries (any scale).
        held_out: Set name -> ``[q, d]`` held-out queries; a ``"text"`` set (stored vectors
            plus ``text_noise`` relative Gaussian noise) is added.
        text_samples: Stored vectors added as samples (default none: with visual samples only,
            text-like queries are unlike every sample and go to exact search, which is right;
            2,000 text samples routed held-out text tokens with recall@10 of only ~0.4 on
            500k SmolLM2 vectors, benchmarks/bench_bank_search.py).
        list_len: Exact neighbours kept per sample.
        probes: Probe values to try, ascending.
        sample_quantile: Safety margin over the recall bar when choosing
            ``min_sample_similarity``: the lowest nearest-sample similarity for which routed
            search (exact below it) keeps recall >= bar + margin on every held-out set.
        seed: Seed of the text samples and of the routes' graph.
        progress: Show progress bars.
        resident_bytes: Decode the hook into RAM for the calibration when it takes at most
            this many bytes (else every pass streams it from storage).
        max_queries: Queries per held-out set recall is measured on (a bigger set is
            subsampled at random, with ``seed``).
    """
    t0 = time.perf_counter()
    hv = HookVectors.from_folder(folder, codec)
    if hv.nbytes_decoded() <= resident_bytes:
        # every exact pass below (sample lists, ground truth) and every re-rank gathers from
        # this copy instead of decoding the hook again: 477 -> ~150 s for the demo bank
        hv.resident()
    rng = np.random.default_rng(seed)
    n_text = min(text_samples, hv.n)
    text_rows = np.sort(rng.choice(hv.n, size=n_text, replace=False)) if n_text else []
    text = hv.decode(np.asarray(text_rows, dtype=np.int64))
    pool = np.concatenate([unit_rows(samples), text]) if len(samples) else text
    lists = _lists(hv, pool, list_len, progress)
    write_routes(folder, pool, lists, seed=seed)
    routes = Routes(folder, hv.d)
    sets = {
        name: _at_most(unit_rows(q), max_queries, rng) for name, q in held_out.items() if len(q)
    }
    probe_rows = rng.choice(hv.n, size=min(500, hv.n), replace=False)
    noisy = hv.decode(np.sort(probe_rows))
    noisy = noisy + rng.standard_normal(noisy.shape).astype(np.float32) * (
        text_noise / np.sqrt(hv.d)
    )
    sets.setdefault("text", unit_rows(noisy))
    truth = {name: _exact_sims(hv, q, 10) for name, q in sets.items()}
    searcher = HookSearcher(hv, routes)
    # the probes up to ef read the first columns of one lookup (hnswlib searches with
    # ef = max(ef, probe): the same beam for all of them); a bigger probe looks up its own
    routes.samples_key = "calibration"
    widest = RouteParams(probe=min(max(probes), RouteParams().ef), list_len=lists.shape[1])
    lookups = {n: {searcher.lookup_key(widest): routes.lookup(q, widest)} for n, q in sets.items()}
    # Per query: routed recall with no fallback, and the similarity of its nearest sample.
    routes.index.set_ef(64)
    nearest = {n: 1.0 - routes.index.knn_query(q, k=1)[1][:, 0] for n, q in sets.items()}
    frontier: dict[int, dict[str, float]] = {}
    fallback: dict[int, dict[str, float]] = {}
    taus: dict[int, float] = {}
    cost: dict[int, float] = {}
    for probe in sorted(probes):
        best = min(
            (cost[p] for p in frontier if min(frontier[p].values()) >= RECALL_BAR), default=None
        )
        if best is not None and expected_cost(probe, lists.shape[1], hv.n, {}) >= best:
            break  # its candidates alone cost more than the best probe so far: so do all bigger
        if (
            best is not None
            and len(cost) >= 2
            and min(cost.values()) > GAIN * min(list(cost.values())[:-1])
        ):
            break  # the last (doubled) probe gained too little to try a bigger one
        params = RouteParams(probe=probe, list_len=lists.shape[1], min_sample_similarity=-1.0)
        per_query = {}
        for name, q in sets.items():
            hits = searcher.search(q, 10, "routes", route_params=params, lookups=lookups[name])
            per_query[name] = tie_aware_recall_per_query(hits.sims, truth[name])
        tau = _fallback_threshold(per_query, nearest, sample_quantile)
        taus[probe] = tau
        frontier[probe] = {
            n: float(np.where(nearest[n] >= tau, r, 1.0).mean()) for n, r in per_query.items()
        }
        fallback[probe] = {n: float((nearest[n] < tau).mean()) for n in per_query}
        cost[probe] = expected_cost(probe, lists.shape[1], hv.n, fallback[probe])
        logger.info("calibration probe %d: recall %s, fallback %s, cost %.0f", probe,
                    frontier[probe], fallback[probe], cost[probe])  # fmt: skip
    meeting = [p for p in frontier if min(frontier[p].values()) >= RECALL_BAR]
    # the cheapest probe that meets the bar (a bigger probe routes more queries: its fallback
    # threshold is lower); none meets it: the best recall, recorded as not proven
    probe = (
        min(meeting, key=lambda p: (cost[p], p))
        if meeting
        else max(frontier, key=lambda p: (min(frontier[p].values()), -p))
    )
    return HookCalibration(
        params=RouteParams(probe=probe, list_len=lists.shape[1], min_sample_similarity=taus[probe]),
        recall=frontier[probe],
        fallback=fallback[probe],
        frontier=frontier,
        n_samples=int(pool.shape[0]),
        list_len=int(lists.shape[1]),
        seconds=time.perf_counter() - t0,
        fallback_frontier=fallback,
        cost=cost,
    )


def _at_most(q: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``q``, or ``n`` of its rows drawn without replacement (in their order) when it has more."""
    if q.shape[0] <= n:
        return q
    return q[np.sort(rng.choice(q.shape[0], n, replace=False))]


def _fallback_threshold(
    per_query: Mapping[str, np.ndarray], nearest: Mapping[str, np.ndarray], margin: float
) -> float:
    """The lowest nearest-sample similarity from which on routed answers are trusted.

    Candidates are the held-out queries' own nearest-sample similarities; the lowest one for
    which every set's recall (routed above it, exact below it) stays >= the bar plus
    ``margin`` wins: the fewest queries go to exact search without losing recall.
    """
    cands = np.unique(np.concatenate([np.round(v, 4) for v in nearest.values()]))
    grid = np.unique(np.concatenate([[-1.0], np.quantile(cands, np.linspace(0, 1, 201))]))
    for tau in grid:
        ok = all(
            np.where(nearest[n] >= tau, r, 1.0).mean() >= RECALL_BAR + margin
            for n, r in per_query.items()
        )
        if ok:
            return float(tau)
    return 1.0


def calibrate_bank(
    path: str | os.PathLike,
    samples: Mapping[str, np.ndarray],
    held_out: Mapping[str, Mapping[str, np.ndarray]],
    *,
    queries_from: str | None = None,
    **options: object,
) -> dict[str, HookCalibration]:
    """Give a bank's hooks routes calibrated on sample queries (in place, atomically).

    Args:
        path: The bank directory.
        samples: Bank hook -> ``[s, d]`` sample queries to route by (for cross-layer search:
            the visual tokens of every layer that will be searched against this hook).
        held_out: Set name -> bank hook -> ``[q, d]`` held-out queries (other images; images
            unlike the samples) whose recall decides whether ``auto`` may use the routes.
        queries_from: What produced the queries (:meth:`VLM.visual_fingerprint` for visual
            tokens), recorded with the routes: the proof holds for that model's queries, so
            ``LatentLens`` searches exactly when another model's visual tokens come.
        **options: :func:`calibrate_hook` options (``list_len``, ``probes``, ``text_samples``,
            ``seed``, ``progress``).

    Returns:
        Bank hook -> its :class:`HookCalibration` (also recorded in the manifest, with the
        route files' checksums).

    Example:
        >>> cal = calibrate_bank("banks/wordnet", samples, {"heldout": held, "photos": photos})
        >>> cal["blocks.8.hook_resid_pre"].recall
    """
    root = Path(path)
    out: dict[str, HookCalibration] = {}
    with locked(root.with_name(f".{root.name}.lock")):
        manifest = mf.read_manifest(root)
        names = set(manifest.hook_names)
        unknown = sorted(set(samples) - names)
        if unknown:
            raise ValueError(f"the bank stores no hooks {unknown}; it stores {sorted(names)}")
        hooks, files = list(manifest.hooks), dict(manifest.files)
        for i, entry in enumerate(hooks):
            name = entry.name
            if name not in samples:
                continue
            folder = root / mf.hook_dir(name)
            sets = {s: q[name] for s, q in held_out.items() if name in q}
            cal = calibrate_hook(folder, manifest.dtype, samples[name], sets, **options)  # type: ignore[arg-type]
            record = cal.to_dict()
            if queries_from is not None:
                record["queries_from"] = queries_from
            hooks[i] = replace(entry, routes=record)
            for rel in ROUTE_FILES:
                record = file_record(folder / rel)
                files[f"{mf.hook_dir(name)}/{rel}"] = mf.FileRecord.from_json(record)
            out[name] = cal
            logger.info("%s: routes %s", name, cal.to_dict()["recall_at_10"])
        mf.write_manifest(root, replace(manifest, hooks=tuple(hooks), files=files))
    return out


def calibrate_bank_with_images(
    bank: Bank,
    vlm: VLM,
    images: Sequence[object],
    *,
    prompt: str | None = None,
    held_out_share: float = 0.2,
    unlike: Mapping[str, Sequence[object]] | None = None,
    held_out_text: Sequence[str] = (),
    max_text_tokens: int = 2000,
    max_samples: int = 20_000,
    seed: int = 0,
    calibrate: Sequence[str] | None = None,
    **options: object,
) -> dict[str, HookCalibration]:
    """Calibrate routes for visual-token queries of ``vlm`` from calibration images.

    Every image's visual tokens are captured at every bank layer; for cross-layer search any
    visual layer may be searched against any bank hook, so each bank hook's samples are the
    visual tokens of *all* layers (at most ``max_samples``, drawn at random). A share of the
    images is held out (whole images, so held-out tokens are not neighbours of their own
    image's samples); ``unlike`` adds further held-out sets (e.g. ``{"photos": [...]}``: images
    unlike the calibration images) that routes must also pass. The routes record
    ``vlm.visual_fingerprint()`` as ``queries_from``. ``held_out_text`` (sentences
    that are not in the bank) adds a text set: the residuals of their tokens (at most
    ``max_text_tokens``) at each hook, searched against that hook, as a text-only user would.
    ``calibrate`` (bank hook names) gives routes to those hooks only (default: every hook);
    their samples are still the visual tokens of every bank layer.

    Example:
        >>> calibrate_bank_with_images(bank, vlm, stamps, unlike={"photos": photos},
        ...                            held_out_text=["a dog runs on the beach"])
    """
    hooks = [hk.hook_for_layer(hk.layer_of(h), vlm.n_layers) for h in bank.hooks]
    targets = list(bank.hooks) if calibrate is None else list(calibrate)
    unknown = sorted(set(targets) - set(bank.hooks))
    if unknown:
        raise ValueError(
            f"calibrate names hooks the bank does not store: {unknown}; it stores "
            f"{list(bank.hooks)}"
        )
    progress = bool(options.get("progress", True))

    def tokens(imgs: Sequence[object]) -> np.ndarray:
        return visual_tokens(vlm, imgs, hooks, prompt, progress)

    if not 0.0 < held_out_share < 1.0:
        raise ValueError(f"held_out_share must be in (0, 1), got {held_out_share}")
    if isinstance(held_out_text, str):
        raise ValueError(
            "held_out_text must be a list of sentences, not one string: wrap it in [...]"
        )
    if held_out_text and max_text_tokens <= 0:
        raise ValueError(f"max_text_tokens must be positive, got {max_text_tokens}")
    if len(images) < 2:
        raise ValueError("calibration needs at least 2 images (some are held out)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_held = max(1, round(held_out_share * len(images)))
    train = tokens([images[i] for i in order[n_held:]])
    if train.shape[0] > max_samples:
        train = train[rng.choice(train.shape[0], max_samples, replace=False)]
    sets = {"held-out images": tokens([images[i] for i in order[:n_held]])}
    for name, imgs in (unlike or {}).items():
        sets[name] = tokens(imgs)
    held = {name: {h: q for h in bank.hooks} for name, q in sets.items()}
    if held_out_text:
        held["held-out text"] = _text_tokens(vlm, held_out_text, bank.hooks, hooks, max_text_tokens)
    return calibrate_bank(
        bank.root,
        {h: train for h in targets},
        held,
        queries_from=vlm.visual_fingerprint(),
        seed=seed,
        **options,
    )


def visual_tokens(
    vlm: VLM,
    images: Sequence[object],
    hooks: Sequence[str],
    prompt: str | None = None,
    progress: bool = True,
) -> Float[np.ndarray, "n d"]:
    """The visual tokens of ``images`` at every hook of ``hooks``, stacked (image by image, hook
    by hook): the query vectors calibration samples and holds out.

    Example:
        >>> q = visual_tokens(vlm, [image], ["blocks.0.hook_resid_pre"])
    """
    rows = []
    for img in tqdm(images, desc="bank: calibration images", disable=not progress):
        acts = capture_image(vlm, img, prompt, list(hooks))
        rows.extend(acts.residuals[h].numpy() for h in hooks)
    return np.concatenate(rows) if rows else np.zeros((0, vlm.d_model), np.float32)


def _text_tokens(
    vlm: VLM, sentences: Sequence[str], bank_hooks: Sequence[str], hooks: Sequence[str], limit: int
) -> dict[str, np.ndarray]:
    """Per bank hook, the residuals of up to ``limit`` tokens of ``sentences`` at that hook."""
    got: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
    n = 0
    for acts in capture_text(vlm, list(sentences), hooks, batch_size=16):
        for h in hooks:
            got[h].append(acts.residuals[h].numpy())
        n += int(acts.token_id.shape[0])
        if n >= limit:
            break
    if n == 0:
        raise ValueError("held_out_text has no tokens to calibrate on: pass non-empty sentences")
    return {b: np.concatenate(got[h])[:limit] for b, h in zip(bank_hooks, hooks)}
