"""The ``evaluate`` sub-command's arguments, and the study on the tiny real model + bank."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_evaluate_study import FakeLens, images
from test_evaluate_wordnet import TINY

from fixtures.wordnet_files import write_wordnet
from tiny_models import WORDS
from tl_latentlens.apps.cli import build_parser, main
from tl_latentlens.apps.evaluate import build_judge, parse_layers
from tl_latentlens.evaluate import EvalConfig, EvalImage, MaskJudge, run_study
from tl_latentlens.evaluate.llm_judge import LLMJudge
from tl_latentlens.wordnet import WordNet


def parse(*argv):
    return build_parser().parse_args(["evaluate", *argv])


def test_arguments_and_defaults():
    a = parse("--model", "default", "--bank", "b", "--out", "o")
    assert (a.k, a.patches_per_layer, a.seed, a.judge, a.images) == (5, 100, 0, "mask", ["default"])
    assert a.func.__name__ == "run_evaluate" and not a.resume and a.protocol == "default"
    a = parse("--model", "m", "--bank", "b", "--images", "x.png", "dir/", "--judge", "llm", "--layers", "0", "4",
              "-k", "3", "--patches-per-layer", "20", "--seed", "7", "--out", "o", "--resume", "--protocol", "paper")  # fmt: skip
    assert a.images == ["x.png", "dir/"] and a.layers == ["0", "4"] and a.k == 3 and a.resume
    with pytest.raises(SystemExit):
        parse("--model", "m", "--judge", "oracle", "--out", "o")
    with pytest.raises(SystemExit):
        parse("--model", "m")  # --out is required


def test_parse_layers():
    assert parse_layers(None, 30) is None and parse_layers(["bank"], 30) is None
    assert parse_layers(["0", "8"], 30) == (0, 8)
    assert parse_layers(["paper"], 30)[:4] == (0, 1, 2, 4)
    with pytest.raises(ValueError, match="integers"):
        parse_layers(["zero"], 30)


def test_build_judge(monkeypatch):
    a = parse("--model", "m", "--bank", "b", "--out", "o", "--lenient")
    assert isinstance(build_judge(a), MaskJudge) and build_judge(a).rule.part_meronyms
    monkeypatch.setenv("TL_LATENTLENS_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("TL_LATENTLENS_JUDGE_MODEL", "env-model")
    j = build_judge(
        parse("--model", "m", "--bank", "b", "--out", "o", "--judge", "llm", "--judge-vision", "no")
    )
    assert isinstance(j, LLMJudge) and j.config.model == "env-model" and j.config.vision is False
    monkeypatch.delenv("TL_LATENTLENS_JUDGE_MODEL")
    with pytest.raises(ValueError, match="MODEL"):
        build_judge(parse("--model", "m", "--bank", "b", "--out", "o", "--judge", "llm"))


def test_errors_and_aggregate_only(tmp_path, capsys):
    assert main(["evaluate", "--out", str(tmp_path / "o")]) == 2
    assert "--model and --bank" in capsys.readouterr().err
    assert main(["evaluate", "--aggregate-only", "--out", str(tmp_path / "none")]) == 2
    wn = WordNet(write_wordnet(tmp_path / "wn", TINY))
    res = run_study(
        FakeLens(),
        images(),
        MaskJudge(wordnet=wn),
        EvalConfig(k=3, patches_per_layer=4, plots=False),
        tmp_path / "s",
    )
    (tmp_path / "s" / "table.csv").unlink()
    assert main(["evaluate", "--aggregate-only", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "LatentLens top3 / @1" in out and (tmp_path / "s" / "table.csv").is_file()
    assert len(out.splitlines()) >= len(res.table) + 1


def test_study_on_tiny_model_and_bank(tiny_vlm, tmp_path):
    """The real LatentLens, bank, Explanation, leap table and plots, on the tiny random model."""
    from tl_latentlens.bank import build_bank
    from tl_latentlens.lens import LatentLens

    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(WORDS, rng.integers(3, 8))) for _ in range(30)]
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    bank = build_bank(tiny_vlm, sents, tmp_path / "bank", hooks, dtype="float32", progress=False)
    lens = LatentLens(tiny_vlm, bank)
    labels = ["dog", "cat", "animal"]
    ims = [
        EvalImage(
            id=f"t{i}", image=Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), source="t",
            patch_labels=[[labels[(r * 4 + c + i) % 3] for c in range(4)] for r in range(4)],
        )
        for i in range(3)
    ]  # fmt: skip
    judge = MaskJudge(wordnet=WordNet(write_wordnet(tmp_path / "wn", TINY)))
    cfg = EvalConfig(k=2, patches_per_layer=4, seed=0, method="exact")
    res = run_study(lens, ims, judge, cfg, tmp_path / "s")
    assert list(res.table["layer"]) == [0, 2, 3] and (res.table["n_patches"] == 4).all()
    assert {"leap.png", "layers.png", "report.json"} <= set(res.files)
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["model"]["embedding_sha256"] == tiny_vlm.fingerprint()["embedding_sha256"]
    assert report["bank"]["path"] == str(tmp_path / "bank")
    # each image's explanation only holds its sampled patches
    for exp in res.explanations:
        assert all(len(p.latent) == len(p.logit) == len(p.embedding) == 2 for p in exp.patches)
    assert sum(len(e.patches) for e in res.explanations) == 3 * 4
