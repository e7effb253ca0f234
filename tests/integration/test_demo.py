"""The main job on the embedded default VLM: a reduced demo and the tour notebook (real weights)."""

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quick_demo_end_to_end(tmp_path, capsys):
    from tl_latentlens.apps.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "LatentLens" in printed
    index = (out / "index.html").read_text()
    assert "Per-layer table" in index
    pages = list(out.glob("*.html"))
    assert len(pages) >= 2  # index + one report
    assert (out / "leap.png").stat().st_size > 1000
    assert (out / "study" / "judgements.jsonl").is_file()


def test_tour_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TL_LATENTLENS_DEMO_QUICK", "1")
    nb = nbformat.read(ROOT / "demos" / "latentlens_tour.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors
    assert (tmp_path / "latentlens_notebook_out" / "report.html").is_file()
    assert os.path.getsize(tmp_path / "latentlens_notebook_out" / "leap.png") > 1000
