"""A pymodbus error, under the daemon's logging: one JSON line on stdout with the others, no frame dump."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# a meter whose answers carry another protocol id: pymodbus' framer logs an error with its last frames
# ("\n>>>>> send: 0x0 0x1 ...") appended, then the poll times out (MeterError)
_SCRIPT = r"""
import asyncio, structlog
from gateway import logs
from gateway.errors import MeterError
from gateway.meters.config import MeterConfig
from gateway.meters.driver import read_block
from gateway.meters.regmap import Block
from gateway.meters.service import make_client

logs.configure("info", "json")

async def main() -> None:
    done = asyncio.Event()

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(260):
            w.write(data[:2] + b"\x12\x34\x00\x05\x01\x03\x02\x00\x00")
            await w.drain()
        w.close()
        done.set()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = make_client(MeterConfig(id="m", circuit="sub", host="127.0.0.1", port=port, timeout_s=0.5))
    await client.connect()
    try:
        await read_block(client, Block(function=4, address=0, count=1), 1, 0.5)
    except MeterError as exc:
        structlog.get_logger("t").warning("meter_read_failed", error=str(exc))
    client.close()
    async with asyncio.timeout(10):
        await done.wait()  # the connection ended: nothing is left to cancel
    srv.close()
    await srv.wait_closed()

asyncio.run(main())
"""


def test_a_pymodbus_error_is_one_json_line_without_its_frames() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "sim")])}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # nothing in another format on stderr
    assert ">>>>>" not in proc.stdout and "0x12 0x34" not in proc.stdout  # no frame dump
    lines = [json.loads(x) for x in proc.stdout.splitlines()]  # every line is JSON
    pm = [e for e in lines if str(e.get("logger", "")).startswith("pymodbus")]
    assert pm and all(e["level"] == "error" and e["frames_dropped"] >= 1 for e in pm)
    assert pm[0]["event"] == "Invalid Modbus protocol id: 4660"
    assert lines[-1]["event"] == "meter_read_failed"  # in order with the gateway's own
