"""The real gateway as a child process, for the HIL rig and the daemon tests alike::

    gw = GatewayProcess(config_path, log_path)            # env: NOTIFY_SOCKET etc. only if given
    await gw.start()                                      # python -m gateway run --config FILE --log-format json
    await gw.wait_log("gateway_ready", timeout=30)        # the first matching JSON log line
    gw.events("limit_changed", charger="CP1")             # every matching line so far
    await gw.stop()                                       # SIGTERM (SIGKILL after timeout_s); its exit status

The log goes straight into ``log_path`` (a file, never a pipe: a reader slow to read a pipe would block the
gateway's writes, and so its loop); a task tails the file and keeps each JSON object line in ``logs`` with
``_ts``, the epoch seconds of its own ``timestamp``, and ``_t``, the same relative to ``t0()`` (the rig's
scenario time 0). stderr goes into the same file unless ``stderr_path`` is given (then ``stderr`` holds it
once the process ended). ``start()`` again after an exit appends to the same log (a restart).
``events`` keeps only those events' lines (the others are not parsed: a benchmark's reader stays cheap next
to a busy gateway's debug log); ``python_args`` go before ``-m gateway`` (``("-m", "cProfile", "-o", FILE)``).

The product never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from signal import SIGKILL, SIGTERM
from typing import Any

from hil.support import wait_until

# the service manager's variables are the caller's to give: a gateway started by a test or the rig never
# talks to the systemd that may be running the test itself
_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class GatewayProcess:
    """``python -m gateway run --config FILE --log-format json``; see the module docstring."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        *,
        t0: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
        stderr_path: Path | None = None,
        own_session: bool = False,
        events: Collection[str] | None = None,
        python_args: Sequence[str] = (),
        cpus: Collection[int] | None = None,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.t0 = t0
        self.env = dict(env or {})
        self.stderr_path = stderr_path
        self.own_session = own_session  # its own session: its own autogroup, CPU not shared with the caller's
        self.python_args = tuple(python_args)
        self.cpus = None if cpus is None else frozenset(cpus)  # the CPUs it may run on (None: any)
        # the byte strings one of which a kept line contains (None: every line is kept)
        self._keys = None if events is None else tuple(f'"event": "{e}"'.encode() for e in events)
        self.proc: asyncio.subprocess.Process | None = None
        self.logs: list[dict[str, Any]] = []
        self.stderr = b""
        self.starts = 0
        self._reader: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        if self._reader is not None:  # the previous process's lines first
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._reader
        with contextlib.ExitStack() as files:
            out = files.enter_context(self.log_path.open("ab"))
            err: Any = asyncio.subprocess.STDOUT
            if self.stderr_path is not None:
                err = files.enter_context(self.stderr_path.open("wb"))
            offset = out.tell()
            # taskset execs the interpreter: the same pid, on the CPUs given
            pin = () if self.cpus is None else ("taskset", "-c", ",".join(map(str, sorted(self.cpus))))
            self.proc = await asyncio.create_subprocess_exec(
                *pin, sys.executable, *self.python_args,
                "-m", "gateway", "run", "--config", str(self.config), "--log-format", "json",
                stdout=out, stderr=err, env=env, start_new_session=self.own_session,
            )
        self.starts += 1
        self._reader = asyncio.create_task(self._read(self.proc, offset))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        """Its exit status, once it ended and its log was read (TimeoutError after ``timeout``)."""
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            rc = await self.proc.wait()
        await self._finish_reading()
        return rc

    async def stop(self, sig: int = SIGTERM, timeout_s: float = 30.0) -> int | None:
        """``sig``, then SIGKILL if it has not ended after ``timeout_s``; its exit status (None: never started)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout_s):
                rc = await proc.wait()
        except TimeoutError:
            proc.kill()
            rc = await proc.wait()
        await self._finish_reading()
        return rc

    async def kill(self) -> None:
        """SIGKILL if still running (a teardown)."""
        with contextlib.suppress(Exception):
            await self.stop(SIGKILL, 10)

    # ---- the log -----------------------------------------------------------------------------------
    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.logs if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]

    async def wait_log(self, name: str, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        """The first log line of event ``name`` with fields ``match``; AssertionError after ``timeout``."""
        ok = await wait_until(lambda: self.events(name, **match), timeout)
        assert ok, f"no log {name} {match} within {timeout}s; last: {self.logs[-5:]}"
        return self.events(name, **match)[0]

    def ready_count(self) -> int:
        return sum(1 for e in self.logs if e.get("event") == "gateway_ready")

    async def _finish_reading(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._reader
        if self.stderr_path is not None:
            with contextlib.suppress(OSError):
                self.stderr = self.stderr_path.read_bytes()

    def _parse(self, line: bytes) -> None:
        if self._keys is not None and not any(k in line for k in self._keys):
            return
        try:
            d = json.loads(line)
        except ValueError:
            return  # not a JSON line (a traceback on stderr, a library's own print)
        if not isinstance(d, dict):
            return
        ts = d.get("timestamp")
        try:
            d["_ts"] = datetime.fromisoformat(ts).timestamp() if isinstance(ts, str) else time.time()
        except ValueError:
            d["_ts"] = time.time()
        d["_t"] = d["_ts"] - self.t0()
        self.logs.append(d)

    async def _read(self, proc: asyncio.subprocess.Process, offset: int) -> None:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            rest = b""
            while True:
                chunk = f.read()
                if chunk:
                    *lines, rest = (rest + chunk).split(b"\n")
                    for line in lines:
                        self._parse(line)
                    continue
                if proc.returncode is not None:
                    if rest:
                        self._parse(rest)
                    return
                await asyncio.sleep(0.02)


__all__ = ["GatewayProcess"]
