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
