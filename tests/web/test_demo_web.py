"""``ems-gateway demo --web 0``: the demo prints its control socket and serves the page on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


async def test_the_demo_with_web_serves_the_live_api(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", "--no-ui", "--web", "0", "--duration", "60",
        "--log-file", str(tmp_path / "demo.log"), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(45):
            while not any(x.startswith("web page:") for x in lines):
                line = await proc.stdout.readline()
                assert line, "the demo ended: " + "".join(lines)
                lines.append(line.decode())
        sock = next(x for x in lines if x.startswith("control socket:")).split()[2]
        assert await asyncio.to_thread(Path(sock).is_socket)
        m = re.search(r"web page: (http://127\.0\.0\.1:\d+/) \(log in as tech / (\S+): a technician\)",
                      "".join(lines))
        assert m, lines
        url, password = m.group(1), m.group(2)
        auth = {"Authorization": "Basic " + base64.b64encode(f"tech:{password}".encode()).decode()}
        async with aiohttp.ClientSession() as http:
            assert (await http.get(url + "api/live")).status == 401
            doc: dict[str, object] = {}
            async with asyncio.timeout(30):
                while not doc.get("chargers"):
                    r = await http.get(url + "api/live", headers=auth)
                    assert r.status == 200
                    doc = await r.json()
                    await asyncio.sleep(0.5)
            assert len(doc["chargers"]) == 20  # type: ignore[arg-type]
            assert (await http.get(url)).status == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
