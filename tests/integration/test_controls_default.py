"""The positive controls on the embedded default VLM and its cached default bank (real numbers).

Skipped when the default bank is not in the cache (``tl-latentlens demo`` builds it once).
Run: ``.venv/bin/python -m pytest -q -s -m integration tests/integration/test_controls_default.py``
"""

from __future__ import annotations

import logging
import time

import pytest

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def lens():
    from tl_latentlens import LatentLens, load_default_vlm
    from tl_latentlens.bank import Bank
    from tl_latentlens.lens.default_bank import default_bank_dir

    vlm = load_default_vlm()
    root = default_bank_dir(vlm)
    if not (root / "manifest.json").is_file():
        pytest.skip(f"the default bank is not cached at {root} (run tl-latentlens demo once)")
    return LatentLens(vlm, Bank.open(root, vlm))


@pytest.fixture(scope="module")
def held_out(lens):
    from tl_latentlens.default.bank_corpus import default_corpus

    read = int((lens.bank.manifest.corpus or {})["n_sentences"])  # sentences the build read
    return default_corpus(read + 150)[read:]


@pytest.fixture(scope="module")
def text(lens, held_out):
    t0, c0 = time.perf_counter(), time.process_time()
    result = text_control_of(lens, held_out)
    print(f"\ntext control: {time.perf_counter() - t0:.1f} s wall, "
          f"{time.process_time() - c0:.1f} s CPU")  # fmt: skip
    return result


def text_control_of(lens, sentences):
    from tl_latentlens.evaluate.controls import text_control

    return text_control(lens, sentences, k=5, max_positions=200)


def test_text_control_on_the_default(text):
    from tl_latentlens.evaluate.controls import format_controls

    print(format_controls([text]))
    assert text.failures() == []
    assert text.excluded == 0  # the sentences after the bank's are not in it
    assert text.row("embedding", 0).pass1 == 100.0
    assert text.row("latent", 0).topk >= 80.0
    last = max(text.layers)
    # LogitLens reads the next word best at the last layer, and better than at layer 0
    assert text.row("logit", last).topk > text.row("logit", 0).topk


def test_visual_control_on_the_default(lens):
    from tl_latentlens.evaluate.controls import format_controls, visual_control

    t0 = time.perf_counter()
    result = visual_control(lens, k=5)
    print(f"\nvisual control: {time.perf_counter() - t0:.1f} s")
    print(format_controls([result]))
    assert result.failures() == []
    assert result.row("latent", 0).pass1 == 100.0 and result.row("embedding", 0).pass1 == 100.0


def test_a_bank_with_shifted_hook_labels_fails_the_text_control(lens, held_out, text, monkeypatch):
    """Each hook answers with the next hook's vectors (labels shifted by one layer)."""
    bank = lens.bank
    hooks = list(bank.hooks)
    shift = {h: hooks[min(i + 1, len(hooks) - 1)] for i, h in enumerate(hooks)}
    real = bank.search

    def shifted(vectors, hook=None, k=5, **kw):
        return real(vectors, hook=shift[bank.resolve_hook(hook)], k=k, **kw)

    monkeypatch.setattr(bank, "search", shifted)
    broken = text_control_of(lens, held_out[:60])
    sound, bad = text.row("latent", 0).topk, broken.row("latent", 0).topk
    print(f"\nshifted labels: LatentLens top-5 at layer 0 {sound:.1f} % -> {bad:.1f} %")
    assert broken.failures() and bad < sound - 30
