"""Saving and loading a connector VLM directory (``connector_vlm.json`` + connector weights).

A directory holds ``connector.safetensors`` and ``connector_vlm.json`` with the connector's
constructor arguments, the language model (packaged GGUF name, file and SHA-256), the vision
encoder, the patch grid, the prompt format and the training manifest. The default VLM's
directory ships inside the package (``tl_latentlens/default/weights``).

Example:
    >>> vlm = load_default_vlm()
    >>> vlm = load_connector_vlm("runs/connector/export", dtype=torch.bfloat16)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from tl_latentlens._io import file_stamp
from tl_latentlens.default.encoder import EfficientNetLite0Encoder
from tl_latentlens.default.lm import LMSpec, gguf_sha256, lm_spec, load_lm, weights_cache_dir
from tl_latentlens.devices import resolve_device
from tl_latentlens.models.connector import Connector, ConnectorVLM

__all__ = ["MANIFEST_NAME", "WEIGHTS_DIR", "WEIGHTS_NAME", "load_connector_vlm", "load_default_vlm",
           "save_connector_vlm"]  # fmt: skip

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST_NAME = "connector_vlm.json"
WEIGHTS_NAME = "connector.safetensors"
FORMAT_VERSION = 1


def save_connector_vlm(
    connector: Connector,
    out_dir: str | Path,
    *,
    lm: dict[str, Any],
    encoder: dict[str, Any],
    prompt: str,
    training: dict[str, Any] | None = None,
    name: str = "connector-vlm",
) -> Path:
    """Write ``connector.safetensors`` and ``connector_vlm.json`` into ``out_dir`` (atomically).

    Args:
        connector: The trained connector.
        out_dir: Target directory (created).
        lm: ``{"name", "hf_id", "gguf_file", "gguf_sha256"}`` of the language model.
        encoder: ``{"id", "name", "image_size", "grid", "d_vision"}`` of the vision encoder.
        prompt: The captioning prompt (with ``<image>``) the connector was trained with.
        training: The training manifest.
        name: Model name recorded by :func:`load_connector_vlm`.

    Returns:
        The manifest path.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in connector.state_dict().items()}
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, out / WEIGHTS_NAME)
    manifest = {
        "format": FORMAT_VERSION,
        "kind": "connector_vlm",
        "name": name,
        "connector": connector.config(),
        "weights": WEIGHTS_NAME,
        "lm": lm,
        "encoder": encoder,
        "grid": list(encoder.get("grid", ())),
        "prompt": prompt,
        "training": training or {},
    }
    tmp = out / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / MANIFEST_NAME)
    return out / MANIFEST_NAME


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / MANIFEST_NAME
    wpath = path / WEIGHTS_NAME
    if not mpath.is_file():
        raise FileNotFoundError(
            f"{mpath} not found: a connector VLM directory holds {MANIFEST_NAME} and the "
            f"connector weights (make one with `tl-latentlens train-connector`)"
        )
    manifest = json.loads(mpath.read_text())
    if manifest.get("kind") != "connector_vlm" or manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"{mpath} is not a format-{FORMAT_VERSION} connector_vlm manifest")
    wpath = path / manifest.get("weights", WEIGHTS_NAME)
    if not wpath.is_file():
        raise FileNotFoundError(f"{wpath} (connector weights named by {mpath}) is missing")
    return manifest


def load_connector_vlm(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    check_sha256: bool = True,
) -> ConnectorVLM:
    """Load a connector VLM directory: packaged LM + encoder + the saved connector.

    Args:
        path: Directory with ``connector_vlm.json`` and the connector weights.
        device: Torch device (``None``: CUDA if present, else the CPU).
        dtype: Language-model dtype (the connector and encoder stay float32).
        check_sha256: Verify that the packaged GGUF file is the one the connector was trained
            against.

    Raises:
        FileNotFoundError: The manifest or weights are missing.
        ValueError: Unknown LM/encoder, or the GGUF file's SHA-256 differs.
    """
    from safetensors.torch import load_file

    path = Path(path)
    manifest = _read_manifest(path)
    lm_info, enc_info = manifest["lm"], manifest["encoder"]
    spec = lm_spec(lm_info["name"])
    if check_sha256 and lm_info.get("gguf_sha256"):
        got = gguf_sha256(spec.gguf_path())
        if got != lm_info["gguf_sha256"]:
            raise ValueError(
                f"the packaged GGUF {spec.gguf_file} has SHA-256 {got}, but {path} was trained "
                f"against {lm_info['gguf_sha256']}: reinstall the pinned package"
            )
    if enc_info.get("name") != "efficientnet-lite0":
        raise ValueError(f"unknown vision encoder {enc_info.get('name')!r} in {path}")
    device = resolve_device(device)
    encoder = EfficientNetLite0Encoder(image_size=int(enc_info.get("image_size", 224))).to(device)
    bridge = load_lm(spec.name, device=device, dtype=dtype)
    cc = manifest["connector"]
    state = load_file(str(path / manifest.get("weights", WEIGHTS_NAME)))
    extra = {}
    if cc["kind"] == "vocab":
        # the head mixes the LM's own embeddings, which are not stored with its weights
        extra = {"token_embed": bridge.W_E.detach().float().cpu(), "vocab_ids": state["vocab_ids"]}
    connector = Connector(
        cc["d_vision"], cc["d_model"], kind=cc["kind"], d_hidden=cc.get("d_hidden"), **extra
    )
    connector.load_state_dict(state)
    connector = connector.to(device).eval()
    for p in connector.parameters():
        p.requires_grad_(False)
    vlm = ConnectorVLM(bridge, encoder, connector, name=manifest.get("name", "connector-vlm"))
    vlm.manifest = manifest  # type: ignore[attr-defined]
    _keep_fingerprint(vlm, spec, dtype)
    return vlm


def _keep_fingerprint(vlm: ConnectorVLM, spec: LMSpec, dtype: torch.dtype) -> None:
    """Keep the LM's weight digests beside its cached weights: they are a function of the GGUF,
    the dtype and the cached file (its stamp), so later starts skip hashing them."""
    sha = gguf_sha256(spec.gguf_path())
    folder = weights_cache_dir(spec, sha)
    try:
        stamp = file_stamp(os.stat(folder / "model.safetensors"))
    except OSError:
        return  # no cache (it could not be written): nothing stable to key on
    source = {"gguf_sha256": sha, "dtype": str(dtype), "weights_stamp": list(stamp)}
    name = str(dtype).removeprefix("torch.")  # one file per dtype: the digests differ
    vlm.keep_fingerprint(folder / f"fingerprint-{name}.json", source)


def load_default_vlm(
    device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> ConnectorVLM:
    """The embedded default VLM: SmolLM2-135M-Instruct + EfficientNet-Lite0 + trained connector.

    Everything comes from packages (``tl-latentlens fetch-data`` fetches them) and the
    connector weights committed in ``tl_latentlens/default/weights``.

    Raises:
        FileNotFoundError: The committed connector weights are missing.
        tl_latentlens.default.assets.AssetError: A packaged file is missing (the message
            names the command that fetches it).

    Example:
        >>> vlm = load_default_vlm()
        >>> acts = capture_image(vlm, Image.open("cat.png"))
    """
    if not (WEIGHTS_DIR / MANIFEST_NAME).is_file() or not (WEIGHTS_DIR / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"the default VLM's connector weights are missing from {WEIGHTS_DIR}; train them "
            "with `tl-latentlens train-connector --export package` (about 40 minutes on 2 CPU cores)"
        )
    return load_connector_vlm(WEIGHTS_DIR, device=device, dtype=dtype)
