"""LatentLens: explain visual tokens by their nearest contextual text-token neighbours."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from tl_latentlens import hooks as hk
from tl_latentlens.capture import capture_inputs
from tl_latentlens.lens.baselines import EmbeddingLens, LogitLens
from tl_latentlens.lens.results import Explanation, PatchExplanation
from tl_latentlens.models.base import VLM, ImageTokenMismatchError, VisualLayout

__all__ = ["LatentLens"]

logger = logging.getLogger(__name__)


class LatentLens:
    """LatentLens over a VLM and a contextual text bank built from the same language model.

    Args:
        vlm: The model handle (:func:`tl_latentlens.load_vlm` or the embedded default).
        bank: A :class:`tl_latentlens.bank.Bank` (its model fingerprint must match ``vlm``).
        check_model: Refuse a bank built from a different model / weight processing.

    Example:
        >>> lens = LatentLens(vlm, Bank.open("banks/smollm2"))
        >>> result = lens.explain(image, k=5)
        >>> [n.token for n in result.neighbours("blocks.0.hook_resid_pre", 0)]
        >>> result.to_html("report.html")
    """

    def __init__(self, vlm: VLM, bank: Any, check_model: bool = True) -> None:
        if check_model:
            bank.check_model(vlm)
        self.vlm, self.bank = vlm, bank
        self.logit_lens = LogitLens(vlm)
        self.embedding_lens = EmbeddingLens(vlm)

    # ---- hooks --------------------------------------------------------------------------------
    def default_hooks(self) -> list[str]:
        """Visual hooks at the layers the bank has (canonical names for this model)."""
        layers = sorted({int(hk.layer_of(h)) for h in self.bank.hooks})
        return [hk.hook_for_layer(layer, self.vlm.n_layers) for layer in layers]

    def _targets(
        self, hook: str | None, per_layer: bool, bank_hooks: Sequence[str] | None
    ) -> list[str]:
        if not per_layer:
            if bank_hooks is None:
                return list(self.bank.hooks)
            missing = [h for h in bank_hooks if h not in self.bank.hooks]
            if missing:
                raise ValueError(f"bank has no hook(s) {missing}; bank hooks: {self.bank.hooks}")
            return list(bank_hooks)
        if hook is None:
            raise ValueError("per_layer search needs the hook the vectors come from")
        layer = hk.layer_of(hook)
        same = [h for h in self.bank.hooks if hk.layer_of(h) == layer]
        if not same:
            raise ValueError(
                f"per-layer search: the bank has no hook at layer {layer} (for {hook!r}); "
                f"bank hooks: {self.bank.hooks}"
            )
        return same[:1]

    # ---- public API -----------------------------------------------------------------------------
    def explain(
        self,
        images: Any,
        prompt: str | None = None,
        hooks: Sequence[str] | None = None,
        k: int = 5,
        *,
        per_layer: bool = False,
        bank_hooks: Sequence[str] | None = None,
        baselines: bool = True,
        exact: bool = False,
        patches: Sequence[int] | None = None,
    ) -> Explanation:
        """Run the model once on ``images`` + ``prompt`` and explain its visual tokens.

        Args:
            images: A PIL image or a list (one per image placeholder of ``prompt``).
            prompt: Prompt with image placeholder(s); ``None``: the model's default prompt.
            hooks: Visual hooks to explain; default: the bank's layers.
            k: Neighbours per lens.
            per_layer: Search each visual hook only against the bank hook of the same layer
                (default: against all bank hooks, each neighbour tagged with its text layer).
            bank_hooks: Restrict the cross-layer search to these bank hooks.
            baselines: Also compute LogitLens and EmbeddingLens.
            exact: Exact (matmul) search instead of hnswlib.
            patches: Only these visual-token indices (default: all).

        Returns:
            An :class:`Explanation` (plain data).

        Raises:
            ImageTokenMismatchError: The prompt has no visual tokens / wrong placeholder count.
            ValueError: ``k <= 0``, unknown hook, hook missing from the bank.
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        hooks = self.vlm.validate_hooks(list(hooks) if hooks is not None else self.default_hooks())
        for hook in hooks:  # fail on a missing bank hook before the forward pass
            self._targets(hook, per_layer, bank_hooks)
        t0 = time.perf_counter()
        inputs = self.vlm.prepare(images, prompt)
        if inputs.layout.n_visual == 0:
            raise ImageTokenMismatchError("the prompt has no visual tokens: nothing to explain")
        acts = capture_inputs(self.vlm, inputs, hooks)
        forward_s = time.perf_counter() - t0
        result = self._explain(
            {h: acts.residuals[h] for h in hooks},
            inputs.layout,
            k=k,
            per_layer=per_layer,
            bank_hooks=bank_hooks,
            baselines=baselines,
            exact=exact,
            patches=patches,
            prompt=prompt if prompt is not None else self.vlm.default_prompt,
        )
        result.timings["forward"] = forward_s
        result.image = images if not isinstance(images, (list, tuple)) else images[0]
        return result

    def explain_vectors(
        self,
        vectors: Any,
        hook: str | None = None,
        k: int = 5,
        *,
        positions: Sequence[int] | None = None,
        batch_index: int = 0,
        per_layer: bool = False,
        bank_hooks: Sequence[str] | None = None,
        baselines: bool = True,
        exact: bool = False,
    ) -> Explanation:
        """Explain vectors you already have: a tensor ``[n, d_model]`` / ``[d_model]`` or an
        ``ActivationCache`` (then ``hook`` selects the activation and ``positions`` the rows).

        Works with any TransformerLens analysis: text-token residuals, steering vectors, SAE
        decoder directions, patched runs. ``hook`` tags the vectors with their layer (needed
        for ``per_layer``); for layer-less directions leave it ``None``.

        Example:
            >>> _, cache = vlm.bridge.run_with_cache("a red car")
            >>> lens.explain_vectors(cache, "blocks.4.hook_resid_post", positions=[3])
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if hasattr(vectors, "cache_dict") or isinstance(vectors, dict):
            if hook is None:
                raise ValueError("an ActivationCache needs hook= to select the activation")
            if hook not in vectors:
                raise ValueError(
                    f"hook {hook!r} is not in the cache; cached: {list(vectors.keys())}"
                )
            vectors = vectors[hook]
            if vectors.ndim == 3:
                vectors = vectors[batch_index]
        vectors = torch.as_tensor(vectors).detach().float()
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim != 2:
            raise ValueError(
                f"vectors must be [n, d_model] or [d_model], got {tuple(vectors.shape)}"
            )
        if hook is not None:
            self.vlm.validate_hooks([hook])
        index = torch.arange(vectors.shape[0]) if positions is None else torch.as_tensor(positions)
        vectors = vectors[index]
        layout = VisualLayout(
            positions=index.long(),
            rows=torch.arange(len(index)),
            cols=torch.zeros(len(index), dtype=torch.long),
            grid=(len(index), 1),
        )
        key = hook if hook is not None else "vectors"
        return self._explain(
            {key: vectors.cpu()},
            layout,
            k=k,
            per_layer=per_layer,
            bank_hooks=bank_hooks,
            baselines=baselines,
            exact=exact,
            patches=None,
            prompt=None,
        )

    # ---- core -----------------------------------------------------------------------------------
    def _explain(
        self,
        residuals: dict[str, torch.Tensor],
        layout: VisualLayout,
        *,
        k: int,
        per_layer: bool,
        bank_hooks: Sequence[str] | None,
        baselines: bool,
        exact: bool,
        patches: Sequence[int] | None,
        prompt: str | None,
    ) -> Explanation:
        idx = list(range(layout.n_visual)) if patches is None else [int(i) for i in patches]
        bad = [i for i in idx if not 0 <= i < layout.n_visual]
        if bad:
            raise ValueError(f"patch indices {bad} out of range 0..{layout.n_visual - 1}")
        timings = {"search": 0.0, "baselines": 0.0}
        out: list[PatchExplanation] = []
        searched: set[str] = set()
        sel = torch.tensor(idx, dtype=torch.long)
        for hook, vecs in residuals.items():
            vecs = vecs[sel]
            real_hook = hook if hook != "vectors" else None
            targets = self._targets(real_hook, per_layer, bank_hooks)
            searched.update(targets)
            t0 = time.perf_counter()
            latent = self.bank.search(vecs, hook=targets, k=k, exact=exact)
            timings["search"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            logit = self.logit_lens(vecs, k) if baselines else [()] * len(idx)
            emb = self.embedding_lens(vecs, k) if baselines else [()] * len(idx)
            timings["baselines"] += time.perf_counter() - t0
            layer = hk.layer_of(real_hook) if real_hook is not None else -1
            img_idx = layout.image_index
            for j, i in enumerate(idx):
                out.append(
                    PatchExplanation(
                        hook=hook,
                        layer=layer,
                        index=i,
                        position=int(layout.positions[i]),
                        row=int(layout.rows[i]),
                        col=int(layout.cols[i]),
                        image_index=int(img_idx[i]) if img_idx is not None else 0,
                        latent=tuple(latent[j]),
                        logit=tuple(logit[j]),
                        embedding=tuple(emb[j]),
                    )
                )
        return Explanation(
            model=self.vlm.name,
            bank=str(self.bank.root) if getattr(self.bank, "root", None) else None,
            prompt=prompt,
            grid=tuple(layout.grid),
            hooks=list(residuals),
            bank_hooks=[h for h in self.bank.hooks if h in searched],
            per_layer=per_layer,
            k=k,
            patches=out,
            timings=timings,
        )
