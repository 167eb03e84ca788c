"""The control socket on a running gateway: its mode, its refusals, and a commissioning run cut short by
Ctrl-C leaves no test input behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path

from gateway.ctl import CtlClient
from tests.commission.rig import running, wait_for

ROOT = Path(__file__).resolve().parents[2]


async def test_socket_refusals_and_ctrl_c_clears_the_simulated_load() -> None:
    async with running(plug=("CP1", "CP2")) as rig:
        assert stat.S_IMODE(os.stat(rig.socket).st_mode) == 0o660
        reader, writer = await asyncio.open_unix_connection(str(rig.socket))
        writer.write(b"{not json\n[1]\n")
        await writer.drain()
        assert json.loads(await reader.readline())["ok"] is False
        assert json.loads(await reader.readline()) == {"ok": False, "error": "no object"}
        writer.close()
        client = CtlClient(rig.socket)
        try:
            assert (await client.handle({"cmd": "nope"}))["ok"] is False
            ans = await client.handle({"cmd": "call", "charger": "CP1", "action": "SetChargingProfile", "payload": {}})
            assert ans == {"ok": False, "error": "SetChargingProfile is not a read-back"}
            ans = await client.handle({"cmd": "override", "charger": "CP1", "limit": 6.0, "duration_s": 5000})
            assert ans["ok"] is False and not rig.app.control.test_overrides
            status = await client.handle({"cmd": "status"})
            assert status["ok"] and status["chargers"]["CP1"]["boot"]["vendor"] == "SimVendor"
        finally:
            await client.close()

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "commission", "--socket", str(rig.socket), "--load-test", "--no-pdf",
            "--hold-s", "60", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            assert await wait_for(lambda: rig.app.control.test_load is not None, 60), "the load test did not start"
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(30):
                out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 130, out.decode()
        # cleared by the command on its way out, not by the daemon's own timeout (60 s + 30 s away)
        assert rig.app.control.test_load is None and not rig.app.control.test_overrides
