"""Fixtures of the browser tests: one headless Chromium per test module, and where screenshots
go (``TL_LATENTLENS_ARTIFACTS=<dir>`` keeps them)."""

import os
from pathlib import Path

import pytest
from chromium_driver import Chromium, ensure_chromium


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = ensure_chromium()
    work = tmp_path_factory.mktemp("chromium")
    chrome = Chromium(exe, work / "profile", work / "chromium.log")
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    where = os.environ.get("TL_LATENTLENS_ARTIFACTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        return Path(where)
    return tmp_path_factory.mktemp("browser_artifacts")
