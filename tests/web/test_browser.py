"""The live page in Debian's headless chromium against the real daemon and a simulated site: login, the live
figures within 2 s of a change, the history chart, the event list and its filter, a viewer refused a technician
action, a technician's cap shown as the budget source; screenshots checked for size and content."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hil.browser import new_driver
from hil.support import running_task
from tests.daemon.conftest import wait_for
from tests.web.browser import Browser, check_screenshot, chromium_or_skip
from tests.web.conftest import PASSWORDS, Web, remote_cap_a


@pytest.fixture
async def browser() -> Any:
    chromium_or_skip()
    b = Browser(await asyncio.to_thread(new_driver))
    yield b
    await b.quit()


async def login(b: Browser, w: Web, user: str) -> None:
    await b.get(w.url + "/")
    assert await b.until(lambda: b.d.find_element("id", "login").is_displayed(), 10), "no login form"
    await b.type("#login-user", user)
    await b.type("#login-password", PASSWORDS[user])
    await b.click("#login-submit")
    assert await b.until(lambda: b.d.find_element("id", "main").is_displayed(), 10), await b.text("#login-error")
    assert (await b.text("#who")).startswith(user)


def _service_l1(w: Web) -> float | None:
    a = w.app.control.allocation
    root = a.circuits["service"] if a is not None else None
    return None if root is None or root.measured_a is None else root.measured_a[0]


async def test_live_page_history_events_and_roles_in_chromium(web_site: Any, browser: Browser,
                                                              tmp_path: Path) -> None:
    w: Web = await web_site()
    b = browser
    # a wrong password is refused on the page
    await b.get(w.url + "/")
    await b.until(lambda: b.d.find_element("id", "login").is_displayed(), 10)
    await b.type("#login-user", "viewer")
    await b.type("#login-password", "not-the-password")
    await b.click("#login-submit")
    assert "wrong user or password" in (await b.until(lambda: b._text("#login-error"), 5) or "")

    await login(b, w, "viewer")
    # the live figures are the loop's
    assert await b.until(lambda: b._text("#mode") == "normal", 5)
    assert await b.until(lambda: b._text("#budget-source") == "service", 5)
    assert await b.until(lambda: len(b.d.find_elements("css selector", "#chargers tbody tr")) == 4, 5)
    assert await b.until(lambda: b._text("#svc-measured-L1") == "20.0", 5), await b.text("#svc-measured-L1")
    assert await b.until(lambda: b._text("#svc-limit-L1") == "100.0", 5)
    meters = await b.text("#meters tbody")
    assert "m-main" in meters and "m-p1" in meters and "ok" in meters

    # a change of the building load: on the page within 2 s of the loop having it
    changed_at = time.monotonic()
    w.level[0] = 47.0
    assert await wait_for(lambda: _service_l1(w) == 47.0, 5), _service_l1(w)
    in_loop = time.monotonic()
    assert await b.until(lambda: b._text("#svc-measured-L1") == "47.0", 2.0), await b.text("#svc-measured-L1")
    shown = time.monotonic()
    print(f"site change -> loop {in_loop - changed_at:.2f} s, loop -> page {shown - in_loop:.2f} s")
    assert shown - in_loop <= 2.0

    # the history chart: the site series drawn from the store (once it holds a few samples)
    for _ in range(50):
        if len(await w.app.web.store.site_history(0)) >= 3:
            break
        await asyncio.sleep(0.1)
    await b.select("#hist-hours", "1")
    assert await b.until(lambda: int(b.d.find_element("id", "chart-site").get_attribute("data-points") or 0) > 3, 10)
    series = await b.js("return Array.from(document.querySelectorAll('#chart-site polyline'))"
                        ".map(p => [p.dataset.series, p.getAttribute('points').split(' ').length])")
    names = {s for s, _ in series}
    assert {"L1 measured", "L1 allocated", "limit"} <= names, series
    assert all(n >= 2 for _, n in series)
    assert await b.until(lambda: int(b.d.find_element("id", "chart-charger").get_attribute("data-points") or 0) > 0,
                         10)
    shot = await b.screenshot(tmp_path / "live-viewer.png")
    print("screenshot", check_screenshot(shot))

    # the event list, and its filter
    assert await b.until(lambda: "charger_connected" in b._text("#events tbody"), 10)
    await b.select("#event-kind", "cms")
    assert await b.until(lambda: b.d.execute_script(
        "const r = [...document.querySelectorAll('#events tbody tr')];"
        "return r.length > 0 && r.every(x => x.dataset.kind === 'cms');"), 5)

    # the active configuration, read-only, loaded when opened
    await b.click("details summary")
    assert await b.until(lambda: '"id": "test-site"' in b._text("#config"), 5)
    assert '"limit_a": 100,' in await b.text("#config")

    # a viewer is refused the technician's action, and the loop has no cap
    await b.type("#cap-limit", "50")
    await b.click("#cap-set")
    assert "refused (403)" in (await b.until(lambda: b._text("#action-result"), 5) or "")
    assert w.app.control.snapshot is not None and remote_cap_a(w.app.control.snapshot) is None
    await b.click("#commission")
    assert await b.until(lambda: "refused (403)" in b._text("#action-result"), 5)

    # the technician's cap is taken and shown as the budget source
    await b.click("#logout")
    assert await b.until(lambda: b.d.find_element("id", "login").is_displayed(), 5)
    await login(b, w, "tech")
    await b.type("#cap-limit", "60")
    await b.type("#cap-duration", "300")
    await b.click("#cap-set")
    assert await b.until(lambda: "done" in b._text("#action-result"), 5), await b.text("#action-result")
    assert await b.until(lambda: b._text("#budget-source").startswith("remote:web:tech:"), 3)
    assert await b.until(lambda: b._text("#svc-limit-L1") == "60.0", 3)
    assert w.app.control.snapshot is not None and remote_cap_a(w.app.control.snapshot) == 60.0
    await b.select("#event-kind", "cap")
    assert await b.until(lambda: "site_cap_set" in b._text("#events tbody"), 8)
    # the technician's commissioning (verify, the default): it runs, ends, and its report is listed with links
    await b.click("#commission")
    assert await b.until(lambda: "started verify" in b._text("#action-result"), 5), await b.text("#action-result")
    assert await b.until(lambda: b.d.find_element("id", "commissioning").get_attribute("data-state") == "done", 60), \
        await b.text("#comm-status")
    assert "verdict: action needed" in await b.text("#comm-status")  # no full commissioning before it
    rid = w.app.web.commissioning.state["report"]
    links = await b.until(lambda: b.d.execute_script(
        "return [...document.querySelectorAll('#reports tr[data-id=\"' + arguments[0] + '\"] a.report-link')]"
        ".map(a => a.getAttribute('href'))", rid), 10)
    assert f"/api/commissioning/reports/{rid}/report.html" in links, links
    shot = await b.screenshot(tmp_path / "live-technician.png")
    print("screenshot", check_screenshot(shot))


async def test_the_page_with_1000_chargers(browser: Browser, tmp_path: Path) -> None:
    """Every charger's row from frozen values the real allocator computed for a 1000-charger tree (the load
    time is printed; hil/bench/bench_web.py measures it)."""
    import random

    from gateway.allocation import allocate
    from gateway.web.config import WebConfig
    from gateway.web.server import WebService
    from hil.bench.bench_web import Holder
    from hil.bench.sites import busy_snapshot, tree_site

    site = tree_site(1000)
    snap = busy_snapshot(site, 1000.0, random.Random(3))
    alloc, _ = allocate(snap, site, None, 1000.0)
    holder = Holder()
    holder.snapshot, holder.allocation = snap, alloc
    svc = WebService(WebConfig(port=0, users_file=str(tmp_path / "none")), site, holder, state_dir=tmp_path,
                     clock=lambda: 1000.5)
    try:
        async with running_task(svc.run()):
            async with asyncio.timeout(10):
                await svc.started.wait()
            b = browser
            t0 = time.monotonic()
            await b.get(f"http://127.0.0.1:{svc.port}/")
            rows = await b.until(lambda: b.d.execute_script(
                "const n = document.querySelectorAll('#chargers tbody tr').length; return n === 1000 ? n : 0;"), 20)
            print(f"1000 chargers: every row shown {time.monotonic() - t0:.2f} s after the request")
            assert rows == 1000
            cid = "CP0500"
            lim = alloc.limits[cid]
            cells = await b.js(f"return [...document.querySelector('#chargers tr[data-id=\"{cid}\"]').cells]"
                               ".map(c => c.textContent)")
            assert cells[0] == cid and cells[3] == f"{lim.limit:.1f} A" and cells[5] == lim.reason
            await b.type("#charger-filter", "CP099")
            assert await b.until(lambda: b.d.execute_script(
                "return document.querySelectorAll('#chargers tbody tr').length === 10"), 5)
            print("screenshot", check_screenshot(await b.screenshot(tmp_path / "thousand.png")))
    finally:
        svc.close()
