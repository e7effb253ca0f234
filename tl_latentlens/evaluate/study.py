"""The per-layer interpretability study: sample patches, run the lenses, judge, aggregate.

For each image the model runs once (:meth:`LatentLens.explain` over every needed layer,
restricted to the sampled patches); each lens's top-k words for each sampled (patch, layer) go
to the judge; every verdict is appended to ``judgements.jsonl`` as it arrives. Then the table,
the plots and ``report.json`` are written (:mod:`tl_latentlens.evaluate.report`).

Output folder::

    plan.json             what is judged where, and the study's identity (checked on resume)
    judgements.jsonl      one line per (image, patch, layer, lens)
    explanations/<id>.json  the lens outputs per image (resume skips the model for these)
    table.csv  layers.png  leap.png  report.json

Example:
    >>> lens = LatentLens(vlm, Bank.open("banks/default", vlm))
    >>> result = run_study(lens, load_images(["default"]), MaskJudge(), EvalConfig(), "study")
    >>> print(result.table)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tl_latentlens import hooks as hk
from tl_latentlens.bank.format.manifest import identity
from tl_latentlens.bank.results import word_span
from tl_latentlens.evaluate.config import EvalConfig
from tl_latentlens.evaluate.controls import ControlResult
from tl_latentlens.evaluate.images import EvalImage
from tl_latentlens.evaluate.judges import Judge, JudgeCase, MaskJudge
from tl_latentlens.evaluate.records import LENSES, JudgementLog, aggregate, record_key
from tl_latentlens.evaluate.report import write_outputs
from tl_latentlens.evaluate.sampling import SamplePlan, sample_plan
from tl_latentlens.lens.results import Explanation
from tl_latentlens.models.base import crop_to_box

__all__ = ["StudyResult", "candidates_of", "run_study", "study_identity", "whole_word"]

logger = logging.getLogger(__name__)

#: Images explained together (one bank search for all their sampled tokens).
STUDY_BATCH = 8


@dataclass
class StudyResult:
    """What :func:`run_study` produced.

    Attributes:
        table: Per-layer percentages (:func:`~tl_latentlens.evaluate.records.aggregate`).
        out: The output folder.
        files: Name -> path of every file written.
        report: The contents of ``report.json``.
        plan: The sampling plan.
        explanations: One (sampled-patches-only) explanation per image.
        judged: Verdicts asked for in this run (0 when everything was resumed).
        controls: The positive controls recorded with the study (text, visual), printed above
            the visual rows by :func:`~tl_latentlens.evaluate.report.format_table`.
    """

    table: Any
    out: Path
    files: dict[str, Path]
    report: dict[str, Any]
    plan: SamplePlan
    explanations: list[Any] = field(default_factory=list)
    judged: int = 0
    controls: list[ControlResult] = field(default_factory=list)


def candidates_of(patch: Any, lens: str) -> list[dict[str, Any]]:
    """One lens's candidates of a :class:`~tl_latentlens.lens.PatchExplanation` as records."""
    if lens == "latent":
        return [
            {
                "token": n.token,
                "word": whole_word(getattr(n, "sentence_tokens", ()), n.position, n.token),
                "score": float(n.similarity),
                "text_layer": n.layer,
                "sentence": n.sentence[:300],
            }
            for n in patch.latent
        ]
    if lens not in ("logit", "embedding"):
        raise ValueError(f"unknown lens {lens!r}; lenses: {LENSES}")
    return [
        {"token": c.token, "token_id": int(c.token_id), "score": float(c.score)}
        for c in getattr(patch, lens)
    ]


def whole_word(tokens: Sequence[str], position: int, token: str) -> str:
    """The word of a sentence that contains the token at ``position`` (pieces joined).

    A LatentLens neighbour is a token in context, so a sub-word piece (``"kidn"`` of
    ``" kidney"``) stands for its word; the judge and the hubness counts see that word. Falls back
    to ``token`` when the sentence tokens are unknown or do not hold it.

    Example:
        >>> whole_word(["<s>", "A", " kidn", "ey", " bean", "."], 2, " kidn")
        'kidney'
    """
    if not tokens or not 0 <= position < len(tokens) or tokens[position] != token:
        return token.strip()
    span = word_span(tokens, position)
    return span.word if span is not None else token.strip()


