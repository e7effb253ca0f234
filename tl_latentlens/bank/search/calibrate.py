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
    "ProvingSet",
    "calibrate_bank",
    "calibrate_hook",
    "unit_rows",
    "visual_tokens",
]

if TYPE_CHECKING:
    from tl_latentlens.bank.bank import Bank
    from tl_latentlens.models.base import VLM

logger = logging.getLogger(__name__)

#: A set of queries routes must prove their recall on: images (a sequence of PIL images or
#: arrays; their visual tokens at every bank layer, searched against every hook), one array of
#: query vectors (every hook) or bank hook -> array of query vectors.
ProvingSet = Sequence[object] | np.ndarray | Mapping[str, np.ndarray]

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
        n_queries: Held-out set name -> queries recall was measured on.
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
    n_queries: dict[str, int] = field(default_factory=dict)

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
            "proving_sets": {
                k: {"queries": self.n_queries.get(k, 0), "recall_at_10": round(v, 5)}
                for k, v in self.recall.items()
            },
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
#: probes after such a step lowered the cost little, mostly not at all, while the bigger probes
#: cost most of the calibration time (benchmarks/bench_calibration.py).
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
        # this copy instead of decoding the hook again (benchmarks/bench_calibration.py)
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
            hits = searcher.search(
                q, 10, "routes", route_params=params, lookups=lookups[name], audit=False
            )
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
        n_queries={n: int(q.shape[0]) for n, q in sets.items()},
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


def _calibrate_vectors(
    root: Path,
    samples: Mapping[str, np.ndarray],
    held_out: Mapping[str, Mapping[str, np.ndarray]],
    kinds: Mapping[str, str],
    queries_from: str | None,
    **options: object,
) -> dict[str, HookCalibration]:
    """Calibrate the hooks of ``samples`` from query vectors (in place, atomically, under the
    bank's lock); each proving set's kind (``kinds``) is recorded beside its recall."""
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
            for set_name, info in record["proving_sets"].items():  # type: ignore[union-attr]
                info["kind"] = kinds.get(set_name, "stored vectors + noise")
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


def _is_vectors(x: object) -> bool:
    return isinstance(x, np.ndarray) or type(x).__name__ == "Tensor"


