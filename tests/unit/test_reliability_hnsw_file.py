"""Hostile hnswlib files are refused before hnswlib parses them (issue 14, items 4 and 12)."""

from __future__ import annotations

import os
import signal
import struct
import time

import hnswlib
import numpy as np
import pytest

from tl_latentlens.bank import CorruptBankError
from tl_latentlens.bank.search.hnsw_file import HEADER_SIZE, read_header, validate_hnsw_file
from tl_latentlens.bank.search.index import load_hnsw

N, DIM, M = 300, 8, 4
# field -> byte offset in the 96-byte header
OFFSETS = {
    "offset_level0": 0, "max_elements": 8, "cur_element_count": 16,
    "size_data_per_element": 24, "label_offset": 32, "offset_data": 40, "maxlevel": 48,
    "enterpoint_node": 52, "maxM": 56, "maxM0": 64, "M": 72, "mult": 80, "ef_construction": 88,
}  # fmt: skip


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> bytes:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    index = hnswlib.Index(space="cosine", dim=DIM)
    index.init_index(max_elements=N, M=M, ef_construction=40, random_seed=1)
    index.add_items(x, np.arange(N), num_threads=1)
    path = tmp_path_factory.mktemp("hnsw") / "good.hnsw"
    index.save_index(str(path))
    return path.read_bytes()


def write(tmp_path, data: bytes, name: str = "x.hnsw") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def patched(data: bytes, field: str, value) -> bytes:
    fmt = {"maxlevel": "<i", "enterpoint_node": "<I", "mult": "<d"}.get(field, "<Q")
    buf = bytearray(data)
    struct.pack_into(fmt, buf, OFFSETS[field], value)
    return bytes(buf)


def test_good_file_passes_and_loads(good, tmp_path):
    path = write(tmp_path, good)
    validate_hnsw_file(path, dim=DIM, n=N, M=M)
    validate_hnsw_file(good, dim=DIM, n=N)  # bytes work too
    h = read_header(good)
    assert h.maxlevel >= 1, "the fixture must have upper levels to test them"
    index = load_hnsw(path, DIM, N, 1)
    labels, _ = index.knn_query(np.ones((1, DIM), np.float32), k=3)
    assert labels.shape == (1, 3)


@pytest.mark.parametrize("field", list(OFFSETS))
def test_every_header_field_is_checked(field, good, tmp_path):
    h = read_header(good)
    bad = {"mult": -1.0, "maxlevel": h.maxlevel + 1, "enterpoint_node": N}.get(field)
    if bad is None:
        bad = h[field] + 8 if field != "max_elements" else N - 1
    if field == "ef_construction":
        bad = 0
    with pytest.raises(CorruptBankError, match="not a valid hnswlib index"):
        validate_hnsw_file(write(tmp_path, patched(good, field, bad)), dim=DIM, n=N)


def test_bank_geometry_is_checked(good, tmp_path):
    path = write(tmp_path, good)
    for kwargs in (
        {"dim": DIM + 1, "n": N},
        {"dim": DIM, "n": N - 1},
        {"dim": DIM, "n": N, "M": 8},
    ):
        with pytest.raises(CorruptBankError):
            validate_hnsw_file(path, **kwargs)
    with pytest.raises(CorruptBankError):  # load_hnsw refuses before hnswlib parses
        load_hnsw(path, DIM + 1, N, 1)


@pytest.mark.parametrize("cut", [0, 50, HEADER_SIZE, HEADER_SIZE + 7, -1, -4, -5])
def test_truncated_or_extended_files_are_refused(cut, good, tmp_path):
    with pytest.raises(CorruptBankError):
        validate_hnsw_file(write(tmp_path, good[:cut]), dim=DIM, n=N)
    with pytest.raises(CorruptBankError):
        validate_hnsw_file(write(tmp_path, good + b"\0" * 4), dim=DIM, n=N)


def _record(good: bytes, i: int) -> int:
    return HEADER_SIZE + i * read_header(good).size_data_per_element


