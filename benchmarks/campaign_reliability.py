"""Reliability campaign of issue 14 on the tiny model: prints the counts of the closing note.

    .venv/bin/python benchmarks/campaign_reliability.py [--random-kills 12]

* kills: builds SIGKILLed at chosen points (the unit tests' kill points) and at random times,
  then rerun: the resumed bank must be byte-identical (every file's SHA-256) to an
  uninterrupted build and nothing may be left next to it;
* corruptions: every bank file deleted, truncated, extended and bit-flipped (dense), opened and
  searched in each verify mode ("refused" = a BankError; anything else is a crash), plus
  single-byte flips of an hnswlib file (refused by the header check, or loaded and searched
  without a crash in a child process);
* bad corpora: files with a BOM, lone CRs, nulls, short rows, over-long lines, invalid UTF-8,
  truncated/fake gzip, bad JSON/CSV: each read as documented or refused with a CorpusError
  naming the file;
* concurrency: a second builder, a dead builder's lock, side-by-side builds, an open bank while
  the directory is replaced.

Runs on CPU in a few minutes (tiny random model from tests/tiny_models.py; no downloads).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "unit"))

import numpy as np  # noqa: E402
import test_reliability_bank as tb  # noqa: E402
import test_reliability_crash as tc  # noqa: E402
import torch  # noqa: E402

from tiny_models import TinyEncoder, tiny_llama_dir  # noqa: E402
from tl_latentlens.bank import (  # noqa: E402
    BankLockedError,
    CorpusError,
    CorruptBankError,  # noqa: E402
    build_bank,
)
from tl_latentlens.bank.build.sources import CorpusStats, iter_corpus  # noqa: E402
from tl_latentlens.bank.search.hnsw_file import validate_hnsw_file  # noqa: E402


class _MP:
    """A minimal pytest.MonkeyPatch for the kill points (the child never undoes them)."""

    def setattr(self, obj, name, value):
        setattr(obj, name, value)


def tiny_vlm(tmp: Path):
    from transformer_lens.model_bridge import TransformerBridge

    from tl_latentlens.models.connector import Connector, ConnectorVLM

    bridge = TransformerBridge.boot_transformers(str(tiny_llama_dir(tmp / "llama")), device="cpu")
    enc = TinyEncoder()
    torch.manual_seed(1)
    return ConnectorVLM(bridge, enc, Connector(enc.d_vision, 64), name="tiny-connector-vlm")


def kills(vlm, tmp: Path, n_random: int) -> tuple[int, int]:
    ref_dir = tmp / "ref" / "bank"
    build_bank(vlm, tc.corpus(), ref_dir, tc.HOOKS, **tc.OPTS)
    ref = tc.file_digests(ref_dir)
    cases = [(k.__name__, k, r) for k, r in tc.CASES]
    cases += [(f"random-{i}", None, i % 2 == 1) for i in range(n_random)]
    ok = 0
    rng = random.Random(0)
    for i, (name, kill, replacing) in enumerate(cases):
        out = tmp / f"k{i}" / "bank"
        if replacing:
            build_bank(vlm, tc.corpus(seed=1), out, tc.HOOKS, **tc.OPTS)
        if kill is not None:

            def child(kill=kill, out=out):
                kill(_MP())
                build_bank(vlm, tc.corpus(), out, tc.HOOKS, overwrite=True, **tc.OPTS)

            status = tc.in_child(child)
            died = tc.killed(status)
        else:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                torch.set_num_threads(1)
                build_bank(vlm, tc.corpus(), out, tc.HOOKS, overwrite=True, **tc.OPTS)
                os._exit(0)
            time.sleep(rng.uniform(0.05, 3.0))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            died = True
        build_bank(vlm, tc.corpus(), out, tc.HOOKS, overwrite=True, **tc.OPTS)
        good = died and tc.file_digests(out) == ref and tc.leftovers(out) == []
        ok += good
        print(
            f"  kill {name:32s} {'replace' if replacing else 'new':8s} {'ok' if good else 'FAIL'}"
        )
    return ok, len(cases)


def corruptions(vlm, tmp: Path) -> dict[str, tuple[int, int, int]]:
    bank_dir = tmp / "cbank" / "bank"
    build_bank(vlm, tb.corpus(), bank_dir, tb.HOOKS, max_per_token=None, progress=False)
    out = {}
    for verify in ("full", "lazy", "size"):
        refused, total, crashes = tb.corruption_campaign(bank_dir, tmp, verify, dense=True)
        out[verify] = (refused, total, len(crashes))
        for c in crashes[:5]:
            print("   crash:", c)
    return out


def hnsw_fuzz(tmp: Path) -> tuple[int, int, int]:
    import hnswlib

    rng = np.random.default_rng(0)
    n, dim = 400, 8
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=n, M=4, ef_construction=40, random_seed=1)
    index.add_items(rng.standard_normal((n, dim)).astype(np.float32), np.arange(n), num_threads=1)
    index.save_index(str(tmp / "g.hnsw"))
    good = (tmp / "g.hnsw").read_bytes()
    spots = list(range(96)) + [int(i) for i in rng.integers(96, len(good), 600)]
    refused = crashed = 0
    for pos in spots:
        buf = bytearray(good)
        buf[pos] ^= 1 << int(rng.integers(8))
        path = tmp / "m.hnsw"
        path.write_bytes(bytes(buf))
        try:
            validate_hnsw_file(path, dim=dim, n=n)
        except CorruptBankError:
            refused += 1
            continue

        def load(path=path):
            ix = hnswlib.Index(space="cosine", dim=dim)
            ix.load_index(str(path), max_elements=n)
            ix.set_ef(20)
            ix.knn_query(rng.standard_normal((4, dim)).astype(np.float32), k=5)

        status = tc.in_child(load, timeout=60)
        crashed += not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
    return refused, len(spots), crashed


def _varied_text() -> bytes:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    return "\n".join(" ".join(rng.choice(words, 8)) for _ in range(3000)).encode()


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def bad_corpora(tmp: Path) -> tuple[int, int]:
    long = " ".join(["word"] * 100_000)
    cases = {
        "bom.txt": ("\ufeffa cat\n".encode(), ["a cat"]),
        "cr.txt": (b"a red\rcar\r\nend\n", ["a red car", "end"]),
        "nulls.jsonl": (b'{"text": null}\n{"text": "a"}\n', ["a"]),
        "short.csv": (b"id,text\n1\n2,a\n", ["a"]),
        "long.txt": (long.encode() + b"\n", [long]),
        "utf8.txt": (b"ok\n\xff\xfe bad\n", ":2: invalid UTF-8"),
        "utf8.jsonl": (b'{"text": "\xc3("}\n', ":1: invalid UTF-8"),
        "trunc.txt.gz": (_half(gzip.compress(_varied_text())), "truncated or corrupt"),
        "fake.txt.gz": (b"plain text\n", "truncated or corrupt"),
        "badjson.jsonl": (b'{"text": "a"\n', ":1: invalid JSON"),
        "nofield.jsonl": (b'{"body": "a"}\n', "no 'text' field"),
        "nocol.csv": (b"body\na\n", "no 'text' column"),
        "nul.csv": (b"text\na\x00b\n", None),  # either read or a CorpusError, never a raw error
        "number.jsonl": (b'{"text": 5}\n', "not a string"),
        "empty.txt": (b"", []),
        "binary.txt": (bytes(range(256)) * 4, "invalid UTF-8"),
    }
    ok = 0
    for name, (data, want) in cases.items():
        path = tmp / name
        path.write_bytes(data)
        try:
            got = list(iter_corpus(path, stats=CorpusStats()))
            good = want is None or got == want
        except CorpusError as err:
            good = want is None or (isinstance(want, str) and want in str(err) and name in str(err))
        except Exception as err:  # noqa: BLE001 - the campaign records raw errors
            print(f"   raw {type(err).__name__} on {name}: {err}")
            good = False
        ok += good
    return ok, len(cases)


def concurrency(vlm, tmp: Path) -> tuple[int, int]:
    tests = [
        tc.test_second_builder_is_refused_while_the_first_runs,
        tc.test_dead_builders_lock_is_taken_over,
        tc.test_builds_into_different_directories_run_side_by_side,
        tc.test_open_bank_keeps_reading_it_after_a_replace,
    ]
    ref_dir = tmp / "cref" / "bank"
    build_bank(vlm, tc.corpus(), ref_dir, tc.HOOKS, **tc.OPTS)
    ref = tc.file_digests(ref_dir)
    ok = 0
    for i, test in enumerate(tests):
        work = tmp / f"conc{i}"
        work.mkdir()
        kwargs = {"tiny_vlm": vlm, "tmp_path": work}
        names = test.__code__.co_varnames[: test.__code__.co_argcount]
        if "reference" in names:
            kwargs["reference"] = ref
        if "caplog" in names:
            kwargs["caplog"] = _Caplog()
        try:
            test(**{k: kwargs[k] for k in names})
            ok += 1
            print(f"  {test.__name__}: ok")
        except (AssertionError, BankLockedError, Exception) as err:  # noqa: BLE001
            print(f"  {test.__name__}: FAIL {type(err).__name__}: {err}")
    return ok, len(tests)


class _Caplog(logging.Handler):
    """Enough of pytest's caplog for the lock takeover test."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())

    @property
    def text(self):
        return "\n".join(self.records)

    def at_level(self, level):
        import contextlib

        @contextlib.contextmanager
        def cm():
            root = logging.getLogger()
            root.addHandler(self)
            old = root.level
            root.setLevel(level)
            try:
                yield
            finally:
                root.setLevel(old)
                root.removeHandler(self)

        return cm()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random-kills", type=int, default=12)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="campaign-") as d:
        tmp = Path(d)
        vlm = tiny_vlm(tmp)
        t0 = time.perf_counter()
        k_ok, k_n = kills(vlm, tmp, args.random_kills)
        corr = corruptions(vlm, tmp)
        h_ref, h_n, h_crash = hnsw_fuzz(tmp)
        c_ok, c_n = bad_corpora(tmp)
        q_ok, q_n = concurrency(vlm, tmp)
        print()
        print(f"kills resumed to identical banks: {k_ok}/{k_n}")
        for verify, (refused, total, crashes) in corr.items():
            print(f"corruptions refused (verify={verify}): {refused}/{total}, crashes {crashes}")
        print(
            f"hnswlib single-byte flips refused: {h_ref}/{h_n}; accepted ones that crashed: {h_crash}"
        )
        print(f"bad corpora handled: {c_ok}/{c_n}")
        print(f"concurrent cases: {q_ok}/{q_n}")
        print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
