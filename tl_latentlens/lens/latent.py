"""LatentLens: explain visual tokens by their nearest contextual text-token neighbours."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tl_latentlens import hooks as hk
from tl_latentlens.bank.bank import Bank
from tl_latentlens.bank.errors import MissingHookError
from tl_latentlens.bank.hub.registry import pretrained
from tl_latentlens.bank.search.dispatch import Method
from tl_latentlens.capture import capture_inputs
from tl_latentlens.default.loader import load_default_vlm
from tl_latentlens.lens.attention import PatchAttention, attention_hooks, patch_attention
from tl_latentlens.lens.baselines import EmbeddingLens, LogitLens
from tl_latentlens.lens.cache import ExplanationCache
from tl_latentlens.lens.default_bank import bank_precision, default_bank, default_encoder
from tl_latentlens.lens.diff import describe_fwd_hooks
from tl_latentlens.lens.results import Explanation, PatchExplanation
from tl_latentlens.lens.sae import (
    SAEFeatureExplanation,
    SAEImageFeatures,
    explain_sae,
    sae_on_image,
)
from tl_latentlens.models.base import (
    VLM,
    FwdHook,
    ImageTokenMismatchError,
    VisualLayout,
    VLMInputs,
)
from tl_latentlens.models.load import load_vlm

__all__ = ["LatentLens"]

logger = logging.getLogger(__name__)

#: Query rows per bank search on a CPU (one image's visual tokens at ten hooks is 490). The
#: products are compute-bound there, so searching more rows at once saves no work, while
#: the larger similarity blocks made ``explain_many`` slower per image than ``explain``
#: (``benchmarks/bench_explain.py``). On an accelerator all rows go in one call.
CPU_QUERY_ROWS = 512


class LatentLens:
    """LatentLens over a VLM and a contextual text bank built from the same language model.

    Args:
        vlm: The model handle (:func:`tl_latentlens.load_vlm` or the embedded default).
        bank: A :class:`tl_latentlens.bank.Bank` (its model fingerprint must match ``vlm``).
        check_model: Refuse a bank built from a different model / weight processing.

    Example:
        >>> lens = LatentLens.default()                  # or LatentLens(vlm, Bank.open(path, vlm))
        >>> result = lens.explain(image, k=5)
        >>> [n.token for n in result.neighbours(8, 12)]  # layer 8, visual token 12
        >>> result.to_html("report.html")
    """

    def __init__(self, vlm: VLM, bank: Bank, check_model: bool = True) -> None:
        if check_model:
            bank.check_model(vlm)
        self.vlm, self.bank = vlm, bank
        self.logit_lens = LogitLens(vlm)
        self.embedding_lens = EmbeddingLens(vlm)

    # ---- one call to a working lens ---------------------------------------------------------
    @classmethod
    def default(
        cls,
        device: str | torch.device | None = None,
        *,
        sentences: int | None = None,
        progress: bool = True,
    ) -> LatentLens:
        """The embedded default VLM with its default bank: a working lens in one call, offline.

        The bank (the default corpus through this model, cached) is built on first use with a
        progress bar; later calls open it. Its forward passes run in the number format this
        machine runs fastest (:func:`tl_latentlens.devices.fast_dtype`, measured, never
        slower than float32).

        Args:
            device: Torch device (``None``: CUDA if present, else the CPU).
            sentences: Default-corpus sentences in the bank (``None``:
                :data:`~tl_latentlens.lens.default_bank.DEFAULT_SENTENCES`; fewer build
                faster and explain less well).
            progress: Show progress bars while the bank is built.

        Example:
            >>> lens = LatentLens.default()
            >>> lens.explain(image).neighbours(8, 12)
        """
        vlm = load_default_vlm(device=device)
        encoder = default_encoder(load_default_vlm, vlm, bank_precision(vlm))
        return cls(vlm, default_bank(vlm, sentences, encoder=encoder, progress=progress))

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | VLM,
        bank: str | os.PathLike | Bank = "default",
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        trust_pickle: bool = False,
        progress: bool = True,
    ) -> LatentLens:
        """A lens over a model and a bank, each given by name.

        Args:
            model: A loaded :class:`~tl_latentlens.models.base.VLM`, ``"default"``, a Hugging
                Face VLM id or a local directory (:func:`tl_latentlens.load_vlm`).
            bank: An opened :class:`~tl_latentlens.bank.Bank`; ``"default"`` (the default
                corpus through this model, cached, built on first use); a bank directory; an
                index of the official ``latentlens`` package (a folder with ``metadata.json``,
                or a name of :func:`tl_latentlens.pretrained`; they are torch pickles, so
                ``trust_pickle=True`` is needed); else a bank repository on the Hugging Face
                hub (:meth:`~tl_latentlens.bank.Bank.from_pretrained`).
            device: Torch device for a model loaded here (``None``: CUDA if present).
            dtype: Dtype of a model loaded here.
            trust_pickle: Allow importing an official index (torch pickles).
            progress: Show progress bars while a default bank is built.

        Example:
            >>> lens = LatentLens.from_pretrained("llava-hf/llava-1.5-7b-hf", "banks/llava")
            >>> lens = LatentLens.from_pretrained("default", "default")
        """
        vlm = model if isinstance(model, VLM) else load_vlm(model, device=device, dtype=dtype)
        return cls(vlm, _open_bank(bank, vlm, trust_pickle=trust_pickle, progress=progress))

    # ---- hooks --------------------------------------------------------------------------------
    def default_hooks(self) -> list[str]:
        """Visual hooks at the layers the bank has (canonical names for this model)."""
        layers = sorted({hk.layer_of(h) for h in self.bank.hooks})
        return [hk.hook_for_layer(layer, self.vlm.n_layers) for layer in layers]

    def _model_hooks(self, hooks: Sequence[hk.HookKey] | None) -> list[str]:
        """The model's hooks for ``hooks`` (names or layer numbers; default: the bank's
        layers), checked against the model (:func:`tl_latentlens.hooks.resolve_model_hook`)."""
        if hooks is None:
            return self.default_hooks()
        if isinstance(hooks, (str, int, float)):
            hooks = [hooks]
        names = [hk.resolve_model_hook(h, self.vlm.n_layers) for h in hooks]
        return self.vlm.validate_hooks(names)

    def _targets(
        self, hook: str | None, per_layer: bool, bank_hooks: Sequence[hk.HookKey] | None
    ) -> list[str]:
        """Bank hooks to search for vectors from ``hook`` (equivalent names resolved: e.g.
        ``blocks.3.hook_resid_pre`` finds a bank's ``blocks.2.hook_resid_post``)."""
        if not per_layer:
            if bank_hooks is None:
                return list(self.bank.hooks)
            try:
                return list(dict.fromkeys(self.bank.resolve_hook(h) for h in bank_hooks))
            except MissingHookError as err:
                raise ValueError(f"{err}") from None
        if hook is None:
            raise ValueError("per_layer search needs the hook the vectors come from")
        try:
            return [self.bank.resolve_hook(hk.layer_of(hook))]
        except MissingHookError:
            raise ValueError(
                f"per-layer search: the bank has no hook at layer {hk.layer_of(hook)} (for "
                f"{hook!r}); bank hooks: {self.bank.hooks}"
            ) from None

    # ---- public API -----------------------------------------------------------------------------
    def explain(
        self,
        images: Any,
        prompt: str | None = None,
        hooks: Sequence[hk.HookKey] | None = None,
        k: int = 5,
        *,
        per_layer: bool = False,
        bank_hooks: Sequence[hk.HookKey] | None = None,
        baselines: bool = True,
        patches: Sequence[int] | None = None,
        method: Method = "auto",
        inputs: VLMInputs | None = None,
        fwd_hooks: Sequence[FwdHook] | None = None,
        attention: bool | Sequence[int] = False,
    ) -> Explanation:
        """Run the model once on ``images`` + ``prompt`` and explain its visual tokens.

        Args:
            images: A PIL image or a list (one per image placeholder of ``prompt``); the
                result's ``image`` holds what the model saw of it (the processor's crop, see
                :meth:`~tl_latentlens.models.base.VisualLayout.seen_images`): one image, or a
                list of them for a prompt with several images (their patches are told apart
                by ``PatchExplanation.image_index``).
            prompt: Prompt with image placeholder(s); ``None``: the model's default prompt.
            hooks: Visual hooks to explain, by name or layer number (any equivalent name of a
                layer works); default: the bank's layers.
            k: Neighbours per lens.
            per_layer: Search each visual hook only against the bank hook of the same layer
                (default: against all bank hooks, each neighbour tagged with its text layer).
            bank_hooks: Restrict the cross-layer search to these bank hooks.
            baselines: Also compute LogitLens and EmbeddingLens.
            patches: Only these visual-token indices (default: all).
            method: Bank search: ``"auto"`` (exact unless the bank's routes are proven for
                the hook; the choice per hook is recorded in ``result.search``, a routed
                hook's audit in ``result.search_audit``), ``"exact"``, ``"routes"``. On a
                CUDA model exact search runs on the GPU.
            inputs: ``vlm.prepare(images, prompt)`` when the caller has it already (the
                images are not prepared again).
            fwd_hooks: Interventions during the forward pass, TransformerLens style:
                ``[(hook name or layer, fn)]``, ``fn(activation, hook)`` returning the new
                activation (any hook of the model: residual, attention, MLP, vision side). A
                residual is read where its layer fires last, so an intervention at layer ``l``
                shows at layer ``l`` under either of its names. Recorded in
                ``result.interventions``; compare with a plain run by :meth:`Explanation.diff`.
            attention: Also cache the attention patterns of these blocks (``True``: every
                block) in the same pass: ``result.attention`` (a
                :class:`~tl_latentlens.lens.attention.PatchAttention`, not saved).

        Returns:
            An :class:`Explanation` (plain data).

        Raises:
            ImageTokenMismatchError: The prompt has no visual tokens / wrong placeholder count.
            ValueError: ``k <= 0``, unknown hook, hook missing from the bank.
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        hooks = self._model_hooks(hooks)
        for hook in hooks:  # fail on a missing bank hook before the forward pass
            self._targets(hook, per_layer, bank_hooks)
        t0 = time.perf_counter()
        if inputs is None:
            inputs = self.vlm.prepare(images, prompt)
        if inputs.layout.n_visual == 0:
            raise ImageTokenMismatchError("the prompt has no visual tokens: nothing to explain")
        blocks = _attention_blocks(attention, self.vlm.n_layers)
        extra = attention_hooks(blocks, self.vlm.n_layers)
        acts = capture_inputs(self.vlm, inputs, hooks, fwd_hooks=fwd_hooks, extra=extra)
        forward_s = time.perf_counter() - t0
        result = self._explain(
            {h: acts.residuals[h] for h in hooks},
            inputs.layout,
            k=k,
            per_layer=per_layer,
            bank_hooks=bank_hooks,
            baselines=baselines,
            method=method,
            patches=patches,
            prompt=prompt if prompt is not None else self.vlm.default_prompt,
        )
        result.timings["forward"] = forward_s
        result.image = _seen_images(images, inputs.layout)
        result.interventions = self._interventions(fwd_hooks)
        if blocks:
            result.attention = patch_attention(acts, blocks, self.vlm.tokenizer, result.image)
        return result

    def _interventions(self, fwd_hooks: Sequence[FwdHook] | None) -> list[dict[str, str]]:
        """The record of ``fwd_hooks`` an :class:`Explanation` keeps."""
        return describe_fwd_hooks(self.vlm.resolve_fwd_hooks(fwd_hooks), list(fwd_hooks or ()))

    def attention_to_patches(
        self,
        images: Any,
        prompt: str | None = None,
        layer: int | Sequence[int] | None = None,
        *,
        inputs: VLMInputs | None = None,
        fwd_hooks: Sequence[FwdHook] | None = None,
    ) -> PatchAttention:
        """One forward pass caching the attention patterns of block(s) ``layer`` (default:
        every block): how much each prompt token attends to each patch of the image.

        Read it with ``.to_grid(layer, head=None, prompt_positions=None)`` (``head=None``:
        the mean over heads; positions default to the text after the image),
        ``.top_patches(...)``, ``.save_png(path, layer, explanation=result)`` (with the
        LatentLens word of each patch) and ``.to_html(path, layer=...)`` (circuitsvis).

        Example:
            >>> att = lens.attention_to_patches(image, "<image>\nWhat is it?", layer=8)
            >>> att.top_patches(8, prompt_positions=[-1], n=3)
        """
        blocks = _attention_blocks(True if layer is None else layer, self.vlm.n_layers)
        if inputs is None:
            inputs = self.vlm.prepare(images, prompt)
        if inputs.layout.n_visual == 0:
            raise ImageTokenMismatchError("the prompt has no visual tokens: nothing to attend to")
        acts = capture_inputs(
            self.vlm,
            inputs,
            [hk.hook_for_layer(0, self.vlm.n_layers)],
            fwd_hooks=fwd_hooks,
            extra=attention_hooks(blocks, self.vlm.n_layers),
        )
        return patch_attention(
            acts, blocks, self.vlm.tokenizer, _seen_images(images, inputs.layout)
        )

    def explain_many(
        self,
        images: Sequence[Any],
        prompt: str | None = None,
        hooks: Sequence[hk.HookKey] | None = None,
        k: int = 5,
        *,
        batch_size: int = 8,
        per_layer: bool = False,
        bank_hooks: Sequence[hk.HookKey] | None = None,
        baselines: bool = True,
        method: Method = "auto",
        progress: bool = True,
        cache_dir: str | os.PathLike | None = None,
        patches: Sequence[Sequence[int] | None] | None = None,
        inputs: Sequence[VLMInputs | None] | None = None,
        fwd_hooks: Sequence[FwdHook] | None = None,
    ) -> list[Explanation]:
        """:meth:`explain` for many images: one forward pass per image, then the bank search
        and the baselines of ``batch_size`` images together (on an accelerator one product per
        bank chunk for all their visual tokens; on a CPU :data:`CPU_QUERY_ROWS` query rows at a
        time, which costs no more per image than :meth:`explain`).

        Args:
            images: PIL images (or lists of images, one per placeholder of ``prompt``).
            batch_size: Images whose visual tokens are searched together.
            progress: Show a progress bar.
            cache_dir: Keep every result in this folder
                (:class:`~tl_latentlens.lens.cache.ExplanationCache`) and read back those of
                images already explained with the same model, bank and settings, so a rerun
                (or an interrupted run) does only the work that is new.
            patches: Per image, the visual-token indices to explain (``None``: all).
            inputs: Per image, ``vlm.prepare(image, prompt)`` when the caller has it already.
            fwd_hooks: Interventions during every forward pass (see :meth:`explain`); not
                with ``cache_dir`` (a function has no identity a cache could be keyed on).

        Returns:
            One :class:`Explanation` per image, in order; ``timings`` hold each image's own
            forward time and its share of the batch's search and baselines (as measured when
            the result was computed, for one read from ``cache_dir``).

        Example:
            >>> results = lens.explain_many(images, batch_size=16, cache_dir="runs/cache")
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        hooks = self._model_hooks(hooks)
        for hook in hooks:
            self._targets(hook, per_layer, bank_hooks)
        for name, given in (("patches", patches), ("inputs", inputs)):
            if given is not None and len(given) != len(images):
                raise ValueError(f"{name}: {len(given)} entries for {len(images)} images")
        want = [None if patches is None or patches[i] is None else [int(p) for p in patches[i]]
                for i in range(len(images))]  # fmt: skip
        if fwd_hooks and cache_dir is not None:
            raise ValueError(
                "explain_many: fwd_hooks cannot be combined with cache_dir (a hook function "
                "has no identity to key cached results on); pass cache_dir=None"
            )
        records = self._interventions(fwd_hooks)
        cache = keys = None
        found: dict[int, Explanation] = {}
        if cache_dir is not None:
            cache = ExplanationCache(cache_dir, self.identity())
            settings = {
                "prompt": prompt, "hooks": hooks, "k": k, "per_layer": per_layer,
                "bank_hooks": bank_hooks, "baselines": baselines, "method": method,
            }  # fmt: skip
            keys = [cache.key(image, {**settings, "patches": w}) for image, w in zip(images, want)]
            for i, key in enumerate(keys):
                hit = cache.get(key)
                if hit is not None:
                    ready = inputs[i] if inputs is not None else None
                    layout = (ready or self.vlm.prepare(images[i], prompt)).layout
                    hit.image = _seen_images(images[i], layout)
                    found[i] = hit
            if found:
                logger.info(
                    "read %d of %d explanations from %s", len(found), len(images), cache_dir
                )
        todo = [i for i in range(len(images)) if i not in found]
        computed: dict[int, Explanation] = {}
        bar = tqdm(
            total=len(images), desc="latentlens: explain", unit="image", disable=not progress
        )
        bar.update(len(found))
        try:
            for start in range(0, len(todo), batch_size):
                batch_idx = todo[start : start + batch_size]
                batch = [images[i] for i in batch_idx]
                runs = []
                for i, image in zip(batch_idx, batch):
                    t0 = time.perf_counter()
                    ready = inputs[i] if inputs is not None else None
                    ready = ready if ready is not None else self.vlm.prepare(image, prompt)
                    if ready.layout.n_visual == 0:
                        raise ImageTokenMismatchError(
                            "the prompt has no visual tokens: nothing to explain"
                        )
                    acts = capture_inputs(self.vlm, ready, hooks, fwd_hooks=fwd_hooks)
                    runs.append((ready.layout, acts, time.perf_counter() - t0))
                results = self._explain_batch(
                    batch, runs, prompt, k, per_layer, bank_hooks, baselines, method,
                    [want[i] for i in batch_idx],
                )  # fmt: skip
                for i, result in zip(batch_idx, results):
                    result.interventions = list(records)
                    computed[i] = result
                    if cache is not None and keys is not None:
                        cache.put(keys[i], result)
                bar.update(len(batch))
        finally:
            bar.close()
        return [found[i] if i in found else computed[i] for i in range(len(images))]

    def identity(self) -> dict[str, Any]:
        """What decides this lens's results: the model fingerprint (text weight digests), its
        visual fingerprint (encoder, connector, unembedding) and the bank manifest (build,
        hooks, routes calibration). Keys :meth:`explain_many`'s cache."""
        manifest = self.bank.manifest
        return {
            "model": self.vlm.fingerprint(),
            "visual": self.vlm.visual_fingerprint(),
            "bank": manifest.to_json() if hasattr(manifest, "to_json") else manifest,
        }

    def _explain_batch(
        self, batch, runs, prompt, k, per_layer, bank_hooks, baselines, method, want
    ) -> list[Explanation]:
        """Explain several runs with one search: their visual tokens are concatenated, then
        the result is split back per image. ``want``: per run, its patch indices (``None``:
        all)."""
        sizes = [layout.n_visual for layout, _, _ in runs]
        starts = np.cumsum([0] + sizes)
        for (lay, _, _), w in zip(runs, want):
            bad = [] if w is None else [i for i in w if not 0 <= i < lay.n_visual]
            if bad:
                raise ValueError(f"patch indices {bad} out of range 0..{lay.n_visual - 1}")
        joint_idx = None
        if any(w is not None for w in want):
            joint_idx = [
                int(starts[b]) + i
                for b, w in enumerate(want)
                for i in (range(sizes[b]) if w is None else w)
            ]
        layout = VisualLayout(
            positions=torch.cat([lay.positions for lay, _, _ in runs]),
            rows=torch.cat([lay.rows for lay, _, _ in runs]),
            cols=torch.cat([lay.cols for lay, _, _ in runs]),
            grid=tuple(runs[0][0].grid),
            image_index=torch.cat(
                [
                    lay.image_index
                    if lay.image_index is not None
                    else torch.zeros(lay.n_visual, dtype=torch.long)
                    for lay, _, _ in runs
                ]
            ),
        )
        hook_names = list(runs[0][1].residuals)
        residuals = {h: torch.cat([acts.residuals[h] for _, acts, _ in runs]) for h in hook_names}
        joint = self._explain(
            residuals, layout, k=k, per_layer=per_layer, bank_hooks=bank_hooks,
            baselines=baselines, method=method, patches=joint_idx,
            prompt=prompt if prompt is not None else self.vlm.default_prompt,
        )  # fmt: skip
        results = []
        share = {key: v / len(runs) for key, v in joint.timings.items()}
        for b, (lay, _, forward_s) in enumerate(runs):
            lo, hi = int(starts[b]), int(starts[b + 1])
            patches = [
                dataclasses.replace(p, index=p.index - lo)
                for p in joint.patches
                if lo <= p.index < hi
            ]
            image = batch[b]
            results.append(
                dataclasses.replace(
                    joint,
                    grid=tuple(lay.grid),
                    patches=patches,
                    timings={**share, "forward": forward_s},
                    search=dict(joint.search),
                    exact_fallback=dict(joint.exact_fallback),
                    search_audit=dict(joint.search_audit),
                    image=_seen_images(image, lay),
                )
            )
        return results

    def explain_vectors(
        self,
        vectors: Any,
        hook: hk.HookKey | None = None,
        k: int = 5,
        *,
        positions: Sequence[int] | None = None,
        batch_index: int = 0,
        per_layer: bool = False,
        bank_hooks: Sequence[hk.HookKey] | None = None,
        baselines: bool = True,
        method: Method = "auto",
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
            hook = hk.resolve_hook(hook, vectors.keys(), where="the cache holds")
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
            # the projector's output is layer 0 of the visual tokens
            hook = self._model_hooks([self.vlm.residual_equivalent(hook)])[0]
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
            method=method,
            patches=None,
            prompt=None,
        )

    def explain_sae(
        self, sae: Any, features: Sequence[int] | None = None, k: int = 5, **kwargs: Any
    ) -> SAEFeatureExplanation:
        """Explain SAE features by their decoder directions' bank neighbours at the SAE's
        layer (:func:`tl_latentlens.lens.sae.explain_sae`; ``sae``: a SAELens SAE, a
        look-alike or a SAELens directory).

        Example:
            >>> lens.explain_sae(sae, features=[3, 17]).label(3).label
        """
        return explain_sae(self, sae, features, k, **kwargs)

    def sae_on_image(self, sae: Any, image: Any, top: int = 5, **kwargs: Any) -> SAEImageFeatures:
        """Each visual token's ``top`` SAE features at the SAE's hook, with LatentLens labels
        (:func:`tl_latentlens.lens.sae.sae_on_image`).

        Example:
            >>> res = lens.sae_on_image(sae, image, top=5)
            >>> res.heatmap(res.features[0]); res.to_html("sae.html")
        """
        return sae_on_image(self, sae, image, top, **kwargs)

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
        method: str,
        patches: Sequence[int] | None,
        prompt: str | None,
    ) -> Explanation:
        idx = list(range(layout.n_visual)) if patches is None else [int(i) for i in patches]
        bad = [i for i in idx if not 0 <= i < layout.n_visual]
        if bad:
            raise ValueError(f"patch indices {bad} out of range 0..{layout.n_visual - 1}")
        timings = {"search": 0.0, "baselines": 0.0}
        sel = torch.tensor(idx, dtype=torch.long)
        device = self._search_device()
        # Every visual hook with the same bank targets is searched in one call (one product
        # per bank chunk for all of them), and the baselines run once over all vectors.
        groups: dict[tuple[str, ...], list[str]] = {}
        for hook in residuals:
            real_hook = hook if hook != "vectors" else None
            groups.setdefault(tuple(self._targets(real_hook, per_layer, bank_hooks)), []).append(
                hook
            )
        latent: dict[str, list] = {}
        methods: dict[str, str] = {}
        fallback: dict[str, int] = {}
        # per bank hook, (recall x audited, audited) summed over the calls
        audit: dict[str, tuple[float, int]] = {}
        step = CPU_QUERY_ROWS if device is None else None
        for targets, members in groups.items():
            stacked = torch.cat([residuals[h][sel] for h in members])
            t0 = time.perf_counter()
            how = self._method_for(targets, method)
            found: list = []
            for lo in range(0, stacked.shape[0], step or max(1, stacked.shape[0])):
                rows = stacked[lo : lo + step] if step else stacked
                report = self.bank.search(rows, hook=list(targets), k=k, method=how, device=device)
                found += report.neighbours
                for name, how_found in report.methods.items():
                    # a hook routed for some blocks of rows and exact for others is "routes"
                    if methods.get(name) != "routes":
                        methods[name] = how_found
                for name, n in report.exact_fallback.items():
                    fallback[name] = fallback.get(name, 0) + n
                for name, n in report.audited.items():
                    was = audit.get(name, (0.0, 0))
                    audit[name] = (was[0] + report.audit_recall[name] * n, was[1] + n)
            timings["search"] += time.perf_counter() - t0
            for j, hook in enumerate(members):
                latent[hook] = found[j * len(idx) : (j + 1) * len(idx)]
        t0 = time.perf_counter()
        if baselines:
            every = torch.cat([residuals[h][sel] for h in residuals])
            logit_all = self.logit_lens(every, k)
            emb_all = self.embedding_lens(every, k)
        timings["baselines"] += time.perf_counter() - t0
        out: list[PatchExplanation] = []
        img_idx = layout.image_index
        for h_i, hook in enumerate(residuals):
            real_hook = hook if hook != "vectors" else None
            layer = hk.layer_of(real_hook) if real_hook is not None else -1
            span = slice(h_i * len(idx), (h_i + 1) * len(idx))
            logit = logit_all[span] if baselines else [()] * len(idx)
            emb = emb_all[span] if baselines else [()] * len(idx)
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
                        latent=tuple(latent[hook][j]),
                        logit=tuple(logit[j]),
                        embedding=tuple(emb[j]),
                    )
                )
        searched = set(methods)
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
            search=methods,
            exact_fallback=fallback,
            search_audit={h: (r / n if n else 1.0, n) for h, (r, n) in audit.items()},
        )

    def routes_for_other_queries(self) -> list[str]:
        """Bank hooks whose routes were calibrated on another model's visual tokens.

        Routes are proven for the queries they were calibrated on (their ``queries_from``,
        :meth:`VLM.visual_fingerprint`); ``method="auto"`` searches these hooks exactly.
        Routes without that record (calibrated before it existed) are trusted.
        """
        mine = self.vlm.visual_fingerprint()
        out = []
        for hook in self.bank.hooks:
            source = (self.bank.hook_info(hook).get("routes") or {}).get("queries_from")
            if source is not None and source != mine:
                out.append(hook)
        return out

    def _method_for(self, targets: Sequence[str], method: str) -> str:
        if method != "auto":
            return method
        # checked once per visual fingerprint (a connector trained in place changes it)
        mine = self.vlm.visual_fingerprint()
        known = getattr(self, "_foreign_routes", None)
        if known is None or known[0] != mine:
            known = (mine, set(self.routes_for_other_queries()))
            self._foreign_routes = known
            if known[1]:
                logger.warning(
                    "the bank's routes at %s were calibrated on another model's visual tokens: "
                    "searching exactly there (recalibrate: tl-latentlens calibrate-bank)",
                    sorted(known[1]),
                )
        return "exact" if known[1].intersection(targets) else method

    def _search_device(self) -> str | None:
        """Search on the model's device when it is not the CPU (exact search runs there)."""
        dev = torch.device(getattr(self.vlm, "device", "cpu"))
        return None if dev.type == "cpu" else str(dev)


