"""Explanation.save / load keeps everything the renderers show (tricky strings included)."""

import re

from fixtures.explanations import sample_explanation
from tl_latentlens.lens.results import Explanation
from tl_latentlens.render.html import explanation_html


def test_save_load_round_trip(tmp_path):
    exp = sample_explanation(rows=2, cols=3, k=4)
    path = exp.save(tmp_path / "exp.json")
    back = Explanation.load(path)
    assert back == exp  # the image is not saved and not compared
    assert back.patches == exp.patches
    assert back.image is None
    n = back.patches[0].latent[0]
    assert isinstance(n.sentence_tokens, tuple) and n.token == "<s>"
    assert [f.name for f in tmp_path.iterdir()] == ["exp.json"]


def test_loaded_result_renders_the_same_page(tmp_path):
    exp = sample_explanation(rows=2, cols=2, k=2, image=False)
    back = Explanation.load(exp.save(tmp_path / "exp.json"))

    def norm(page):
        return re.sub(r"ll-[0-9a-f]{10}", "ll-ID", page)

    assert norm(explanation_html(back)) == norm(explanation_html(exp))
