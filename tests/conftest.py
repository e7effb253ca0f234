import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import TinyEncoder, tiny_llama_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory):
    return tiny_llama_dir(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_bridge(tiny_llama_path):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(tiny_llama_path), device="cpu")


@pytest.fixture(scope="session")
def tiny_vlm(tiny_bridge):
    """A ConnectorVLM of the tiny Llama, a random conv encoder and a random MLP connector."""
    import torch

    from tl_latentlens.models.connector import Connector, ConnectorVLM

    enc = TinyEncoder()
    torch.manual_seed(1)
    conn = Connector(enc.d_vision, tiny_bridge.cfg.d_model)
    return ConnectorVLM(tiny_bridge, enc, conn, name="tiny-connector-vlm")
