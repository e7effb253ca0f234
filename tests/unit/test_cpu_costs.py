"""What the CPU-cost savings of issue 24 keep the same: the residuals-only capture path, the
demo's forward-pass dtype decision, and ``explain_many`` against ``explain``."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tiny_models import random_image
from tl_latentlens import capture
from tl_latentlens.capture import capture_image, capture_text, residuals_only

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = ["the red cat sits on the road", "a dog", "the small blue boat flies over the city ."]


def _every_layer(vlm) -> list[str]:
    return ["blocks.0.hook_resid_pre"] + [
        f"blocks.{i}.hook_resid_post" for i in range(vlm.n_layers)
    ]


@contextlib.contextmanager
def _unembed_calls(bridge):
    calls = []
    with bridge.hooks(fwd_hooks=[("unembed.hook_in", lambda t, hook: calls.append(1))]):
        yield calls


def _old_path(monkeypatch) -> None:
    """The capture path before the saving: every pass runs the final norm and unembedding."""
    monkeypatch.setattr(capture, "residuals_only", lambda bridge: contextlib.nullcontext())


def test_text_capture_skips_the_unembedding_and_keeps_the_residuals(tiny_vlm, monkeypatch):
    hooks = _every_layer(tiny_vlm)  # the last layer: stop_at_layer cannot stop early
    with _unembed_calls(tiny_vlm.bridge) as calls:
        new = list(capture_text(tiny_vlm, SENTENCES, hooks, batch_size=2))
    assert calls == []
    with monkeypatch.context() as m:
        _old_path(m)
        with _unembed_calls(tiny_vlm.bridge) as calls:
            old = list(capture_text(tiny_vlm, SENTENCES, hooks, batch_size=2))
        assert len(calls) == 2  # one per batch: the old path did run it
    for a, b in zip(new, old):
        assert torch.equal(a.sentence, b.sentence) and torch.equal(a.token_id, b.token_id)
        for h in hooks:
            assert torch.equal(a.residuals[h], b.residuals[h]), h


def test_image_capture_skips_the_unembedding_and_keeps_the_residuals(tiny_vlm, monkeypatch):
    hooks = _every_layer(tiny_vlm)
    img = random_image(7)
    with _unembed_calls(tiny_vlm.bridge) as calls:
        new = capture_image(tiny_vlm, img, hooks=hooks)
    assert calls == []
    with monkeypatch.context() as m:
        _old_path(m)
        old = capture_image(tiny_vlm, img, hooks=hooks)
    for h in hooks:
        assert torch.equal(new.residuals[h], old.residuals[h]), h


def test_residuals_only_leaves_the_bridge_as_it_was(tiny_vlm):
    ids = tiny_vlm.tokenize_sentences(SENTENCES[:1]).input_ids
    with torch.no_grad():
        before = tiny_vlm.bridge(ids)
        with residuals_only(tiny_vlm.bridge):
            _, cache = tiny_vlm.bridge.run_with_cache(
                ids, names_filter=["blocks.2.hook_resid_post"]
            )
        after = tiny_vlm.bridge(ids)
    assert "blocks.2.hook_resid_post" in cache
    assert torch.equal(before, after)  # the stop hook is gone, the logits run again


# ---- the demo's forward-pass dtype -----------------------------------------------------------
class _Stop(Exception):
    pass


@pytest.mark.parametrize("fastest", ["float32", "bfloat16"])
def test_demo_builds_its_bank_in_the_measured_dtype(tiny_vlm, tmp_path, monkeypatch, fastest):
    """``fast_dtype`` decides (faked both ways): a float32 choice builds with the model itself
    (no second copy), a bfloat16 choice with a bfloat16 copy; the reason reaches the record."""
    from tl_latentlens.apps import demo
    from tl_latentlens.devices import PrecisionChoice
    from tl_latentlens.lens import default_bank

    choice = PrecisionChoice(fastest, f"cpu probe: faked {fastest}")
    monkeypatch.setattr(default_bank, "fast_dtype", lambda device: choice)
    loads: list = []

    def load_vlm(model, device=None, dtype=torch.float32):
        loads.append(dtype)
        return tiny_vlm

    monkeypatch.setattr(demo, "load_vlm", load_vlm)
    seen = {}

    def default_bank(vlm, n, m, encoder, calibrate=None):
        seen["encoder"] = encoder
        raise _Stop

    monkeypatch.setattr(demo, "default_bank", default_bank)
    with pytest.raises(_Stop):
        demo.run_demo(demo.DemoConfig(out=tmp_path / "out", quick=True))
    if fastest == "float32":
        assert seen["encoder"] is None
    else:
        assert seen["encoder"] is not None
        seen["encoder"]()  # called only when the bank must be built
    assert loads == [torch.float32] + ([torch.bfloat16] if fastest == "bfloat16" else [])
    assert demo.bank_precision(tiny_vlm).reason == choice.reason


def test_bank_dtype_flag_overrides_the_probe(tiny_vlm, monkeypatch):
    from tl_latentlens.apps import demo
    from tl_latentlens.lens import default_bank

    monkeypatch.setattr(default_bank, "fast_dtype", lambda device: pytest.fail("not needed"))
    choice = demo.bank_precision(tiny_vlm, "bfloat16")
    assert choice.dtype == torch.bfloat16 and "requested" in choice.reason
    cfg = demo.DemoConfig(bank_dtype="float32")
    assert demo.bank_encoder(cfg, tiny_vlm, demo.bank_precision(tiny_vlm, "float32")) is None


def test_precision_reaches_the_record_and_the_index(tmp_path):
    from pathlib import Path
    from types import SimpleNamespace

    from tl_latentlens.apps.demo import _write_index, format_precision, precision_record
    from tl_latentlens.devices import PrecisionChoice

    bank = SimpleNamespace(
        root=Path("bank"),
        hooks=("blocks.0.hook_resid_pre",),
        n_entries=lambda: 3,
        manifest=SimpleNamespace(build=SimpleNamespace(forward_dtype="float32")),
    )
    why = "cpu probe: bfloat16 0.02x the speed of float32 (AMD EPYC, torch 2)"
    record = precision_record(PrecisionChoice("float32", why), bank)
    assert record == {"bank_forward_dtype": "float32", "choice": "float32", "reason": why}
    line = format_precision(record)
    assert "float32" in line and "0.02x" in line
    page = _write_index(tmp_path, [], tmp_path / "leap.png", None, {}, bank, None, None, record)
    assert "0.02x" in page.read_text(encoding="utf-8")
    assert format_precision(precision_record(None, bank)) == "bank forward passes: float32"
