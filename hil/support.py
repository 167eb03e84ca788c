"""Small helpers shared by the HIL rig, the benchmarks and the tests: a free loopback port and polling.

One home for what the tests and the rig each wrote again::

    port = free_port()                              # an ephemeral TCP port on 127.0.0.1, free right now
    ok = await wait_until(lambda: x.ready, 20)      # poll from a coroutine; True, or False at the deadline
    ok = wait_until_sync(lambda: x.ready, 20)       # the same from a thread / a synchronous fixture
    v = await eventually(lambda: x.value, 15, what="a value")   # the truthy value, or AssertionError
    async with running_task(svc.run()) as task: ...             # a task for the block, cancelled after it
    proc_cpu_s(pid), proc_rss_mb(pid)                           # a process's CPU seconds and RSS (Linux /proc)
    stop_process(popen)                                         # SIGTERM, SIGKILL if it outlives the timeout

The product (``gateway/``) never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

HOST = "127.0.0.1"

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class Poll(Protocol[_T_co]):
    """Something called with no arguments (a ``lambda c=cid: ...`` binding a loop variable included)."""

    def __call__(self) -> _T_co: ...


def free_port(host: str = HOST) -> int:
    """A TCP port the kernel has just handed out on ``host`` and taken back (free until someone binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = HOST, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


async def wait_until(pred: Poll[object], timeout_s: float = 15.0, interval_s: float = 0.05) -> bool:
    """Poll ``pred`` every ``interval_s`` without blocking the loop until it is truthy (True) or
    ``timeout_s`` passed (False; ``pred`` is asked one last time at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(interval_s)
    return bool(pred())


def wait_until_sync(pred: Poll[object], timeout_s: float = 15.0, interval_s: float = 0.02) -> bool:
    """:func:`wait_until` for synchronous code (sleeps the thread)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval_s)
    return bool(pred())


async def eventually(
    pred: Poll[_T | None], timeout_s: float = 15.0, what: str = "condition", interval_s: float = 0.02
) -> _T:
    """Poll ``pred`` until it returns something truthy and return that; AssertionError naming ``what`` at
    the deadline (for tests that assert on the outcome)."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} ({timeout_s:g} s)")
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def running_task(coro: Coroutine[Any, Any, _T]) -> AsyncIterator[asyncio.Task[_T]]:
    """``coro`` as a task for the length of the block; cancelled (and awaited) when the block ends."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    """End a child process: SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; its exit status."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=timeout_s)


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    """Process ``pid``'s resident memory in MiB (``/proc/PID/status``; NaN when it reports none)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


__all__ = ["HOST", "Poll", "eventually", "free_port", "port_open", "proc_cpu_s", "proc_rss_mb", "running_task",
           "stop_process", "wait_until", "wait_until_sync"]
