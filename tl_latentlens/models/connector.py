"""The paper's controlled VLM: a bridged language model + a vision encoder + a connector.

Visual tokens are written over placeholder positions of the prompt by a hook on the bridge's
``embed.hook_out``, so every residual hook of the language model (``blocks.0.hook_resid_pre``
onwards) sees them, and ``run_with_cache`` / ``names_filter`` / ``stop_at_layer`` work as for
text.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from tl_latentlens.models.base import (
    IMAGE_MARKER,
    VISION_ENCODER_OUT,
    VISION_PROJECTOR_OUT,
    VLM,
    HookFn,
    ImageTokenMismatchError,
    VisualLayout,
    VLMInputs,
)
from tl_latentlens.types import PatchFeatures, PixelBatch

__all__ = [
    "CONNECTOR_KINDS",
    "Connector",
    "ConnectorVLM",
    "VisionEncoder",
    "embedding_stats",
    "word_token_ids",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class VisionEncoder(Protocol):
    """What :class:`ConnectorVLM` needs from a vision encoder.

    Attributes:
        d_vision: Width of one patch feature.
        grid: ``(rows, cols)`` of the patch grid it returns for one image.
    """

    d_vision: int
    grid: tuple[int, int]

    def preprocess(self, images: Sequence[Any]) -> PixelBatch:
        """PIL images -> normalised pixel batch."""

    def __call__(self, pixels: PixelBatch) -> PatchFeatures:
        """Pixel batch -> ``[batch, rows*cols, d_vision]`` patch features (row-major)."""


#: Connector heads :class:`Connector` can build.
CONNECTOR_KINDS = ("mlp", "linear", "mlp_embnorm", "vocab")

#: Initial inverse temperature of the ``"vocab"`` head's cosine logits (learned from there).
_VOCAB_INIT_SCALE = 100.0


def embedding_stats(
    w_e: Float[Tensor, "vocab d_model"],
) -> tuple[Float[Tensor, " d_model"], Float[Tensor, " d_model"]]:
    """Per-dimension mean and (population) standard deviation of a token-embedding matrix.

    Example:
        >>> mean, std = embedding_stats(bridge.W_E)
        >>> Connector(1280, 576, kind="mlp_embnorm", embed_stats=(mean, std))
    """
    std, mean = torch.std_mean(w_e.detach().float(), dim=0, correction=0)
    return mean, std


def word_token_ids(tokenizer: Any, min_letters: int = 3) -> Int[Tensor, " words"]:
    """Ids of the tokens that are a whole lower-case word: a leading space, then only ASCII
    letters (at least ``min_letters``), as the tokenizer decodes them.

    The ``"vocab"`` connector head mixes the embeddings of these tokens: a word, not a sub-word
    piece or a name, so that what a visual token is made of can be read.

    Example:
        >>> ids = word_token_ids(bridge.tokenizer)   # about 22k of SmolLM2's 49,152
    """
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    keep = []
    for i, piece in enumerate(pieces):
        text = tokenizer.convert_tokens_to_string([piece]) if piece else ""
        word = text[1:]
        if (
            text.startswith(" ")
            and len(word) >= min_letters
            and word.isascii()
            and word.isalpha()
            and word.islower()
        ):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.long)


class Connector(nn.Module):
    """Maps vision patch features to the language model's residual width.

    Args:
        d_vision: Input feature width.
        d_model: Output width (the language model's ``d_model``).
        kind: ``"mlp"`` (Linear-GELU-Linear, as LLaVA-1.5 and the paper), ``"linear"``, or
            ``"mlp_embnorm"``: the MLP, then every output dimension standardised over the
            visual tokens of the batch (``BatchNorm1d`` without affine: batch statistics in
            training, running statistics in eval mode) and mapped onto the token-embedding
            statistics, ``out = embed_mean + embed_std * BN(mlp(x))``, so that the visual
            tokens follow the per-dimension distribution of the LM's token embeddings.
            ``"vocab"``: the MLP, then a softmax over the cosine similarities of its output to
            the embeddings of the LM's whole-word tokens (``vocab_ids``), with a learned
            inverse temperature, and the visual token is that mixture of word embeddings
            (each visual token is a convex combination of real token embeddings).
        d_hidden: Hidden width of the MLP (default ``d_model``).
        embed_stats: ``(mean, std)`` of the LM's input embedding matrix per dimension
            (:func:`embedding_stats`), for ``"mlp_embnorm"``; stored as buffers, so they are
            saved with the weights. ``None`` leaves zeros / ones for ``load_state_dict`` to fill.
        token_embed: For ``"vocab"``: the LM's input embedding matrix ``[vocab, d_model]``. It
            is not saved with the connector's weights (it is the LM's); pass it again when
            loading.
        vocab_ids: For ``"vocab"``: the token ids the head may mix (default
            :func:`word_token_ids` is the caller's job; ``None`` means every token). Saved.

    Raises:
        ValueError: Unknown ``kind``, or ``embed_stats`` of the wrong shape.

    Example:
        >>> c = Connector(1280, 576)
        >>> c(torch.zeros(2, 49, 1280)).shape
        torch.Size([2, 49, 576])
        >>> c = Connector(1280, 576, kind="mlp_embnorm", embed_stats=embedding_stats(W_E))
        >>> c = Connector(1280, 576, kind="vocab", token_embed=W_E,
        ...               vocab_ids=word_token_ids(tokenizer))
    """

    def __init__(
        self,
        d_vision: int,
        d_model: int,
        kind: str = "mlp",
        d_hidden: int | None = None,
        embed_stats: tuple[Tensor, Tensor] | None = None,
        token_embed: Float[Tensor, "vocab d_model"] | None = None,
        vocab_ids: Int[Tensor, " words"] | None = None,
    ):
        super().__init__()
        if kind not in CONNECTOR_KINDS:
            raise ValueError(f"connector kind must be one of {CONNECTOR_KINDS}, got {kind!r}")
        self.kind, self.d_vision, self.d_model = kind, d_vision, d_model
        if kind == "linear":
            self.net: nn.Module = nn.Linear(d_vision, d_model)
        else:
            hidden = d_hidden or d_model
            self.net = nn.Sequential(
                nn.Linear(d_vision, hidden), nn.GELU(), nn.Linear(hidden, d_model)
            )
        if kind == "mlp_embnorm":
            self.norm = nn.BatchNorm1d(d_model, affine=False)
            mean, std = (
                (torch.zeros(d_model), torch.ones(d_model)) if embed_stats is None else embed_stats
            )
            if mean.shape != (d_model,) or std.shape != (d_model,):
                raise ValueError(
                    f"embed_stats must be two [{d_model}] tensors, got "
                    f"{tuple(mean.shape)} and {tuple(std.shape)}"
                )
            self.register_buffer("embed_mean", mean.detach().float().clone())
            self.register_buffer("embed_std", std.detach().float().clone())
        if kind == "vocab":
            if token_embed is None:
                raise ValueError(
                    "the 'vocab' connector mixes the LM's token embeddings: pass "
                    "token_embed=bridge.W_E (it is not stored with the connector's weights)"
                )
            if token_embed.shape[-1] != d_model:
                raise ValueError(
                    f"token_embed has width {token_embed.shape[-1]}, the connector {d_model}"
                )
            ids = (
                torch.arange(token_embed.shape[0])
                if vocab_ids is None
                else vocab_ids.detach().long().cpu()
            )
            if ids.numel() == 0 or int(ids.max()) >= token_embed.shape[0] or int(ids.min()) < 0:
                raise ValueError(f"vocab_ids must be non-empty ids below {token_embed.shape[0]}")
            self.register_buffer("vocab_ids", ids.clone())
            words = token_embed.detach().float()[ids].clone()
            # the LM's (frozen) embeddings: not part of the connector's state
            self.register_buffer("vocab_embed", words, persistent=False)
            self.register_buffer(
                "vocab_unit", torch.nn.functional.normalize(words, dim=-1), persistent=False
            )
            self.log_scale = nn.Parameter(torch.tensor(float(_VOCAB_INIT_SCALE)).log())

    def forward(self, feats: Float[Tensor, "*batch d_vision"]) -> Float[Tensor, "*batch d_model"]:
        out = self.net(feats)
        if self.kind == "vocab":
            unit = torch.nn.functional.normalize(out, dim=-1)
            logits = self.log_scale.exp() * (unit @ self.vocab_unit.T)
            return logits.softmax(dim=-1) @ self.vocab_embed
        if self.kind != "mlp_embnorm":
            return out
        # statistics over every visual token of the batch (images x patches), per dimension
        z = self.norm(out.reshape(-1, self.d_model)).reshape(out.shape)
        return self.embed_mean + self.embed_std * z

    def config(self) -> dict[str, Any]:
        """Constructor arguments, for saving next to the weights (the embedding statistics
        are buffers and travel with the weights)."""
        hidden = None if self.kind == "linear" else self.net[0].out_features
        out = {
            "d_vision": self.d_vision,
            "d_model": self.d_model,
            "kind": self.kind,
            "d_hidden": hidden,
        }
        if self.kind == "vocab":
            out["vocab_size"] = int(self.vocab_ids.numel())
        return out


class ConnectorVLM(VLM):
    """A language model bridge + vision encoder + connector.

    Args:
        bridge: ``TransformerBridge`` of any language model TransformerLens bridges.
        encoder: A :class:`VisionEncoder` (frozen; run under ``no_grad``).
        connector: Module from ``d_vision`` to the bridge's ``d_model``.
        name: Model name for manifests.
        placeholder_id: Token id used at visual positions before the hook overwrites them
            (default: the tokenizer's unk, pad or eos id).

    Raises:
        ValueError: The connector's output width is not the bridge's ``d_model``.

    Example:
        >>> vlm = ConnectorVLM(bridge, encoder, Connector(encoder.d_vision, bridge.cfg.d_model))
        >>> inputs = vlm.prepare(image)                  # "<image>\\nDescribe the image."
        >>> _, cache = vlm.run_with_cache(inputs, ["blocks.0.hook_resid_pre"])
    """

    def __init__(
        self,
        bridge: Any,
        encoder: VisionEncoder,
        connector: nn.Module,
        name: str = "connector-vlm",
        placeholder_id: int | None = None,
    ) -> None:
        self.bridge, self.encoder, self.connector, self.name = bridge, encoder, connector, name
        d_model = int(bridge.cfg.d_model)
        # probe in eval mode: a batch-statistics head cannot normalise one token, and the probe
        # must not move its running statistics
        was_training = connector.training
        connector.eval()
        with torch.no_grad():
            # made where the connector's weights are (a connector already moved to a GPU
            # would fail on a CPU probe)
            probe = torch.zeros(1, 1, encoder.d_vision, **_placement_of(connector))
            d_out = connector(probe).shape[-1]
        connector.train(was_training)
        if d_out != d_model:
            raise ValueError(
                f"connector output dim {d_out} != language model d_model {d_model}: the "
                "connector must map vision features to the residual-stream width"
            )
        tok = bridge.tokenizer
        if placeholder_id is None:
            for cand in (tok.unk_token_id, tok.pad_token_id, tok.eos_token_id):
                if cand is not None:
                    placeholder_id = int(cand)
                    break
        if placeholder_id is None:
            raise ValueError("tokenizer has no unk/pad/eos token: pass placeholder_id")
        self.placeholder_id = placeholder_id

    @property
    def n_patches(self) -> int:
        """Visual tokens per image."""
        rows, cols = self.encoder.grid
        return rows * cols

    def _prefix_ids(self, text: str, first: bool) -> list[int]:
        tok = self.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"] if text else []
        wants_bos = bool(getattr(self.bridge.cfg, "default_prepend_bos", False))
        if first and wants_bos and tok.bos_token_id is not None:
            ids = [tok.bos_token_id, *ids]
        return ids

    def prepare(self, images: Any, prompt: str | None = None) -> VLMInputs:
        """Tokenise ``prompt``, expand each ``<image>`` into the encoder's patch count."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        prompt = self.default_prompt if prompt is None else prompt
        parts = prompt.split(IMAGE_MARKER)
        if len(parts) - 1 != len(images):
            raise ImageTokenMismatchError(
                f"the prompt has {len(parts) - 1} {IMAGE_MARKER!r} placeholder(s) but "
                f"{len(images)} image(s) were given"
            )
        ids: list[int] = []
        positions: list[int] = []
        image_index: list[int] = []
        for i, part in enumerate(parts):
            ids += self._prefix_ids(part, first=i == 0)
            if i < len(images):
                positions += range(len(ids), len(ids) + self.n_patches)
                image_index += [i] * self.n_patches
                ids += [self.placeholder_id] * self.n_patches
        pixels = self.encoder.preprocess(images)
        layout = self._layout(positions, image_index)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        return VLMInputs(
            model_kwargs={"input": input_ids}, layout=layout, extras={"pixels": pixels}
        )

    def _layout(self, positions: list[int], image_index: list[int]) -> VisualLayout:
        rows, cols = self.encoder.grid
        idx = torch.arange(len(positions)) % self.n_patches
        return VisualLayout(
            positions=torch.tensor(positions, dtype=torch.long),
            rows=idx // cols,
            cols=idx % cols,
            grid=(rows, cols),
            image_index=torch.tensor(image_index, dtype=torch.long),
        )

    def visual_state(self) -> list[tuple[str, torch.Tensor]]:
        """The language model's non-text tensors, the connector's and the encoder's (their
        parameters and buffers: a batch-statistics head's running statistics count)."""
        items = super().visual_state()
        for prefix, module in (("connector", self.connector), ("encoder", self.encoder)):
            if isinstance(module, nn.Module):
                items += [
                    (f"{prefix}.{n}", t) for n, t in module.state_dict(keep_vars=True).items()
                ]
        return items

    # ---- the vision side's hooks -----------------------------------------------------------
    @property
    def vision_points(self) -> dict[str, HookPoint]:
        """Hook points of the vision side, named as TransformerLens's multimodal bridges name
        theirs: :data:`~tl_latentlens.models.base.VISION_ENCODER_OUT` (the encoder's patch
        features, ``[n_images, patches, d_vision]``) and
        :data:`~tl_latentlens.models.base.VISION_PROJECTOR_OUT` (the connector's output,
        ``[n_images, patches, d_model]``: layer 0 of the visual tokens)."""
        points = self.__dict__.get("_vision_points")
        if points is None:
            points = {}
            for name in (VISION_ENCODER_OUT, VISION_PROJECTOR_OUT):
                point = HookPoint()
                point.name = name
                points[name] = point
            self.__dict__["_vision_points"] = points
        return points

    def vision_hooks(self) -> list[str]:
        """The encoder's and the connector's outputs (:attr:`vision_points`)."""
        return list(self.vision_points)

    def _outside_bridge(self, name: str) -> bool:
        return name in self.vision_points

    @contextlib.contextmanager
    def side_hooks(
        self, fwd_hooks: Sequence[tuple[str, HookFn]], names: Sequence[str], cache: dict
    ) -> Iterator[None]:
        """Run ``fwd_hooks`` at the vision side's hook points and cache ``names`` there (into
        ``cache``), as ``bridge.hooks`` and ``run_with_cache`` do for the bridge's."""
        handles = []

        def saver(name: str) -> HookFn:
            def save(act: Tensor, hook: Any) -> None:
                cache[name] = act.detach()

            return save

        try:
            for name, fn in fwd_hooks:
                handles.append(self.vision_points[name].add_hook(fn))
            for name in names:
                handles.append(self.vision_points[name].add_hook(saver(name)))
            yield
        finally:
            for handle in handles:
                handle.hook.remove()

    def visual_tokens(self, pixels: PixelBatch) -> Float[Tensor, "batch patches d_model"]:
        """Connector output for a pixel batch (encoder frozen, connector keeps autograd),
        through the :attr:`vision_points` (identities unless a hook is attached)."""
        points = self.vision_points
        with torch.no_grad():
            feats = points[VISION_ENCODER_OUT](self.encoder(pixels.to(self.device)))
        return points[VISION_PROJECTOR_OUT](
            self.connector(feats.to(**_placement_of(self.connector)))
        )

    @contextlib.contextmanager
    def visual_hooks(self, inputs: VLMInputs) -> Iterator[None]:
        """Write the connector output over the placeholder positions of every batch row.

        ``inputs.extras`` holds either ``"pixels"`` (``[n_images, 3, H, W]``, all images of one
        sequence) or precomputed ``"visual_embeds"`` (``[batch, n_visual, d_model]``).
        """
        vis = inputs.extras.get("visual_embeds")
        if vis is None:
            vis = self.visual_tokens(inputs.extras["pixels"]).reshape(1, -1, self.d_model)
        positions = inputs.layout.positions.to(self.device)
        if vis.shape[-2] != positions.shape[0]:
            raise ImageTokenMismatchError(
                f"{vis.shape[-2]} visual tokens for {positions.shape[0]} placeholder positions"
            )

        def write(act: Tensor, hook: Any) -> Tensor:
            out = act.clone()
            out[:, positions] = vis.to(act.dtype).expand(act.shape[0], -1, -1)
            return out

        with self.bridge.hooks(fwd_hooks=[("embed.hook_out", write)]):
            yield


def _placement_of(module: nn.Module) -> dict[str, Any]:
    """``dtype`` and ``device`` of a module's first parameter (float32 on the CPU for a module
    without parameters), as keyword arguments for tensor constructors and ``.to``."""
    for p in module.parameters():
        return {"dtype": p.dtype, "device": p.device}
    return {"dtype": torch.float32, "device": torch.device("cpu")}
