"""Residual-stream capture: visual tokens of an image run, real tokens of a text batch.

Both use one ``run_with_cache`` with a ``names_filter`` of exactly the requested hooks and the
smallest ``stop_at_layer`` that reaches them. When the last layer is requested (``stop_at_layer``
cannot stop earlier), :func:`residuals_only` ends the pass where the blocks end: the final norm
and the unembedding (a ``[pos, d_vocab]`` product, about a fifth of a small LM's work) are never
run, since only residuals are kept. The cached residuals are the same tensors either way
(``tests/unit/test_cpu_costs.py``; ``benchmarks/bench_demo_first_run.py`` measures the saving).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.model_bridge.exceptions import StopAtLayerException

from tl_latentlens import hooks as hk
from tl_latentlens.models.base import VLM, FwdHook, TextBatch, VisualLayout, VLMInputs
from tl_latentlens.types import Residuals

__all__ = [
    "ImageActivations",
    "TextActivations",
    "capture_image",
    "capture_inputs",
    "capture_text",
    "capture_text_batch",
    "residuals_only",
]

#: The hook point that fires after the last block and before the final norm and the unembedding.
AFTER_BLOCKS = "ln_final.hook_in"
#: Hooks past the blocks: an intervention there needs the whole forward pass.
_PAST_BLOCKS = ("ln_final.", "unembed.", "hook_unembed")


@dataclass(frozen=True)
class ImageActivations:
    """Residuals of the visual tokens of one prompt+image run.

    Attributes:
        residuals: hook name -> ``[n_visual, d_model]`` (float32, CPU).
        layout: Positions and patch grid of the visual tokens.
        input_ids: The run's token ids ``[pos]``.
        extra: Other hooks cached in the same pass, whole (batch dimension kept; float32,
            CPU): the vision side (``vision_encoder.hook_out`` ``[n_images, patches,
            d_vision]``, ``vision_projector.hook_out``), attention patterns
            (``blocks.{l}.attn.hook_pattern`` ``[1, heads, pos, pos]``) …
    """

    residuals: dict[str, Residuals]
    layout: VisualLayout
    input_ids: Int[Tensor, " pos"]
    extra: dict[str, Tensor] = field(default_factory=dict)

    @property
    def hooks(self) -> list[str]:
        """Captured hook names, in request order."""
        return list(self.residuals)


@dataclass(frozen=True)
class TextActivations:
    """Residuals of the stored (real, non-special) tokens of a text batch, flattened.

    Attributes:
        residuals: hook name -> ``[n_tokens, d_model]``.
        sentence: Index of each token's sentence within the batch ``[n_tokens]``.
        position: Position of each token within its sentence ``[n_tokens]``.
        token_id: ``[n_tokens]``.
    """

    residuals: dict[str, Residuals]
    sentence: Int[Tensor, " n"]
    position: Int[Tensor, " n"]
    token_id: Int[Tensor, " n"]


@contextlib.contextmanager
def residuals_only(bridge: Any) -> Iterator[None]:
    """Within this context a ``run_with_cache`` of ``bridge`` stops where its blocks end.

    A hook on :data:`AFTER_BLOCKS` raises the bridge's own ``StopAtLayerException``, which
    ``run_with_cache`` catches as it does for ``stop_at_layer``: every residual hook has fired
    and is cached, the final norm and the unembedding are skipped, and the "output" is the last
    residual instead of logits. A bridge without that hook point runs as before.

    Args:
        bridge: A ``TransformerBridge``.
    """
    if AFTER_BLOCKS not in bridge.hook_dict:
        yield
        return

    def stop(tensor: Tensor, hook: Any) -> Tensor:
        raise StopAtLayerException(tensor)

    with bridge.hooks(fwd_hooks=[(AFTER_BLOCKS, stop)]):
        yield


def capture_inputs(
    vlm: VLM,
    inputs: VLMInputs,
    hooks: Sequence[str] | None = None,
    *,
    fwd_hooks: Sequence[FwdHook] | None = None,
    extra: Sequence[str] = (),
    vision: bool = False,
) -> ImageActivations:
    """Capture visual-token residuals for already prepared inputs (see :meth:`VLM.prepare`).

    Args:
        vlm: The model handle.
        inputs: From ``vlm.prepare``.
        hooks: Residual hooks to read at the visual positions.
        fwd_hooks: Interventions run during the pass, ``[(hook name or layer, fn)]`` (see
            :meth:`VLM.run_with_cache`). A residual of layer ``l`` is then read where it fires
            last, at ``blocks.{l}.hook_resid_pre``, so an intervention at any name of that
            layer (``blocks.{l-1}.hook_resid_post`` or ``blocks.{l}.hook_resid_pre``) shows in
            it, under whichever name ``hooks`` gives.
        extra: Other hooks to cache whole (``ImageActivations.extra``), e.g.
            ``blocks.3.attn.hook_pattern``.
        vision: Also cache the vision side (:meth:`VLM.vision_hooks`) into ``extra``.
    """
    hooks = vlm.validate_hooks(hooks or hk.default_capture_hooks(vlm.n_layers))
    others = vlm.validate_hook_names(list(extra) + (vlm.vision_hooks() if vision else []))
    fwd = vlm.resolve_fwd_hooks(fwd_hooks)
    read = {h: _read_at(h, vlm.n_layers) if fwd else h for h in hooks}
    names = list(dict.fromkeys([*read.values(), *others]))
    past = any(name.startswith(_PAST_BLOCKS) for name, _ in fwd)
    with contextlib.nullcontext() if past else residuals_only(vlm.bridge):
        _, cache = vlm.run_with_cache(inputs, names, fwd_hooks=fwd)
    pos = inputs.layout.positions.to(vlm.device)
    residuals = {h: cache[read[h]][0, pos].detach().float().cpu() for h in hooks}
    return ImageActivations(
        residuals=residuals,
        layout=inputs.layout,
        input_ids=inputs.input_ids[0].cpu(),
        extra={n: cache[n].detach().float().cpu() for n in others},
    )


def _read_at(hook: str, n_layers: int) -> str:
    """Where the residual of ``hook``'s layer fires last (what an intervention at any of its
    names has changed): ``blocks.{l}.hook_resid_pre`` for a layer ``l < n_layers``."""
    layer = hk.layer_of(hook)
    if float(layer).is_integer() and 0 < layer < n_layers:
        return hk.last_hook_for_layer(layer, n_layers)
    return hook


def capture_image(
    vlm: VLM,
    images: Any,
    prompt: str | None = None,
    hooks: Sequence[str] | None = None,
    *,
    fwd_hooks: Sequence[FwdHook] | None = None,
    extra: Sequence[str] = (),
    vision: bool = False,
) -> ImageActivations:
    """Residual stream at the visual positions of a prompt with image(s).

    Args:
        vlm: The model handle.
        images: A PIL image or a list (one per placeholder in ``prompt``).
        prompt: Prompt with image placeholder(s); ``None`` uses the model's default prompt.
        hooks: Hook names; default every layer 0 … n_layers
            (``blocks.0.hook_resid_pre`` + every ``blocks.{i}.hook_resid_post``).
        fwd_hooks: Interventions during the pass (see :func:`capture_inputs`).
        extra: Other hooks to cache whole into ``ImageActivations.extra``.
        vision: Also cache the vision tower's and the projector's outputs
            (``vision_encoder.hook_out``, ``vision_projector.hook_out``) into ``extra``.

    Returns:
        :class:`ImageActivations` with ``[n_visual, d_model]`` per hook.

    Example:
        >>> acts = capture_image(vlm, Image.open("cat.png"), hooks=["blocks.4.hook_resid_post"])
        >>> acts.residuals["blocks.4.hook_resid_post"].shape   # (49, 576)
        >>> capture_image(vlm, image, vision=True).extra["vision_projector.hook_out"].shape
    """
    return capture_inputs(
        vlm, vlm.prepare(images, prompt), hooks, fwd_hooks=fwd_hooks, extra=extra, vision=vision
    )


def capture_text_batch(vlm: VLM, batch: TextBatch, hooks: Sequence[str]) -> TextActivations:
    """Residuals of the ``keep`` tokens of one padded batch (padding never stored)."""
    hooks = vlm.validate_hooks(hooks)
    stop = hk.stop_layer_for(hooks, vlm.n_layers)
    ids = batch.input_ids.to(vlm.device)
    mask = batch.attention_mask.to(vlm.device)
    with torch.no_grad(), residuals_only(vlm.bridge):
        _, cache = vlm.bridge.run_with_cache(
            ids, attention_mask=mask, names_filter=list(hooks), stop_at_layer=stop
        )
    keep = batch.keep.to(vlm.device)
    rows, cols = torch.nonzero(keep, as_tuple=True)
    residuals = {h: cache[h][rows, cols].detach().float().cpu() for h in hooks}
    return TextActivations(
        residuals=residuals,
        sentence=rows.cpu(),
        position=batch.positions[rows.cpu(), cols.cpu()],
        token_id=batch.input_ids[rows.cpu(), cols.cpu()],
    )


def capture_text(
    vlm: VLM,
    sentences: Sequence[str],
    hooks: Sequence[str],
    batch_size: int = 16,
    max_tokens: int | None = 64,
    padding_side: str = "right",
) -> Iterator[TextActivations]:
    """Capture residuals of every real token of ``sentences``, one batch at a time.

    Sentence indices in each yielded :class:`TextActivations` are global (into ``sentences``).
    Results are the same (to float tolerance) for any batch size and padding side.

    Example:
        >>> for acts in capture_text(vlm, ["a red car", "the cat sat"], ["blocks.3.hook_resid_post"]):
        ...     print(acts.residuals["blocks.3.hook_resid_post"].shape, acts.sentence)
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(sentences), batch_size):
        batch = vlm.tokenize_sentences(
            sentences[start : start + batch_size], max_tokens, padding_side
        )
        acts = capture_text_batch(vlm, batch, hooks)
        yield TextActivations(
            residuals=acts.residuals,
            sentence=acts.sentence + start,
            position=acts.position,
            token_id=acts.token_id,
        )
