"""``ems-gateway read-meter``: one live reading with its validity, exit codes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sitesim.meter import MeterSimulator

from tests.meters.conftest import SITE_HEAD, tcp_meter


async def _run(cfg: Path, meter: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "read-meter", "--config", str(cfg), meter,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_read_meter_valid_invalid_and_silent(tmp_path: Path) -> None:
    sim = MeterSimulator("sunspec_float", sunspec_base=0)
    sim.set_currents(21.5, 22.5, 23.5)
    port = await sim.start_tcp()
    cfg = tmp_path / "site.toml"
    cfg.write_text(SITE_HEAD + "[[meters]]\n" + tcp_meter("m", port, circuit="sub", map_name="sunspec_float",
                                                           timeout_s=0.5, retries=0))
    try:
        code, out = await _run(cfg, "m")
        assert code == 0, out
        assert "VALID" in out and "21.50 A" in out and "SunSpec model 213" in out
        sim.set_currents(21.5, 500, 23.5)  # above twice the 100 A circuit limit
        code, out = await _run(cfg, "m")
        assert code == 1 and "INVALID: implausible:current_l2" in out
        sim.silence()
        code, out = await _run(cfg, "m")
        assert code == 3 and "NO ANSWER" in out
        code, out = await _run(cfg, "nope")
        assert code == 2
    finally:
        await sim.stop()
