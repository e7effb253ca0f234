"""Re-check an exported connector VLM on the held-out stamps: does it use the image?

:func:`check_grounding` loads a connector VLM directory (float32 LM by default), rebuilds the
held-out captioning samples of the default pipeline (the features are cached) and runs
:func:`~tl_latentlens.training.captioning.grounding_eval`: held-out caption loss with the right
image vs zero visual tokens vs another image's visual tokens, overall and per sample kind.

Example:
    >>> report = check_grounding(WEIGHTS_DIR, write=True)
    >>> report["by_kind"]["stamp"]["image"] < report["by_kind"]["stamp"]["other_image"]
    True
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from tl_latentlens.default.data import load_stamps, split_stamps
from tl_latentlens.default.features import SampleSpec, sample_set
from tl_latentlens.default.loader import MANIFEST_NAME, load_connector_vlm
from tl_latentlens.default.objects import load_objects, split_objects
from tl_latentlens.training.captioning import CaptionSet, CaptionTemplate, grounding_eval

__all__ = ["check_grounding"]

logger = logging.getLogger(__name__)


def check_grounding(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 16,
    write: bool = False,
) -> dict[str, Any]:
    """Grounding check of a connector VLM directory on its held-out samples.

    Args:
        path: Directory with ``connector_vlm.json`` (made by the default pipeline: its training
            manifest says how the held-out samples were built).
        dtype: Language-model dtype for the check.
        batch_size: Sequences per forward pass.
        write: Store the report in the manifest as ``training.grounding_held_out_<dtype>``.

    Returns:
        The :func:`grounding_eval` report plus ``"lm_dtype"`` and ``"seconds"``.
    """
    path = Path(path)
    vlm = load_connector_vlm(path, device="cpu", dtype=dtype)  # beside the pipeline's features
    manifest = vlm.manifest  # type: ignore[attr-defined]
    pipe = manifest.get("training", {}).get("pipeline", {}).get("config", {})
    if not pipe:
        raise ValueError(f"{path} has no pipeline configuration in its training manifest")
    if "sources" in pipe:  # split by object identity (issue 12): the validation objects
        objs = load_objects(tuple(pipe["sources"]), per_identity=pipe.get("per_identity", 4))
        frac = pipe["held_out_frac"]
        held = list(split_objects(objs, frac, frac).validation)
    else:  # connectors trained before the object split: its per-stamp split
        _, held = split_stamps(load_stamps(), pipe["held_out_frac"], pipe["split_seed"])
    hs = pipe["held_samples"]
    spec = SampleSpec(
        hs["views_per_stamp"], hs["n_composites"], hs["image_size"], tuple(hs["grid"])
    )
    samples, feats, _ = sample_set(vlm.encoder, held, spec, pipe["data_seed"] + 1, "held_out")
    tpl = CaptionTemplate.from_vlm(vlm, manifest["prompt"])
    caps = tuple(
        tuple(tpl.encode_caption(vlm.tokenizer, s.caption, pipe["max_caption_tokens"]))
        for s in samples
    )
    t0 = time.perf_counter()
    report = grounding_eval(
        vlm, tpl, CaptionSet(feats, caps, tuple(s.kind for s in samples)), batch_size
    )
    report["lm_dtype"] = str(dtype).replace("torch.", "")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    logger.info("grounding of %s: %s", path, report)
    if write:
        manifest["training"][f"grounding_held_out_{report['lm_dtype']}"] = report
        tmp = path / (MANIFEST_NAME + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, path / MANIFEST_NAME)
    return report
