"""A tiny gateway stand-in for the last-will test: runs Telemetry until killed.

    python -m tests.telemetry.lastwill_client PORT STATE_DIR
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.config import site_from_text
from gateway.telemetry.mqtt import Telemetry
from tests.telemetry.conftest import SITE_TOML, mqtt_cfg, tick


async def main(port: int, state_dir: Path) -> None:
    site = site_from_text(SITE_TOML)
    tel = Telemetry(mqtt_cfg(None, port=port), site, state_dir=state_dir)
    task = asyncio.create_task(tel.run())
    n = 0
    while True:
        n += 1
        tel.publish_tick(*tick(float(n)))
        await asyncio.sleep(0.2)
        if task.done():
            task.result()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
