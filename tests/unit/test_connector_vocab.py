"""Unit tests of the ``vocab`` connector head (a softmax mixture of the LM's word embeddings)
and of :func:`word_token_ids`. Tiny dims; the loader round trip uses the tiny Llama and
TinyEncoder in place of the packaged SmolLM2 and EfficientNet-Lite0."""

from __future__ import annotations

import json

import pytest
import torch

from tiny_models import TinyEncoder
from tl_latentlens.default import loader
from tl_latentlens.models.connector import Connector, word_token_ids

pytestmark = pytest.mark.usefixtures("one_thread")


class _Tok:
    """Just what :func:`word_token_ids` reads of a tokenizer (GPT-2 style ``Ġ`` spaces)."""

    pieces = ["Ġdog", "Ġcat", "ing", "ĠDog", "Ġab", "Ġcafé", "Ġtree", "Ġx1y", "<unk>", "Ġowl"]

    def __len__(self):
        return len(self.pieces)

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens).replace("Ġ", " ")


def test_word_token_ids_keep_lower_case_whole_words():
    ids = word_token_ids(_Tok()).tolist()
    assert ids == [0, 1, 6, 9]  # not: a suffix, a name, 2 letters, non-ASCII, a digit, <unk>
    assert word_token_ids(_Tok(), min_letters=2).tolist() == [0, 1, 4, 6, 9]


def _conn(seed=0, vocab=12, d=6, ids=None):
    g = torch.Generator().manual_seed(seed)
    w_e = torch.randn(vocab, d, generator=g) * 3
    torch.manual_seed(seed)
    return w_e, Connector(8, d, kind="vocab", token_embed=w_e, vocab_ids=ids)


def test_output_is_a_convex_mixture_of_the_chosen_word_embeddings():
    ids = torch.tensor([1, 4, 7])
    w_e, conn = _conn(ids=ids)
    x = torch.randn(3, 5, 8)
    out = conn(x)
    h = torch.nn.functional.normalize(conn.net(x), dim=-1)
    cos = h @ torch.nn.functional.normalize(w_e[ids], dim=-1).T
    p = (conn.log_scale.exp() * cos).softmax(-1)
    torch.testing.assert_close(out, p @ w_e[ids])
    # inside the hull: each output lies in the span of the three word embeddings
    coef = torch.linalg.lstsq(w_e[ids].T, out.reshape(-1, 6).T).solution.T
    assert torch.all(coef > -1e-4) and torch.allclose(coef.sum(-1), torch.ones(15), atol=1e-4)


def test_a_sharp_head_picks_the_nearest_word():
    w_e, conn = _conn()
    with torch.no_grad():
        conn.log_scale.fill_(torch.tensor(1000.0).log())
    x = torch.randn(4, 8)
    h = torch.nn.functional.normalize(conn.net(x), dim=-1)
    best = (h @ torch.nn.functional.normalize(w_e, dim=-1).T).argmax(-1)
    torch.testing.assert_close(conn(x), w_e[best], atol=1e-4, rtol=0)


def test_gradients_reach_the_mlp_and_the_temperature():
    _, conn = _conn()
    conn(torch.randn(2, 3, 8)).pow(2).sum().backward()
    assert conn.log_scale.grad is not None and conn.net[0].weight.grad.abs().sum() > 0


def test_bad_vocab_arguments_are_rejected():
    with pytest.raises(ValueError, match="token_embed"):
        Connector(8, 6, kind="vocab")
    with pytest.raises(ValueError, match="width"):
        Connector(8, 6, kind="vocab", token_embed=torch.zeros(5, 4))
    with pytest.raises(ValueError, match="vocab_ids"):
        Connector(8, 6, kind="vocab", token_embed=torch.zeros(5, 6), vocab_ids=torch.tensor([5]))


def test_the_embeddings_are_not_saved_the_word_ids_are():
    _, conn = _conn(ids=torch.tensor([0, 2, 3]))
    assert set(conn.state_dict()) == {
        "log_scale", "vocab_ids", "net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"
    }  # fmt: skip
    assert conn.config()["vocab_size"] == 3


def test_vocab_round_trips_through_the_loader(tmp_path, tiny_bridge, monkeypatch):
    enc = TinyEncoder()
    d = tiny_bridge.cfg.d_model
    ids = torch.arange(3, 40, 2)
    torch.manual_seed(0)
    conn = Connector(enc.d_vision, d, "vocab", token_embed=tiny_bridge.W_E, vocab_ids=ids)
    with torch.no_grad():
        conn.log_scale.add_(0.5)
    loader.save_connector_vlm(
        conn,
        tmp_path,
        lm={"name": "smollm2-135m"},
        encoder={"name": "efficientnet-lite0", "image_size": 32, "grid": [4, 4]},
        prompt="<image> image shows",
    )
    saved = json.loads((tmp_path / loader.MANIFEST_NAME).read_text())["connector"]
    assert saved["kind"] == "vocab" and saved["vocab_size"] == len(ids)
    monkeypatch.setattr(loader, "load_lm", lambda *a, **k: tiny_bridge)
    monkeypatch.setattr(loader, "EfficientNetLite0Encoder", lambda image_size: TinyEncoder())
    back = loader.load_connector_vlm(tmp_path).connector
    assert back.kind == "vocab" and torch.equal(back.vocab_ids, ids)
    x = torch.randn(2, 16, enc.d_vision)
    torch.testing.assert_close(back(x), conn(x))
