"""Shared helpers for the meter tests: sites with meters, polling for conditions."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from gateway.config import Site, site_from_text
from gateway.meters.service import MeterService
from hil.support import eventually, running_task

wait_for = eventually  # the name the meter tests know


def running(svc: MeterService) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    """The meter service's run() as a task for the length of the block."""
    return running_task(svc.run())

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

SITE_HEAD = """
[site]
id = "test"
[service]
voltage_ll_v = 400
limit_a = 400
[[circuits]]
id = "sub"
parent = "service"
limit_a = 100
"""


def make_site(*meters: str, head: str = SITE_HEAD) -> Site:
    return site_from_text(head + "\n".join(f"[[meters]]\n{m}" for m in meters))


def tcp_meter(mid: str, port: int, *, circuit: str = "service", map_name: str = "eastron_sdm630", **kw: object) -> str:
    lines = [f'id = "{mid}"', f'circuit = "{circuit}"', f'map = "{map_name}"', 'transport = "tcp"',
             'host = "127.0.0.1"', f"port = {port}"]
    lines += [f"{k} = {_toml(v)}" for k, v in kw.items()]
    return "\n".join(lines) + "\n"


def rtu_meter(mid: str, device: str, device_id: int, *, circuit: str = "service",
              map_name: str = "eastron_sdm630", **kw: object) -> str:
    lines = [f'id = "{mid}"', f'circuit = "{circuit}"', f'map = "{map_name}"', 'transport = "rtu"',
             f'device = "{device}"', f"device_id = {device_id}"]
    lines += [f"{k} = {_toml(v)}" for k, v in kw.items()]
    return "\n".join(lines) + "\n"


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
