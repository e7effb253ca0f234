"""The one entry point that turns a model name or directory into a :class:`VLM`.

Hugging Face VLMs are loaded here (their family from :mod:`tl_latentlens.models.families`).
Other kinds of VLM come from *loaders* registered under the entry-point group
:data:`LOADER_GROUP` in a package's metadata, so this module never imports the packages above
it: tl_latentlens itself registers ``default`` (the embedded default VLM,
``load_vlm("default")``) and ``connector`` (a directory holding :data:`CONNECTOR_VLM_FILE`),
both in :mod:`tl_latentlens.default`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

import torch

from tl_latentlens.devices import resolve_device
from tl_latentlens.models.base import VLM
from tl_latentlens.models.families import family_for_config
from tl_latentlens.models.hf_vlm import HFVLM

__all__ = ["CONNECTOR_VLM_FILE", "DEFAULT_NAME", "LOADER_GROUP", "load_vlm"]

logger = logging.getLogger(__name__)

#: A directory holding this file is a connector VLM (the ``connector`` loader).
CONNECTOR_VLM_FILE = "connector_vlm.json"

#: ``load_vlm("default")`` is the embedded default VLM (the ``default`` loader).
DEFAULT_NAME = "default"

#: Entry-point group of named VLM loaders (``name = "package.module:function"``).
LOADER_GROUP = "tl_latentlens.vlm_loaders"

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
    the PIL image processor is used instead (:mod:`tl_latentlens.models.tl_compat`).

    Args:
        name_or_path: HF hub name, ``"default"`` (the embedded default VLM) or a local
            directory. A directory containing ``connector_vlm.json`` is a connector VLM.
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
        return _loader(DEFAULT_NAME)(device=device, dtype=dtype)
    path = Path(name_or_path)
    if path.is_dir() and (path / CONNECTOR_VLM_FILE).is_file():
        return _loader("connector")(path, device=device, dtype=dtype)

    from transformer_lens.model_bridge import TransformerBridge

    # lazy: the patches import TransformerLens internals; only a load needs them
    from tl_latentlens.models.tl_compat import transformer_lens_patches

    name = str(name_or_path)
    file_kw = {k: kw[k] for k in _FILE_KWARGS if k in kw}
    hf_config = hf_model.config if hf_model is not None else _hf_config(name, file_kw)
    family = family_for_config(hf_config)
    with transformer_lens_patches():
        bridge = TransformerBridge.boot_transformers(
            name,
            device=resolve_device(device),
            dtype=dtype,
            tokenizer=tokenizer,
            hf_model=hf_model,
            **kw,
        )
    if processor is None:
        processor = getattr(bridge, "processor", None)
    if processor is None:
        processor = family.build_processor(name, tokenizer=tokenizer, **file_kw)
    logger.info("loaded %s as %s (%s)", name, family.name, type(processor).__name__)
    return HFVLM(bridge, family=family, name=name, processor=processor)


def _loader(name: str) -> Callable[..., VLM]:
    """The loader registered as ``name`` in :data:`LOADER_GROUP`.

    Raises:
        ValueError: None is registered (the package metadata is missing or stale).
    """
    # Every distribution is asked, not just the first of each name as entry_points() does:
    # a stale tl_latentlens.egg-info in the working directory would otherwise hide the
    # installed metadata.
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == LOADER_GROUP and ep.name == name:
                return ep.load()
    raise ValueError(
        f"no VLM loader {name!r} is registered (entry-point group {LOADER_GROUP!r}); "
        "tl_latentlens's package metadata is missing or stale: reinstall it with "
        "`pip install -e .` in the repository (or `pip install tl_latentlens`)"
    )


def _hf_config(name: str, file_kw: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name, **file_kw)
