"""The VLM handle: a TransformerBridge plus what it takes to put an image in front of it.

Two kinds implement :class:`VLM`:

* :class:`~tl_latentlens.models.hf_vlm.HFVLM` — a Hugging Face VLM (LLaVA, Qwen-VL, Idefics3,
  Gemma3 …) wrapped whole by ``TransformerBridge``; the HF processor expands image placeholders.
* :class:`~tl_latentlens.models.connector.ConnectorVLM` — the paper's controlled setup: any
  bridged language model + a vision encoder + a trained connector, visual tokens written over
  placeholder positions by a hook on ``embed.hook_out``.

Everything downstream (capture, lens, bank) only talks to this interface.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from tl_latentlens import hooks as hk
from tl_latentlens._io import atomic_write_json, read_json
from tl_latentlens.devices import full_float32
from tl_latentlens.models.digest import SCHEME as DIGEST_SCHEME
from tl_latentlens.models.digest import VARIANTS as DIGEST_VARIANTS
from tl_latentlens.models.digest import digest_parts, parts_key

__all__ = [
    "VLM",
    "VLMInputs",
    "VisualLayout",
    "TextBatch",
    "ImageTokenMismatchError",
    "Box",
    "crop_to_box",
    "FwdHook",
    "HookFn",
    "VISION_ENCODER_OUT",
    "VISION_PROJECTOR_OUT",
]

logger = logging.getLogger(__name__)

IMAGE_MARKER = "<image>"

#: ``(left, top, right, bottom)`` in an image's own pixels; may reach past its edges (padding).
Box = tuple[float, float, float, float]


#: TransformerLens 4.3's names for the vision side of a multimodal bridge (its ``vision_encoder``
#: and ``vision_projector`` components): the vision tower's output and the projector's output,
#: which the language model sees as its visual tokens. :class:`~tl_latentlens.models.connector.
#: ConnectorVLM` exposes its encoder and connector under the same names.
VISION_ENCODER_OUT = "vision_encoder.hook_out"
VISION_PROJECTOR_OUT = "vision_projector.hook_out"

#: A TransformerLens hook function: ``fn(activation, hook) -> activation | None``.
HookFn: TypeAlias = Callable[..., Any]
#: One intervention: a hook name (any hook of the model, vision side included) or a layer
#: number (the residual entering that block, :data:`tl_latentlens.hooks.LAYER_CONVENTION`), and
#: the function TransformerLens runs there.
FwdHook: TypeAlias = tuple["str | int | float", HookFn]

#: Hook names that fire before the first block (so a run that caches only them stops there).
_BEFORE_BLOCKS = ("embed.", "hook_embed", "hook_pos_embed", "pos_embed.", "rotary_emb.", "vision_")


class ImageTokenMismatchError(ValueError):
    """The prompt's image placeholders do not match the images / visual tokens given."""


