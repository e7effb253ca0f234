"""The one entry point that turns a model name or directory into a :class:`VLM`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tl_latentlens.models.base import VLM

__all__ = ["CONNECTOR_VLM_FILE", "DEFAULT_NAME", "load_vlm"]

logger = logging.getLogger(__name__)

#: A directory holding this file is a connector VLM (loaded by ``tl_latentlens.default``).
CONNECTOR_VLM_FILE = "connector_vlm.json"

#: ``load_vlm("default")`` is the embedded default VLM (SmolLM2-135M + EfficientNet-Lite0).
DEFAULT_NAME = "default"

# boot_transformers kwargs that also apply to loading the config / processor files.
_FILE_KWARGS = ("revision", "trust_remote_code")


def load_vlm(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    processor: Any = None,
    tokenizer: Any = None,
    hf_model: Any = None,
    **kw: Any,
) -> VLM:
    """Load a VLM: a supported Hugging Face VLM, or a saved connector VLM.

    Hub names need network access once (later runs work with ``HF_HUB_OFFLINE=1`` from the
    cache); local directories never touch the network. The family is read off the HF
    config (``model_type``, then ``architectures``). torchvision is never installed: where
    TransformerLens would ``pip install`` it to build a processor, a warning is logged and
    the PIL image processor is used instead.

    Args:
        name_or_path: HF hub name, ``"default"`` (the embedded default VLM) or a local
            directory. A directory containing
            ``connector_vlm.json`` is loaded by ``tl_latentlens.default.load_connector_vlm``.
        device: Device for the model (default: TransformerLens's choice, CUDA if present).
        dtype: Model dtype.
        processor: An HF processor to use instead of loading one.
        tokenizer: A tokenizer for the bridge (it is reloaded from its ``name_or_path``, so
            it must be saved somewhere).
        hf_model: An already loaded HF ``*ForConditionalGeneration`` model.
        **kw: Passed to ``TransformerBridge.boot_transformers`` (``revision``,
            ``trust_remote_code``, ``n_ctx`` …).

    Returns:
        An :class:`~tl_latentlens.models.hf_vlm.HFVLM` (or the connector VLM).

    Raises:
        ValueError: The model's family is not supported (the message lists the supported
            ones).

    Example:
        >>> vlm = load_vlm("Qwen/Qwen2-VL-2B-Instruct", device="cuda", dtype=torch.bfloat16)
        >>> acts = capture_image(vlm, image, hooks=["blocks.0.hook_resid_pre"])
    """
    if str(name_or_path) == DEFAULT_NAME:
        from tl_latentlens.default import load_default_vlm

        return load_default_vlm(device=device, dtype=dtype)
    path = Path(name_or_path)
    if path.is_dir() and (path / CONNECTOR_VLM_FILE).is_file():
        from tl_latentlens.default import load_connector_vlm

        return load_connector_vlm(path, device=device, dtype=dtype)

    from transformer_lens.model_bridge import TransformerBridge

    from tl_latentlens.models.hf_families import family_for_config
    from tl_latentlens.models.hf_vlm import HFVLM
    from tl_latentlens.models.qwen2_vl import (
        qwen_vl_adapters_without_torchvision,
        register_qwen2_vl,
    )

    name = str(name_or_path)
    file_kw = {k: kw[k] for k in _FILE_KWARGS if k in kw}
    hf_config = hf_model.config if hf_model is not None else _hf_config(name, file_kw)
    family = family_for_config(hf_config)
    register_qwen2_vl()
    with _never_install_torchvision(), qwen_vl_adapters_without_torchvision():
        bridge = TransformerBridge.boot_transformers(
            name, device=device, dtype=dtype, tokenizer=tokenizer, hf_model=hf_model, **kw
        )
    if processor is None:
        processor = getattr(bridge, "processor", None)
    if processor is None:
        processor = family.build_processor(name, tokenizer=tokenizer, **file_kw)
    logger.info("loaded %s as %s (%s)", name, family.name, type(processor).__name__)
    return HFVLM(bridge, family=family, name=name, processor=processor)


def _hf_config(name: str, file_kw: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name, **file_kw)


def _refuse_torchvision_install() -> bool:
    """Stand-in for TransformerLens's ``_ensure_torchvision``: import, never install."""
    try:
        import torchvision  # noqa: F401

        return True
    except Exception:  # missing or broken: either way not usable
        pass
    logger.warning(
        "TransformerLens tried to pip-install torchvision to build this model's processor; "
        "tl_latentlens never installs packages (torchvision's wheel would not match this "
        "torch). Using the PIL image processor instead."
    )
    return False


@contextlib.contextmanager
def _never_install_torchvision() -> Iterator[None]:
    """Within the block, TransformerLens's on-the-fly ``pip install torchvision`` is refused."""
    from transformer_lens.model_bridge.sources.transformers import helpers

    original = helpers._ensure_torchvision
    helpers._ensure_torchvision = _refuse_torchvision_install
    try:
        yield
    finally:
        helpers._ensure_torchvision = original
