import pytest
import torch

from tiny_models import TinyEncoder, random_image
from tl_latentlens.capture import capture_image, capture_text
from tl_latentlens.hooks import UnknownHookError
from tl_latentlens.models.base import ImageTokenMismatchError
from tl_latentlens.models.connector import Connector, ConnectorVLM

SENTENCES = [
    "the red cat sits on the road",
    "a dog",
    "the small blue boat flies over the big city .",
    "white bird",
]


def test_layer0_visual_residual_is_connector_output(tiny_vlm):
    img = random_image(3)
    acts = capture_image(
        tiny_vlm, img, hooks=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
    )
    expected = tiny_vlm.visual_tokens(tiny_vlm.encoder.preprocess([img]))[0].detach()
    assert acts.residuals["blocks.0.hook_resid_pre"].shape == (16, tiny_vlm.d_model)
    torch.testing.assert_close(
        acts.residuals["blocks.0.hook_resid_pre"], expected, rtol=0, atol=1e-6
    )
    # visual tokens really flow into later layers: a different image changes layer 2
    other = capture_image(tiny_vlm, random_image(4), hooks=["blocks.1.hook_resid_post"])
    assert not torch.allclose(
        other.residuals["blocks.1.hook_resid_post"], acts.residuals["blocks.1.hook_resid_post"]
    )


def test_connector_vlm_matches_hf_with_inputs_embeds(tiny_vlm):
    """Parity: bridge + embed hook == the HF model fed inputs_embeds with the visual tokens."""
    img = random_image(5)
    inputs = tiny_vlm.prepare(img, "<image> the cat")
    with torch.no_grad():
        ours = tiny_vlm.forward(inputs)
        hf = tiny_vlm.bridge.original_model
        ids = inputs.input_ids
        emb = hf.get_input_embeddings()(ids).clone()
        emb[0, inputs.layout.positions] = tiny_vlm.visual_tokens(inputs.extras["pixels"])[0]
        ref = hf(inputs_embeds=emb).logits
    assert (ours - ref).abs().max().item() < 1e-4


def test_default_hooks_are_every_layer(tiny_vlm):
    acts = capture_image(tiny_vlm, random_image())
    assert acts.hooks == ["blocks.0.hook_resid_pre"] + [
        f"blocks.{i}.hook_resid_post" for i in range(3)
    ]
    assert acts.layout.grid == (4, 4)
    assert acts.layout.rows.tolist()[:5] == [0, 0, 0, 0, 1]


@pytest.mark.parametrize("side", ["left", "right"])
def test_text_capture_is_batch_and_padding_invariant(tiny_vlm, side):
    hooks = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    alone = list(capture_text(tiny_vlm, SENTENCES, hooks, batch_size=1))
    batched = list(capture_text(tiny_vlm, SENTENCES, hooks, batch_size=4, padding_side=side))
    assert len(batched) == 1
    for h in hooks:
        ref = torch.cat([a.residuals[h] for a in alone])
        torch.testing.assert_close(batched[0].residuals[h], ref, rtol=1e-4, atol=1e-5)
    assert batched[0].sentence.tolist() == torch.cat([a.sentence for a in alone]).tolist()
    # BOS is never stored; positions count from the sentence start
    assert 0 not in batched[0].position.tolist()
    assert tiny_vlm.tokenizer.bos_token_id not in batched[0].token_id.tolist()


def test_text_capture_matches_hf_hidden_states(tiny_vlm):
    """Layer convention: HF hidden_states[l] == blocks.{l}.hook_resid_pre."""
    batch = tiny_vlm.tokenize_sentences(SENTENCES[:1])
    with torch.no_grad():
        hs = tiny_vlm.bridge.original_model(
            batch.input_ids, output_hidden_states=True
        ).hidden_states
    acts = next(
        capture_text(
            tiny_vlm, SENTENCES[:1], ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
        )
    )
    keep = batch.keep[0]
    torch.testing.assert_close(
        acts.residuals["blocks.1.hook_resid_pre"], hs[1][0, keep], rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        acts.residuals["blocks.1.hook_resid_post"], hs[2][0, keep], rtol=1e-5, atol=1e-6
    )


def test_errors(tiny_vlm, tiny_bridge):
    with pytest.raises(UnknownHookError, match="Valid residual hooks"):
        capture_image(tiny_vlm, random_image(), hooks=["blocks.9.hook_resid_post"])
    with pytest.raises(ImageTokenMismatchError, match="2 '<image>' placeholder"):
        tiny_vlm.prepare([random_image()], "<image> and <image>")
    with pytest.raises(ImageTokenMismatchError, match="0 '<image>' placeholder"):
        tiny_vlm.prepare([random_image()], "no image here")
    enc = TinyEncoder()
    with pytest.raises(ValueError, match="connector output dim 32 != language model d_model 64"):
        ConnectorVLM(tiny_bridge, enc, Connector(enc.d_vision, 32))
