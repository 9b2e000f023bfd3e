"""Headless Chromium with every network path closed, to prove a page renders from ``file://`` alone.

Besides Chromium's own switches against background traffic, every host name resolves to nothing
(``--host-resolver-rules``) and every request goes to a proxy that does not exist (port 9, "discard"), so a
page that needed a CDN, a web font or a script from the internet would render without it, and the test sees.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ON_CI

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
OFFLINE_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
)


def find_chromium() -> str:
    """The browser's path; a visible skip locally when it is missing, a failure on CI (.ci/run installs it)."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    if ON_CI:
        pytest.fail("Chromium not found (CI=true): .ci/run should have installed it (apt-get install chromium)")
    pytest.skip("Chromium not installed (apt-get install chromium): cannot render the docs page")


def run_offline(browser: str, profile: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """One headless run against ``url`` with networking closed; ``extra`` says what to produce."""
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [browser, *OFFLINE_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True, text=True, timeout=120, check=False,
    )