def calibrate_bank(
    bank: Bank | str | os.PathLike,
    vlm: VLM | None = None,
    images: Sequence[object] | None = None,
    *,
    samples: Mapping[str, np.ndarray] | np.ndarray | None = None,
    prove_on: Mapping[str, ProvingSet] | None = None,
    held_out_text: Sequence[str] = (),
    prompt: str | None = None,
    held_out_share: float = 0.2,
    max_text_tokens: int = 2000,
    max_samples: int = 20_000,
    seed: int = 0,
    hooks: Sequence[str | int] | None = None,
    queries_from: str | None = None,
    **options: object,
) -> dict[str, HookCalibration]:
    """Give a bank's hooks routes, proven on held-out queries (in place, atomically).

    Routes are built from sample queries and proven on every proving set: the hook's
    ``auto`` search uses them only where recall@10 against exact search is >= the bar on
    each set (and every routed search audits itself, see
    :mod:`~tl_latentlens.bank.search.dispatch`). The manifest records every proving set with
    its kind, size and recall.

    Sample queries come from ``images`` and/or ``samples``:

    * ``images`` (needs ``vlm``): their visual tokens at every bank layer are the samples of
      every calibrated hook (cross-layer search may search any visual layer against any
      hook; at most ``max_samples``, drawn at random). A share (``held_out_share``, whole
      images) is held out as the proving set ``"held-out images"``. The routes record
      ``vlm.visual_fingerprint()`` as ``queries_from``: another model's visual tokens are
      searched exactly.
    * ``samples``: query vectors, bank hook -> ``[s, d]`` (those hooks are calibrated) or one
      ``[s, d]`` array for every calibrated hook.

    Args:
        bank: An open :class:`~tl_latentlens.bank.Bank` or a bank directory.
        vlm: The bank's model (needed for images and ``held_out_text``).
        images: Calibration images (PIL images or arrays).
        samples: Sample query vectors (see above).
        prove_on: Further proving sets by name (:data:`ProvingSet`): images unlike the
            calibration images, and the user's own images (``{"mine": my_images}``), or query
            vectors (one array, or bank hook -> array).
        held_out_text: Sentences not in the bank: the residuals of their tokens (at most
            ``max_text_tokens``) at each hook form the proving set ``"held-out text"``, as a
            text-only user would search.
        prompt: Prompt with the image placeholder (default: the model's).
        held_out_share: Share of ``images`` held out.
        max_text_tokens: Tokens of ``held_out_text`` used.
        max_samples: Sample queries per hook drawn from the images' visual tokens.
        seed: Seed of the held-out split, the sample draw and the routes' graph.
        hooks: Bank hooks (names or layer numbers) to give routes; default: the hooks of a
            ``samples`` mapping, else every hook. Their samples still come from every layer.
        queries_from: What produced the queries (default with images:
            ``vlm.visual_fingerprint()``).
        **options: :func:`calibrate_hook` options (``list_len``, ``probes``, ``text_samples``,
            ``progress``, ``max_queries``).

    Returns:
        Bank hook -> its :class:`HookCalibration` (also recorded in the manifest, with the
        route files' checksums).

    Raises:
        ValueError: No samples, images without ``vlm``, fewer than 2 images, unknown hooks,
            a bad share or text argument.

    Example:
        >>> cal = calibrate_bank(bank, vlm, stamps, prove_on={"photos": photos, "mine": mine},
        ...                      held_out_text=["a dog runs on the beach"])
        >>> cal["blocks.8.hook_resid_pre"].recall
        >>> calibrate_bank("banks/wordnet", samples={"blocks.0.hook_resid_pre": q},
        ...                prove_on={"held": held})
    """
    is_open = not isinstance(bank, (str, os.PathLike))  # an open Bank
    root = Path(bank.root) if is_open else Path(bank)  # type: ignore[union-attr,arg-type]
    stored = list(mf.read_manifest(root).hook_names)
    prove_on = dict(prove_on or {})
    image_sets = [n for n, v in prove_on.items() if not (_is_vectors(v) or isinstance(v, Mapping))]
    if (images is not None or image_sets or held_out_text) and vlm is None:
        raise ValueError(
            "images and held_out_text are turned into queries by the model: pass vlm= (the "
            "bank's model)"
        )
    if images is None and samples is None:
        raise ValueError(
            "calibration needs sample queries: pass images= (with vlm=) or samples= (vectors)"
        )
    if not 0.0 < held_out_share < 1.0:
        raise ValueError(f"held_out_share must be in (0, 1), got {held_out_share}")
    if isinstance(held_out_text, str):
        raise ValueError(
            "held_out_text must be a list of sentences, not one string: wrap it in [...]"
        )
    if held_out_text and max_text_tokens <= 0:
        raise ValueError(f"max_text_tokens must be positive, got {max_text_tokens}")
    if images is not None and len(images) < 2:
        raise ValueError("calibration needs at least 2 images (some are held out)")

    def resolve(h: str | int) -> str:
        if is_open:
            return bank.resolve_hook(h)  # type: ignore[union-attr]
        if h not in stored:
            raise ValueError(f"the bank stores no hook {h!r}; it stores {stored}")
        return str(h)

    if hooks is not None:
        unknown = [h for h in hooks if isinstance(h, str) and h not in stored]
        if unknown and not is_open:
            raise ValueError(f"hooks names hooks the bank does not store: {unknown}; it "
                             f"stores {stored}")  # fmt: skip
        try:
            targets = list(dict.fromkeys(resolve(h) for h in hooks))
        except LookupError as err:
            raise ValueError(f"hooks names hooks the bank does not store: {err}") from None
    elif isinstance(samples, Mapping) and images is None:
        targets = list(samples)
    else:
        targets = list(stored)
    unknown = sorted(set(targets) - set(stored))
    if unknown:
        raise ValueError(f"the bank stores no hooks {unknown}; it stores {stored}")

    progress = bool(options.get("progress", True))
    model_hooks = (
        [hk.hook_for_layer(hk.layer_of(h), vlm.n_layers) for h in stored] if vlm is not None else []
    )

    def tokens(imgs: Sequence[object]) -> np.ndarray:
        assert vlm is not None
        return visual_tokens(vlm, imgs, model_hooks, prompt, progress)

    rng = np.random.default_rng(seed)
    per_hook: dict[str, list[np.ndarray]] = {h: [] for h in targets}
    held: dict[str, dict[str, np.ndarray]] = {}
    kinds: dict[str, str] = {}
    if images is not None:
        order = rng.permutation(len(images))
        n_held = max(1, round(held_out_share * len(images)))
        train = tokens([images[i] for i in order[n_held:]])
        if train.shape[0] > max_samples:
            train = train[rng.choice(train.shape[0], max_samples, replace=False)]
        for h in targets:
            per_hook[h].append(train)
        held["held-out images"] = dict.fromkeys(stored, tokens([images[i] for i in order[:n_held]]))
        kinds["held-out images"] = "images"
    if samples is not None:
        if isinstance(samples, Mapping):
            for h, q in samples.items():
                name = resolve(h)
                if name in per_hook:
                    per_hook[name].append(np.asarray(q, dtype=np.float32))
        else:
            for h in targets:
                per_hook[h].append(np.asarray(samples, dtype=np.float32))
    for name, given in prove_on.items():
        if isinstance(given, Mapping):
            held[name] = {resolve(h): np.asarray(q, dtype=np.float32) for h, q in given.items()}
            kinds[name] = "vectors"
        elif _is_vectors(given):
            q = np.asarray(given, dtype=np.float32)
            held[name] = dict.fromkeys(stored, q)
            kinds[name] = "vectors"
        else:
            held[name] = dict.fromkeys(stored, tokens(list(given)))  # type: ignore[arg-type]
            kinds[name] = "images"
    if held_out_text:
        assert vlm is not None
        held["held-out text"] = _text_tokens(
            vlm, held_out_text, stored, model_hooks, max_text_tokens
        )
        kinds["held-out text"] = "text"
    empty = [h for h, parts in per_hook.items() if not parts]
    if empty:
        raise ValueError(f"no sample queries for hooks {empty}: add them to samples=")
    if queries_from is None and vlm is not None and images is not None:
        queries_from = vlm.visual_fingerprint()
    return _calibrate_vectors(
        root,
        {h: np.concatenate(parts) for h, parts in per_hook.items()},
        held,
        kinds,
        queries_from,
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