@dataclass(frozen=True)
class VisualLayout:
    """Where the visual tokens sit in the sequence and in the image.

    Attributes:
        positions: Sequence position of each visual token, ``[n_visual]``.
        rows: Patch-grid row of each visual token, ``[n_visual]`` (-1: not a grid patch,
            e.g. a tile separator or the global thumbnail of a multi-crop model).
        cols: Patch-grid column of each visual token, ``[n_visual]``.
        grid: ``(rows, cols)`` of the patch grid the coordinates refer to.
        image_index: Which image of the prompt each visual token belongs to, ``[n_visual]``.
        boxes: Per image of the prompt, the region of the image (:data:`Box`, in its own
            pixels) that its patch grid covers: a processor's centre crop (LLaVA-1.5's CLIP
            processor keeps the middle square), or more than the image where it pads.
            ``None`` (for all images or for one): the whole image, as given.
    """

    positions: Int[Tensor, " n_visual"]
    rows: Int[Tensor, " n_visual"]
    cols: Int[Tensor, " n_visual"]
    grid: tuple[int, int]
    image_index: Int[Tensor, " n_visual"] | None = None
    boxes: tuple[Box | None, ...] | None = None

    def __post_init__(self) -> None:
        n = self.positions.shape[0]
        if self.rows.shape[0] != n or self.cols.shape[0] != n:
            raise ValueError("positions, rows and cols must have the same length")

    def box(self, image: int = 0) -> Box | None:
        """The region of image ``image`` that the patch grid covers (``None``: all of it)."""
        if self.boxes is None or not 0 <= image < len(self.boxes):
            return None
        return self.boxes[image]

    def seen_images(self, images: Any) -> list[Any]:
        """Each image of the prompt cut to what the model saw (:meth:`box`), so a patch grid
        spread evenly over it lands on the pixels each visual token comes from.

        Args:
            images: A PIL image or a list (one per image of the prompt).

        Returns:
            PIL images (those without a box are returned as given).

        Example:
            >>> layout.seen_images(photo)[0].size   # LLaVA-1.5: the centre square
            (480, 480)
        """
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        return [crop_to_box(im, self.box(i)) for i, im in enumerate(images)]

    @property
    def n_visual(self) -> int:
        """Number of visual tokens."""
        return int(self.positions.shape[0])

    @classmethod
    def from_grid(cls, positions: Tensor, grid: tuple[int, int]) -> VisualLayout:
        """Row-major layout: visual token ``i`` is patch ``(i // cols, i % cols)``."""
        n_rows, n_cols = grid
        positions = torch.as_tensor(positions, dtype=torch.long).flatten()
        if positions.shape[0] != n_rows * n_cols:
            raise ImageTokenMismatchError(
                f"{positions.shape[0]} visual tokens in the sequence but the patch grid is "
                f"{n_rows}x{n_cols} = {n_rows * n_cols}"
            )
        idx = torch.arange(n_rows * n_cols)
        return cls(
            positions=positions, rows=idx // n_cols, cols=idx % n_cols, grid=(n_rows, n_cols)
        )


def crop_to_box(image: Any, box: Box | None) -> Any:
    """``image`` cut to ``box`` (rounded to whole pixels; parts past the edges are black, as
    a processor's zero padding); the image itself when ``box`` is ``None``.

    Example:
        >>> crop_to_box(Image.new("RGB", (40, 30)), (5, 0, 35, 30)).size
        (30, 30)
    """
    if box is None:
        return image
    if not hasattr(image, "crop"):  # an array: the processor took it, a picture needs PIL
        from PIL import Image

        image = Image.fromarray(np.asarray(image))
    left, top, right, bottom = (round(v) for v in box)
    return image.crop((left, top, right, bottom))


@dataclass
class VLMInputs:
    """A prepared single-sequence model input (batch of 1) and its visual layout.

    Attributes:
        model_kwargs: Keyword arguments for the bridge forward (``input``/``input_ids`` under
            the key ``"input"``, ``attention_mask``, ``pixel_values``, ``image_grid_thw`` …).
        layout: Where the visual tokens are.
        extras: Family-specific state (e.g. the connector's pixel tensor).
    """

    model_kwargs: dict[str, Any]
    layout: VisualLayout
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def input_ids(self) -> Int[Tensor, "batch pos"]:
        """Token ids of the sequence."""
        return self.model_kwargs["input"]


