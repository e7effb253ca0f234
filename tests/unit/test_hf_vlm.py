"""HFVLM / load_vlm on tiny random HF VLMs built in code (no downloads).

Families: LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Idefics3,
Gemma3. Per family: bridge logits == HF logits, layer-0 visual residuals == HF projector output,
``blocks.{l}.hook_resid_pre`` == HF ``hidden_states[l]`` (Qwen3-VL: plus the DeepStack features
HF adds after recording them), placeholder mismatches raise
ImageTokenMismatchError, and text-only capture on the VLM bridge is padding invariant.
Measured max |logit diff| per family is printed (``-s``) and written to PARITY_JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch

from tiny_models import (
    random_image,
    tiny_gemma3_dir,
    tiny_idefics3_dir,
    tiny_llava_dir,
    tiny_llava_next_dir,
    tiny_llava_onevision_dir,
    tiny_qwen2_5_vl_dir,
    tiny_qwen2_vl_dir,
    tiny_qwen3_vl_dir,
)
from tl_latentlens.capture import capture_image, capture_text
from tl_latentlens.models.base import ImageTokenMismatchError, VLMInputs
from tl_latentlens.models.hf_vlm import HFVLM
from tl_latentlens.models.load import load_vlm

PARITY_JSON = Path("/tmp/tl_latentlens_hf_vlm_parity.json")

# family -> (builder, prompt with one image in the family's own syntax)
SPECS = {
    "llava": (tiny_llava_dir, "the <image>\nthe cat sits"),
    "llava_next": (tiny_llava_next_dir, "the <image>\nthe cat sits"),
    "llava_onevision": (tiny_llava_onevision_dir, "the <image>\na dog sits"),
    "qwen2_vl": (tiny_qwen2_vl_dir, "the <|vision_start|><|image_pad|><|vision_end|> the cat"),
    "qwen2_5_vl": (tiny_qwen2_5_vl_dir, "the <|vision_start|><|image_pad|><|vision_end|> a dog"),
    "qwen3_vl": (tiny_qwen3_vl_dir, "the <|vision_start|><|image_pad|><|vision_end|> the dog"),
    "idefics3": (tiny_idefics3_dir, "the <image> the cat sits"),
    "gemma3": (tiny_gemma3_dir, "the <start_of_image> the cat"),
}
SENTENCES = ["the cat sits on the road", "a dog", "the small red car is near the big tree ."]


def _refuse_pip(*args, **kwargs):
    raise AssertionError(f"a package install was attempted: {args}")


@pytest.fixture(scope="session")
def parity_record():
    record: dict[str, dict[str, float]] = {}
    yield record
    PARITY_JSON.write_text(json.dumps(record, indent=2, sort_keys=True))


@pytest.fixture(scope="session", params=sorted(SPECS))
def family(request, tmp_path_factory):
    """(name, vlm, independent HF model with eager attention) for one tiny family."""
    from transformers import AutoModelForImageTextToText

    name = request.param
    path = SPECS[name][0](tmp_path_factory.mktemp(f"tiny_{name}"))
    with mock.patch.object(subprocess, "check_call", _refuse_pip):
        vlm = load_vlm(path, device="cpu")
    hf = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
    return name, vlm, hf


def _image(seed: int = 0, size: tuple[int, int] = (48, 40)):
    return random_image(seed, 48).resize(size)


def _hf_kwargs(inputs: VLMInputs) -> dict:
    kw = dict(inputs.model_kwargs)
    kw["input_ids"] = kw.pop("input")
    return kw


def _hf_image_features(name: str, hf, kw: dict) -> torch.Tensor:
    """The HF model's own projector output for the images of ``kw``: ``[n_visual, d_model]``."""
    if name == "llava":
        out = hf.get_image_features(
            pixel_values=kw["pixel_values"],
            vision_feature_layer=hf.config.vision_feature_layer,
            vision_feature_select_strategy=hf.config.vision_feature_select_strategy,
        )
    elif name.startswith("llava_"):  # anyres: packed base + high-res + image_newline
        extra = {"batch_num_images": kw["batch_num_images"]} if "batch_num_images" in kw else {}
        out = hf.get_image_features(
            pixel_values=kw["pixel_values"],
            image_sizes=kw["image_sizes"],
            vision_feature_layer=hf.config.vision_feature_layer,
            vision_feature_select_strategy=hf.config.vision_feature_select_strategy,
            **extra,
        )
    elif name.startswith("qwen"):
        out = hf.get_image_features(kw["pixel_values"], kw["image_grid_thw"])
    elif name == "idefics3":
        out = hf.get_image_features(kw["pixel_values"], kw["pixel_attention_mask"])
    else:
        out = hf.get_image_features(kw["pixel_values"])
    feats = getattr(out, "pooler_output", out)
    if isinstance(feats, (list, tuple)):
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
    return feats.reshape(-1, feats.shape[-1])


