"""The demo's index page shows the per-layer table and the hubness table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tl_latentlens.apps.demo import _hubness_table, _write_index


class _Bank:
    root = Path("bank")
    hooks = ("blocks.0.hook_resid_pre",)

    def n_entries(self) -> int:
        return 3


def test_index_has_levels_and_hubness(tmp_path):
    report = {"hubness": {"latent": [{"layer": 0, "slots": 4, "distinct": 2,
                                      "max_k_occurrence": 3, "top5_share": 100.0,
                                      "hubs": "dreidel×3, cat×1"}]}}  # fmt: skip
    hubs = _hubness_table(report)
    assert list(hubs["layer"]) == [0] and hubs.iloc[0]["top5_share"] == 100.0
    assert _hubness_table({}).empty
    table = pd.DataFrame([{"layer": 0, "n_patches": 4, "latent_top5": 25.0}])
    page = _write_index(tmp_path, [], tmp_path / "leap.png", table, {"total_s": 1.0}, _Bank(), hubs)
    text = page.read_text(encoding="utf-8")
    assert "Per-layer table" in text and "Hubness" in text and "dreidel×3" in text
    assert "whole word" in text


def test_default_bank_is_built_by_the_encoder_and_opened_for_the_model(
    tiny_vlm, tmp_path, monkeypatch
):
    """The demo builds its bank with a bfloat16 copy of the model on a CPU: ``encoder`` runs
    the forward passes (recorded in the manifest), only when the bank is missing, and the bank
    opens for the float32 model (dtype-independent weight digests)."""
    import copy

    import torch

    from tiny_models import WORDS
    from tl_latentlens.apps import demo
    from tl_latentlens.models.connector import ConnectorVLM

    monkeypatch.setenv("TL_LATENTLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "default_bank_dir", lambda vlm, n, m: tmp_path / "bank")
    monkeypatch.setattr(
        demo, "default_corpus", lambda n: [" ".join(WORDS[i : i + 6]) for i in range(n)]
    )
    calls = []

    def encoder():
        calls.append(1)
        bridge = copy.deepcopy(tiny_vlm.bridge).to(torch.bfloat16)
        return ConnectorVLM(bridge, tiny_vlm.encoder, tiny_vlm.connector, name=tiny_vlm.name)

    bank = demo.default_bank(tiny_vlm, 20, 20, encoder)
    assert calls == [1] and bank.manifest.build.forward_dtype == "bfloat16"
    bank.check_model(tiny_vlm)
    demo.default_bank(tiny_vlm, 20, 20, encoder)  # built: opened, not built again
    assert calls == [1]