def study_identity(
    lens: Any,
    images: Sequence[EvalImage],
    judge: Judge,
    config: EvalConfig,
    grid_labels: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Everything a resumed run must agree on: config, images (pixels and labels on the
    model's grid), judge, model and bank."""
    bank = lens.bank
    desc = judge.describe()
    labels = grid_labels if grid_labels is not None else [None] * len(images)
    return {
        "config": config.identity(),
        "images": [[im.id, im.fingerprint(), _digest(lab)] for im, lab in zip(images, labels)],
        "judge": {
            key: desc.get(key)
            for key in ("name", "model", "rule", "related_rule")
            if key != "related_rule" or key in desc
        },
        "model": lens.vlm.fingerprint(),
        "bank": identity(bank.manifest) if hasattr(bank, "manifest") else None,
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


def _layers(lens: Any, config: EvalConfig) -> list[int]:
    n = lens.vlm.n_layers
    if config.layers is None:
        return sorted({int(hk.layer_of(h)) for h in lens.default_hooks()})
    bad = [x for x in config.layers if not 0 <= int(x) <= n]
    if bad:
        raise ValueError(f"layers {bad} are outside 0..{n} for this {n}-block model")
    return sorted({int(x) for x in config.layers})


def _eligible(
    lens: Any, images: Sequence[EvalImage], judge: Judge, config: EvalConfig
) -> tuple[list, list, list]:
    """Per image: the layout grid + patch labels (on the part of the image the grid covers),
    the visual-token indices that may be drawn, and the prepared model inputs (each image is
    prepared once: :func:`run_study` hands these to the lens)."""
    needs_labels = bool(getattr(judge, "needs_labels", isinstance(judge, MaskJudge)))
    info, eligible, prepared = [], [], []
    for im in images:
        inputs = lens.vlm.prepare(im.image, config.prompt)
        layout = inputs.layout
        grid = tuple(layout.grid)
        box = layout.box(0) if hasattr(layout, "box") else None
        labels = im.grid_labels(grid, config.min_label_fraction, box=box)
        rows, cols = layout.rows.tolist(), layout.cols.tolist()
        ok = []
        for i, (r, c) in enumerate(zip(rows, cols)):
            if r < 0:
                continue  # not a grid patch (separator, thumbnail)
            if needs_labels and (labels is None or labels[r][c] is None):
                continue
            ok.append(i)
        info.append({"grid": grid, "labels": labels, "rows": rows, "cols": cols, "box": box})
        eligible.append(ok)
        prepared.append(inputs)
    if needs_labels and not any(eligible):
        raise ValueError(
            "the mask judge needs annotated images, and none of these has labelled patches"
        )
    return info, eligible, prepared


def _check_resume(out: Path, ident: dict[str, Any], plan: SamplePlan, resume: bool) -> None:
    plan_file = out / "plan.json"
    log = out / "judgements.jsonl"
    if not resume:
        if log.is_file() and log.stat().st_size > 0:
            raise ValueError(
                f"{out} already holds judgements: resume it (--resume) or choose another --out"
            )
        return
    if plan_file.is_file():
        old = json.loads(plan_file.read_text(encoding="utf-8"))
        new = json.loads(json.dumps({"identity": ident, "plan": plan.to_dict()}))
        for key in ("identity", "plan"):
            if old.get(key) != new[key]:
                diff = [k for k in new[key] if old.get(key, {}).get(k) != new[key][k]]
                raise ValueError(
                    f"cannot resume {out}: the study differs in {key} ({', '.join(diff)})"
                )


def run_study(
    lens: Any,
    images: Sequence[EvalImage],
    judge: Judge,
    config: EvalConfig,
    out: str | Path,
    resume: bool = False,
    controls: Sequence[ControlResult] = (),
) -> StudyResult:
    """Run (or resume) a study and write its outputs.

    Args:
        lens: A :class:`~tl_latentlens.lens.LatentLens` (its VLM and bank are recorded).
        images: The images (:func:`~tl_latentlens.evaluate.images.load_images`).
        judge: The judge (:class:`MaskJudge` needs annotated images).
        config: Sampling and counting settings.
        out: Output folder (created).
        resume: Continue a study in ``out``: judged keys are skipped, the plan must match.
        controls: Positive controls of the same lens
            (:func:`~tl_latentlens.evaluate.controls.text_control`,
            :func:`~tl_latentlens.evaluate.controls.visual_control`), recorded in
            ``report.json`` and ``controls.csv`` and shown above the visual rows.

    Raises:
        ValueError: ``out`` holds a different or unfinished study without ``resume``, no
            eligible patches, layers outside the model.
    """
    out = Path(out)
    if not images:
        raise ValueError("no images")
    layers = _layers(lens, config)
    info, eligible, prepared = _eligible(lens, images, judge, config)
    plan = sample_plan(eligible, layers, config.patches_per_layer, config.seed, config.paired)
    ident = study_identity(lens, images, judge, config, [x["labels"] for x in info])
    _check_resume(out, ident, plan, resume)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(
        json.dumps({"identity": ident, "plan": plan.to_dict()}, indent=1)
    )
    log = JudgementLog(out / "judgements.jsonl")
    done = log.done() if resume else set()
    n_layers = lens.vlm.n_layers
    hook_of = {layer: hk.hook_for_layer(layer, n_layers) for layer in layers}
    sampled = {layer: set(pairs) for layer, pairs in plan.picks.items()}
    explanations, judged = [], 0
    bar = tqdm(total=len(images), desc="evaluate: images", unit="img")
    for start in range(0, len(images), STUDY_BATCH):
        batch = range(start, min(start + STUDY_BATCH, len(images)))
        exps = _explain_batch(lens, images, batch, plan, layers, prepared, hook_of, config, out)
        for idx in batch:
            im, exp = images[idx], exps.get(idx)
            bar.update(1)
            if exp is None:
                continue
            patches = plan.patches_for_image(idx)
            keys = [
                (im.id, p, float(layer), lens_)
                for layer in layers
                for p in patches
                if (idx, p) in sampled[layer]
                for lens_ in LENSES
            ]
            keep = [p for p in exp.patches if (idx, p.index) in sampled.get(int(p.layer), set())]
            explanations.append(replace(exp, patches=keep))
            cases = [c for c in _cases(exp, im, info[idx], keys, done, hook_of)]
            judged += _judge_all(judge, cases, log, config.judge_workers)
            bar.set_postfix(judged=judged)
    bar.close()
    table = aggregate(log.path, kinds=config.count_kinds)
    files, report = write_outputs(
        out, table, explanations, lens, images, judge, config, plan, ident, controls
    )
    return StudyResult(table, out, files, report, plan, explanations, judged, list(controls))


def _explain_batch(
    lens: Any,
    images: Sequence[EvalImage],
    batch: range,
    plan: SamplePlan,
    layers: list[float],
    prepared: list,
    hook_of: dict,
    config: EvalConfig,
    out: Path,
) -> dict[int, Any]:
    """Explanations of the images of ``batch`` that have sampled patches: read back from
    ``out/explanations`` when a run wrote them, the others explained together
    (:meth:`~tl_latentlens.lens.LatentLens.explain_many`: one search for all their tokens)."""
    exps: dict[int, Any] = {}
    inputs: dict[int, Any] = {}  # prepared inputs of the images to explain, held for this batch
    for idx in batch:
        ready, prepared[idx] = prepared[idx], None
        if not plan.patches_for_image(idx):
            continue
        exp_file = out / "explanations" / f"{images[idx].id}.json"
        if exp_file.is_file():
            exps[idx] = Explanation.load(exp_file)
        else:
            inputs[idx] = ready
    todo = list(inputs)
    if not todo:
        return exps
    # every layer any image of the batch is sampled at (each image's own are a subset)
    todo_layers = [x for x in layers if any(i in todo for i, _ in plan.picks[x])]
    got = lens.explain_many(
        [images[i].image for i in todo],
        config.prompt,
        hooks=[hook_of[x] for x in todo_layers],
        k=config.k,
        batch_size=len(todo),
        per_layer=config.per_layer,
        method=config.method,
        patches=[plan.patches_for_image(i) for i in todo],
        inputs=[inputs[i] for i in todo],
        progress=False,
    )
    for idx, exp in zip(todo, got):
        exps[idx] = exp
        if config.save_explanations:
            exp.save(out / "explanations" / f"{images[idx].id}.json")
    return exps


def _cases(
    exp: Any, im: EvalImage, info: dict[str, Any], keys: list, done: set, hook_of: dict
) -> list:
    """``(record_without_verdict, JudgeCase)`` for every key not judged yet."""
    labels = info["labels"]
    out = []
    for key in keys:
        if key in done:
            continue
        image_id, p, layer, lens_name = key
        patch = exp.patch(hook_of[int(layer)], p)
        cands = candidates_of(patch, lens_name)
        words = [c.get("word", c["token"]).strip() for c in cands]
        row, col = info["rows"][p], info["cols"][p]
        label = labels[row][col] if labels is not None else None
        rec = {
            "image": image_id,
            "patch": p,
            "row": row,
            "col": col,
            "layer": int(layer),
            "hook": hook_of[int(layer)],
            "lens": lens_name,
            "label": label,
            "candidates": cands,
            "words": words,
        }
        case = JudgeCase(
            image=crop_to_box(im.image, info.get("box")),
            image_id=image_id,
            row=row,
            col=col,
            grid=info["grid"],
            candidates=tuple(c.get("word", c["token"]) for c in cands),
            label=label,
            image_labels=im.labels,
            caption=im.caption,
        )
        out.append((rec, case))
    return out


def _judge_all(judge: Judge, cases: list, log: JudgementLog, workers: int) -> int:
    """Judge cases (threads when ``workers > 1``), appending each record as it completes."""
    import time

    name = judge.describe().get("name")

    def one(item: tuple[dict[str, Any], JudgeCase]) -> None:
        rec, case = item
        verdict = judge.judge(case)
        log.append({**rec, "verdict": verdict.to_dict(), "judge": name, "t": round(time.time(), 3)})
        if verdict.is_error:
            logger.debug("judge error for %s: %s", record_key(rec), verdict.error)

    if workers <= 1:
        for item in cases:
            one(item)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, cases))
    return len(cases)