def _hf_deepstack_features(name: str, hf, kw: dict) -> list[torch.Tensor]:
    """Qwen3-VL's DeepStack features per injected layer, ``[n_visual, d_model]`` each."""
    if name != "qwen3_vl":
        return []
    out = hf.get_image_features(kw["pixel_values"], kw["image_grid_thw"])
    return [
        torch.cat(list(level)) if isinstance(level, (list, tuple)) else level
        for level in out.deepstack_features
    ]


def test_qwen3_deepstack_is_injected(tmp_path):
    """The DeepStack features are non-zero, so the test above does check the addition."""
    from transformers import AutoModelForImageTextToText

    path = tiny_qwen3_vl_dir(tmp_path)
    hf = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
    vlm = load_vlm(path, device="cpu")
    inputs = vlm.prepare(_image())
    kw = _hf_kwargs(inputs)
    with torch.no_grad():
        deepstack = _hf_deepstack_features("qwen3_vl", hf, kw)
        hidden = hf(**kw, output_hidden_states=True).hidden_states
    assert len(deepstack) == 2 and all(f.abs().max() > 1e-3 for f in deepstack)
    _, cache = vlm.run_with_cache(inputs, ["blocks.1.hook_resid_pre"], full=True)
    pos = inputs.layout.positions
    assert (cache["blocks.1.hook_resid_pre"][0, pos] - hidden[1][0, pos]).abs().max() > 1e-3


def test_logits_match_hf(family, parity_record):
    name, vlm, hf = family
    assert isinstance(vlm, HFVLM) and vlm.family.name == name
    inputs = vlm.prepare(_image(), SPECS[name][1])
    with torch.no_grad():
        ours = vlm.forward(inputs)
        ref = hf(**_hf_kwargs(inputs)).logits
    diff = (ours - ref).abs().max().item()
    parity_record[name] = {"max_abs_logit_diff": diff, "n_visual": inputs.layout.n_visual}
    print(
        f"\n[parity] {name}: max |logit diff| = {diff:.3e} ({inputs.layout.n_visual} visual tokens)"
    )
    assert ours.shape == ref.shape
    assert diff < 1e-4


