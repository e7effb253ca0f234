"""VLM handles around TransformerBridge: HF families, the connector VLM, and ``load_vlm``."""

from tl_latentlens.models.base import (
    VLM,
    ImageTokenMismatchError,
    TextBatch,
    VisualLayout,
    VLMInputs,
)
from tl_latentlens.models.connector import (
    CONNECTOR_KINDS,
    Connector,
    ConnectorVLM,
    VisionEncoder,
    embedding_stats,
    word_token_ids,
)
from tl_latentlens.models.hf_vlm import HFVLM
from tl_latentlens.models.load import load_vlm

__all__ = [
    "CONNECTOR_KINDS",
    "HFVLM",
    "VLM",
    "Connector",
    "ConnectorVLM",
    "ImageTokenMismatchError",
    "TextBatch",
    "VLMInputs",
    "VisionEncoder",
    "VisualLayout",
    "embedding_stats",
    "load_vlm",
    "word_token_ids",
]
