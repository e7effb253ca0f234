"""The demo's index page shows the per-layer table and the hubness table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tl_latentlens.apps.demo import _hubness_table, _write_index
from tl_latentlens.evaluate.report import format_chance


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
    assert "Chance level" not in text  # a study without one (an LLM judge) says nothing


def test_index_and_output_give_the_chance_level(tmp_path):
    chance = {"words": ["animal", "device"], "strict": 58.67, "per_layer": {"0": 58.67}, "n": 4}
    line = format_chance(chance)
    assert "animal, device" in line and "59 %" in line and "2 bank words" in line
    assert format_chance(None) == "" and format_chance({"words": []}) == ""
    both = format_chance({**chance, "shuffled": {"latent": {"0": 1.25, "8": 3.0}}})
    assert both.splitlines()[0] == line and "0: 1.2, 8: 3.0" in both.splitlines()[1]
    table = pd.DataFrame([{"layer": 0, "n_patches": 4, "latent_top5": 25.0}])
    page = _write_index(
        tmp_path, [], tmp_path / "leap.png", table, {"total_s": 1.0}, _Bank(), None, chance
    )
    assert "Chance level" in page.read_text(encoding="utf-8")


def test_default_bank_is_built_by_the_encoder_and_opened_for_the_model(
    tiny_vlm, tmp_path, monkeypatch
):
    """The demo builds its bank with a bfloat16 copy of the model on a CPU: ``encoder`` runs
    the forward passes (recorded in the manifest), only when the bank is missing, and the bank
    opens for the float32 model (dtype-independent weight digests)."""
    import copy

    import torch

    from tiny_models import WORDS
    from tl_latentlens.lens import default_bank as demo
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


def test_default_bank_recalibrates_for_another_connector(tiny_vlm, tmp_path, monkeypatch):
    """Routes are proven for the visual tokens they were calibrated on: the default bank is
    calibrated again when they were calibrated under an older policy or for another model's
    visual tokens (a new connector on the same language model), and only then."""
    import torch

    from tiny_models import WORDS
    from tl_latentlens.bank.search.calibrate import CALIBRATION_POLICY, calibrate_bank
    from tl_latentlens.lens import default_bank as demo
    from tl_latentlens.models.connector import Connector, ConnectorVLM

    monkeypatch.setenv("TL_LATENTLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "default_bank_dir", lambda vlm, n, m: tmp_path / "bank")
    monkeypatch.setattr(
        demo, "default_corpus", lambda n: [" ".join(WORDS[i : i + 6]) for i in range(n)]
    )
    monkeypatch.setattr(demo, "CALIBRATE_FROM", 10)
    calibrated_for = []

    def fake_calibration(bank, vlm, n):
        # routes on sample queries, recorded as calibrated for ``vlm`` (what the real one does)
        rng = np.random.default_rng(0)
        samples = {h: rng.standard_normal((64, vlm.d_model)).astype(np.float32) for h in bank.hooks}
        held = {"held-out": {h: q[:8] for h, q in samples.items()}}
        calibrate_bank(bank.root, samples=samples, prove_on=held,
                       queries_from=vlm.visual_fingerprint(), list_len=16, progress=False)  # fmt: skip
        calibrated_for.append(vlm.name)

    bank = demo.default_bank(tiny_vlm, 20, 20, calibrate=fake_calibration)
    assert calibrated_for == [tiny_vlm.name]
    routes = [bank.hook_info(h)["routes"] for h in bank.hooks]
    assert {r["queries_from"] for r in routes} == {tiny_vlm.visual_fingerprint()}
    assert {r["policy"] for r in routes} == {CALIBRATION_POLICY}
    demo.default_bank(tiny_vlm, 20, 20, calibrate=fake_calibration)  # calibrated: as it is
    assert calibrated_for == [tiny_vlm.name]
    torch.manual_seed(5)
    conn = Connector(tiny_vlm.encoder.d_vision, tiny_vlm.d_model)
    retrained = ConnectorVLM(tiny_vlm.bridge, tiny_vlm.encoder, conn, name="retrained")
    bank = demo.default_bank(retrained, 20, 20, calibrate=fake_calibration)
    assert calibrated_for == [tiny_vlm.name, "retrained"]
    assert {bank.hook_info(h)["routes"]["queries_from"] for h in bank.hooks} == {
        retrained.visual_fingerprint()
    }
