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
:func:`hook_for_layer` and :func:`validate_hooks`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "LAYER_CONVENTION",
    "HookPoint",
    "UnknownHookError",
    "available_resid_hooks",
    "default_bank_hooks",
    "default_capture_hooks",
    "hook_for_layer",
    "layer_of",
    "paper_layers",
    "parse_hook",
    "stop_layer_for",
    "validate_hooks",
]

LAYER_CONVENTION = (
    "layer l = blocks.{l}.hook_resid_pre = HF hidden_states[l] (l < n_layers); "
    "layer n_layers = blocks.{n_layers-1}.hook_resid_post (before the final norm)"
)

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post)$")


class UnknownHookError(ValueError):
    """A hook name the model does not have (the message lists the valid ones)."""


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
