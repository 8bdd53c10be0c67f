"""A real headless browser for page tests: Debian's chromium driven through chromedriver by selenium.

`.ci/run` installs chromium (scripts/fetch_test_assets.sh does it where apt is usable) and sets
S5VH_REQUIRE_BROWSER=1, so in CI a missing browser fails the tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not os.access(exe, os.X_OK):
            return f"{exe} not found (apt-get install chromium chromium-driver)"
    return None


@contextlib.contextmanager
def browser(tmp_path, width: int = 1280, height: int = 900) -> Iterator:
    why = _missing()
    if why:
        if os.environ.get("S5VH_REQUIRE_BROWSER"):
            pytest.fail(f"browser required (S5VH_REQUIRE_BROWSER is set) but {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def png_is_not_blank(path) -> bool:
    """The screenshot has real content: many distinct colours, not one flat fill."""
    import cv2

    img = cv2.imread(str(path))
    return img is not None and img.size > 0 and len({tuple(p) for p in img[::7, ::7].reshape(-1, 3)}) > 50