def test_links_labels_and_flags_are_checked(good, tmp_path):
    h = read_header(good)
    cases = {}
    buf = bytearray(good)  # a level-0 neighbour id past the end
    struct.pack_into("<I", buf, _record(good, 5) + 4, N + 10)
    struct.pack_into("<H", buf, _record(good, 5), max(1, good[_record(good, 5)]))
    cases["link"] = buf
    buf = bytearray(good)  # a neighbour count above maxM0
    struct.pack_into("<H", buf, _record(good, 7), h.maxM0 + 1)
    cases["count"] = buf
    buf = bytearray(good)  # a deleted mark
    buf[_record(good, 9) + 2] = 1
    cases["deleted"] = buf
    buf = bytearray(good)  # a duplicated label
    struct.pack_into("<Q", buf, _record(good, 3) + h.label_offset, 4)
    cases["label"] = buf
    buf = bytearray(good)  # the entry point's own upper list links to a level-0 element
    levels = _levels(good)
    low = int(np.flatnonzero(levels == 0)[0])
    ep_list = _upper_list_offset(good, h.enterpoint_node)
    struct.pack_into("<H", buf, ep_list, 1)
    struct.pack_into("<I", buf, ep_list + 4, low)
    cases["level"] = buf
    for name, data in cases.items():
        with pytest.raises(CorruptBankError):
            validate_hnsw_file(write(tmp_path, bytes(data), f"{name}.hnsw"), dim=DIM, n=N)


def _levels(good: bytes) -> np.ndarray:
    h = read_header(good)
    pos, per = HEADER_SIZE + N * h.size_data_per_element, 4 + 4 * h.maxM
    levels = np.zeros(N, dtype=int)
    for i in range(N):
        (size,) = struct.unpack_from("<I", good, pos)
        levels[i] = size // per
        pos += 4 + size
    return levels


def _size_word_offsets(good: bytes) -> list[int]:
    h = read_header(good)
    pos, out = HEADER_SIZE + N * h.size_data_per_element, []
    for _ in range(N):
        out.append(pos)
        (size,) = struct.unpack_from("<I", good, pos)
        pos += 4 + size
    return out


def _upper_list_offset(good: bytes, element: int) -> int:
    h = read_header(good)
    pos = HEADER_SIZE + N * h.size_data_per_element
    for i in range(N):
        (size,) = struct.unpack_from("<I", good, pos)
        if i == element:
            return pos + 4
        pos += 4 + size
    raise AssertionError


def test_no_single_byte_flip_crashes_hnswlib(good, tmp_path):
    """Flip bytes all over the file (every header and size byte, a sample elsewhere): each
    mutant is refused or loads and searches; the loads run in a child so a crash is seen."""
    rng = np.random.default_rng(0)
    h = read_header(good)
    level0_end = HEADER_SIZE + N * h.size_data_per_element
    spots = set(range(HEADER_SIZE))
    spots |= {int(i) for i in rng.integers(HEADER_SIZE, level0_end, 300)}
    sizes = _size_word_offsets(good)
    spots |= {p + j for p in sizes for j in range(4)}  # every link-list size word
    spots |= {int(i) for i in rng.integers(level0_end, len(good), 300)}
    accepted, refused = [], 0
    for k, pos in enumerate(sorted(spots)):
        for bit in (0, 7) if pos < HEADER_SIZE else (int(rng.integers(8)),):
            buf = bytearray(good)
            buf[pos] ^= 1 << bit
            path = write(tmp_path, bytes(buf), f"m{k}-{bit}.hnsw")
            try:
                validate_hnsw_file(path, dim=DIM, n=N)
            except CorruptBankError:
                refused += 1
                os.unlink(path)
            else:
                accepted.append(path)
    assert refused > HEADER_SIZE  # the header flips at least
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            q = np.random.default_rng(1).standard_normal((4, DIM)).astype(np.float32)
            for path in accepted:
                index = hnswlib.Index(space="cosine", dim=DIM)
                index.load_index(path, max_elements=N)
                index.set_ef(20)
                index.knn_query(q, k=5)
            os._exit(0)
        except BaseException:
            os._exit(3)
    deadline = time.monotonic() + 120
    while not (done := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("hnswlib hung on an accepted file")
        time.sleep(0.02)
    status = done[1]
    assert os.WIFEXITED(status), f"hnswlib crashed (signal {os.WTERMSIG(status)})"
    assert os.WEXITSTATUS(status) == 0
