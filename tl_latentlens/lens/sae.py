"""Sparse-autoencoder features through LatentLens: labels for SAE features, SAEs on images.

An SAE trained on a language model's residual stream has one decoder direction per feature
(``W_dec[f]``). LatentLens explains a direction by its nearest contextual text tokens in the
bank at the SAE's layer, so each feature gets a label read off real sentences. On an image,
the SAE encodes the visual tokens' residuals and each token's strongest features come with
those labels.

SAEs are taken as

* a SAELens ``SAE`` object, or any object with the same attributes (``W_enc [d_in, d_sae]``,
  ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``cfg.metadata.hook_name`` or the older
  ``cfg.hook_name``; its own ``encode(x)`` is used when it has one);
* a directory in SAELens's on-disk format (``cfg.json`` + ``sae_weights.safetensors``, as
  ``SAE.save_model`` writes it), read with safetensors only: SAELens itself pins
  ``transformer-lens<4`` and is never needed.

Example:
    >>> sae = load_sae("saes/smollm2-layer15")            # or a SAELens SAE object
    >>> lens.explain_sae(sae, features=[3, 17]).label(3).label
    'dog, puppy, cat'
    >>> result = lens.sae_on_image(sae, image, top=5)
    >>> result.heatmap(3)          # [rows, cols] activation of feature 3 over the patch grid
    >>> result.to_html("sae.html")
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from tl_latentlens import hooks as hk
from tl_latentlens._io import atomic_write_bytes, atomic_write_json
from tl_latentlens.bank.bank import Bank
from tl_latentlens.bank.errors import MissingHookError
from tl_latentlens.bank.results import Neighbour
from tl_latentlens.capture import capture_inputs
from tl_latentlens.lens.results import Explanation
from tl_latentlens.models.base import VLM, ImageTokenMismatchError, VLMInputs

__all__ = [
    "SAE_CFG_FILENAME",
    "SAE_WEIGHTS_FILENAME",
    "ARCHITECTURES",
    "FeatureLabel",
    "PatchFeatures",
    "SAEAdapter",
    "SAEError",
    "SAEFeatureExplanation",
    "SAEImageFeatures",
    "as_sae",
    "explain_sae",
    "fit_sae",
    "load_sae",
    "sae_on_image",
    "save_sae",
]

logger = logging.getLogger(__name__)

#: SAELens's file names (``sae_lens.constants``).
SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"

#: Architectures whose encoder is computed here from the weights (others need the object's
#: own ``encode``): SAELens's ``standard`` (ReLU), ``jumprelu`` (a ``threshold`` per feature;
#: SAELens saves BatchTopK SAEs for inference as this) and ``topk`` (``k`` per token).
ARCHITECTURES = ("standard", "jumprelu", "topk")

#: SAELens's input normalisations. ``none`` and ``expected_average_only_in`` leave the input
#: as it is at inference (SAELens folds the latter's factor into the weights when it knows
#: it; its ``SAE.encode`` does the same as here), the other two are computed per token.
_NORMALISATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class SAEError(ValueError):
    """An SAE that cannot be used here: a missing or malformed file or attribute, a width that
    does not match the model, a hook outside the residual stream (the message names the fix)."""


class _LensLike(Protocol):
    """What the SAE functions use of a :class:`~tl_latentlens.lens.latent.LatentLens`."""

    vlm: VLM
    bank: Bank

    def explain_vectors(
        self,
        vectors: Any,
        hook: hk.HookKey | None = None,
        k: int = 5,
        *,
        positions: Sequence[int] | None = None,
        per_layer: bool = False,
        bank_hooks: Sequence[hk.HookKey] | None = None,
        baselines: bool = True,
        method: Any = "auto",
    ) -> Explanation: ...


# ---- the adapter ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SAEAdapter:
    """An SAE as LatentLens uses it: float32 CPU weights, the hook it reads, its encoder.

    Attributes:
        W_enc: Encoder ``[d_in, d_sae]``.
        W_dec: Decoder ``[d_sae, d_in]``: row ``f`` is feature ``f``'s direction.
        b_enc: Encoder bias ``[d_sae]``.
        b_dec: Decoder bias ``[d_in]`` (subtracted from the input when
            ``apply_b_dec_to_input``).
        hook: Where the SAE reads the residual stream, as its config names it (a hook name or
            a layer number); resolved against the model by :meth:`model_hook`.
        architecture: ``"standard"``, ``"jumprelu"`` or ``"topk"`` (see :data:`ARCHITECTURES`),
            or another name when ``encoder`` is given.
        threshold: JumpReLU thresholds ``[d_sae]``.
        k: TopK: features kept per token.
        apply_b_dec_to_input: Subtract ``b_dec`` before encoding (SAELens's default).
        normalize_activations: SAELens's input normalisation name.
        rescale_acts_by_decoder_norm: TopK: scale pre-activations by decoder row norms.
        source: Where the SAE came from (a directory or an object's type), for reports.
        encoder: The object's own ``encode`` (used instead of the formula when set).

    Example:
        >>> sae = load_sae("saes/layer15")
        >>> sae.encode(residuals).shape        # [n, d_sae]
    """

    W_enc: Float[Tensor, "d_in d_sae"]
    W_dec: Float[Tensor, "d_sae d_in"]
    b_enc: Float[Tensor, " d_sae"]
    b_dec: Float[Tensor, " d_in"]
    hook: hk.HookKey
    architecture: str = "standard"
    threshold: Float[Tensor, " d_sae"] | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    rescale_acts_by_decoder_norm: bool = False
    source: str = "weights"
    encoder: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        d_in, d_sae = self.W_enc.shape if self.W_enc.ndim == 2 else (-1, -1)
        shapes = {
            "W_enc": (tuple(self.W_enc.shape), (d_in, d_sae)),
            "W_dec": (tuple(self.W_dec.shape), (d_sae, d_in)),
            "b_enc": (tuple(self.b_enc.shape), (d_sae,)),
            "b_dec": (tuple(self.b_dec.shape), (d_in,)),
        }
        if self.threshold is not None:
            shapes["threshold"] = (tuple(self.threshold.shape), (d_sae,))
        bad = {name: got for name, (got, want) in shapes.items() if got != want or d_in < 1}
        if bad:
            raise SAEError(
                f"SAE weights of {self.source} have inconsistent shapes {bad}: expected W_enc "
                "[d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in] (a transposed "
                "W_enc / W_dec? pass them in SAELens's orientation)"
            )
        if self.encoder is None:
            if self.architecture not in ARCHITECTURES:
                raise SAEError(
                    f"SAE architecture {self.architecture!r} of {self.source} is not computed "
                    f"here (supported: {', '.join(ARCHITECTURES)}); pass an object with its own "
                    "encode(x) method instead"
                )
            if self.architecture == "jumprelu" and self.threshold is None:
                raise SAEError(f"the jumprelu SAE {self.source} has no 'threshold' weights")
            if self.architecture == "topk" and not (self.k and 0 < self.k <= d_sae):
                raise SAEError(
                    f"the topk SAE {self.source} needs k in 1..{d_sae} in its config, got "
                    f"{self.k!r}"
                )
            if self.normalize_activations not in _NORMALISATIONS:
                raise SAEError(
                    f"normalize_activations={self.normalize_activations!r} of {self.source} is "
                    f"not one of {_NORMALISATIONS}; fold it into the weights first"
                )

    @property
    def d_in(self) -> int:
        """Width of the residual stream the SAE reads."""
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return int(self.W_enc.shape[1])

    def model_hook(self, vlm: VLM) -> str:
        """The model's hook for :attr:`hook` (a name or layer number, through
        :func:`tl_latentlens.hooks.resolve_model_hook`), checked against ``vlm``'s width.

        Raises:
            SAEError: The hook is not a residual hook of ``vlm`` or ``d_in != d_model``.
        """
        try:
            name = vlm.validate_hooks([hk.resolve_model_hook(self.hook, vlm.n_layers)])[0]
        except ValueError as err:
            raise SAEError(
                f"the SAE {self.source} reads {self.hook!r}, which is not a residual-stream "
                f"hook of this model ({err}). LatentLens explains residual-stream SAEs; if its "
                "config names the hook another way, pass hook= (a layer number or a "
                "'blocks.L.hook_resid_pre' name)"
            ) from None
        if self.d_in != vlm.d_model:
            raise SAEError(
                f"the SAE {self.source} reads {self.d_in}-dim vectors but the model's "
                f"residual stream is {vlm.d_model}-dim: use an SAE trained on this model"
            )
        return name

    @torch.no_grad()
    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Feature activations of residuals ``x`` (float32 on ``x``'s device).

        The object's own ``encode`` when it has one, else the architecture's formula:
        ``pre = (x - b_dec) @ W_enc + b_enc`` then ReLU (standard), ReLU masked by
        ``pre > threshold`` (jumprelu), or ReLU of the ``k`` largest (topk).
        """
        x = torch.as_tensor(x)
        if x.shape[-1] != self.d_in:
            raise SAEError(f"the SAE reads {self.d_in}-dim vectors, got shape {tuple(x.shape)}")
        if self.encoder is not None:
            return _own_encode(self.encoder, x)
        dev = x.device
        x = x.float()
        if self.normalize_activations == "constant_norm_rescale":
            x = x * (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
        elif self.normalize_activations == "layer_norm":
            x = x - x.mean(dim=-1, keepdim=True)
            x = x / (x.std(dim=-1, keepdim=True) + 1e-5)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec.to(dev)
        pre = x @ self.W_enc.to(dev) + self.b_enc.to(dev)
        if self.architecture == "topk":
            if self.rescale_acts_by_decoder_norm:
                pre = pre * self.W_dec.to(dev).norm(dim=-1)
            values, index = torch.topk(pre, k=int(self.k or 0), dim=-1)
            return torch.zeros_like(pre).scatter_(-1, index, values.relu())
        acts = pre.relu()
        if self.architecture == "jumprelu":
            assert self.threshold is not None  # checked in __post_init__
            acts = acts * (pre > self.threshold.to(dev)).to(acts.dtype)
        return acts

    def with_hook(self, hook: hk.HookKey) -> SAEAdapter:
        """The same SAE reading ``hook`` (a name or a layer number)."""
        return replace(self, hook=hook)


def _own_encode(encode: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Run an object's ``encode`` on the device and dtype of its weights."""
    owner = getattr(encode, "__self__", None)
    ref = getattr(owner, "W_enc", None)
    if isinstance(ref, Tensor):
        out = encode(x.to(device=ref.device, dtype=ref.dtype))
    else:
        out = encode(x)
    return torch.as_tensor(out).detach().float().to(x.device)


def _tensor(obj: Any, name: str, source: str) -> Tensor:
    value = getattr(obj, name, None)
    if value is None:
        raise SAEError(
            f"{source} has no attribute {name!r}: an SAE needs W_enc [d_in, d_sae], W_dec "
            "[d_sae, d_in], b_enc [d_sae] and b_dec [d_in] (SAELens's names)"
        )
    return torch.as_tensor(value).detach().float().cpu().contiguous()


def _get(cfg: Any, name: str) -> Any:
    """``cfg.name`` or ``cfg[name]`` (``None`` if absent; SAELens's metadata answers ``None``)."""
    if cfg is None:
        return None
    if isinstance(cfg, Mapping):
        return cfg.get(name)
    return getattr(cfg, name, None)


def _hook_from_cfg(cfg: Any) -> hk.HookKey | None:
    """SAELens 6's ``cfg.metadata.hook_name``, older ``cfg.hook_name`` / ``hook_point``."""
    for value in (
        _get(_get(cfg, "metadata"), "hook_name"),
        _get(cfg, "hook_name"),
        _get(cfg, "hook_point"),
    ):
        if value is not None:
            return value
    return None


def _architecture(cfg: Any, obj: Any = None) -> str:
    arch = _get(cfg, "architecture")
    if arch is None and obj is not None:
        arch = getattr(obj, "architecture", None)
    if callable(arch):  # SAELens: a classmethod of the config class
        arch = arch()
    if arch is None:  # pre-6.0 SAELens configs: "activation_fn(_str)": "topk" with a k
        act = _get(cfg, "activation_fn") or _get(cfg, "activation_fn_str")
        kwargs = _get(cfg, "activation_fn_kwargs") or {}
        arch = "topk" if act == "topk" and _get(kwargs, "k") is not None else "standard"
    return str(arch)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _normalisation(cfg: Any) -> str:
    value = _get(cfg, "normalize_activations")
    if value is None or value is False:
        return "none"
    if value is True:  # pre-6.0 boolean
        return "expected_average_only_in"
    return str(value)


def _check_reshape(cfg: Any, source: str) -> None:
    if (_get(cfg, "reshape_activations") or "none") != "none":
        raise SAEError(
            f"the SAE {source} reads reshaped activations "
            f"({_get(cfg, 'reshape_activations')!r}, e.g. attention hook_z), not the residual "
            "stream: LatentLens explains residual-stream SAEs"
        )


def as_sae(sae: Any, hook: hk.HookKey | None = None) -> SAEAdapter:
    """An :class:`SAEAdapter` for a SAELens SAE, a look-alike object or a SAELens directory.

    Args:
        sae: A :class:`SAEAdapter`, an object with ``W_enc``/``W_dec``/``b_enc``/``b_dec`` and a
            ``cfg`` (SAELens's ``SAE``), or a path to a SAELens directory (:func:`load_sae`).
        hook: Where the SAE reads (a hook name or a layer number); default: its config's
            ``metadata.hook_name`` (or the older ``hook_name``).

    Raises:
        SAEError: Missing weights or hook, inconsistent shapes, an architecture without a
            formula here and no ``encode`` method.

    Example:
        >>> as_sae(sae_lens_sae).d_sae
        16384
    """
    if isinstance(sae, SAEAdapter):
        return sae if hook is None else sae.with_hook(hook)
    if isinstance(sae, (str, os.PathLike)):
        return load_sae(sae, hook=hook)
    source = type(sae).__name__
    cfg = getattr(sae, "cfg", None)
    _check_reshape(cfg, source)
    key = hook if hook is not None else _hook_from_cfg(cfg)
    if key is None:
        raise SAEError(
            f"the {source} SAE names no hook (cfg.metadata.hook_name / cfg.hook_name): pass "
            "hook= (a layer number or a 'blocks.L.hook_resid_pre' name)"
        )
    encode = getattr(sae, "encode", None)
    threshold = getattr(sae, "threshold", None)
    k = _get(cfg, "k") or _get(_get(cfg, "activation_fn_kwargs"), "k")
    return SAEAdapter(
        W_enc=_tensor(sae, "W_enc", source),
        W_dec=_tensor(sae, "W_dec", source),
        b_enc=_tensor(sae, "b_enc", source),
        b_dec=_tensor(sae, "b_dec", source),
        hook=key,
        architecture=_architecture(cfg, sae),
        threshold=None if threshold is None else torch.as_tensor(threshold).detach().float().cpu(),
        k=_int_or_none(k),
        apply_b_dec_to_input=bool(_get(cfg, "apply_b_dec_to_input") in (None, True)),
        normalize_activations=_normalisation(cfg),
        rescale_acts_by_decoder_norm=bool(_get(cfg, "rescale_acts_by_decoder_norm")),
        source=source,
        encoder=encode if callable(encode) else None,
    )


def load_sae(path: str | os.PathLike, hook: hk.HookKey | None = None) -> SAEAdapter:
    """Read an SAE saved in SAELens's format (``SAE.save_model``) without SAELens.

    ``cfg.json`` gives ``d_in``, ``d_sae``, ``architecture`` (``standard``, ``jumprelu``,
    ``topk`` with ``k``), ``apply_b_dec_to_input``, ``normalize_activations``,
    ``metadata.hook_name`` (SAELens 6; older configs: ``hook_name`` / ``hook_point``) and
    ``dtype``; ``sae_weights.safetensors`` holds ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``
    (and ``threshold``). Nothing is unpickled.

    Args:
        path: The SAE's directory.
        hook: Override the config's hook (a name or a layer number).

    Raises:
        SAEError: A missing or unreadable file, missing weights, sizes that disagree with the
            config.

    Example:
        >>> sae = load_sae("saes/smollm2-l15")
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    cfg_path, weights_path = root / SAE_CFG_FILENAME, root / SAE_WEIGHTS_FILENAME
    missing = [p.name for p in (cfg_path, weights_path) if not p.is_file()]
    if missing:
        raise SAEError(
            f"{str(root)!r} is not a SAELens SAE directory: {', '.join(missing)} missing (it "
            f"needs {SAE_CFG_FILENAME} and {SAE_WEIGHTS_FILENAME}, as SAE.save_model writes)"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SAEError(f"cannot read {cfg_path}: {err}; re-save the SAE") from None
    if not isinstance(cfg, dict):
        raise SAEError(f"{cfg_path} is not a JSON object; re-save the SAE")
    try:
        weights = load_file(str(weights_path), device="cpu")
    except (OSError, SafetensorError) as err:
        raise SAEError(f"cannot read {weights_path}: {err}; re-save the SAE") from None
    if "scaling_factor" in weights and not torch.allclose(
        weights["scaling_factor"], torch.ones_like(weights["scaling_factor"])
    ):
        raise SAEError(
            f"{weights_path} has a finetuning scaling_factor (SAELens < 6 decoder scaling): "
            "load it with SAELens and save it again (SAE.save_model)"
        )
    source = str(root)
    _check_reshape(cfg, source)

    class _Weights:  # the weights as attributes, for as_sae's checks and messages
        pass

    obj = _Weights()
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        if name in weights:
            setattr(obj, name, weights[name])
    try:
        adapter = as_sae(obj, hook=hook if hook is not None else _hook_from_cfg(cfg))
    except SAEError as err:
        raise SAEError(str(err).replace("_Weights", source)) from None
    adapter = replace(
        adapter,
        architecture=_architecture(cfg),
        k=_int_or_none(_get(cfg, "k") or _get(_get(cfg, "activation_fn_kwargs"), "k")),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=_normalisation(cfg),
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        source=source,
        encoder=None,
    )
    for name in ("d_in", "d_sae"):
        if name in cfg and int(cfg[name]) != getattr(adapter, name):
            raise SAEError(
                f"{cfg_path} says {name}={cfg[name]} but the weights give "
                f"{getattr(adapter, name)}: the files belong to different SAEs"
            )
    if str(cfg.get("dtype", "float32")).removeprefix("torch.") not in _DTYPES:
        logger.warning("SAE %s: unknown dtype %r, read as float32", source, cfg.get("dtype"))
    return adapter


def save_sae(
    sae: Any, path: str | os.PathLike, *, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write an SAE in SAELens's on-disk format (``cfg.json`` + ``sae_weights.safetensors``,
    float32), atomically; ``sae_lens.SAE.load_from_disk`` and :func:`load_sae` read it.

    Args:
        sae: Anything :func:`as_sae` takes (with a formula architecture).
        path: The directory (created).
        metadata: Extra ``metadata`` entries (``model_name``, ...).

    Returns:
        The directory.

    Example:
        >>> save_sae(fit_sae(vectors, 256, hook=15), "saes/layer15")
    """
    from safetensors.torch import save

    adapter = as_sae(sae)
    if adapter.encoder is not None and adapter.architecture not in ARCHITECTURES:
        raise SAEError(
            f"cannot save a {adapter.architecture!r} SAE in the formula formats "
            f"{ARCHITECTURES}: save it with SAELens"
        )
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tensors = {
        "W_enc": adapter.W_enc,
        "W_dec": adapter.W_dec,
        "b_enc": adapter.b_enc,
        "b_dec": adapter.b_dec,
    }
    if adapter.threshold is not None:
        tensors["threshold"] = adapter.threshold
    tensors = {name: t.detach().float().cpu().contiguous() for name, t in tensors.items()}
    cfg: dict[str, Any] = {
        "architecture": adapter.architecture,
        "d_in": adapter.d_in,
        "d_sae": adapter.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": adapter.apply_b_dec_to_input,
        "normalize_activations": adapter.normalize_activations,
        "reshape_activations": "none",
        # SAELens reads configs without a >= 6.0 ``sae_lens_version`` as pre-6.0 ones (and
        # then drops the nested metadata): this marks the 6.x layout written here.
        "metadata": {
            "hook_name": adapter.hook,
            "sae_lens_version": "6.0.0",
            "written_by": "tl_latentlens",
            **dict(metadata or {}),
        },
    }
    if adapter.architecture == "topk":
        cfg["k"] = adapter.k
        cfg["rescale_acts_by_decoder_norm"] = adapter.rescale_acts_by_decoder_norm
    atomic_write_bytes(root / SAE_WEIGHTS_FILENAME, save(tensors))
    atomic_write_json(root / SAE_CFG_FILENAME, cfg)
    return root


def fit_sae(
    vectors: Float[Tensor, "n d_in"],
    d_sae: int,
    hook: hk.HookKey,
    *,
    steps: int = 300,
    l1: float = 0.1,
    lr: float = 3e-3,
    batch_size: int = 512,
    seed: int = 0,
    progress: bool = False,
) -> SAEAdapter:
    """Fit a small standard (ReLU, L1) SAE on ``vectors``: a quick one for demos and tests,
    not a substitute for SAELens's training.

    The vectors are scaled to unit mean squared distance from their mean for the fit and the
    scale is folded back into the weights, so the SAE reads raw residuals.

    Args:
        vectors: Residuals ``[n, d_in]`` (e.g. ``bank.decoded(hook)``, or captured ones).
        d_sae: Number of features.
        hook: Where the vectors were read (a hook name or a layer number).
        steps: Adam steps.
        l1: L1 penalty on activations weighted by decoder norms (relative to the normalised
            squared error).
        lr: Adam learning rate.
        batch_size: Rows per step.
        seed: Seed of the initialisation and of the batches.
        progress: Show a progress bar.

    Returns:
        The fitted :class:`SAEAdapter` (architecture ``standard``).

    Example:
        >>> sae = fit_sae(torch.from_numpy(bank.decoded(15)), 512, hook=15, steps=400)
    """
    x = torch.as_tensor(vectors).detach().float().cpu()
    if x.ndim != 2 or x.shape[0] < 2:
        raise SAEError(f"fit_sae needs vectors [n >= 2, d_in], got shape {tuple(x.shape)}")
    if d_sae < 1 or steps < 1 or batch_size < 1:
        raise SAEError(f"d_sae, steps and batch_size must be positive: {d_sae}, {steps}, "
                       f"{batch_size}")  # fmt: skip
    # the spread around the mean sets the scale: residuals often share a large mean
    # direction, which b_dec takes, and the L1 penalty should weigh against the rest
    scale = float((x - x.mean(dim=0)).norm(dim=-1).pow(2).mean().sqrt()) or 1.0
    x = x / scale
    g = torch.Generator().manual_seed(seed)
    d_in = x.shape[1]
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec = torch.nn.Parameter(w_dec / w_dec.norm(dim=-1, keepdim=True) * 0.1)
    w_enc = torch.nn.Parameter(w_dec.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(d_sae))
    b_dec = torch.nn.Parameter(x.mean(dim=0))
    opt = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=lr)
    with torch.enable_grad():
        for _ in tqdm(range(steps), desc="latentlens: fit SAE", disable=not progress):
            rows = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=g)
            xb = x[rows]
            acts = ((xb - b_dec) @ w_enc + b_enc).relu()
            recon = acts @ w_dec + b_dec
            mse = (recon - xb).pow(2).sum(-1).mean()
            sparsity = (acts * w_dec.norm(dim=-1)).sum(-1).mean()
            loss = mse + l1 * sparsity
            opt.zero_grad()
            loss.backward()
            opt.step()
    logger.info("fit SAE: %d features, final loss %.4g (mse %.4g)", d_sae, loss.item(), mse.item())
    return SAEAdapter(
        W_enc=(w_enc.detach() / scale).contiguous(),
        W_dec=(w_dec.detach() * scale).contiguous(),
        b_enc=b_enc.detach().clone(),
        b_dec=(b_dec.detach() * scale).contiguous(),
        hook=hook,
        source=f"fit_sae(d_sae={d_sae}, steps={steps})",
    )


# ---- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureLabel:
    """A feature's LatentLens label: its decoder direction's nearest text tokens.

    Attributes:
        feature: The feature id.
        neighbours: Bank neighbours of ``W_dec[feature]``, best first.
    """

    feature: int
    neighbours: tuple[Neighbour, ...]

    @property
    def words(self) -> tuple[str, ...]:
        """The neighbours' words (a sub-word neighbour stands for its word), once each."""
        return tuple(dict.fromkeys(w for w in (n.word.strip() for n in self.neighbours) if w))

    @property
    def label(self) -> str:
        """Up to three words, comma-separated (``"?"`` without neighbours)."""
        return ", ".join(self.words[:3]) or "?"


@dataclass(frozen=True)
class SAEFeatureExplanation:
    """LatentLens explanations of SAE features (:func:`explain_sae`).

    The full result of :meth:`LatentLens.explain_vectors` on the decoder rows is kept in
    :attr:`explanation`: its patch ``i`` (``position`` = feature id) is feature
    ``features[i]``, so its report, dataframe and saving work as for images.

    Attributes:
        sae: Where the SAE came from.
        hook: The model hook the SAE reads.
        features: Feature ids, in the explanation's order.
        explanation: The :class:`~tl_latentlens.lens.results.Explanation` of their directions.

    Example:
        >>> result = lens.explain_sae(sae, features=[3, 17])
        >>> result.label(3).label, result.neighbours(3)[0].highlighted()
    """

    sae: str
    hook: str
    features: tuple[int, ...]
    explanation: Explanation = field(compare=False)

    def _row(self, feature: int) -> int:
        try:
            return self.features.index(int(feature))
        except ValueError:
            raise KeyError(
                f"feature {feature} was not explained (explained: {_short_list(self.features)})"
            ) from None

    def neighbours(self, feature: int) -> list[Neighbour]:
        """LatentLens neighbours of ``feature``'s decoder direction, best first."""
        return list(self.explanation.patches[self._row(feature)].latent)

    def label(self, feature: int) -> FeatureLabel:
        """``feature``'s :class:`FeatureLabel`."""
        return FeatureLabel(int(feature), tuple(self.neighbours(feature)))

    @property
    def labels(self) -> dict[int, FeatureLabel]:
        """Every explained feature's label."""
        return {f: FeatureLabel(f, tuple(p.latent)) for f, p in self._pairs()}

    def _pairs(self) -> list[tuple[int, Any]]:
        by_index = {p.index: p for p in self.explanation.patches}
        return [(f, by_index[i]) for i, f in enumerate(self.features)]

    @property
    def layer(self) -> float:
        """The SAE's layer in the tl_latentlens convention."""
        return hk.layer_of(self.hook)

    def to_dataframe(self) -> Any:
        """:meth:`Explanation.to_dataframe` with a leading ``feature`` column."""
        df = self.explanation.to_dataframe()
        df.insert(0, "feature", [self.features[i] for i in df["index"]] if len(df) else [])
        return df

    def to_html(self, path: str | os.PathLike | None = None, **kwargs: Any) -> str:
        """Offline HTML page: one card per feature (its neighbours in their sentences)."""
        # lazy: a notebook convenience; render sits above lens and imports it
        from tl_latentlens.render.sae import sae_features_html

        return sae_features_html(self, path=path, **kwargs)

    def show(self, **kwargs: Any) -> Any:
        """Display in a notebook (inline HTML)."""
        # lazy: a notebook convenience; render sits above lens and imports it
        from tl_latentlens.render.sae import show_sae_features

        return show_sae_features(self, **kwargs)


@dataclass(frozen=True)
class PatchFeatures:
    """The strongest SAE features of one visual token.

    Attributes:
        index: Visual token index.
        position: Its sequence position.
        row: Patch-grid row (-1: not a grid patch).
        col: Patch-grid column.
        image_index: Which image of the prompt.
        features: Feature ids, strongest first (only features that fire: activation > 0).
        activations: Their activations.
    """

    index: int
    position: int
    row: int
    col: int
    image_index: int
    features: tuple[int, ...]
    activations: tuple[float, ...]


@dataclass(frozen=True)
class SAEImageFeatures:
    """An SAE on one image's visual tokens (:func:`sae_on_image`).

    Attributes:
        model: Model name.
        sae: Where the SAE came from.
        hook: The model hook the SAE reads (where the visual tokens were captured).
        prompt: The prompt of the run.
        grid: ``(rows, cols)`` of the patch grid.
        top: Features kept per visual token.
        patches: Per visual token, its strongest features.
        explained: LatentLens labels of every feature in :attr:`patches` (each computed once).
        activations: Every feature's activation per visual token ``[n_visual, d_sae]``.
        image: What the model saw (not compared, not saved).

    Example:
        >>> res = lens.sae_on_image(sae, image, top=5)
        >>> [res.label(f) for f in res.patches[0].features]
        >>> res.heatmap(res.patches[0].features[0]).shape     # (7, 7)
    """

    model: str
    sae: str
    hook: str
    prompt: str | None
    grid: tuple[int, int]
    top: int
    patches: tuple[PatchFeatures, ...]
    explained: SAEFeatureExplanation | None = field(compare=False)
    activations: Float[Tensor, "n_visual d_sae"] = field(repr=False, compare=False)
    image: Any = field(default=None, repr=False, compare=False)

    @property
    def features(self) -> tuple[int, ...]:
        """Features that are among some visual token's strongest, by their highest activation."""
        if self.explained is None:
            return ()
        peak = self.activations[:, list(self.explained.features)].amax(dim=0)
        order = sorted(range(len(peak)), key=lambda i: (-float(peak[i]), i))
        return tuple(self.explained.features[i] for i in order)

    @property
    def layer(self) -> float:
        """The SAE's layer in the tl_latentlens convention."""
        return hk.layer_of(self.hook)

    def label(self, feature: int) -> str:
        """Short LatentLens label of ``feature`` (``"?"`` when it fires on no token's top)."""
        if self.explained is None or int(feature) not in self.explained.features:
            return "?"
        return self.explained.label(feature).label

    def heatmap(self, feature: int, image: int = 0) -> np.ndarray:
        """Activation of ``feature`` over image ``image``'s patch grid ``[rows, cols]`` (NaN
        where no visual token sits).

        Raises:
            KeyError: ``feature`` outside ``0..d_sae-1``.
        """
        d_sae = self.activations.shape[1]
        if not 0 <= int(feature) < d_sae:
            raise KeyError(f"feature {feature} outside 0..{d_sae - 1}")
        out = np.full(self.grid, np.nan, dtype=np.float32)
        column = self.activations[:, int(feature)]
        for p in self.patches:
            if p.image_index == image and 0 <= p.row < self.grid[0] and 0 <= p.col < self.grid[1]:
                out[p.row, p.col] = float(column[p.index])
        return out

    def to_dataframe(self) -> Any:
        """One row per (visual token, rank): index, image_index, row, col, rank, feature,
        activation, label."""
        import pandas as pd

        rows = [
            {
                "index": p.index,
                "image_index": p.image_index,
                "row": p.row,
                "col": p.col,
                "rank": rank,
                "feature": f,
                "activation": a,
                "label": self.label(f),
            }
            for p in self.patches
            for rank, (f, a) in enumerate(zip(p.features, p.activations))
        ]
        columns = ["index", "image_index", "row", "col", "rank", "feature", "activation", "label"]
        return pd.DataFrame(rows, columns=columns)

    def to_html(self, path: str | os.PathLike | None = None, **kwargs: Any) -> str:
        """Offline HTML page: the image under heatmaps of the strongest features, the visual
        tokens coloured by feature (circuitsvis), a per-patch feature table with labels, and
        each feature's neighbours in their sentences."""
        # lazy: a notebook convenience; render sits above lens and imports it
        from tl_latentlens.render.sae import sae_image_html

        return sae_image_html(self, path=path, **kwargs)

    def show(self, **kwargs: Any) -> Any:
        """Display in a notebook (inline HTML, works offline)."""
        # lazy: a notebook convenience; render sits above lens and imports it
        from tl_latentlens.render.sae import show_sae_image

        return show_sae_image(self, **kwargs)


def _short_list(items: Sequence[int], head: int = 12) -> str:
    shown = ", ".join(str(i) for i in items[:head])
    return shown + (f", … ({len(items)} in all)" if len(items) > head else "")


# ---- the lens functions ---------------------------------------------------------------------
def _bank_target(lens: _LensLike, hook: str, bank_hooks: Sequence[hk.HookKey] | None) -> None:
    """Fail before any search when the bank cannot answer at the SAE's layer."""
    if bank_hooks is not None:
        return
    try:
        lens.bank.resolve_hook(hk.layer_of(hook))
    except MissingHookError:
        raise SAEError(
            f"the bank has no hook at the SAE's layer {hk.layer_of(hook)} ({hook}); bank "
            f"hooks: {lens.bank.hooks}. Build the bank with that layer (build_bank(..., "
            f"hooks=[{hook!r}, ...])) or pass bank_hooks= to search other layers"
        ) from None
    if lens.bank.d_model != lens.vlm.d_model:  # pragma: no cover - LatentLens checks the model
        raise SAEError(f"bank d_model {lens.bank.d_model} != model d_model {lens.vlm.d_model}")


def explain_sae(
    lens: _LensLike,
    sae: Any,
    features: Sequence[int] | None = None,
    k: int = 5,
    *,
    hook: hk.HookKey | None = None,
    bank_hooks: Sequence[hk.HookKey] | None = None,
    baselines: bool = True,
    method: Any = "auto",
) -> SAEFeatureExplanation:
    """Explain SAE features by their decoder directions' nearest text tokens in the bank.

    Each ``W_dec[f]`` goes through :meth:`LatentLens.explain_vectors` at the SAE's hook: by
    default searched in the bank hook of the SAE's layer only; ``bank_hooks`` searches those
    instead (cross-layer).

    Args:
        lens: The :class:`~tl_latentlens.lens.latent.LatentLens`.
        sae: Anything :func:`as_sae` takes.
        features: Feature ids (default: all ``d_sae``).
        k: Neighbours per feature.
        hook: Override the SAE's hook (a name or a layer number).
        bank_hooks: Bank hooks to search instead of the SAE's layer.
        baselines: Also LogitLens and EmbeddingLens of each direction.
        method: Bank search (``"auto"``, ``"exact"``, ``"routes"``).

    Returns:
        A :class:`SAEFeatureExplanation`.

    Raises:
        SAEError: A bad SAE, a width or hook the model does not have, no bank hook at the
            SAE's layer, a feature id out of range.

    Example:
        >>> lens.explain_sae(sae, features=[3, 17], k=5).labels[3].label
    """
    adapter = as_sae(sae, hook=hook)
    model_hook = adapter.model_hook(lens.vlm)
    if features is None:
        feats = list(range(adapter.d_sae))
    else:
        feats = [int(f) for f in (features.tolist() if hasattr(features, "tolist") else features)]
    bad = [f for f in feats if not 0 <= f < adapter.d_sae]
    if bad or not feats:
        raise SAEError(
            f"feature ids must be in 0..{adapter.d_sae - 1} and not empty; got {bad or feats}"
        )
    if len(set(feats)) != len(feats):
        raise SAEError("feature ids repeat; pass each feature once")
    if k <= 0:
        raise SAEError(f"k must be positive, got {k}")
    _bank_target(lens, model_hook, bank_hooks)
    logger.info("explaining %d SAE features at %s", len(feats), model_hook)
    exp = lens.explain_vectors(
        adapter.W_dec,
        model_hook,
        k,
        positions=feats,
        per_layer=bank_hooks is None,
        bank_hooks=bank_hooks,
        baselines=baselines,
        method=method,
    )
    return SAEFeatureExplanation(
        sae=adapter.source, hook=model_hook, features=tuple(feats), explanation=exp
    )


def _top_features(
    acts: Float[Tensor, "n d_sae"], top: int
) -> tuple[list[list[int]], list[list[float]]]:
    """Per row, the ``top`` largest activations that are > 0, largest first (ties: lower
    feature id first)."""
    values, index = torch.sort(acts, dim=-1, descending=True, stable=True)
    values, index = values[:, :top], index[:, :top]
    feats, vals = [], []
    for v_row, i_row in zip(values.tolist(), index.tolist()):
        keep = [j for j, v in enumerate(v_row) if v > 0]
        feats.append([i_row[j] for j in keep])
        vals.append([v_row[j] for j in keep])
    return feats, vals


def sae_on_image(
    lens: _LensLike,
    sae: Any,
    image: Any,
    top: int = 5,
    *,
    prompt: str | None = None,
    k: int = 5,
    hook: hk.HookKey | None = None,
    bank_hooks: Sequence[hk.HookKey] | None = None,
    method: Any = "auto",
    inputs: VLMInputs | None = None,
) -> SAEImageFeatures:
    """Run the model on ``image``, encode its visual tokens with the SAE at the SAE's hook,
    and label each token's strongest features with LatentLens (once per feature).

    Args:
        lens: The :class:`~tl_latentlens.lens.latent.LatentLens`.
        sae: Anything :func:`as_sae` takes.
        image: A PIL image (or a list, one per placeholder of ``prompt``).
        top: Features kept per visual token (those with activation > 0).
        prompt: Prompt with image placeholder(s); ``None``: the model's default prompt.
        k: Neighbours per feature label.
        hook: Override the SAE's hook.
        bank_hooks: Bank hooks for the labels instead of the SAE's layer.
        method: Bank search.
        inputs: ``vlm.prepare(image, prompt)`` when the caller has it already.

    Returns:
        A :class:`SAEImageFeatures`.

    Raises:
        SAEError: As :func:`explain_sae`; ``top < 1``.
        ImageTokenMismatchError: The prompt has no visual tokens.

    Example:
        >>> res = lens.sae_on_image(sae, Image.open("dog.jpg"), top=3)
        >>> res.to_dataframe().head()
    """
    if top < 1:
        raise SAEError(f"top must be positive, got {top}")
    adapter = as_sae(sae, hook=hook)
    model_hook = adapter.model_hook(lens.vlm)
    _bank_target(lens, model_hook, bank_hooks)
    vlm = lens.vlm
    if inputs is None:
        inputs = vlm.prepare(image, prompt)
    layout = inputs.layout
    if layout.n_visual == 0:
        raise ImageTokenMismatchError("the prompt has no visual tokens: nothing to encode")
    residuals = capture_inputs(vlm, inputs, [model_hook]).residuals[model_hook]
    acts = adapter.encode(residuals).float().cpu()
    feats, vals = _top_features(acts, top)
    firing = sorted({f for row in feats for f in row})
    explained = None
    if firing:
        explained = explain_sae(
            lens, adapter.with_hook(model_hook), firing, k,
            bank_hooks=bank_hooks, baselines=False, method=method,
        )  # fmt: skip
    else:
        logger.warning("no SAE feature fires on any visual token at %s", model_hook)
    img_idx = layout.image_index
    patches = tuple(
        PatchFeatures(
            index=i,
            position=int(layout.positions[i]),
            row=int(layout.rows[i]),
            col=int(layout.cols[i]),
            image_index=int(img_idx[i]) if img_idx is not None else 0,
            features=tuple(feats[i]),
            activations=tuple(vals[i]),
        )
        for i in range(layout.n_visual)
    )
    seen = layout.seen_images(image)
    return SAEImageFeatures(
        model=vlm.name,
        sae=adapter.source,
        hook=model_hook,
        prompt=prompt if prompt is not None else vlm.default_prompt,
        grid=tuple(layout.grid),
        top=top,
        patches=patches,
        explained=explained,
        activations=acts,
        image=seen[0] if len(seen) == 1 else seen,
    )
