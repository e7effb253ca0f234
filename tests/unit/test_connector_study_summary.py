"""connector_study's JSON summary: strict rates, both intervals, levels, chance, hubness."""

from __future__ import annotations

import pandas as pd

from tl_latentlens.apps.connector_study import summarise


def _table() -> pd.DataFrame:
    row: dict[str, float] = {"layer": 8, "n_patches": 300}
    for i, lens in enumerate(("latent", "logit", "embedding")):
        row |= {f"{lens}_top5": 4.0 - i, f"{lens}_top5_lo": 2.3, f"{lens}_top5_hi": 6.86,
                f"{lens}_top5_img_lo": 1.59, f"{lens}_top5_img_hi": 7.07,
                f"{lens}_abstract": 0.5, f"{lens}_global": 0.25}  # fmt: skip
    return pd.DataFrame([row, {**row, "layer": 16, "latent_top5": 2.0}])


def test_summary_carries_both_intervals_and_the_lenses_shuffled_rates():
    hub = pd.DataFrame([{"layer": 8, "top5_share": 43.3, "hubs": "rabbit×27"}])
    chance = {"shuffled": {"latent": {"8": 1.12, "16": 0.85}}, "words": ["animal"]}
    s = summarise(_table(), hub, chance=chance)
    l8, l16 = s["layers"]
    assert l8["latent"]["strict"] == 4.0 and l8["latent"]["ci95"] == [2.3, 6.86]
    assert l8["latent"]["ci95_images"] == [1.59, 7.07]
    assert l8["latent"]["shuffled"] == 1.12 and l16["latent"]["shuffled"] == 0.85
    assert l8["logit"]["shuffled"] is None  # the report had no rate for that lens
    assert l8["hub_top5_share"] == 43.3 and "hub_top5_share" not in l16
    assert s["mean_strict"] == 3.0 and s["best_strict"] == 4.0 and s["max_hub_share"] == 43.3


def test_summary_without_a_chance_level():
    s = summarise(_table(), pd.DataFrame(columns=["layer", "top5_share", "hubs"]))
    assert all(x[lens]["shuffled"] is None for x in s["layers"] for lens in ("latent", "logit"))
