"""Every change tl_latentlens makes to TransformerLens internals, scoped to one model load.

TransformerLens 4.3 needs three things changed to boot the HF VLMs we support on a machine
without torchvision; each touches a private part of TransformerLens, so all of them live here
and are applied only inside :func:`transformer_lens_patches` (``load_vlm`` wraps
``TransformerBridge.boot_transformers`` in it), then undone:

1. ``helpers._ensure_torchvision`` runs ``pip install torchvision`` when it is missing (to
   build a fast image processor). Inside the block it only imports it: library code never
   installs anything, and a torchvision wheel would not match the pinned torch. The PIL image
   processor is used instead (the families build it, see
   :mod:`tl_latentlens.models.families`).
2. ``Qwen2VLForConditionalGeneration`` has no adapter in TransformerLens 4.3.
   :class:`Qwen2VLArchitectureAdapter` is registered with the adapter factory, the supported
   architectures (read off the HF config) and the multimodal ones (so it loads with
   ``AutoModelForImageTextToText``).
3. TransformerLens's Qwen2.5-VL and Qwen3-VL adapters declare ``torchvision`` a required
   library although the HF *models* never import it (only the fast image and video
   processors do). Subclasses without that requirement are put in their place.

Only TransformerLens's own entries are replaced (a user's own registration is left alone),
and every change is undone on exit, also on error. A lock makes concurrent loads take turns,
since the changed objects are process-wide. After the load the bridge holds its adapter
instance; nothing in TransformerLens consults these tables again.

Example:
    >>> with transformer_lens_patches():
    ...     bridge = TransformerBridge.boot_transformers("Qwen/Qwen2-VL-2B-Instruct")
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

from transformer_lens.factories import architecture_adapter_factory as factory_module
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
from transformer_lens.model_bridge.generalized_components import LinearBridge
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.generalized_components.qwen3_5_vision_encoder import (
    Qwen3_5VisionBlockBridge,
    Qwen3_5VisionEncoderBridge,
)
from transformer_lens.model_bridge.sources.transformers import helpers
from transformer_lens.model_bridge.supported_architectures.qwen2_5_vl import (
    Qwen2_5_VLArchitectureAdapter,
)
from transformer_lens.model_bridge.supported_architectures.qwen3_vl import (
    Qwen3VLArchitectureAdapter,
)
from transformer_lens.utilities import architectures as tl_architectures

__all__ = [
    "Qwen2VLArchitectureAdapter",
    "Qwen2_5_VLNoTorchvisionAdapter",
    "Qwen3VLNoTorchvisionAdapter",
    "transformer_lens_patches",
]

logger = logging.getLogger(__name__)

QWEN2_VL = "Qwen2VLForConditionalGeneration"
QWEN2_5_VL = "Qwen2_5_VLForConditionalGeneration"
QWEN3_VL = "Qwen3VLForConditionalGeneration"

_LOCK = threading.RLock()


class Qwen2_5_VLNoTorchvisionAdapter(Qwen2_5_VLArchitectureAdapter):
    """TransformerLens's Qwen2.5-VL adapter without its ``torchvision`` requirement."""

    required_libraries: list[str] = []


class Qwen3VLNoTorchvisionAdapter(Qwen3VLArchitectureAdapter):
    """TransformerLens's Qwen3-VL adapter without its ``torchvision`` requirement."""

    required_libraries: list[str] = []


class Qwen2VLArchitectureAdapter(Qwen2_5_VLNoTorchvisionAdapter):
    """Adapter for ``Qwen2VLForConditionalGeneration`` (Qwen2-VL-2B/7B/72B).

    Qwen2-VL and Qwen2.5-VL share the text decoder (Qwen2 layout, q/k/v biases, 3-section
    mRoPE computed inside HF's forward, so attention stays HF-native) and the
    ``model.visual.merger`` projector; only the vision blocks differ (LayerNorm +
    ``fc1``/``fc2`` MLP instead of RMSNorm + gated MLP). Module layout bridged::

        model.visual              vision tower (patch_embed, rotary_pos_emb, blocks[], merger)
          blocks[i]               norm1/norm2 (LayerNorm), attn.qkv/attn.proj, mlp.fc1/mlp.fc2
        model.visual.merger       patch merger (LayerNorm + 2-layer MLP) -> text width
        model.language_model      Qwen2-layout decoder with mRoPE (attention kept HF-native)
        lm_head                   unembedding
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        vision_cfg = getattr(cfg, "vision_config", None)
        if vision_cfg is not None:  # Qwen2-VL's vision width is embed_dim (hidden_size: merger out)
            self.cfg.vision_hidden_size = getattr(
                vision_cfg, "embed_dim", self.cfg.vision_hidden_size
            )
        blocks = Qwen3_5VisionBlockBridge(
            name="blocks",
            submodules={
                "mlp": GeneralizedComponent(
                    name="mlp",
                    submodules={
                        "in": LinearBridge(name="fc1"),
                        "out": LinearBridge(name="fc2"),
                    },
                ),
            },
        )
        self.components["vision_encoder"] = Qwen3_5VisionEncoderBridge(
            name="model.visual",
            config=self.cfg,
            submodules={
                "pos_embed": GeneralizedComponent(name="rotary_pos_emb"),
                "blocks": blocks,
            },
        )


# architecture -> (TransformerLens's own adapter or None where it has none, ours)
_ADAPTERS: dict[str, tuple[type | None, type]] = {
    QWEN2_VL: (None, Qwen2VLArchitectureAdapter),
    QWEN2_5_VL: (Qwen2_5_VLArchitectureAdapter, Qwen2_5_VLNoTorchvisionAdapter),
    QWEN3_VL: (Qwen3VLArchitectureAdapter, Qwen3VLNoTorchvisionAdapter),
}

_MISSING = object()


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
def _set_item(table: MutableMapping[str, Any], key: str, value: Any) -> Iterator[None]:
    old = table.get(key, _MISSING)
    table[key] = value
    try:
        yield
    finally:
        if old is _MISSING:
            table.pop(key, None)
        else:
            table[key] = old


@contextlib.contextmanager
def _set_attr(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def _add_to_set(items: set[str], item: str) -> Iterator[None]:
    present = item in items
    items.add(item)
    try:
        yield
    finally:
        if not present:
            items.discard(item)


@contextlib.contextmanager
def transformer_lens_patches() -> Iterator[None]:
    """Within the block, TransformerLens boots our VLMs without torchvision (module docstring).

    Re-entrant; every change is undone on exit.
    """
    with _LOCK, contextlib.ExitStack() as stack:
        stack.enter_context(_set_attr(helpers, "_ensure_torchvision", _refuse_torchvision_install))
        tables = (ArchitectureAdapterFactory._adapters, factory_module.SUPPORTED_ARCHITECTURES)
        for arch, (theirs, ours) in _ADAPTERS.items():
            for table in tables:
                current = table.get(arch)
                if current is theirs:  # None: absent; a user's own adapter is kept
                    stack.enter_context(_set_item(table, arch, ours))
            if theirs is None:
                stack.enter_context(_add_to_set(tl_architectures.MULTIMODAL_ARCHITECTURES, arch))
        yield
