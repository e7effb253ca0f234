"""``pip install .`` gives a working package: a wheel built from this tree, installed into a
fresh virtual environment, imports, loads the embedded default VLM and runs the CLI from a
directory outside the checkout, reading its package data (connector weights, the registry of
prebuilt indices) from the installed copy.

The fresh venv sees the project venv's dependencies through a ``.pth`` file naming the project's
site-packages (``python -m venv --system-site-packages`` from the project venv's interpreter
would only expose the *system* site-packages). A ``.pth`` line adds that folder to ``sys.path``
without running the ``.pth`` files inside it, so the project's editable install (an import
finder pointing at the checkout) stays inactive there: ``tl_latentlens`` can only come from the
wheel. Nothing is downloaded (``--no-index``, ``--no-deps``, ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: What a source checkout contributes to the wheel (pyproject.toml names the readme).
SOURCES = ("pyproject.toml", "README.md", "tl_latentlens")
#: Package data the library reads at run time, which the wheel must carry.
PACKAGE_DATA = (
    "tl_latentlens/default/weights/connector.safetensors",
    "tl_latentlens/default/weights/connector_vlm.json",
    "tl_latentlens/bank/hub/pretrained.json",
)

CHECK = """
import sys
import tl_latentlens
from tl_latentlens.default import loader
print("FILE", tl_latentlens.__file__)
print("WEIGHTS", loader.WEIGHTS_DIR)
vlm = tl_latentlens.load_default_vlm()
print("VLM", type(vlm).__name__, vlm.n_layers, vlm.d_model)
print("REGISTRY", tl_latentlens.pretrained()["qwen2.5-vl-7b"].repo_id)
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert done.returncode == 0, f"{cmd[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_installs_into_a_fresh_venv_and_runs_outside_the_checkout(tmp_path):
    # build from a copy: an in-tree build leaves build/ and *.egg-info in the shared checkout
    src = tmp_path / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=junk)
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", str(dist), str(src)])  # fmt: skip
    (wheel,) = dist.glob("tl_latentlens-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PACKAGE_DATA) <= names, sorted(set(PACKAGE_DATA) - names)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    site = Path(purelib.stdout.strip())
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "project_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
          "--no-index", str(wheel)])  # fmt: skip

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    out = _run([str(python), "-c", CHECK], cwd=elsewhere, env=env).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line[:1].isupper())
    installed = Path(lines["FILE"]).resolve()
    assert installed.is_relative_to(venv.resolve()), installed
    assert not installed.is_relative_to(ROOT)
    assert Path(lines["WEIGHTS"]).resolve().is_relative_to(venv.resolve())
    assert lines["VLM"].split()[0] == "ConnectorVLM"
    assert lines["REGISTRY"] == "McGill-NLP/contextual_embeddings-qwen2.5-vl-7b"

    cli = venv / "bin" / "tl-latentlens"
    assert cli.read_text().startswith(f"#!{python}")  # the fresh venv's interpreter
    help_text = _run([str(cli), "--help"], cwd=elsewhere, env=env).stdout
    assert help_text.startswith("usage: tl-latentlens") and "build-bank" in help_text
