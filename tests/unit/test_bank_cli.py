"""The build-bank sub-command (model loading replaced by the tiny model)."""

from __future__ import annotations

import argparse

from tl_latentlens.apps import build_bank as bank_cli
from tl_latentlens.apps.build_bank import add_build_bank_parser, run_build_bank
from tl_latentlens.bank import Bank


def test_build_bank_cli(tiny_vlm, tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the red car\na dog near the tree\n")
    loaded = []

    def load_vlm(name, device=None, dtype=None):
        loaded.append((name, device, dtype))
        return tiny_vlm

    monkeypatch.setattr(bank_cli, "load_vlm", load_vlm)
    parser = argparse.ArgumentParser(prog="tl-latentlens")
    add_build_bank_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "bank"
    args = parser.parse_args(
        ["build-bank", str(corpus), str(out), "--model", "tiny", "--layers", "0", "3",
         "--max-per-token", "none", "--dtype", "float32", "--no-progress"]
    )  # fmt: skip
    assert args.func is run_build_bank and args.max_per_token is None
    assert args.func(args) == 0
    assert loaded == [("tiny", None, __import__("torch").float32)]
    bank = Bank.open(out, tiny_vlm)
    assert bank.layers == {"blocks.0.hook_resid_pre": 0, "blocks.2.hook_resid_post": 3}
    assert bank.dtype == "float32"
    assert bank.manifest.build.forward_dtype == "float32"
    assert bank.manifest.build.content["max_per_token"] is None
