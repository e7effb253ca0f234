"""Devices and number formats (:mod:`tl_latentlens.devices`): the measured precision choice with
its probe faked both ways, one name per physical device, full-float32 products, and tensors
made where the module they meet lives (the ``meta`` device stands in for a GPU)."""

from __future__ import annotations

import json

import pytest
import torch

from tl_latentlens import devices
from tl_latentlens.lens import baselines


@pytest.fixture
def probe_cache(tmp_path, monkeypatch):
    """A fresh cache folder and an empty in-process memo."""
    monkeypatch.setenv("TL_LATENTLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(devices, "_SEEN", {})
    return tmp_path


def fake_probe(monkeypatch, t_float32: float, t_bfloat16: float | None) -> list[torch.dtype]:
    calls: list[torch.dtype] = []

    def timed(dev, dtype, reps=3):
        calls.append(dtype)
        return t_float32 if dtype == torch.float32 else t_bfloat16

    monkeypatch.setattr(devices, "_time_product", timed)
    return calls


def test_slow_bfloat16_keeps_float32(probe_cache, monkeypatch, caplog):
    """An AVX2-only CPU: bfloat16 emulated, dozens of times slower."""
    fake_probe(monkeypatch, 0.002, 0.1)
    with caplog.at_level("INFO", logger="tl_latentlens.devices"):
        choice = devices.fast_dtype("cpu")
    assert choice.dtype == torch.float32 and choice.speedup == pytest.approx(0.02)
    assert "0.02x" in choice.reason and "float32" in caplog.text


def test_fast_bfloat16_is_chosen(probe_cache, monkeypatch):
    """A CPU with AVX512-BF16 or AMX: bfloat16 faster by more than the margin."""
    fake_probe(monkeypatch, 0.004, 0.002)
    assert devices.fast_dtype("cpu").dtype == torch.bfloat16


@pytest.mark.parametrize("t16", [0.0019, None])
def test_a_marginal_or_failing_bfloat16_keeps_float32(probe_cache, monkeypatch, t16):
    fake_probe(monkeypatch, 0.002, t16)  # 1.05x: within the noise of a probe
    assert devices.fast_dtype("cpu").dtype == torch.float32


def test_the_probe_is_measured_once_per_machine(probe_cache, monkeypatch):
    calls = fake_probe(monkeypatch, 0.004, 0.002)
    first = devices.fast_dtype("cpu")
    monkeypatch.setattr(devices, "_SEEN", {})  # a new process reads the cached file
    assert devices.fast_dtype("cpu") == first and len(calls) == 2
    files = list((probe_cache / "precision").glob("cpu-*.json"))
    assert len(files) == 1 and devices.machine_id() in files[0].name
    assert json.loads(files[0].read_text())["dtype_name"] == "bfloat16"
    files[0].write_text("{torn")  # a torn or foreign file is measured again
    monkeypatch.setattr(devices, "_SEEN", {})
    assert devices.fast_dtype("cpu") == first and len(calls) == 4
    assert devices.fast_dtype("cpu", cache=False) == first and len(calls) == 6


@pytest.mark.parametrize("supported", [True, False])
def test_cuda_decides_by_capability_without_a_probe(monkeypatch, supported):
    monkeypatch.setattr(devices, "_time_product", lambda *a, **k: pytest.fail("probed a GPU"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Fake GPU")
    choice = devices.fast_dtype("cuda:0")
    assert choice.dtype == (torch.bfloat16 if supported else torch.float32)
    assert "Fake GPU" in choice.reason


def test_the_real_probe_runs_here(probe_cache):
    """Whatever this CPU is, the probe measures both formats and gives a reason."""
    choice = devices.fast_dtype("cpu", cache=False)
    assert choice.dtype in (torch.float32, torch.bfloat16) and choice.speedup is not None


def test_embedding_lens_scans_in_bfloat16_only_where_it_is_faster(monkeypatch):
    for name, want in (("bfloat16", True), ("float32", False)):
        choice = devices.PrecisionChoice(name, "faked")
        monkeypatch.setattr(baselines, "fast_dtype", lambda device, c=choice: c)
        assert baselines._bf16_is_fast(torch.device("cpu")) is want
    assert baselines._bf16_is_fast(torch.device("meta")) is False  # GPUs scan in float32


@pytest.mark.parametrize("available", [True, False])
def test_no_device_means_cuda_when_present(monkeypatch, available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert devices.resolve_device(None).type == ("cuda" if available else "cpu")
    assert devices.resolve_device("cpu").type == "cpu"


def test_one_key_per_physical_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert devices.device_key("cuda") == devices.device_key("cuda:1") == "cuda:1"
    assert devices.device_key("cuda:0") == "cuda:0"
    assert devices.device_key(None) == "cuda:1"
    assert devices.device_key("cpu") == "cpu"
    assert devices.free_device_bytes("cpu") is None


@pytest.mark.parametrize("user", ["tf32", "ieee"])
def test_full_float32_turns_tf32_off_inside_and_restores_it(user):
    """TF32 set by a user or a library (or torch's own default for convolutions) is off inside
    and back after (no CUDA needed: only the global settings are read and written)."""
    knobs = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
    before = [k.fp32_precision for k in knobs]
    for k in knobs:
        k.fp32_precision = user
    try:
        with devices.full_float32():
            assert [k.fp32_precision for k in knobs] == ["ieee", "ieee"]
        assert [k.fp32_precision for k in knobs] == [user, user]
    finally:
        for k, b in zip(knobs, before):
            k.fp32_precision = b


def test_the_visual_forward_runs_without_tf32(tiny_vlm):
    """The encoder (a convolution: cuDNN's TF32 by default on a GPU) runs inside
    :func:`~tl_latentlens.devices.full_float32`."""
    from tiny_models import random_image

    seen = []
    handle = tiny_vlm.encoder.register_forward_pre_hook(
        lambda mod, args: seen.append(torch.backends.cudnn.conv.fp32_precision)
    )
    try:
        tiny_vlm.run_with_cache(tiny_vlm.prepare(random_image()), ["blocks.0.hook_resid_pre"])
    finally:
        handle.remove()
    assert seen == ["ieee"]


def test_connector_probe_is_made_where_the_connector_is(tiny_bridge):
    """A connector already moved to a device (``meta`` here, a GPU for users) is probed there:
    a CPU probe used to fail with "Tensor on device meta is not on the expected device cpu"."""
    from tiny_models import TinyEncoder
    from tl_latentlens.models.connector import Connector, ConnectorVLM

    enc = TinyEncoder()
    conn = Connector(enc.d_vision, tiny_bridge.cfg.d_model).to("meta")
    vlm = ConnectorVLM(tiny_bridge, enc.to("meta"), conn)
    assert next(vlm.connector.parameters()).device.type == "meta"
    out = vlm.connector(torch.zeros(1, 2, enc.d_vision, device="meta"))
    assert out.shape == (1, 2, tiny_bridge.cfg.d_model)
