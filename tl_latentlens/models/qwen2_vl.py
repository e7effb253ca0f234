"""TransformerBridge adapters for the Qwen-VL families TransformerLens 4.3 cannot load here.

* ``Qwen2VLForConditionalGeneration`` has no adapter in TransformerLens 4.3.
  :class:`Qwen2VLArchitectureAdapter` adds one. Qwen2-VL and Qwen2.5-VL share the
  text decoder (Qwen2 layout, q/k/v biases, 3-section multimodal rotary "mRoPE" computed
  inside Hugging Face's forward, so attention stays HF-native) and the
  ``model.visual.merger`` projector; only the vision blocks differ (LayerNorm +
  ``fc1``/``fc2`` MLP instead of RMSNorm + gated MLP).
* The HF Qwen-VL processors cannot be constructed without torchvision: their
  ``video_processor`` slot must hold a ``VideoProcessorMixin``, which transformers only
  defines when torchvision is importable. :func:`image_only_qwen_processor` builds the same
  processor with that slot empty (images only; the image processor is the PIL one).
* TransformerLens's Qwen2.5-VL adapter declares ``torchvision`` a required library,
  although the Hugging Face *model* never imports it (only the fast image and video
  processors do). :class:`Qwen2_5_VLNoTorchvisionAdapter` is the same adapter without that
  check; :func:`qwen_vl_adapters_without_torchvision` puts it in place for the duration of a
  boot.

:func:`register_qwen2_vl` is called by :func:`tl_latentlens.models.load.load_vlm`, never at
import time, and may be called any number of times.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from transformer_lens.factories import architecture_adapter_factory as factory_module
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
from transformer_lens.model_bridge.generalized_components import LinearBridge
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.generalized_components.qwen3_5_vision_encoder import (
    Qwen3_5VisionBlockBridge,
    Qwen3_5VisionEncoderBridge,
)
from transformer_lens.model_bridge.supported_architectures.qwen2_5_vl import (
    Qwen2_5_VLArchitectureAdapter,
)
from transformer_lens.utilities import architectures as tl_architectures
from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

__all__ = [
    "QWEN2_5_VL_ARCHITECTURE",
    "QWEN2_VL_ARCHITECTURE",
    "Qwen2VLArchitectureAdapter",
    "Qwen2_5_VLNoTorchvisionAdapter",
    "image_only_qwen_processor",
    "qwen_vl_adapters_without_torchvision",
    "register_qwen2_vl",
]

logger = logging.getLogger(__name__)

QWEN2_VL_ARCHITECTURE = "Qwen2VLForConditionalGeneration"
QWEN2_5_VL_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"


class Qwen2_5_VLNoTorchvisionAdapter(Qwen2_5_VLArchitectureAdapter):
    """TransformerLens's Qwen2.5-VL adapter without its ``torchvision`` import check.

    The Hugging Face model runs without torchvision; image preprocessing uses the PIL image
    processor (see :mod:`tl_latentlens.models.hf_families`).
    """

    required_libraries: list[str] = []


class Qwen2VLArchitectureAdapter(Qwen2_5_VLNoTorchvisionAdapter):
    """Adapter for ``Qwen2VLForConditionalGeneration`` (Qwen2-VL-2B/7B/72B).

    Module layout bridged::

        model.visual              vision tower (patch_embed, rotary_pos_emb, blocks[], merger)
          blocks[i]               norm1/norm2 (LayerNorm), attn.qkv/attn.proj, mlp.fc1/mlp.fc2
        model.visual.merger       patch merger (LayerNorm + 2-layer MLP) -> text width
        model.language_model      Qwen2-layout decoder with mRoPE (attention kept HF-native)
        lm_head                   unembedding

    Example:
        >>> register_qwen2_vl()
        >>> bridge = TransformerBridge.boot_transformers("Qwen/Qwen2-VL-2B-Instruct")
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


def register_qwen2_vl() -> None:
    """Make ``Qwen2VLForConditionalGeneration`` bootable by ``TransformerBridge`` (idempotent).

    Registers :class:`Qwen2VLArchitectureAdapter` with TransformerLens's adapter factory,
    lists the architecture among the supported ones (used when TransformerLens reads the
    architecture off an HF config) and among the multimodal ones (so it loads with
    ``AutoModelForImageTextToText`` and gets an ``AutoProcessor``).
    """
    supported = factory_module.SUPPORTED_ARCHITECTURES
    if supported.get(QWEN2_VL_ARCHITECTURE) is not Qwen2VLArchitectureAdapter:
        supported[QWEN2_VL_ARCHITECTURE] = Qwen2VLArchitectureAdapter
        logger.debug("registered %s with TransformerLens", QWEN2_VL_ARCHITECTURE)
    ArchitectureAdapterFactory.register_adapter(QWEN2_VL_ARCHITECTURE, Qwen2VLArchitectureAdapter)
    tl_architectures.MULTIMODAL_ARCHITECTURES.add(QWEN2_VL_ARCHITECTURE)


@contextlib.contextmanager
def qwen_vl_adapters_without_torchvision() -> Iterator[None]:
    """Within the block, TransformerLens builds Qwen2.5-VL with the torchvision-free adapter.

    Only swaps when TransformerLens's own adapter is registered (a user's own registration
    is left alone); the original is restored on exit.
    """
    adapters = ArchitectureAdapterFactory._adapters
    original = adapters.get(QWEN2_5_VL_ARCHITECTURE)
    swap = original is Qwen2_5_VLArchitectureAdapter
    if swap:
        adapters[QWEN2_5_VL_ARCHITECTURE] = Qwen2_5_VLNoTorchvisionAdapter
    try:
        yield
    finally:
        if swap:
            adapters[QWEN2_5_VL_ARCHITECTURE] = original


class _NoVideoProcessor:
    """Lets a Qwen-VL processor be built with ``video_processor=None`` (images only)."""

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


class ImageOnlyQwen2VLProcessor(_NoVideoProcessor, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor."""


class ImageOnlyQwen2_5_VLProcessor(_NoVideoProcessor, Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor."""


_IMAGE_ONLY_PROCESSORS = {
    QWEN2_VL_ARCHITECTURE: ImageOnlyQwen2VLProcessor,
    QWEN2_5_VL_ARCHITECTURE: ImageOnlyQwen2_5_VLProcessor,
}


def image_only_qwen_processor(architecture: str, image_processor: Any, tokenizer: Any) -> Any:
    """The Qwen-VL processor of ``architecture`` from a tokenizer and an image processor.

    Args:
        architecture: ``"Qwen2VLForConditionalGeneration"`` or
            ``"Qwen2_5_VLForConditionalGeneration"``.
        image_processor: E.g. ``Qwen2VLImageProcessorPil`` (what ``AutoImageProcessor`` gives
            without torchvision).
        tokenizer: The model's tokenizer (with ``<|image_pad|>``).

    Example:
        >>> proc = image_only_qwen_processor(
        ...     "Qwen2_5_VLForConditionalGeneration",
        ...     AutoImageProcessor.from_pretrained(path),
        ...     AutoTokenizer.from_pretrained(path),
        ... )
        >>> proc(images=[img], text="<|vision_start|><|image_pad|><|vision_end|>Hi", return_tensors="pt")
    """
    if architecture not in _IMAGE_ONLY_PROCESSORS:
        raise ValueError(
            f"no Qwen-VL processor for {architecture!r}; expected one of {sorted(_IMAGE_ONLY_PROCESSORS)}"
        )
    cls = _IMAGE_ONLY_PROCESSORS[architecture]
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=getattr(tokenizer, "chat_template", None),
    )