@pytest.mark.parametrize("n_images", [1, 2])
def test_layer0_is_projector_output_and_hidden_states_match(family, n_images):
    name, vlm, hf = family
    images = [_image(0), _image(1, (32, 56))][:n_images]
    prompt = " the ".join([SPECS[name][1]] * n_images)
    inputs = vlm.prepare(images, prompt)
    kw = _hf_kwargs(inputs)
    with torch.no_grad():
        feats = _hf_image_features(name, hf, kw)
        hidden = hf(**kw, output_hidden_states=True).hidden_states
    layout = inputs.layout
    assert layout.n_visual == feats.shape[0]
    assert int(layout.image_index.max()) == n_images - 1

    acts = capture_image(vlm, images, prompt, hooks=["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(acts.residuals["blocks.0.hook_resid_pre"], feats, atol=1e-5, rtol=0)
    assert torch.equal(acts.layout.positions, layout.positions)

    hooks = [f"blocks.{i}.hook_resid_pre" for i in range(vlm.n_layers)]
    _, cache = vlm.run_with_cache(inputs, hooks, full=True)
    deepstack = _hf_deepstack_features(name, hf, kw)
    for i, hook in enumerate(hooks):
        expected = hidden[i].clone()
        if 0 < i <= len(deepstack):  # Qwen3-VL adds these after HF records hidden_states[i]
            expected[0, layout.positions] += deepstack[i - 1]
        torch.testing.assert_close(cache[hook], expected, atol=1e-5, rtol=0)


def test_layout_grid_coordinates(family):
    name, vlm, _ = family
    layout = vlm.prepare(_image()).layout  # default prompt
    on_grid = layout.rows >= 0
    assert on_grid.any()
    assert int(layout.rows[on_grid].max()) < layout.grid[0]
    assert int(layout.cols[on_grid].max()) < layout.grid[1]
    # every grid cell is covered exactly once by the grid tokens of the image
    cells = set(zip(layout.rows[on_grid].tolist(), layout.cols[on_grid].tolist()))
    assert len(cells) == int(on_grid.sum()) == layout.grid[0] * layout.grid[1]


def test_generic_image_marker_is_accepted(family):
    name, vlm, _ = family
    a = vlm.prepare(_image(), "<image> the cat")
    assert a.layout.n_visual > 0
    assert vlm.prepare(_image()).layout.n_visual == a.layout.n_visual


def test_placeholder_count_mismatch_raises(family):
    name, vlm, _ = family
    two = " ".join([SPECS[name][1]] * 2)
    with pytest.raises(ImageTokenMismatchError, match=r"2 .*placeholder.* 1 image"):
        vlm.prepare(_image(), two)
    with pytest.raises(ImageTokenMismatchError, match=r"0 .*placeholder"):
        vlm.prepare(_image(), "the cat sits")


def test_token_feature_mismatch_wraps_hf_error(family):
    name, vlm, _ = family
    inputs = vlm.prepare(_image(), SPECS[name][1])
    ids = inputs.model_kwargs["input"].clone()
    ids[0, inputs.layout.positions[0]] = vlm.tokenizer.convert_tokens_to_ids("cat")
    broken = VLMInputs(model_kwargs={**inputs.model_kwargs, "input": ids}, layout=inputs.layout)
    with pytest.raises(ImageTokenMismatchError, match="do not match") as info:
        vlm.forward(broken)
    assert isinstance(info.value.__cause__, ValueError)


def test_text_capture_padding_invariant(family):
    name, vlm, hf = family
    hook = f"blocks.{vlm.n_layers - 1}.hook_resid_post"
    runs = [
        list(capture_text(vlm, SENTENCES, [hook], batch_size=bs, padding_side=side))
        for bs, side in [(3, "right"), (3, "left"), (1, "right")]
    ]
    flat = [torch.cat([a.residuals[hook] for a in run]) for run in runs]
    ids = [torch.cat([a.token_id for a in run]) for run in runs]
    assert flat[0].shape[0] == ids[0].shape[0] > 0
    for other, other_ids in zip(flat[1:], ids[1:]):
        assert torch.equal(other_ids, ids[0])
        torch.testing.assert_close(other, flat[0], atol=1e-5, rtol=1e-5)
    # and equal to the HF model on one unpadded sentence
    batch = vlm.tokenize_sentences(SENTENCES[:1])
    with torch.no_grad():
        hidden = hf(input_ids=batch.input_ids, output_hidden_states=True).hidden_states
    keep = batch.keep[0]
    _, cache = vlm.bridge.run_with_cache(batch.input_ids, names_filter=["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"][0, keep], hidden[1][0, keep])


def test_embedding_matrix_is_lm_input_embedding(family):
    _, vlm, hf = family
    emb = vlm.embedding_matrix()
    assert emb.shape[1] == vlm.d_model
    torch.testing.assert_close(emb, hf.get_input_embeddings().weight)
    assert vlm.fingerprint()["d_model"] == vlm.d_model


def test_unsupported_family_lists_supported(tiny_llama_path):
    with pytest.raises(ValueError, match="Supported HF VLM families: .*llava.*qwen2_5_vl"):
        load_vlm(tiny_llama_path, device="cpu")


def test_connector_directory_is_delegated(tmp_path, monkeypatch):
    (tmp_path / "connector_vlm.json").write_text("{}")
    calls = []
    fake = types.ModuleType("tl_latentlens.default")
    fake.load_connector_vlm = lambda path, **kw: calls.append((Path(path), kw)) or "connector"
    monkeypatch.setitem(sys.modules, "tl_latentlens.default", fake)
    assert load_vlm(tmp_path, device="cpu", dtype=torch.float32) == "connector"
    assert calls == [(tmp_path, {"device": "cpu", "dtype": torch.float32})]


def test_default_name_uses_the_registered_loader(monkeypatch):
    calls = []
    fake = types.ModuleType("tl_latentlens.default")
    fake.load_default_vlm = lambda **kw: calls.append(kw) or "default-vlm"
    monkeypatch.setitem(sys.modules, "tl_latentlens.default", fake)
    assert load_vlm("default", device="cpu") == "default-vlm"
    assert calls == [{"device": "cpu", "dtype": torch.float32}]


def test_missing_loader_names_the_fix(monkeypatch):
    monkeypatch.setattr("tl_latentlens.models.load.distributions", lambda: [])
    with pytest.raises(ValueError, match="pip install -e"):
        load_vlm("default")


def test_transformer_lens_patches_are_scoped_to_the_block():
    from transformer_lens.factories import architecture_adapter_factory as factory
    from transformer_lens.factories.architecture_adapter_factory import (
        ArchitectureAdapterFactory,
    )
    from transformer_lens.model_bridge.sources.transformers import helpers
    from transformer_lens.utilities import architectures

    from tl_latentlens.models.tl_compat import (
        Qwen2VLArchitectureAdapter,
        Qwen3VLNoTorchvisionAdapter,
        transformer_lens_patches,
    )

    def state():
        return (
            helpers._ensure_torchvision,
            dict(ArchitectureAdapterFactory._adapters),
            dict(factory.SUPPORTED_ARCHITECTURES),
            set(architectures.MULTIMODAL_ARCHITECTURES),
        )

    before = state()
    assert "Qwen2VLForConditionalGeneration" not in before[1]
    with transformer_lens_patches(), transformer_lens_patches():  # re-entrant
        adapters = ArchitectureAdapterFactory._adapters
        assert adapters["Qwen2VLForConditionalGeneration"] is Qwen2VLArchitectureAdapter
        assert factory.SUPPORTED_ARCHITECTURES["Qwen2VLForConditionalGeneration"] is (
            Qwen2VLArchitectureAdapter
        )
        assert adapters["Qwen3VLForConditionalGeneration"] is Qwen3VLNoTorchvisionAdapter
        assert "Qwen2VLForConditionalGeneration" in architectures.MULTIMODAL_ARCHITECTURES
        assert helpers._ensure_torchvision.__module__ == "tl_latentlens.models.tl_compat"
    assert state() == before
    with pytest.raises(RuntimeError), transformer_lens_patches():
        raise RuntimeError("a failed boot")
    assert state() == before
    assert helpers._ensure_torchvision.__module__ == helpers.__name__


def test_user_adapter_registration_is_kept():
    from transformer_lens.factories.architecture_adapter_factory import (
        ArchitectureAdapterFactory,
    )

    from tl_latentlens.models.tl_compat import transformer_lens_patches

    class Mine:
        pass

    adapters = ArchitectureAdapterFactory._adapters
    old = adapters["Qwen2_5_VLForConditionalGeneration"]
    adapters["Qwen2_5_VLForConditionalGeneration"] = Mine
    try:
        with transformer_lens_patches():
            assert adapters["Qwen2_5_VLForConditionalGeneration"] is Mine
    finally:
        adapters["Qwen2_5_VLForConditionalGeneration"] = old


def test_family_registry():
    from tl_latentlens.models.families import (
        FAMILIES,
        VLMFamily,
        family_for_config,
        register_family,
        supported_model_types,
    )

    assert "qwen3_vl" in supported_model_types() and "llava" in supported_model_types()
    cfg = types.SimpleNamespace(model_type="x", architectures=["Qwen3VLForConditionalGeneration"])
    assert family_for_config(cfg).name == "qwen3_vl"
    with pytest.raises(ValueError, match="already registered"):
        register_family(VLMFamily("llava", "Other"))
    try:
        mine = register_family(VLMFamily("my_vlm", "MyVLMForConditionalGeneration"))
        assert family_for_config(types.SimpleNamespace(model_type="my_vlm")) is mine
    finally:
        FAMILIES.pop("my_vlm", None)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"], indirect=True)
def test_qwen_runs_use_3d_rotary_positions(family):
    name, vlm, _ = family
    inputs = vlm.prepare(_image())
    kw = inputs.model_kwargs
    assert kw["mm_token_type_ids"].sum() == inputs.layout.n_visual
    assert kw["image_grid_thw"].shape == (1, 3)
    with torch.no_grad():
        ours = vlm.forward(inputs)
        assert int(vlm.hf_model.model.rope_deltas.abs().sum()) > 0  # mRoPE positions were built
        flat = torch.arange(kw["input"].shape[1]).unsqueeze(0)
        plain = vlm.forward(inputs, position_ids=flat)  # what a text-only backbone would do
    assert (ours - plain).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"], indirect=True)
def test_qwen_vision_tower_hooks(family):
    name, vlm, hf = family
    inputs = vlm.prepare(_image())
    kw = dict(inputs.model_kwargs)
    ids = kw.pop("input")
    hook = "vision_encoder.blocks.0.mlp.hook_out"
    with torch.no_grad():
        _, cache = vlm.bridge.run_with_cache(ids, names_filter=[hook], **kw)
    n_patches = int(kw["image_grid_thw"].prod())
    assert cache[hook].shape[0] == n_patches


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_load_with_preloaded_hf_model_and_processor(family):
    from transformers import AutoModelForImageTextToText

    _, vlm, hf = family
    path = hf.config._name_or_path
    own = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
    again = load_vlm(path, device="cpu", hf_model=own, processor=vlm.processor)
    assert again.hf_model is own and again.processor is vlm.processor
    inputs = again.prepare(_image())
    with torch.no_grad():
        torch.testing.assert_close(again.forward(inputs), hf(**_hf_kwargs(inputs)).logits)


def test_llava_full_strategy_keeps_cls_off_grid(tmp_path):
    from transformers import AutoModelForImageTextToText

    path = tiny_llava_dir(tmp_path, strategy="full")
    vlm = load_vlm(path, device="cpu")
    hf = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
    inputs = vlm.prepare(_image())
    layout = inputs.layout
    assert layout.n_visual == 17 and layout.grid == (4, 4)
    assert layout.rows[0] == -1 and layout.cols[0] == -1
    assert (layout.rows[1], layout.cols[1]) == (0, 0) and (layout.rows[-1], layout.cols[-1]) == (
        3,
        3,
    )
    with torch.no_grad():
        feats = _hf_image_features("llava", hf, _hf_kwargs(inputs))
        torch.testing.assert_close(vlm.forward(inputs), hf(**_hf_kwargs(inputs)).logits)
    acts = capture_image(vlm, _image(), hooks=["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(acts.residuals["blocks.0.hook_resid_pre"], feats, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"], indirect=True)
def test_anyres_layout_base_grid_then_off_grid(family):
    name, vlm, _ = family
    inputs = vlm.prepare(_image(0, (64, 32)))  # wide: base view + 2 high-res tiles
    layout = inputs.layout
    side = layout.grid[0]
    n_base = side * side
    assert inputs.model_kwargs["pixel_values"].shape[1] == 3  # base + 2 tiles
    assert layout.n_visual > n_base  # high-res patches + image_newline tokens follow
    idx = torch.arange(n_base)
    assert torch.equal(layout.rows[:n_base], idx // side)
    assert torch.equal(layout.cols[:n_base], idx % side)
    assert (layout.rows[n_base:] == -1).all() and (layout.cols[n_base:] == -1).all()
    ids = inputs.model_kwargs["input"][0]
    assert (ids[layout.positions] == vlm.image_token_id).all()
    assert int((ids == vlm.image_token_id).sum()) == layout.n_visual