def _attention_blocks(attention: bool | int | Sequence[int], n_layers: int) -> list[int]:
    """Blocks whose attention to cache: ``True`` every block, ``False`` none."""
    if attention is True:
        return list(range(n_layers))
    if attention is False or attention is None:
        return []
    if isinstance(attention, int):
        return [attention]
    return sorted({int(b) for b in attention})


def _seen_images(images: Any, layout: VisualLayout) -> Any:
    """What pictures of a result draw on: the image(s) cut to the part the model saw; one
    image for a one-image prompt, a list for several (in ``image_index`` order)."""
    seen = layout.seen_images(images)
    return seen[0] if len(seen) == 1 else seen


def _open_bank(
    bank: str | os.PathLike | Bank, vlm: VLM, *, trust_pickle: bool, progress: bool
) -> Bank:
    """:meth:`LatentLens.from_pretrained`'s ``bank``: an opened bank, ``"default"``, a bank
    directory, an official index (folder or registry name) or a hub bank repository."""
    if isinstance(bank, Bank):
        return bank
    if str(bank) == "default":
        return default_bank(vlm, progress=progress)
    path = os.path.expanduser(os.fspath(bank))
    if os.path.isfile(os.path.join(path, "manifest.json")):
        return Bank.open(path, vlm)
    entry = pretrained().find(str(bank))
    official = entry is not None and entry.format == "latentlens"
    if official or os.path.isfile(os.path.join(path, "metadata.json")):
        return Bank.from_latentlens(str(bank), vlm, trust_pickle=trust_pickle)
    return Bank.from_pretrained(str(bank), vlm)
