"""Every corpus source kind reads the same sentences."""

from __future__ import annotations

import csv
import gzip
import json

import pytest

from tl_latentlens.bank import CorpusError, describe_corpus, iter_corpus

SENTS = ["a red car", "the cat, sitting", 'quotes " and , commas', "ünïcode ✓"]


def test_txt_and_gz(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("\n".join(SENTS[:2] + ["", "   "] + SENTS[2:]) + "\r\n", encoding="utf-8")
    assert list(iter_corpus(p)) == SENTS
    assert list(iter_corpus(str(p))) == SENTS
    g = tmp_path / "c.txt.gz"
    g.write_bytes(gzip.compress("\n".join(SENTS).encode("utf-8")))
    assert list(iter_corpus(g)) == SENTS
    assert describe_corpus(p)["kind"] == "txt"


def test_jsonl_custom_column(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(
        "\n".join(json.dumps({"caption": s, "id": i}) for i, s in enumerate(SENTS)) + "\n\n"
    )
    assert list(iter_corpus(p, text_column="caption")) == SENTS
    with pytest.raises(CorpusError, match="no 'text' field"):
        list(iter_corpus(p))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(CorpusError, match=":2: invalid JSON"):
        list(iter_corpus(bad))


@pytest.mark.parametrize("suffix,delim", [(".csv", ","), (".tsv", "\t")])
def test_csv_tsv(tmp_path, suffix, delim):
    p = tmp_path / f"c{suffix}"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delim)
        w.writerow(["id", "text"])
        for i, s in enumerate(SENTS):
            w.writerow([i, s])
    assert list(iter_corpus(p)) == SENTS
    with pytest.raises(CorpusError, match="no 'caption' column"):
        list(iter_corpus(p, text_column="caption"))


def test_hf_datasets(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": SENTS, "n": list(range(4))})
    assert list(iter_corpus(ds)) == SENTS
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    assert list(iter_corpus(dd, split="test")) == SENTS[:1]
    with pytest.raises(CorpusError, match="no split 'dev'"):
        list(iter_corpus(dd, split="dev"))
    assert list(iter_corpus(ds.to_iterable_dataset())) == SENTS
    ds.save_to_disk(str(tmp_path / "saved"))
    assert list(iter_corpus(tmp_path / "saved")) == SENTS
    with pytest.raises(CorpusError, match="no 'caption' column"):
        list(iter_corpus(ds, text_column="caption"))
    calls = []

    def fake_load(name, split, streaming):
        calls.append((name, split, streaming))
        return ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert list(iter_corpus("someone/captions", split="validation")) == SENTS
    assert calls == [("someone/captions", "validation", True)]
    assert describe_corpus("someone/captions")["kind"] == "hf_hub"


def test_iterables_and_errors(tmp_path):
    assert list(iter_corpus(SENTS)) == SENTS
    assert list(iter_corpus(s for s in SENTS + [""])) == SENTS
    assert list(iter_corpus(("x", None, "y"))) == ["x", "y"]
    with pytest.raises(CorpusError, match="item 1 is a int"):
        list(iter_corpus(["ok", 3]))
    with pytest.raises(CorpusError, match="does not exist"):
        list(iter_corpus(tmp_path / "missing.txt"))
    with pytest.raises(CorpusError, match="does not exist"):
        list(iter_corpus("captions.jsonl"))  # a relative file name, not a hub dataset
    with pytest.raises(CorpusError, match="unknown extension"):
        (tmp_path / "c.parquet").write_bytes(b"x")
        list(iter_corpus(tmp_path / "c.parquet"))
    with pytest.raises(CorpusError, match="not bytes"):
        list(iter_corpus(b"abc"))
    with pytest.raises(CorpusError, match="cannot read"):
        list(iter_corpus(42))


def test_build_bank_from_each_source_gives_the_same_bank(tiny_vlm, tmp_path):
    from tl_latentlens.bank import build_bank

    sents = ["the red car", "a dog near the tree", "the cat sits"]
    txt = tmp_path / "c.txt"
    txt.write_text("\n".join(sents))
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"text": s}) for s in sents))
    banks = [
        build_bank(tiny_vlm, src, tmp_path / f"b{i}", ["blocks.1.hook_resid_post"], progress=False)
        for i, src in enumerate([sents, txt, jl, iter(sents)])
    ]
    fps = {b.manifest.corpus_fingerprint for b in banks}
    assert len(fps) == 1
    kinds = [b.manifest.corpus["kind"] for b in banks]
    assert kinds == ["iterable", "txt", "jsonl", "iterable"]
    ref = banks[0].vectors("blocks.1.hook_resid_post")
    for b in banks[1:]:
        assert (b.vectors("blocks.1.hook_resid_post") == ref).all()
