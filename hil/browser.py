"""Debian's headless chromium with its chromedriver, through selenium (tests and benchmarks of the web page)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver), or None when either is not installed."""
    browser = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    driver = CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver")
    if browser is None or driver is None:
        return None
    return browser, driver


def new_driver(width: int = 1280, height: int = 2400) -> Any:
    """A headless chromium session (raises RuntimeError when chromium or its driver is missing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError("chromium and chromium-driver are not installed")
    opts = Options()
    opts.binary_location = paths[0]
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(paths[1]), options=opts)
