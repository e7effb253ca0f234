"""Captioning batches, loss and the "does it see?" check for a :class:`ConnectorVLM`.

A training sequence is exactly what ``vlm.prepare(image, prompt)`` builds (BOS where the
model wants one, the image's placeholder tokens, the prompt text), followed by the caption's
tokens and the EOS token. The loss is the mean next-token cross-entropy over the caption and
EOS tokens only.

For speed the loss runs the Hugging Face model under the bridge directly on input embeddings
with the visual tokens written in (what the ``embed.hook_out`` hook does), and applies the
unembedding only at caption positions; :func:`caption_losses` with ``via_bridge=True`` runs the
same thing through ``vlm.forward`` (tests check the two agree).

Example:
    >>> tpl = CaptionTemplate.from_vlm(vlm, "<image>\\nDescribe the image.\\n")
    >>> ids = tpl.encode_caption(vlm.tokenizer, "A flower.")
    >>> losses = caption_losses(vlm, tpl, vlm.visual_tokens(pixels), [ids])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from tl_latentlens.models.base import IMAGE_MARKER, VisualLayout, VLMInputs
from tl_latentlens.models.connector import ConnectorVLM

__all__ = [
    "CaptionSet",
    "CaptionTemplate",
    "caption_losses",
    "grounding_eval",
    "mean_caption_loss",
    "other_index",
    "sample_caption_losses",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionTemplate:
    """The token layout shared by every captioning sequence of one model and prompt.

    Attributes:
        prompt: Prompt with exactly one ``<image>`` placeholder.
        prefix_ids: Token ids up to the caption (placeholders included).
        visual_positions: Positions of the visual tokens in ``prefix_ids``.
        eos_id: Token appended after each caption (``None``: nothing appended).
        pad_id: Token used to pad batches.
    """

    prompt: str
    prefix_ids: tuple[int, ...]
    visual_positions: tuple[int, ...]
    eos_id: int | None
    pad_id: int

    @classmethod
    def from_vlm(cls, vlm: ConnectorVLM, prompt: str) -> CaptionTemplate:
        """Build the layout with ``vlm.prepare`` on a blank image (so they can never differ)."""
        if prompt.count(IMAGE_MARKER) != 1:
            raise ValueError(f"the caption prompt needs exactly one {IMAGE_MARKER!r}: {prompt!r}")
        inputs = vlm.prepare(Image.new("RGB", (32, 32)), prompt)
        tok = vlm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        return cls(
            prompt=prompt,
            prefix_ids=tuple(int(i) for i in inputs.input_ids[0].tolist()),
            visual_positions=tuple(int(p) for p in inputs.layout.positions.tolist()),
            eos_id=tok.eos_token_id,
            pad_id=int(pad),
        )

    def encode_caption(self, tokenizer, caption: str, max_tokens: int | None = None) -> list[int]:
        """Caption token ids (no specials), truncated to ``max_tokens`` with EOS included."""
        ids = list(tokenizer(caption, add_special_tokens=False)["input_ids"])
        room = None if max_tokens is None else max_tokens - (self.eos_id is not None)
        if room is not None:
            ids = ids[: max(room, 1)]
        return ids + ([self.eos_id] if self.eos_id is not None else [])

    def collate(self, captions: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Right-padded ``(input_ids, attention_mask, target_mask)``, all ``[batch, pos]``.

        ``target_mask[b, t]`` is True where token ``t`` is a caption token to be predicted.
        """
        n_pre = len(self.prefix_ids)
        width = n_pre + max(len(c) for c in captions)
        ids = torch.full((len(captions), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for b, cap in enumerate(captions):
            end = n_pre + len(cap)
            ids[b, :n_pre] = torch.tensor(self.prefix_ids)
            ids[b, n_pre:end] = torch.tensor(list(cap))
            mask[b, :end] = 1
            target[b, n_pre:end] = True
        return ids, mask, target

    def inputs(self, caption: Sequence[int], visual_embeds: Tensor) -> VLMInputs:
        """One sequence as :class:`VLMInputs` for ``vlm.forward`` (``visual_embeds`` ``[1,P,d]``)."""
        ids = torch.tensor([list(self.prefix_ids) + list(caption)], dtype=torch.long)
        layout = VisualLayout(
            positions=torch.tensor(self.visual_positions),
            rows=torch.zeros(len(self.visual_positions), dtype=torch.long),
            cols=torch.zeros(len(self.visual_positions), dtype=torch.long),
            grid=(1, len(self.visual_positions)),
        )
        return VLMInputs({"input": ids}, layout, {"visual_embeds": visual_embeds})


@dataclass(frozen=True)
class CaptionSet:
    """Precomputed frozen-encoder features with their tokenised captions.

    A sample may caption only a *region* of its image: ``patches[i]`` lists the visual tokens
    the language model sees for sample ``i`` (the others are left out of its sequence), and
    ``rows[i]`` says which feature row the sample reads, so the regions of one composite share
    its features instead of copying them.

    Attributes:
        features: ``[n_rows, patches, d_vision]`` (any float dtype; cast on use).
        captions: Caption token ids (EOS included) per sample.
        kinds: Sample kind per sample (``"stamp"``, ``"stamp_view"``, ``"composite"``,
            ``"region"``).
        rows: Feature row per sample; empty: sample ``i`` reads row ``i``.
        patches: Visual tokens seen per sample (flat patch indices, ``()`` = all); empty: every
            sample sees all its patches.
    """

    features: Tensor
    captions: tuple[tuple[int, ...], ...]
    kinds: tuple[str, ...] = ()
    rows: tuple[int, ...] = ()
    patches: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        n_rows = self.features.shape[0]
        if not self.rows and n_rows != len(self.captions):
            raise ValueError(f"{n_rows} feature rows for {len(self.captions)} captions")
        if self.rows and len(self.rows) != len(self.captions):
            raise ValueError(f"{len(self.rows)} row indices for {len(self.captions)} captions")
        if self.rows and not all(0 <= r < n_rows for r in self.rows):
            raise ValueError(f"a row index is outside the {n_rows} feature rows")
        if self.patches and len(self.patches) != len(self.captions):
            raise ValueError(f"{len(self.patches)} patch lists for {len(self.captions)} captions")

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def n_tokens(self) -> int:
        """Number of predicted caption tokens."""
        return sum(len(c) for c in self.captions)

    def batch(
        self, idx: Sequence[int]
    ) -> tuple[Tensor, list[tuple[int, ...]], list[tuple[int, ...]]]:
        """``(features [b, patches, d_vision], captions, patches)`` of samples ``idx``."""
        idx = [int(i) for i in idx]
        rows = [self.rows[i] for i in idx] if self.rows else idx
        keep = [self.patches[i] for i in idx] if self.patches else [() for _ in idx]
        return self.features[torch.as_tensor(rows)], [self.captions[i] for i in idx], keep

    def subset(self, idx: Sequence[int]) -> CaptionSet:
        """The samples ``idx`` as a set of their own (features shared by reference)."""
        idx = [int(i) for i in idx]
        return CaptionSet(
            self.features,
            tuple(self.captions[i] for i in idx),
            tuple(self.kinds[i] for i in idx) if self.kinds else (),
            tuple(self.rows[i] for i in idx) if self.rows else tuple(idx),
            tuple(self.patches[i] for i in idx) if self.patches else (),
        )


def caption_losses(
    vlm: ConnectorVLM,
    template: CaptionTemplate,
    visual_embeds: Tensor,
    captions: Sequence[Sequence[int]],
    via_bridge: bool = False,
    keep: Sequence[Sequence[int]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed caption cross-entropy and token count per sample.

    Args:
        vlm: The model (its connector output goes in as ``visual_embeds``).
        template: Layout of the sequences.
        visual_embeds: ``[batch, patches, d_model]`` visual tokens (keeps autograd).
        captions: Caption ids per sample (EOS included).
        via_bridge: Run through ``vlm.forward`` (the hooked bridge) instead of the fast path
            (whole images only).
        keep: Per sample, the visual tokens its sequence holds (flat patch indices; ``()``:
            all of them). The others are left out of the sequence, so the caption is predicted
            from that region of the image alone (region captioning).

    Returns:
        ``(loss_sum [batch], n_tokens [batch])``.
    """
    whole = [i for i, k in enumerate(keep or ()) if not len(k)]
    regions = [i for i, k in enumerate(keep or ()) if len(k)]
    if via_bridge or not (whole and regions):
        return _padded_losses(vlm, template, visual_embeds, captions, via_bridge, keep)
    # A region's sequence is much shorter than a whole image's; in one padded batch it would pay
    # for the whole image's length. Two passes give the same sums (about half the time at
    # batch 32 in training, measured).
    dev = visual_embeds.device
    loss_sum = torch.zeros(len(captions), device=dev)
    n_tok = torch.zeros(len(captions), dtype=torch.long, device=dev)
    for group in (whole, regions):
        at = torch.tensor(group, device=dev)
        part_loss, part_n = _padded_losses(
            vlm, template, visual_embeds[at], [captions[i] for i in group], False,
            [keep[i] for i in group],
        )  # fmt: skip
        loss_sum = loss_sum.index_add(0, at, part_loss.to(dev))
        n_tok = n_tok.index_add(0, at, part_n.to(dev))
    return loss_sum, n_tok


def _padded_losses(
    vlm: ConnectorVLM,
    template: CaptionTemplate,
    visual_embeds: Tensor,
    captions: Sequence[Sequence[int]],
    via_bridge: bool,
    keep: Sequence[Sequence[int]] | None,
) -> tuple[Tensor, Tensor]:
    """:func:`caption_losses` over one right-padded batch."""
    ids, mask, target = template.collate(captions)
    dev = vlm.device
    ids, mask, target = ids.to(dev), mask.to(dev), target.to(dev)
    regional = keep is not None and any(len(k) for k in keep)
    if via_bridge:
        if regional:
            raise ValueError("via_bridge runs whole images only; drop keep= or via_bridge=")
        rows = [
            vlm.forward(template.inputs(cap, visual_embeds[b : b + 1]))[0]
            for b, cap in enumerate(captions)
        ]
        width = ids.shape[1]
        logits = torch.stack([F.pad(r, (0, 0, 0, width - r.shape[0])) for r in rows])
        pred = logits[:, :-1][target[:, 1:]]
    else:
        hf = vlm.bridge.original_model
        emb = hf.get_input_embeddings()(ids)
        pos = torch.tensor(template.visual_positions, device=dev)
        emb = emb.index_copy(1, pos, visual_embeds.to(emb.dtype))
        if regional:
            ids, mask, target, emb = _pack_regions(template, keep, ids, mask, target, emb)
        hidden = hf.get_decoder()(inputs_embeds=emb, attention_mask=mask).last_hidden_state
        pred = hf.get_output_embeddings()(hidden[:, :-1][target[:, 1:]])
    gold = ids[:, 1:][target[:, 1:]]
    tok_loss = F.cross_entropy(pred.float(), gold, reduction="none")
    owner = torch.nonzero(target[:, 1:], as_tuple=True)[0]
    n_tok = target[:, 1:].sum(1)
    loss_sum = torch.zeros(len(captions), device=dev).index_add(0, owner, tok_loss)
    return loss_sum, n_tok


def _pack_regions(
    template: CaptionTemplate,
    keep: Sequence[Sequence[int]],
    ids: Tensor,
    mask: Tensor,
    target: Tensor,
    emb: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Drop each sample's unseen visual positions and close the gaps (right padding).

    The kept visual tokens stay in their raster order, followed by the prompt text and the
    caption, exactly as if the image had only those patches.
    """
    n_vis = len(template.visual_positions)
    orders = []
    for b, k in enumerate(keep):
        seen = set(range(n_vis)) if not len(k) else {int(j) for j in k}
        if not seen <= set(range(n_vis)):
            raise ValueError(f"keep[{b}] has patch indices outside 0..{n_vis - 1}: {sorted(k)}")
        dropped = {template.visual_positions[j] for j in range(n_vis) if j not in seen}
        orders.append([t for t in range(int(mask[b].sum())) if t not in dropped])
    width = max(len(o) for o in orders)
    sel = torch.zeros((len(orders), width), dtype=torch.long)
    valid = torch.zeros((len(orders), width), dtype=torch.bool)
    for b, order in enumerate(orders):
        sel[b, : len(order)] = torch.tensor(order)
        valid[b, : len(order)] = True
    sel, valid = sel.to(ids.device), valid.to(ids.device)
    packed_emb = emb.gather(1, sel[..., None].expand(-1, -1, emb.shape[-1]))
    return (
        ids.gather(1, sel),
        mask.gather(1, sel) * valid,
        target.gather(1, sel) & valid,
        packed_emb,
    )


def other_index(data: CaptionSet) -> Tensor:
    """For each sample, the "other image" whose visual tokens replace its own in the control.

    Within each kind (all samples when ``data.kinds`` is empty), sample ``j`` of ``m`` gets
    sample ``(j + m // 2) mod m``: half the group away, so not a view of the same stamp.
    """
    kinds = list(data.kinds) if data.kinds else [""] * len(data)
    out = torch.arange(len(data))
    for kind in dict.fromkeys(kinds):
        group = torch.tensor([i for i, k in enumerate(kinds) if k == kind])
        out[group] = torch.roll(group, -max(1, len(group) // 2))
    return out


@torch.no_grad()
def sample_caption_losses(
    vlm: ConnectorVLM,
    template: CaptionTemplate,
    data: CaptionSet,
    batch_size: int = 16,
    visual: str = "image",
) -> tuple[Tensor, Tensor]:
    """Per-sample summed caption loss and token count, ``([n], [n])`` on the CPU.

    Args:
        visual: ``"image"`` (the sample's own visual tokens), ``"zeros"`` (visual tokens
            replaced by zero vectors) or ``"other"`` (the visual tokens of another sample of
            the same kind, half that kind's samples away: see :func:`other_index`).
    """
    if visual not in ("image", "zeros", "other"):
        raise ValueError(f"visual must be 'image', 'zeros' or 'other', got {visual!r}")
    n = len(data)
    other = other_index(data)
    sums, counts = [], []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        feats, caps, keep = data.batch(idx)
        if visual == "other":
            # the other sample's image in this sample's region (the same patches)
            feats = data.batch(other[idx].tolist())[0]
        feats = feats.to(vlm.device)
        vis = vlm.connector(feats.to(next(vlm.connector.parameters()).dtype))
        if visual == "zeros":
            vis = torch.zeros_like(vis)
        loss, ntok = caption_losses(vlm, template, vis, caps, keep=keep)
        sums.append(loss.float().cpu())
        counts.append(ntok.cpu())
    return torch.cat(sums), torch.cat(counts)


def mean_caption_loss(
    vlm: ConnectorVLM,
    template: CaptionTemplate,
    data: CaptionSet,
    batch_size: int = 16,
    visual: str = "image",
) -> float:
    """Mean per-token caption loss over ``data`` (see :func:`sample_caption_losses`)."""
    sums, counts = sample_caption_losses(vlm, template, data, batch_size, visual)
    return float(sums.sum()) / max(int(counts.sum()), 1)


def grounding_eval(
    vlm: ConnectorVLM, template: CaptionTemplate, data: CaptionSet, batch_size: int = 16
) -> dict[str, Any]:
    """Evidence that the model uses the image: caption loss with the right image vs without.

    Returns:
        ``{"image", "zeros", "other_image", "n_samples", "n_tokens"}`` (mean loss per caption
        token) and, when ``data.kinds`` is set, the same per sample kind under ``"by_kind"``.
        A model that sees has ``image`` clearly below both ``zeros`` and ``other_image``.

    Example:
        >>> grounding_eval(vlm, template, held_out)["image"]      # vs ["other_image"]
        2.32
    """
    per = {}
    for key, visual in (("image", "image"), ("zeros", "zeros"), ("other_image", "other")):
        per[key] = sample_caption_losses(vlm, template, data, batch_size, visual)

    def summary(mask: Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, (sums, counts) in per.items():
            out[key] = float(sums[mask].sum()) / max(int(counts[mask].sum()), 1)
        out["n_samples"] = int(mask.sum())
        out["n_tokens"] = int(per["image"][1][mask].sum())
        return out

    result = summary(torch.ones(len(data), dtype=torch.bool))
    if data.kinds:
        kinds = list(data.kinds)
        result["by_kind"] = {
            k: summary(torch.tensor([x == k for x in kinds])) for k in dict.fromkeys(kinds)
        }
    return result
