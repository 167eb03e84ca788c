"""Headless chromium (Debian's, with its chromedriver) through selenium, driven off the event loop.

Selenium's calls block: every call goes through ``asyncio.to_thread`` so the daemon and the simulated site,
which run in the test's event loop, go on meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hil.browser import chromium_paths

T = TypeVar("T")


def chromium_or_skip() -> None:
    if chromium_paths() is None:
        pytest.skip("Debian chromium and chromium-driver are not installed (./dev install adds them)")


class Browser:
    def __init__(self, driver: Any) -> None:
        self.d = driver

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def get(self, url: str) -> None:
        await self.call(self.d.get, url)

    def _text(self, css: str) -> str:
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.common.by import By

        try:
            return str(self.d.find_element(By.CSS_SELECTOR, css).text)
        except (NoSuchElementException, StaleElementReferenceException):
            return ""

    async def text(self, css: str) -> str:
        return await self.call(self._text, css)

    async def js(self, script: str, *args: Any) -> Any:
        return await self.call(self.d.execute_script, script, *args)

    async def type(self, css: str, value: str) -> None:
        from selenium.webdriver.common.by import By

        def do() -> None:
            e = self.d.find_element(By.CSS_SELECTOR, css)
            e.clear()
            e.send_keys(value)

        await self.call(do)

    async def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        await self.call(lambda: self.d.find_element(By.CSS_SELECTOR, css).click())

    async def select(self, css: str, value: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        await self.call(lambda: Select(self.d.find_element(By.CSS_SELECTOR, css)).select_by_value(value))

    async def until(self, pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
        """Poll ``pred`` (run in a thread: it may use the driver) until truthy; returns its value or None."""
        deadline = time.monotonic() + timeout
        while True:
            v = await asyncio.to_thread(pred)
            if v or time.monotonic() >= deadline:
                return v
            await asyncio.sleep(interval)

    async def screenshot(self, path: Path) -> Path:
        await self.js("window.scrollTo(0, 0)")  # the header at the top, where check_screenshot looks
        await self.call(self.d.save_screenshot, str(path))
        return path

    async def quit(self) -> None:
        await self.call(self.d.quit)


def check_screenshot(path: Path, *, min_bytes: int = 20_000) -> dict[str, Any]:
    """The PNG exists, is big enough, is not blank, and shows the page's header (its dark blue bar)."""
    from PIL import Image

    size = path.stat().st_size
    assert size >= min_bytes, f"{path} is {size} bytes"
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        w, h = rgb.size
        colours = rgb.getcolors(maxcolors=1_000_000) or []
        top = rgb.crop((0, 0, w, 30)).getcolors(maxcolors=100_000) or []
    header = sum(n for n, c in top
                 if isinstance(c, tuple) and abs(c[0] - 0x1F) < 8 and abs(c[1] - 0x3A) < 8 and abs(c[2] - 0x5F) < 8)
    assert w >= 800 and h >= 600, (w, h)
    assert len(colours) >= 50, f"only {len(colours)} colours: a blank page?"
    assert header > w * 10, "the header bar is not in the screenshot"
    return {"bytes": size, "size": (w, h), "colours": len(colours)}
