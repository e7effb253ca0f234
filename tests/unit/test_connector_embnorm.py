"""Unit tests of the ``mlp_embnorm`` connector head, object-only captions and the saved format.

Tiny dims throughout; the loader round trip uses the tiny Llama and TinyEncoder in place of
the packaged SmolLM2 and EfficientNet-Lite0.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import TinyEncoder
from tl_latentlens.default import loader
from tl_latentlens.default.data import list_caption, load_stamps, make_composite
from tl_latentlens.default.objects import object_caption
from tl_latentlens.models.connector import Connector, ConnectorVLM, embedding_stats
from tl_latentlens.training.pipeline import PipelineConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _stats(d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    w_e = torch.randn(50, d, generator=g) * torch.linspace(0.5, 3.0, d) + torch.arange(d)
    return w_e, embedding_stats(w_e)


def test_embedding_stats_are_per_dimension_mean_and_population_std():
    w_e, (mean, std) = _stats()
    torch.testing.assert_close(mean, w_e.mean(0))
    torch.testing.assert_close(std, w_e.std(0, unbiased=False))


def test_training_mode_output_matches_the_embedding_statistics():
    _, (mean, std) = _stats()
    torch.manual_seed(0)
    conn = Connector(8, 6, kind="mlp_embnorm", embed_stats=(mean, std)).train()
    out = conn(torch.randn(4, 5, 8) * 7 + 3).reshape(-1, 6)  # 20 tokens, far from N(0, 1)
    torch.testing.assert_close(out.mean(0), mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), std, atol=1e-3, rtol=1e-3)


def test_eval_mode_uses_running_statistics():
    _, (mean, std) = _stats()
    torch.manual_seed(0)
    conn = Connector(8, 6, kind="mlp_embnorm", embed_stats=(mean, std)).train()
    for _ in range(3):
        conn(torch.randn(2, 5, 8))
    conn.eval()
    x = torch.randn(1, 1, 8)  # one token: batch statistics would be undefined
    h = conn.net(x)
    bn = conn.norm
    expect = mean + std * (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(conn(x), expect)
    before = bn.running_mean.clone()
    conn(torch.randn(3, 5, 8))
    torch.testing.assert_close(bn.running_mean, before, rtol=0, atol=0)  # eval: no update
    # the same tokens judged in a batch and one at a time give the same outputs in eval mode
    xs = torch.randn(3, 5, 8)
    torch.testing.assert_close(conn(xs)[1:2], conn(xs[1:2]))


def test_vlm_probe_does_not_touch_running_statistics(tiny_bridge):
    enc = TinyEncoder()
    w_e = tiny_bridge.W_E
    conn = Connector(
        enc.d_vision, tiny_bridge.cfg.d_model, "mlp_embnorm", None, embedding_stats(w_e)
    )
    conn.train()
    ConnectorVLM(tiny_bridge, enc, conn, name="tiny")
    assert conn.training
    assert int(conn.norm.num_batches_tracked) == 0
    torch.testing.assert_close(conn.embed_mean, w_e.detach().float().mean(0))


def test_unknown_kind_and_bad_stats_are_rejected():
    with pytest.raises(ValueError, match="kind"):
        Connector(8, 6, kind="conv")
    with pytest.raises(ValueError, match="embed_stats"):
        Connector(8, 6, kind="mlp_embnorm", embed_stats=(torch.zeros(5), torch.ones(5)))
    with pytest.raises(ValueError, match="connector_kind"):
        PipelineConfig(connector_kind="conv")
    with pytest.raises(ValueError, match="captions"):
        PipelineConfig(captions="colours")


def test_mlp_config_and_state_are_unchanged():
    conn = Connector(8, 6)
    assert conn.config() == {"d_vision": 8, "d_model": 6, "kind": "mlp", "d_hidden": 6}
    assert set(conn.state_dict()) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}


def test_committed_connector_loads_unchanged():
    from safetensors.torch import load_file

    manifest = json.loads((loader.WEIGHTS_DIR / loader.MANIFEST_NAME).read_text())
    conn = Connector(**manifest["connector"])
    assert manifest["connector"]["kind"] == "linear"  # run L1 of docs/default_connector.md
    conn.load_state_dict(load_file(str(loader.WEIGHTS_DIR / manifest["weights"])))  # strict
    assert conn.config() == manifest["connector"]


def test_embnorm_round_trips_through_the_loader(tmp_path, tiny_bridge, monkeypatch):
    enc = TinyEncoder()
    torch.manual_seed(0)
    conn = Connector(enc.d_vision, tiny_bridge.cfg.d_model, "mlp_embnorm", None,
                     embedding_stats(tiny_bridge.W_E)).train()  # fmt: skip
    for _ in range(3):
        conn(torch.randn(2, 16, enc.d_vision))
    conn.eval()
    loader.save_connector_vlm(
        conn,
        tmp_path,
        lm={"name": "smollm2-135m"},  # no gguf_sha256: the check is skipped
        encoder={"name": "efficientnet-lite0", "image_size": 32, "grid": [4, 4]},
        prompt="<image> image shows",
    )
    saved = json.loads((tmp_path / loader.MANIFEST_NAME).read_text())["connector"]
    assert saved == {"d_vision": 24, "d_model": tiny_bridge.cfg.d_model,
                     "kind": "mlp_embnorm", "d_hidden": tiny_bridge.cfg.d_model}  # fmt: skip
    monkeypatch.setattr(loader, "load_lm", lambda *a, **k: tiny_bridge)
    monkeypatch.setattr(loader, "EfficientNetLite0Encoder", lambda image_size: TinyEncoder())
    vlm = loader.load_connector_vlm(tmp_path)
    back = vlm.connector
    assert back.kind == "mlp_embnorm" and not back.training
    for k, v in conn.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k].to(v.dtype), v, rtol=0, atol=0)
    x = torch.randn(2, 16, enc.d_vision)
    torch.testing.assert_close(back(x), conn(x))


def test_object_captions():
    assert object_caption("kangaroo") == "A kangaroo."
    assert object_caption("owl") == "An owl."
    assert list_caption(["A dog.", "A cup.", "An owl."]) == "A dog, a cup and an owl."
    assert list_caption(["An apple."]) == "An apple."
    assert list_caption([]) == ""


def test_objects_caption_style_lists_visible_objects_with_the_same_draws(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255)]):
        Image.new("RGBA", (60, 40), (*colour, 255)).save(tmp_path / f"{i:03d}t{i}.png")
        (tmp_path / f"{i:03d}t{i}.txt").write_text(f"A thing{i}.\n")
    stamps = load_stamps(tmp_path)
    for seed in range(4):
        a = make_composite(stamps, np.random.default_rng(seed), (2, 3), photo_p=0.0)
        b = make_composite(
            stamps, np.random.default_rng(seed), (2, 3), photo_p=0.0, caption_style="objects"
        )
        np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
        names = [w.rstrip(".") for w in a.caption.split() if w.startswith("thing")]
        assert b.caption == list_caption([f"A {n}." for n in names])
        assert "background" not in b.caption and ":" not in b.caption
    with pytest.raises(ValueError, match="caption_style"):
        make_composite(stamps, np.random.default_rng(0), caption_style="colours")


def test_cone_stats_on_hand_made_sets():
    from tl_latentlens.apps.connector_study import cone_stats

    eye = cone_stats(torch.eye(4) * 2)
    assert eye == {"cos": 0.0, "norm": 2.0, "k90": 3}  # centred: 3 equal directions
    same = cone_stats(torch.ones(5, 3))
    assert same["cos"] == 1.0 and same["norm"] == pytest.approx(3**0.5, abs=0.01)
    line = torch.linspace(-1, 1, 9)[:, None] * torch.tensor([[1.0, 2.0, 0.0]])
    assert cone_stats(line + torch.tensor([0.0, 0.0, 5.0]))["k90"] == 1
