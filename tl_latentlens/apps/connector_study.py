"""Judge a trained connector on held-out objects: the numbers of ``docs/default_connector.md``.

:func:`evaluate_connector` loads a connector VLM directory, opens the default bank (the demo's,
built once), draws composites of *validation* or *test* objects (identities never trained on,
:func:`~tl_latentlens.evaluate.default_set.heldout_composites`) and runs the per-layer study
with the graded mask judge and **exact** search. It returns a summary: per layer and lens the
strict (concrete) top-5 rate with its 95 % intervals (Wilson's, ``ci95``, and one resampling
whole composites, ``ci95_images``), the related and global levels, and the LatentLens hubness;
``mean_strict`` (LatentLens, mean over the layers) is what the selection rule of the docs
compares on the validation part, and ``constant_answer`` is the chance level to read it against
(:mod:`~tl_latentlens.evaluate.chance`).

The table's bank (:func:`build_table_bank`, ``--build-bank``) is text only, so one bank serves
every connector of the same language model: the distinct Tux Paint captions, then one visual
phrase for each of the 1200 most used concrete nouns of WordNet, hooks of layers 0 / 2 / 8 / 16 /
24, at most 20 contexts per token (4581 vectors per hook for SmolLM2-135M); ``--bank-corpus
phrases`` builds round 8's bank of six noun-led phrases per noun instead.

Example (a shell, in the background on a shared machine)::

    nice -n 10 python -m tl_latentlens.apps.connector_study --connector runs/c1/export \\
        --part validation --images 40 --layers 0 2 8 16 24 --patches 150 --out runs/c1/val \\
        --bank runs/table_bank --build-bank
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from tl_latentlens.bank import Bank
from tl_latentlens.bank import build_bank as bank_build
from tl_latentlens.default.corpus import concrete_nouns, noun_phrases, visual_phrases
from tl_latentlens.default.data import load_stamps, stamp_captions
from tl_latentlens.default.loader import load_connector_vlm
from tl_latentlens.evaluate import EvalConfig, MaskJudge, run_study
from tl_latentlens.evaluate.default_set import heldout_composites
from tl_latentlens.evaluate.hubness import hubness
from tl_latentlens.evaluate.records import JudgementLog
from tl_latentlens.hooks import hook_for_layer
from tl_latentlens.lens import LatentLens
from tl_latentlens.lens.default_bank import default_bank

__all__ = [
    "TABLE_BANK_CORPORA",
    "TABLE_BANK_LAYERS",
    "TABLE_BANK_NOUNS",
    "build_table_bank",
    "cone_stats",
    "evaluate_connector",
    "measure_cone",
    "leap_shares",
    "summarise",
    "table_bank_corpus",
]

logger = logging.getLogger(__name__)

#: Layers stored by the table's bank (docs/default_connector.md, "Bank used for the table").
TABLE_BANK_LAYERS = (0, 2, 8, 16, 24)
#: Concrete nouns with phrases in the table's bank.
TABLE_BANK_NOUNS = 1200
#: The table bank's corpora (docs/default_connector.md): ``visual`` one ``visual_phrases``
#: phrase per noun (B1, rounds 2-7); ``phrases`` six noun-led phrases per noun (B2, round 8).
TABLE_BANK_CORPORA = ("visual", "phrases")


def table_bank_corpus(nouns: int = TABLE_BANK_NOUNS, corpus: str = "visual") -> list[str]:
    """The table bank's sentences: distinct stamp captions, then the phrases of ``corpus``.

    Duplicates are dropped keeping the first occurrence (``visual``: 1874 sentences with the
    Debian stamps and WordNet 3.0).

    Raises:
        ValueError: ``corpus`` is not one of :data:`TABLE_BANK_CORPORA`.
    """
    if corpus not in TABLE_BANK_CORPORA:
        raise ValueError(f"unknown table bank corpus {corpus!r}; use one of {TABLE_BANK_CORPORA}")
    captions = stamp_captions(load_stamps())
    if corpus == "visual":
        phrases = visual_phrases(concrete_nouns(nouns), per_noun=1, seed=0)
    else:
        phrases = noun_phrases(concrete_nouns(nouns), per_noun=6, seed=0)
    return list(dict.fromkeys([*captions, *phrases]))


def build_table_bank(vlm: Any, out: str | Path, corpus: str = "visual") -> Bank:
    """Build (or open, when it is already there) the table's bank of ``vlm``'s LM at ``out``.

    ``corpus``: which phrases follow the captions (:func:`table_bank_corpus`).
    """
    if (Path(out) / "manifest.json").is_file():
        return Bank.open(out, vlm)
    hooks = [hook_for_layer(layer, vlm.n_layers) for layer in TABLE_BANK_LAYERS]
    sentences = table_bank_corpus(corpus=corpus)
    logger.info("building the table bank (%d sentences) at %s", len(sentences), out)
    return bank_build(vlm, sentences, out, hooks=hooks, max_per_token=20, batch_size=32)


def summarise(
    table: Any, hub: Any, k: int = 5, chance: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON summary of a study table (strict counting), its LatentLens hubness and, per
    lens and layer, the rate of the lens's words against other images' labels (``shuffled``,
    from the report's ``chance``)."""
    shuffled = (chance or {}).get("shuffled", {})
    layers = []
    for _, r in table.iterrows():
        row: dict[str, Any] = {"layer": int(r["layer"]), "n": int(r["n_patches"])}
        for lens in ("latent", "logit", "embedding"):
            row[lens] = {
                "strict": round(float(r[f"{lens}_top{k}"]), 2),
                "ci95": [
                    round(float(r[f"{lens}_top{k}_lo"]), 2),
                    round(float(r[f"{lens}_top{k}_hi"]), 2),
                ],  # fmt: skip
                # resampling whole composites: their patches are not independent draws
                "ci95_images": [
                    round(float(r[f"{lens}_top{k}_img_lo"]), 2),
                    round(float(r[f"{lens}_top{k}_img_hi"]), 2),
                ],  # fmt: skip
                "related": round(float(r[f"{lens}_abstract"]), 2),
                "shuffled": shuffled.get(lens, {}).get(str(int(r["layer"]))),
                "global": round(float(r[f"{lens}_global"]), 2),
            }
        h = hub[hub["layer"] == r["layer"]]
        if len(h):
            row["hub_top5_share"] = round(float(h.iloc[0]["top5_share"]), 2)
            row["hubs"] = str(h.iloc[0]["hubs"])
        layers.append(row)
    strict = [x["latent"]["strict"] for x in layers if not math.isnan(x["latent"]["strict"])]
    return {
        "layers": layers,
        "mean_strict": round(sum(strict) / len(strict), 2) if strict else float("nan"),
        "best_strict": max(strict) if strict else float("nan"),
        "max_hub_share": max((x.get("hub_top5_share", 0.0) for x in layers), default=0.0),
    }


