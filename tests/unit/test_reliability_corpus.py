"""Corpus data is never changed or dropped silently, and bad files get clear errors
(issue 14, items 6 and 7)."""

from __future__ import annotations

import gzip
import logging

import pytest

from tl_latentlens.bank import CorpusError, build_bank, iter_corpus
from tl_latentlens.bank.build.sources import CorpusStats

HOOKS = ["blocks.0.hook_resid_pre"]


def read(path, **kw):
    stats = CorpusStats()
    return list(iter_corpus(path, stats=stats, **kw)), stats.skipped


@pytest.mark.parametrize("gz", [False, True])
def test_bom_is_not_part_of_the_first_sentence(tmp_path, gz):
    data = "\ufeffthe cat\nthe dog\n".encode()
    path = tmp_path / ("c.txt.gz" if gz else "c.txt")
    path.write_bytes(gzip.compress(data) if gz else data)
    assert read(path)[0] == ["the cat", "the dog"]


def test_bom_in_jsonl_and_csv(tmp_path):
    (tmp_path / "c.jsonl").write_bytes('\ufeff{"text": "a cat"}\n'.encode())
    (tmp_path / "c.csv").write_bytes("\ufefftext,id\na cat,1\n".encode())
    assert read(tmp_path / "c.jsonl")[0] == ["a cat"]
    assert read(tmp_path / "c.csv")[0] == ["a cat"]


def test_lone_carriage_return_is_whitespace_not_a_line_break(tmp_path):
    (tmp_path / "c.txt").write_bytes(b"the red\rcar\r\nthe dog\n")
    assert read(tmp_path / "c.txt")[0] == ["the red car", "the dog"]
    (tmp_path / "c.jsonl").write_bytes(b'{"text":\r "a cat"}\n')  # \r is JSON whitespace
    assert read(tmp_path / "c.jsonl")[0] == ["a cat"]
    (tmp_path / "c.csv").write_bytes(b"text\r\nthe red\rcar\r\n")
    assert read(tmp_path / "c.csv")[0] == ["the red car"]


def test_skipped_items_are_counted(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "a cat"}\n{"text": null}\n{"text": "  "}\n')
    assert read(tmp_path / "c.jsonl") == (["a cat"], {"null": 1, "empty": 1})
    (tmp_path / "c.csv").write_text("id,text\n1,a cat\n2\n3,\n")
    assert read(tmp_path / "c.csv") == (["a cat"], {"short_row": 1, "empty": 1})
    assert read(["a", None, ""]) == (["a"], {"null": 1, "empty": 1})


def test_invalid_utf8_names_path_and_line(tmp_path):
    (tmp_path / "c.txt").write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(CorpusError, match=r"c\.txt:3: invalid UTF-8"):
        read(tmp_path / "c.txt")
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xc3("}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: invalid UTF-8"):
        read(tmp_path / "c.jsonl")


def test_truncated_gzip_is_a_clear_error(tmp_path):
    data = gzip.compress(("the cat sits\n" * 2000).encode())
    (tmp_path / "c.txt.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=r"c\.txt\.gz: the gzip data is truncated or corrupt"):
        read(tmp_path / "c.txt.gz")
    (tmp_path / "d.txt.gz").write_bytes(b"not gzip at all\n")
    with pytest.raises(CorpusError, match="gzip"):
        read(tmp_path / "d.txt.gz")


def test_counts_reach_the_manifest_and_the_log(tiny_vlm, tmp_path, caplog):
    long = " ".join(["cat"] * 30)
    (tmp_path / "c.jsonl").write_text(
        '{"text": "the dog"}\n{"text": null}\n{"text": "' + long + '"}\n{"text": ""}\n'
    )
    with caplog.at_level(logging.INFO, logger="tl_latentlens.bank"):
        bank = build_bank(
            tiny_vlm, tmp_path / "c.jsonl", tmp_path / "b", HOOKS, max_tokens=8, progress=False
        )
    corpus = bank.manifest.corpus
    assert corpus["n_sentences"] == 2
    assert corpus["n_truncated"] == 1
    assert corpus["skipped"] == {"null": 1, "empty": 1}
    assert "1 cut to max_tokens=8, skipped: 1 empty, 1 null" in caplog.text
    # a sentence of exactly max_tokens tokens is not counted as cut
    exact = " ".join(["cat"] * 7)  # + BOS = 8 tokens
    bank = build_bank(tiny_vlm, [exact], tmp_path / "e", HOOKS, max_tokens=8, progress=False)
    assert bank.manifest.corpus["n_truncated"] == 0
    assert len(bank.sentence_token_ids(0)) == 8
