"""A Hugging Face VLM (LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
Idefics3, Gemma3) as a :class:`VLM`.

The whole HF model is wrapped by one ``TransformerBridge``; its processor
(``bridge.processor``) expands the image placeholders of the prompt, and the HF forward puts
the projected vision features at those positions. So ``blocks.0.hook_resid_pre`` at a visual
position is the projector output, ``blocks.{l}.hook_resid_pre`` equals HF
``hidden_states[l]``, and family-specific inputs (Qwen's ``image_grid_thw`` and
``mm_token_type_ids`` that drive the 3-D rotary positions, Idefics3's
``pixel_attention_mask``, Gemma3's ``token_type_ids``) reach the HF forward untouched.

Text-only runs (``capture_text``) use the same bridge with ``input_ids`` and
``attention_mask`` only; every supported family accepts that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from tl_latentlens.models.base import VLM, FwdHook, ImageTokenMismatchError, VLMInputs
from tl_latentlens.models.families import VLMFamily, family_for_config, image_token_id

__all__ = ["HFVLM"]

logger = logging.getLogger(__name__)


class HFVLM(VLM):
    """A whole HF vision-language model behind a ``TransformerBridge``.

    Usually built by :func:`tl_latentlens.models.load.load_vlm`.

    Args:
        bridge: ``TransformerBridge`` of an HF ``*ForConditionalGeneration`` VLM.
        family: Family knowledge (default: detected from the HF config).
        name: Model name for manifests (default: the config's ``_name_or_path``).
        processor: The HF processor (default: ``bridge.processor``); stored on the bridge.

    Raises:
        ValueError: No processor, or an unsupported family.

    Example:
        >>> vlm = load_vlm("llava-hf/llava-1.5-7b-hf")
        >>> inputs = vlm.prepare(image)                  # "<image>\\nDescribe the image."
        >>> _, cache = vlm.run_with_cache(inputs, ["blocks.8.hook_resid_post"])
        >>> cache["blocks.8.hook_resid_post"][0, inputs.layout.positions].shape   # (576, 4096)
    """

    def __init__(
        self,
        bridge: Any,
        family: VLMFamily | None = None,
        name: str | None = None,
        processor: Any = None,
    ) -> None:
        self.bridge = bridge
        self.family = family if family is not None else family_for_config(self.hf_config)
        self.name = name or str(getattr(self.hf_config, "_name_or_path", "") or self.family.name)
        if processor is not None:
            bridge.processor = processor
        if getattr(bridge, "processor", None) is None:
            raise ValueError(
                f"{self.name}: the bridge has no HF processor; pass processor= (for "
                f"{self.family.name}: {self.family.architecture}'s processor)"
            )

    # ---- HF objects -----------------------------------------------------------------------
    @property
    def hf_model(self) -> Any:
        """The wrapped HF ``*ForConditionalGeneration`` model."""
        return self.bridge.original_model

    @property
    def hf_config(self) -> Any:
        """Its HF config."""
        return self.hf_model.config

    @property
    def processor(self) -> Any:
        """The HF processor (tokenizer + image processor)."""
        return self.bridge.processor

    @property
    def image_token_id(self) -> int:
        """Token id the processor puts at every visual position."""
        return image_token_id(self.hf_config)

    @property
    def default_prompt(self) -> str:
        """A prompt with this family's image placeholder, e.g. ``"<image>\\nDescribe the image."``."""
        return self.family.default_prompt

    def embedding_matrix(self) -> Tensor:
        """The language model's input embedding matrix ``[d_vocab, d_model]``."""
        return self.hf_model.get_input_embeddings().weight

    # ---- images ---------------------------------------------------------------------------
    def prepare(self, images: Any, prompt: str | None = None) -> VLMInputs:
        """Run the HF processor on ``prompt`` + ``images`` and locate the visual tokens.

        Args:
            images: A PIL image or a list (one per placeholder).
            prompt: Prompt with this family's placeholder(s) (``<image>`` for LLaVA and
                Idefics3, ``<|vision_start|><|image_pad|><|vision_end|>`` for Qwen-VL,
                ``<start_of_image>`` for Gemma3). A generic ``<image>`` marker is accepted for
                every family. ``None`` uses :attr:`default_prompt`.

        Returns:
            :class:`VLMInputs` whose ``model_kwargs`` are the processor outputs (``input_ids``
            under ``"input"``) on the model's device, floats in its dtype; its layout records
            the part of each image the grid covers (``layout.boxes``, e.g. LLaVA-1.5's
            centre crop).

        Raises:
            ImageTokenMismatchError: Placeholders and images disagree, or the processor's image
                tokens do not match the vision features the model will produce.
        """
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("no images given")
        token = str(getattr(self.processor, "image_token", self.family.prompt_placeholder))
        prompt = self.default_prompt if prompt is None else prompt
        prompt = self.family.normalize_prompt(prompt, token)
        n_placeholders = prompt.count(token)
        if n_placeholders != len(images):
            raise ImageTokenMismatchError(
                f"the prompt has {n_placeholders} {token!r} placeholder(s) but {len(images)} "
                f"image(s) were given ({self.family.name} prompts mark each image with "
                f"{self.family.prompt_placeholder!r})"
            )
        try:
            out = self.processor(images=images, text=prompt, return_tensors="pt")
        except ValueError as err:
            if "token" in str(err) and "image" in str(err).lower():
                raise ImageTokenMismatchError(f"{self.family.name} processor: {err}") from err
            raise
        inputs = self.family.complete_inputs(dict(out), self.image_token_id)
        layout = self.family.layout(
            inputs["input_ids"][0], inputs, self.hf_config, len(images), self.processor.tokenizer
        )
        boxes = tuple(self.family.view_box(self.processor, _size(im)) for im in images)
        if any(b is not None for b in boxes):
            layout = dataclasses.replace(layout, boxes=boxes)
        return VLMInputs(model_kwargs=self._to_model(inputs), layout=layout)

    def _to_model(self, inputs: dict[str, Any]) -> dict[str, Any]:
        dtype = getattr(self.bridge.cfg, "dtype", None) or torch.float32
        kwargs: dict[str, Any] = {}
        for key, value in inputs.items():
            if isinstance(value, Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(dtype)
            kwargs["input" if key == "input_ids" else key] = value
        return kwargs

    # ---- running --------------------------------------------------------------------------
    def run_with_cache(
        self,
        inputs: VLMInputs,
        hooks: Sequence[str],
        full: bool = False,
        *,
        fwd_hooks: Sequence[FwdHook] | None = None,
        vision: bool = False,
    ) -> tuple[Tensor, Any]:
        """As :meth:`VLM.run_with_cache` (the bridge's own ``vision_encoder`` /
        ``vision_projector`` hooks are cached with ``vision=True``); an HF image-token/feature
        mismatch raises :class:`ImageTokenMismatchError`."""
        with _hf_mismatch_as_error(self.family.name):
            return super().run_with_cache(inputs, hooks, full, fwd_hooks=fwd_hooks, vision=vision)

    def forward(self, inputs: VLMInputs, **kwargs: Any) -> Tensor:
        """As :meth:`VLM.forward`; an HF image-token/feature mismatch raises
        :class:`ImageTokenMismatchError`."""
        with _hf_mismatch_as_error(self.family.name):
            return super().forward(inputs, **kwargs)


def _size(image: Any) -> tuple[int, int]:
    """``(width, height)`` of a PIL image or an HWC / CHW array."""
    if hasattr(image, "size") and isinstance(image.size, tuple):
        return image.size
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        return int(shape[2]), int(shape[1])  # CHW
    return int(shape[1]), int(shape[0])


@contextlib.contextmanager
def _hf_mismatch_as_error(family: str) -> Iterator[None]:
    """Re-raise HF's "image features and image tokens do not match" as our error."""
    try:
        yield
    except ImageTokenMismatchError:
        raise
    except ValueError as err:
        msg = str(err)
        if "do not match" in msg and "image" in msg.lower():
            raise ImageTokenMismatchError(
                f"{family}: the image tokens of the sequence do not match the vision features "
                f"the model computed ({msg})"
            ) from err
        raise