def leap_shares(judgements: str | Path) -> dict[str, dict[str, float]]:
    """The mid-layer leap from study records: per visual layer, the share of LatentLens top-1
    neighbours found at each text layer of the bank (cross-layer search)."""
    per: dict[int, Counter] = {}
    for rec in JudgementLog(judgements).latest().values():
        if rec["lens"] == "latent" and rec.get("candidates"):
            per.setdefault(int(rec["layer"]), Counter())[rec["candidates"][0]["text_layer"]] += 1
    return {
        str(v): {str(t): round(c / sum(cnt.values()), 3) for t, c in sorted(cnt.items())}
        for v, cnt in sorted(per.items())
    }


def cone_stats(x: torch.Tensor, max_rows: int | None = None) -> dict[str, float]:
    """How spread out a set of vectors is (the collapse measurement of the docs).

    Returns ``cos`` (exact mean pairwise cosine over all pairs ``i != j``, from the sum of the
    unit vectors), ``norm`` (mean L2 norm) and ``k90`` (principal components holding 90 % of
    the variance; on every ``n // max_rows``-th row when ``max_rows`` is set).

    Example:
        >>> cone_stats(torch.eye(4))["cos"]
        0.0
    """
    x = x.reshape(-1, x.shape[-1]).double()
    unit = torch.nn.functional.normalize(x, dim=-1)
    n = unit.shape[0]
    cos = float((unit.sum(0).pow(2).sum() - n) / max(n * n - n, 1))
    sub = x[:: max(1, n // max_rows)] if max_rows else x
    var = torch.linalg.svdvals(sub - sub.mean(0)) ** 2
    k90 = int((torch.cumsum(var, 0) / var.sum() < 0.9).sum()) + 1
    return {"cos": round(cos, 3), "norm": round(float(x.norm(dim=-1).mean()), 2), "k90": k90}


def measure_cone(
    connector_dir: str | Path, part: str = "validation", n_images: int = 40
) -> dict[str, Any]:
    """Layer-0 visual tokens (the connector's output, eval mode) on the held-out composites
    of ``part``, next to the encoder features and the LM's token embeddings (:func:`cone_stats`).

    Not part of the selection rule: it checks the collapse claim of the docs.
    """
    vlm = load_connector_vlm(connector_dir)
    images = heldout_composites(n_images, part=part)
    with torch.no_grad():
        feats = vlm.encoder(vlm.encoder.preprocess([im.image for im in images])).float()
        tokens = vlm.connector(feats)
    return {
        "connector": str(connector_dir),
        "kind": vlm.connector.config()["kind"],
        "part": part,
        "images": n_images,
        "features": cone_stats(feats),
        "token_embeddings": cone_stats(vlm.bridge.W_E.detach().float(), max_rows=7000),
        "visual_tokens": cone_stats(tokens),
    }


def evaluate_connector(
    connector_dir: str | Path,
    out: str | Path,
    part: str = "validation",
    n_images: int = 40,
    layers: tuple[int, ...] | None = (0, 2, 8, 16, 24),
    patches_per_layer: int = 150,
    bank_sentences: int = 12000,
    bank_dir: str | Path | None = None,
    build_bank: bool = False,
    bank_corpus: str = "visual",
) -> dict[str, Any]:
    """Run the held-out study of one connector; writes ``summary.json`` into ``out``.

    ``bank_dir``: a bank of the same language model to use instead of the demo's default bank
    (a bank holds text residuals only, so one bank serves every connector of that LM);
    ``build_bank``: build the table's bank there first when it is missing
    (:func:`build_table_bank`, with the phrases of ``bank_corpus``)."""
    t0 = time.perf_counter()
    vlm = load_connector_vlm(connector_dir)
    if bank_dir is not None and build_bank:
        bank = build_table_bank(vlm, bank_dir, bank_corpus)
    elif bank_dir is not None:
        bank = Bank.open(bank_dir, vlm)
    else:
        bank = default_bank(vlm, bank_sentences)
    images = heldout_composites(n_images, part=part)
    config = EvalConfig(
        layers=layers,
        k=5,
        patches_per_layer=patches_per_layer,
        method="exact",
        count_kinds=("concrete",),
        plots=False,
        save_explanations=False,
    )
    result = run_study(LatentLens(vlm, bank), images, MaskJudge(), config, out, resume=True)
    hub = hubness(Path(out) / "judgements.jsonl")
    summary = summarise(result.table, hub, chance=result.report.get("chance"))
    # the 5 bank words that, answered for every patch, name the most patches (evaluate.chance)
    summary["constant_answer"] = result.report.get("chance")
    summary.update(
        connector=str(connector_dir),
        part=part,
        images=n_images,
        bank=str(bank.root),
        seconds=round(time.perf_counter() - t0, 1),
    )
    summary["leap_shares"] = leap_shares(Path(out) / "judgements.jsonl")
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=1))
    hub.to_csv(Path(out) / "hubness.csv", index=False)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m tl_latentlens.apps.connector_study``."""
    p = argparse.ArgumentParser(prog="python -m tl_latentlens.apps.connector_study")
    p.add_argument("--connector", required=True, help="connector VLM directory")
    p.add_argument("--out", required=True)
    p.add_argument("--part", choices=("validation", "test"), default="validation")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--layers", type=int, nargs="*", default=[0, 2, 8, 16, 24])
    p.add_argument("--all-layers", action="store_true", help="the study's default layers")
    p.add_argument("--patches", type=int, default=150)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--cone",
        action="store_true",
        help="only measure the layer-0 visual tokens' spread (cone.json in --out), no study",
    )
    p.add_argument("--bank", default=None, help="bank directory (default: the demo's bank)")
    p.add_argument(
        "--build-bank",
        action="store_true",
        help="build the table's bank at --bank when it is not there (docs/default_connector.md)",
    )
    p.add_argument(
        "--bank-corpus",
        choices=TABLE_BANK_CORPORA,
        default="visual",
        help="the phrases of a bank --build-bank builds: visual (B1) or noun-led phrases (B2)",
    )
    args = p.parse_args(argv)
    if args.build_bank and args.bank is None:
        p.error("--build-bank needs --bank DIR")
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cone:
        cone = measure_cone(args.connector, args.part, args.images)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "cone.json").write_text(json.dumps(cone, indent=1))
        print(json.dumps(cone, indent=1))
        return 0
    summary = evaluate_connector(
        args.connector,
        args.out,
        args.part,
        args.images,
        None if args.all_layers else tuple(args.layers),
        args.patches,
        bank_dir=args.bank,
        build_bank=args.build_bank,
        bank_corpus=args.bank_corpus,
    )
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
