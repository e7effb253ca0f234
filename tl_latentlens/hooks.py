"""The one owner of hook-name strings and of the layer convention.

Layer convention (used everywhere in tl_latentlens, recorded in bank manifests):

* "layer l" for ``0 <= l < n_layers`` is the residual stream *entering* block ``l``:
  Hugging Face ``hidden_states[l]`` == TransformerLens ``blocks.{l}.hook_resid_pre``.
* "layer n_layers" is ``blocks.{n_layers-1}.hook_resid_post``: the last residual *before* the
  final norm. (HF's last ``hidden_states`` entry is taken after the final norm and is a
  different thing.)

So layer 0 of a visual token is the connector output as the language model sees it. The canonical
hook of layer ``l`` is ``blocks.0.hook_resid_pre`` for ``l == 0`` and
``blocks.{l-1}.hook_resid_post`` otherwise; ``blocks.{l}.hook_resid_pre`` names the same
tensor and is accepted everywhere.

No other module parses hook names: they call :func:`parse_hook`, :func:`layer_of`,
:func:`hook_for_layer`, :func:`validate_hooks`, and :func:`resolve_hook` where a user
addresses a hook: everywhere a hook is taken (the bank, ``explain``, an ``Explanation``), a
layer number and every equivalent name of that layer mean the same hook.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "LAYER_CONVENTION",
    "HookKey",
    "HookKeyError",
    "HookPoint",
    "UnknownHookError",
    "attention_pattern_hook",
    "available_resid_hooks",
    "block_of",
    "default_bank_hooks",
    "default_capture_hooks",
    "hook_for_layer",
    "last_hook_for_layer",
    "layer_of",
    "paper_layers",
    "parse_hook",
    "resolve_hook",
    "resolve_model_hook",
    "stop_layer_for",
    "validate_hooks",
]

LAYER_CONVENTION = (
    "layer l = blocks.{l}.hook_resid_pre = HF hidden_states[l] (l < n_layers); "
    "layer n_layers = blocks.{n_layers-1}.hook_resid_post (before the final norm)"
)

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post)$")
_ANY_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")


#: How a user addresses a hook: its name, any equivalent name of the same layer
#: (``blocks.3.hook_resid_post`` == ``blocks.4.hook_resid_pre``) or the layer number.
HookKey: TypeAlias = str | int | float


class UnknownHookError(ValueError):
    """A hook name the model does not have (the message lists the valid ones)."""


class HookKeyError(UnknownHookError):
    """Not a hook key at all: neither a name nor a finite layer number."""


@dataclass(frozen=True)
class HookPoint:
    """A residual-stream hook point.

    Attributes:
        name: The TransformerLens hook name, e.g. ``"blocks.3.hook_resid_post"``.
        block: Index of the block the hook sits in.
        kind: ``"resid_pre"``, ``"resid_mid"`` or ``"resid_post"``.
    """

    name: str
    block: int
    kind: str

    @property
    def layer(self) -> float:
        """Layer in the tl_latentlens convention (``resid_mid`` sits half-way, ``l + 0.5``)."""
        if self.kind == "resid_pre":
            return self.block
        if self.kind == "resid_post":
            return self.block + 1
        return self.block + 0.5

    @property
    def blocks_needed(self) -> int:
        """How many blocks must run for this hook to fire (for ``stop_at_layer``).

        Even ``resid_pre`` of block ``b`` needs ``b + 1``: the bridge stops *before entering*
        block ``stop_at_layer``, so that block's input hook never fires.
        """
        return self.block + 1


def parse_hook(name: str) -> HookPoint:
    """Parse a residual hook name.

    Args:
        name: e.g. ``"blocks.0.hook_resid_pre"``.

    Returns:
        The :class:`HookPoint`.

    Raises:
        UnknownHookError: ``name`` is not a residual-stream hook name.

    Example:
        >>> parse_hook("blocks.2.hook_resid_post").layer
        3
    """
    m = _BLOCK_HOOK.match(name)
    if m is None:
        raise UnknownHookError(
            f"{name!r} is not a residual-stream hook; expected 'blocks.<i>.hook_resid_pre', "
            "'blocks.<i>.hook_resid_mid' or 'blocks.<i>.hook_resid_post'"
        )
    return HookPoint(name=name, block=int(m.group(1)), kind=m.group(2)[len("hook_") :])


def layer_of(name: str) -> float:
    """Layer of a residual hook in the tl_latentlens convention (see module docstring)."""
    layer = parse_hook(name).layer
    return int(layer) if float(layer).is_integer() else layer


def hook_for_layer(layer: int | float, n_layers: int) -> str:
    """Canonical hook name of ``layer`` (0 … n_layers; ``l + 0.5`` is block ``l``'s
    ``hook_resid_mid``) for a model with ``n_layers`` blocks.

    Example:
        >>> hook_for_layer(0, 30), hook_for_layer(30, 30), hook_for_layer(2.5, 30)
        ('blocks.0.hook_resid_pre', 'blocks.29.hook_resid_post', 'blocks.2.hook_resid_mid')
    """
    if not 0 <= layer <= n_layers:
        raise ValueError(
            f"layer must be in 0..{n_layers} for a {n_layers}-block model, got {layer}"
        )
    if layer != int(layer):
        if layer * 2 != int(layer * 2) or layer >= n_layers:
            raise ValueError(f"layer must be an integer or l + 0.5 (resid_mid), got {layer}")
        return f"blocks.{int(layer)}.hook_resid_mid"
    layer = int(layer)
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


def available_resid_hooks(n_layers: int) -> list[str]:
    """Every residual hook name of an ``n_layers``-block model, in forward order."""
    return [
        f"blocks.{i}.hook_resid_{kind}" for i in range(n_layers) for kind in ("pre", "mid", "post")
    ]


def validate_hooks(
    hooks: str | Iterable[str], n_layers: int, model_hooks: Iterable[str] | None = None
) -> list[str]:
    """Check hook names against a model and return them as a de-duplicated list.

    Args:
        hooks: One name or several.
        n_layers: Number of blocks of the model.
        model_hooks: The hook names the model actually has (``bridge.hook_dict``); when given,
            each name must be among them too.

    Raises:
        UnknownHookError: A name is not a residual hook of this model; the message lists the
            valid names.
    """
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    if not names:
        raise ValueError("no hooks given")
    valid = available_resid_hooks(n_layers)
    have = set(model_hooks) if model_hooks is not None else None
    for name in names:
        ok = name in valid and (have is None or name in have)
        if not ok:
            raise UnknownHookError(
                f"unknown hook {name!r} for this {n_layers}-block model. Valid residual hooks: "
                f"blocks.0..{n_layers - 1}.hook_resid_pre|mid|post, i.e. "
                f"{_summarise(valid)}"
            )
    return list(dict.fromkeys(names))


def _summarise(names: Sequence[str], head: int = 6) -> str:
    if len(names) <= 2 * head:
        return ", ".join(names)
    return ", ".join(names[:head]) + ", …, " + ", ".join(names[-head:])


def stop_layer_for(hooks: Iterable[str], n_layers: int) -> int | None:
    """The ``stop_at_layer`` that runs just enough blocks for ``hooks`` (None: run all)."""
    needed = max(parse_hook(h).blocks_needed for h in hooks)
    return None if needed >= n_layers else needed


def default_capture_hooks(n_layers: int) -> list[str]:
    """Input plus every block output: layers 0 … n_layers."""
    return [hook_for_layer(layer, n_layers) for layer in range(n_layers + 1)]


def paper_layers(n_layers: int) -> list[int]:
    """The paper's layer spread (0, 1, 2, 4, 8, 16, 24, L-2, L-1 for 32-layer models), scaled.

    For a model with ``n_layers`` blocks the relative positions of 8, 16 and 24 in a 32-block
    model are kept, the early layers 0, 1, 2, 4 are kept as they are (where they exist), and the
    last two layers and the final residual (layer ``n_layers``) are added.
    """
    layers = {0, 1, 2, 4}
    layers |= {round(n_layers * f) for f in (0.25, 0.5, 0.75)}
    layers |= {n_layers - 2, n_layers - 1, n_layers}
    return sorted(layer for layer in layers if 0 <= layer <= n_layers)


def default_bank_hooks(n_layers: int) -> list[str]:
    """Canonical hooks of :func:`paper_layers`."""
    return [hook_for_layer(layer, n_layers) for layer in paper_layers(n_layers)]


def _key_layer(key: HookKey) -> float:
    """The layer a hook key addresses (a name is parsed, a number checked)."""
    if isinstance(key, str):
        return layer_of(key)
    if isinstance(key, numbers.Real) and not isinstance(key, bool):
        layer = float(key)
        if not math.isfinite(layer):
            raise HookKeyError(f"a layer must be a finite number, got {key!r}")
        return int(layer) if layer.is_integer() else layer
    raise HookKeyError(
        f"a hook is a hook name or a layer number, got {type(key).__name__} {key!r:.40}"
    )


def resolve_hook(key: HookKey, available: Iterable[str], *, where: str = "available") -> str:
    """The one of ``available`` that ``key`` addresses.

    ``key`` may be one of the names, any equivalent residual name of the same layer, or a
    layer number (the convention in the module docstring). This is the one resolver behind
    every place that takes a hook: the bank, ``LatentLens.explain*`` and ``Explanation``.

    Args:
        key: A hook name or a layer number.
        available: The hook names to choose from (e.g. a bank's hooks, an explanation's hooks).
        where: What ``available`` is, for the error message (``"the bank stores"``).

    Returns:
        The matching name from ``available``.

    Raises:
        UnknownHookError: ``key`` is not a hook or names none of ``available`` (the message
            lists them with their layers).

    Example:
        >>> resolve_hook(4, ["blocks.0.hook_resid_pre", "blocks.3.hook_resid_post"])
        'blocks.3.hook_resid_post'
        >>> resolve_hook("blocks.4.hook_resid_pre", ["blocks.3.hook_resid_post"])
        'blocks.3.hook_resid_post'
    """
    names = list(available)
    if isinstance(key, str) and key in names:
        return key
    layer = _key_layer(key)
    for name in names:
        try:
            if layer_of(name) == layer:
                return name
        except UnknownHookError:
            continue
    listing = ", ".join(f"{n} (layer {_layer_label(n)})" for n in names) or "nothing"
    raise UnknownHookError(f"no hook for {key!r} (layer {layer}); {where}: {listing}")


def _layer_label(name: str) -> str:
    try:
        return str(layer_of(name))
    except UnknownHookError:
        return "?"


def resolve_model_hook(key: HookKey, n_layers: int) -> str:
    """A model hook for ``key``: a residual name as given, a layer number as its canonical
    name (:func:`hook_for_layer`).

    Raises:
        UnknownHookError: Not a residual hook of an ``n_layers``-block model (the message
            lists the valid names).

    Example:
        >>> resolve_model_hook(8, 30), resolve_model_hook("blocks.8.hook_resid_pre", 30)
        ('blocks.7.hook_resid_post', 'blocks.8.hook_resid_pre')
    """
    if isinstance(key, str):
        return validate_hooks([key], n_layers)[0]
    layer = _key_layer(key)
    try:
        return hook_for_layer(layer, n_layers)
    except ValueError as err:
        raise UnknownHookError(str(err)) from None


def block_of(name: str) -> int | None:
    """The block a ``blocks.<i>.…`` hook of any kind sits in (``None`` for hooks outside the
    blocks: embedding, vision side, final norm).

    Example:
        >>> block_of("blocks.8.attn.hook_pattern"), block_of("embed.hook_out")
        (8, None)
    """
    m = _ANY_BLOCK_HOOK.match(name)
    return None if m is None else int(m.group(1))


def attention_pattern_hook(block: int) -> str:
    """The attention pattern hook of ``block`` (``[batch, heads, query pos, key pos]``).

    Example:
        >>> attention_pattern_hook(8)
        'blocks.8.attn.hook_pattern'
    """
    return f"blocks.{int(block)}.attn.hook_pattern"


def last_hook_for_layer(layer: int | float, n_layers: int) -> str:
    """The name under which the residual of ``layer`` fires *last* in a forward pass: for
    ``0 < layer < n_layers`` block ``layer``'s ``hook_resid_pre`` (after the previous block's
    ``hook_resid_post``), else :func:`hook_for_layer`. Reading there shows an intervention made
    at either name of the layer.

    Example:
        >>> last_hook_for_layer(4, 30), last_hook_for_layer(30, 30)
        ('blocks.4.hook_resid_pre', 'blocks.29.hook_resid_post')
    """
    if float(layer).is_integer() and 0 < layer < n_layers:
        return f"blocks.{int(layer)}.hook_resid_pre"
    return hook_for_layer(layer, n_layers)