@dataclass(frozen=True)
class TextBatch:
    """A padded batch of tokenised sentences.

    Attributes:
        input_ids: ``[batch, pos]``.
        attention_mask: ``[batch, pos]``, 1 for real tokens (special ones included).
        keep: ``[batch, pos]`` bool, True for tokens worth storing (real, not special/BOS/pad).
        positions: ``[batch, pos]`` position of each token inside its own sentence (0-based,
            counting from its first real token; -1 for padding).
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    keep: Tensor
    positions: Int[Tensor, "batch pos"]


class VLM(ABC):
    """A vision-language model as seen by tl_latentlens: a bridge and an image front end.

    Attributes:
        bridge: The ``TransformerBridge`` of the language model (whole VLM for HF families).
        name: A human-readable model name recorded in bank manifests.
    """

    bridge: Any
    name: str

    # ---- geometry -------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """Number of transformer blocks of the language model."""
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        """Residual-stream width of the language model."""
        return int(self.bridge.cfg.d_model)

    @property
    def tokenizer(self) -> Any:
        """The language model's tokenizer."""
        return self.bridge.tokenizer

    @property
    def device(self) -> torch.device:
        """Device of the language model."""
        return next(self.bridge.parameters()).device

    @property
    def weight_processing(self) -> str:
        """``"compat"`` after ``enable_compatibility_mode()`` (folded/centred basis), else ``"raw"``."""
        return "compat" if getattr(self.bridge, "compatibility_mode", False) else "raw"

    def validate_hooks(self, hooks: str | Sequence[str]) -> list[str]:
        """Validate hook names against this model (error lists the valid names)."""
        return hk.validate_hooks(hooks, self.n_layers, self.bridge.hook_dict.keys())

    def fingerprint(self, refresh: bool = False) -> dict[str, Any]:
        """Identity of the model as it produces text residuals, independent of dtype and of
        where it was loaded from.

        ``weights.parts`` holds, for the embedding (``"embed"``) and each block
        (``"blocks.<i>"``), digests of its parameters rounded to canonical grids (see
        :mod:`tl_latentlens.models.digest`), so a bank can check exactly the parts that shape
        its hooks and name the one that differs. Computed once and cached on this handle; the
        cache is keyed by the parameters' identity, dtype and version counter (pass
        ``refresh=True`` after writing weights through ``.data``).

        Example:
            >>> fp = vlm.fingerprint()
            >>> sorted(fp["weights"]["parts"])[:2]
            ['blocks.0', 'blocks.1']
        """
        parts = self.fingerprint_parts()
        key = (parts_key(parts), self.weight_processing)
        cached = getattr(self, "_fingerprint_cache", None)
        if refresh or cached is None or cached[0] != key:
            store: _DigestStore | None = getattr(self, "_fingerprint_store", None)
            if store is not None and store.key != key:
                store = None  # the weights changed since they were loaded
            digests = None if (refresh or store is None) else store.read(self.weight_processing)
            if digests is not None and set(digests) != set(parts):
                digests = None
            if digests is None:
                logger.debug("hashing the weights of %s", self.name)
                digests = digest_parts(parts)
                if store is not None:
                    store.write(self.weight_processing, digests)
            cached = (key, digests)
            self._fingerprint_cache = cached
        digests = cached[1]
        return {
            "name": self.name,
            "embedding_sha256": digests["embed"]["bf16"],
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "weight_processing": self.weight_processing,
            "weights": {
                "scheme": DIGEST_SCHEME,
                "parts": {part: dict(d) for part, d in digests.items()},
            },
        }

    def visual_state(self) -> list[tuple[str, torch.Tensor]]:
        """Tensors besides the text weights that decide this model's lens results: the vision
        side (encoder, connector or projector) and the final norm and unembedding.

        Default: every parameter and buffer of the wrapped model that :meth:`fingerprint_parts`
        does not list. Subclasses that keep the vision side outside the bridge extend this.
        """
        text = {id(t) for part in self.fingerprint_parts().values() for _, t in part}
        model = getattr(self.bridge, "original_model", self.bridge)
        items = list(model.named_parameters()) + list(model.named_buffers())
        return [(name, t) for name, t in items if id(t) not in text]

    def visual_fingerprint(self) -> str:
        """Dtype-independent digest of :meth:`visual_state` (hex, 16 characters).

        :meth:`fingerprint` identifies the text side, which is all a bank depends on; this
        identifies the rest, which decides the visual tokens: an explanation cache and a
        bank's routes (calibrated on this model's visual tokens) are keyed on it. Computed
        once per handle and again when a tensor is replaced, cast or written in place.

        Example:
            >>> vlm.visual_fingerprint()
            '3f1c…'
        """
        state = self.visual_state()
        key = parts_key({"visual": state})
        cached = getattr(self, "_visual_fingerprint_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, digest_parts({"visual": state})["visual"]["bf16"])
            self._visual_fingerprint_cache = cached
        return cached[1]

    def keep_fingerprint(self, path: str | os.PathLike, source: Mapping[str, Any]) -> None:
        """Keep the weight digests of :meth:`fingerprint` in the file ``path`` across processes.

        For loaders that know the weights are a pure function of ``source`` (the embedded
        default: the packaged GGUF's SHA-256, the load dtype and the stamp of the cached weight
        file). A later process that loads the same ``source`` reads the digests instead of
        hashing every weight again (gigabytes of hashing for an 8B model).
        The file is ignored when its ``source``, scheme or weight processing differ, when it is
        malformed, and once this handle's weights change.

        Example:
            >>> vlm.keep_fingerprint(cache / "fingerprint.json", {"gguf_sha256": sha})
        """
        key = (parts_key(self.fingerprint_parts()), self.weight_processing)
        self._fingerprint_store = _DigestStore(Path(path), json.loads(json.dumps(source)), key)

    def fingerprint_parts(self) -> dict[str, list[tuple[str, torch.Tensor]]]:
        """Parameters that shape the text residuals, by part: ``"embed"`` (token and, where the
        model has them, positional embeddings) and ``"blocks.<i>"`` for each block.

        Subclasses whose bridge lays the language model out differently override this.
        """
        bridge = self.bridge
        embed: list[tuple[str, torch.Tensor]] = []
        for attr in ("embed", "pos_embed"):
            module = getattr(bridge, attr, None)
            if isinstance(module, torch.nn.Module):
                embed += [(f"{attr}.{n}", t) for n, t in module.named_parameters()]
        if not embed:
            embed = [("embed.weight", self.embedding_matrix())]
        parts = {"embed": embed}
        for i, block in enumerate(bridge.blocks):
            parts[f"blocks.{i}"] = list(block.named_parameters())
        return parts

    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding matrix ``[d_vocab, d_model]`` (as the LM's embed layer holds it)."""
        return self.bridge.embed.original_component.weight

    # ---- images ---------------------------------------------------------------------------
    @abstractmethod
    def prepare(self, images: Any, prompt: str | None = None) -> VLMInputs:
        """Build model inputs for one prompt with its image(s) and locate the visual tokens.

        Args:
            images: A PIL image, or a list of them (one per image placeholder).
            prompt: Text with image placeholder(s) in this family's syntax; ``None`` uses
                :attr:`default_prompt`.

        Raises:
            ImageTokenMismatchError: The number of placeholders and images disagree.
        """

    @property
    def default_prompt(self) -> str:
        """A prompt with one image placeholder."""
        return f"{IMAGE_MARKER}\nDescribe the image."

    @contextlib.contextmanager
    def visual_hooks(self, inputs: VLMInputs) -> Iterator[None]:
        """Context in which a forward pass of ``inputs`` sees the visual tokens (no-op here)."""
        yield

    # ---- running --------------------------------------------------------------------------
    def vision_hooks(self) -> list[str]:
        """The vision-side hooks this model has, of :data:`VISION_ENCODER_OUT` and
        :data:`VISION_PROJECTOR_OUT` (TransformerLens's multimodal bridges name them so; a
        bridge without a vision component has none).

        Example:
            >>> vlm.vision_hooks()
            ['vision_encoder.hook_out', 'vision_projector.hook_out']
        """
        have = self.bridge.hook_dict
        return [h for h in (VISION_ENCODER_OUT, VISION_PROJECTOR_OUT) if h in have]

    def residual_equivalent(self, hook: Any) -> Any:
        """The residual hook that holds the same vectors as ``hook`` at the visual positions:
        :data:`VISION_PROJECTOR_OUT` is layer 0 (``blocks.0.hook_resid_pre``: the projector's
        output is what the language model sees); any other key is returned as given.

        Example:
            >>> vlm.residual_equivalent("vision_projector.hook_out")
            'blocks.0.hook_resid_pre'
        """
        if hook == VISION_PROJECTOR_OUT:
            return hk.hook_for_layer(0, self.n_layers)
        return hook

    def hook_names(self) -> list[str]:
        """Every hook name of this model: the bridge's (``bridge.hook_dict``, aliases
        included) and the vision side's (:meth:`vision_hooks`)."""
        return list(dict.fromkeys([*self.bridge.hook_dict, *self.vision_hooks()]))

    def validate_hook_names(self, names: str | Sequence[str]) -> list[str]:
        """Check names of any hook of this model (residual, attention, MLP, vision side);
        residual names as :meth:`validate_hooks` does.

        Raises:
            UnknownHookError: A name the model does not have (the message says where to look).
        """
        names = [names] if isinstance(names, str) else list(names)
        have = set(self.hook_names())
        for name in names:
            if not isinstance(name, str):
                raise hk.UnknownHookError(f"a hook name is a string, got {name!r}")
            if name.startswith("blocks.") and name.split(".")[-1].startswith("hook_resid_"):
                self.validate_hooks([name])
            elif name not in have:
                near = sorted(h for h in have if h.split(".")[-1] == name.split(".")[-1])[:6]
                raise hk.UnknownHookError(
                    f"unknown hook {name!r} for {self.name}; "
                    + (f"hooks of that kind: {near}" if near else "see vlm.hook_names()")
                )
        return list(dict.fromkeys(names))

    def resolve_fwd_hooks(self, fwd_hooks: Sequence[FwdHook] | None) -> list[tuple[str, HookFn]]:
        """``fwd_hooks`` with every hook addressed by name: a layer number becomes the
        canonical hook of that layer (:func:`tl_latentlens.hooks.resolve_model_hook`).

        Raises:
            UnknownHookError: A hook the model does not have.
            ValueError: An entry is not a ``(hook, function)`` pair.
        """
        out: list[tuple[str, HookFn]] = []
        for entry in fwd_hooks or ():
            if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not callable(entry[1]):
                raise ValueError(
                    f"fwd_hooks takes (hook name or layer, function) pairs, got {entry!r:.80}"
                )
            key, fn = entry
            name = key if isinstance(key, str) else hk.resolve_model_hook(key, self.n_layers)
            out.append((self.validate_hook_names([name])[0], fn))
        return out

    @contextlib.contextmanager
    def side_hooks(
        self, fwd_hooks: Sequence[tuple[str, HookFn]], names: Sequence[str], cache: dict
    ) -> Iterator[None]:
        """Run ``fwd_hooks`` and cache ``names`` at hooks outside the bridge (the vision side
        of a model that keeps it out of the bridge); a no-op here, where every hook is the
        bridge's. The cached tensors go into ``cache``."""
        yield

    def _outside_bridge(self, name: str) -> bool:
        return name not in self.bridge.hook_dict

    def run_with_cache(
        self,
        inputs: VLMInputs,
        hooks: Sequence[str],
        full: bool = False,
        *,
        fwd_hooks: Sequence[FwdHook] | None = None,
        vision: bool = False,
    ) -> tuple[Tensor, Any]:
        """One forward pass caching only ``hooks`` (``names_filter`` + ``stop_at_layer``).

        Args:
            inputs: From :meth:`prepare`.
            hooks: Hook names to cache (validated): residual hooks, and any other hook of the
                model (``blocks.3.attn.hook_pattern``, :data:`VISION_PROJECTOR_OUT` …).
            full: Run every block and the unembedding even if the hooks need fewer.
            fwd_hooks: Interventions, ``[(hook name or layer, fn)]``, run as
                ``bridge.hooks(fwd_hooks=...)`` runs them (``fn(activation, hook)``; what it
                returns replaces the activation). They run after the visual tokens are in
                place and before the cache reads a hook, so the cache holds what the patched
                model computed.
            vision: Also cache the vision side, :meth:`vision_hooks` (the encoder's and the
                projector's outputs), in the same cache.

        Returns:
            ``(output, cache)`` as ``TransformerBridge.run_with_cache`` returns them; vision
            hooks outside the bridge (the connector VLM's) are added to the same
            ``ActivationCache``.

        Example:
            >>> _, cache = vlm.run_with_cache(inputs, ["blocks.4.hook_resid_post"], vision=True,
            ...     fwd_hooks=[(2, lambda x, hook: x * 0.5)])
            >>> cache["vision_projector.hook_out"].shape   # [n_images, patches, d_model]
        """
        names = list(hooks) + (self.vision_hooks() if vision else [])
        names = self.validate_hook_names(names)
        user = self.resolve_fwd_hooks(fwd_hooks)
        stop = None if full else _stop_layer_for_names(names, self.n_layers)
        kwargs = dict(inputs.model_kwargs)
        model_input = kwargs.pop("input")
        in_bridge = [n for n in names if not self._outside_bridge(n)]
        outside = [n for n in names if self._outside_bridge(n)]
        bridge_hooks = [(n, fn) for n, fn in user if not self._outside_bridge(n)]
        side_fwd = [(n, fn) for n, fn in user if self._outside_bridge(n)]
        side_cache: dict[str, Tensor] = {}
        with (
            torch.no_grad(),
            full_float32(),
            self.side_hooks(side_fwd, outside, side_cache),
            self.visual_hooks(inputs),
            # after the visual tokens are written (a hook on embed.hook_out sees them)
            self.bridge.hooks(fwd_hooks=bridge_hooks),
        ):
            out, cache = self.bridge.run_with_cache(
                model_input, names_filter=in_bridge, stop_at_layer=stop, **kwargs
            )
        for name, tensor in side_cache.items():
            cache.cache_dict[name] = tensor
        return out, cache

    def forward(self, inputs: VLMInputs, **kwargs: Any) -> Tensor:
        """Full forward pass (logits) with the visual tokens in place; keeps autograd."""
        mk = dict(inputs.model_kwargs)
        model_input = mk.pop("input")
        with full_float32(), self.visual_hooks(inputs):
            return self.bridge(model_input, **mk, **kwargs)

    # ---- text -----------------------------------------------------------------------------
    def tokenize_sentences(
        self, sentences: Sequence[str], max_tokens: int | None = None, padding_side: str = "right"
    ) -> TextBatch:
        """Tokenise sentences the way the model sees text, padded into one batch.

        A BOS token is prepended where the bridge's config asks for one and the tokenizer does
        not add it itself; BOS, other special tokens and padding are marked ``keep=False``.

        Args:
            sentences: The texts.
            max_tokens: Truncate each sentence to this many tokens (special ones included).
            padding_side: ``"right"`` or ``"left"``.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        tok = self.tokenizer
        rows: list[list[int]] = []
        specials: list[list[bool]] = []
        prepend = bool(getattr(self.bridge.cfg, "default_prepend_bos", False)) and (
            tok.bos_token_id is not None
        )
        special_ids = set(tok.all_special_ids)
        for text in sentences:
            ids = tok(text, add_special_tokens=True)["input_ids"]
            if prepend and (not ids or ids[0] != tok.bos_token_id):
                ids = [tok.bos_token_id, *ids]
            if max_tokens is not None:
                ids = ids[:max_tokens]
            rows.append(ids)
            specials.append([i in special_ids for i in ids])
        width = max(1, max(len(r) for r in rows))
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        n = len(rows)
        input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        keep = torch.zeros((n, width), dtype=torch.bool)
        positions = torch.full((n, width), -1, dtype=torch.long)
        for b, (ids, spec) in enumerate(zip(rows, specials)):
            start = 0 if padding_side == "right" else width - len(ids)
            sl = slice(start, start + len(ids))
            input_ids[b, sl] = torch.tensor(ids, dtype=torch.long)
            mask[b, sl] = 1
            keep[b, sl] = ~torch.tensor(spec, dtype=torch.bool)
            positions[b, sl] = torch.arange(len(ids))
        return TextBatch(input_ids=input_ids, attention_mask=mask, keep=keep, positions=positions)


def _stop_layer_for_names(names: Sequence[str], n_layers: int) -> int | None:
    """The ``stop_at_layer`` that runs just enough blocks for hooks of any kind: residual ones
    as :func:`tl_latentlens.hooks.stop_layer_for`; another ``blocks.<i>.…`` hook needs block
    ``i``; hooks before the blocks (embedding, vision side) one block, the least the bridge
    runs; anything after the blocks (final norm, unembedding) all of them."""
    needed = 1
    for name in names:
        try:
            needed = max(needed, hk.parse_hook(name).blocks_needed)
            continue
        except hk.UnknownHookError:
            pass
        block = hk.block_of(name)
        if block is not None:
            needed = max(needed, block + 1)
        elif not name.startswith(_BEFORE_BLOCKS):
            return None
    return None if needed >= n_layers else needed


@dataclass(frozen=True)
class _DigestStore:
    """A file holding a model's part digests for one weight ``source`` (see
    :meth:`VLM.keep_fingerprint`); ``key`` is the parameters' identity when it was attached."""

    path: Path
    source: dict[str, Any]
    key: tuple[Any, ...]

    def read(self, weight_processing: str) -> dict[str, dict[str, str]] | None:
        try:
            data = read_json(self.path)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("source") != self.source:
            return None
        if (
            data.get("scheme") != DIGEST_SCHEME
            or data.get("weight_processing") != weight_processing
        ):
            return None
        parts = data.get("parts")
        if not isinstance(parts, dict) or not parts:
            return None
        for digests in parts.values():
            if not isinstance(digests, dict) or set(digests) != set(DIGEST_VARIANTS):
                return None
            if not all(isinstance(v, str) for v in digests.values()):
                return None
        return parts

    def write(self, weight_processing: str, parts: dict[str, dict[str, str]]) -> None:
        record = {
            "source": self.source,
            "scheme": DIGEST_SCHEME,
            "weight_processing": weight_processing,
            "parts": parts,
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, record)
        except OSError as err:  # only an optimisation
            logger.debug("could not keep the weight digests in %s: %s", self.path, err)
