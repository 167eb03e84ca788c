"""The daemon's [logging] through a reload (SIGHUP): the level and the per-logger levels change at once."""

from __future__ import annotations

import asyncio
import signal
import tomllib
from typing import Any

from hil.tomlw import dumps
from tests.daemon.conftest import Rig, wait_for


def _reload(rig: Rig, logging_section: dict[str, Any]) -> int:
    """Write ``[logging]`` into the rig's config and send SIGHUP; the index of the next log line."""
    raw = tomllib.loads(rig.config.read_text())
    raw["logging"] = logging_section
    rig.config.write_text(dumps(raw))
    mark = len(rig.daemon.logs)
    rig.daemon.signal(signal.SIGHUP)
    return mark


async def test_a_reload_applies_the_logging_levels(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(start_chargers=False)
    d = rig.daemon
    assert not d.events("tick")  # info: the control loop's per-tick debug line is off

    # one logger to debug: its per-tick line appears (every tick_s = 0.5 s)
    mark = _reload(rig, {"level": "info", "loggers": {"gateway.control": "debug"}})
    await d.wait_log("config_reloaded")
    assert await wait_for(lambda: len([e for e in d.logs[mark:] if e.get("event") == "tick"]) >= 3, 20)

    # warning, with the daemon's own module kept at info: its config_reloaded shows, the ticks stop
    mark = _reload(rig, {"level": "warning", "loggers": {"gateway.app": "info"}})
    assert await wait_for(lambda: any(e.get("event") == "config_reloaded" for e in d.logs[mark:]), 20)
    after = next(i for i in range(mark, len(d.logs)) if d.logs[i].get("event") == "config_reloaded")
    await asyncio.sleep(2.0)  # four ticks' worth
    later = d.logs[after + 1:]
    assert not [e for e in later if e.get("event") == "tick"]
    assert all(e.get("level") in ("warning", "error", "critical") for e in later), later[:5]
