import sys
from pathlib import Path

import pytest
import torch

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


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny models run fastest so (and do not fight a busy
    machine for cores). Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
