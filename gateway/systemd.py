"""The systemd notify protocol (sd_notify), spoken directly over the NOTIFY_SOCKET datagram socket.

READY=1 once the first complete snapshot is in, STATUS= a one-line summary, WATCHDOG=1 from the
control loop itself, RELOADING=1 (with MONOTONIC_USEC) ... READY=1 around a reload, STOPPING=1
on the way out. Without NOTIFY_SOCKET (not under systemd) every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, address: str | None = None, *, watchdog_usec: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._addr: str | bytes | None = None
        self._sock: socket.socket | None = None
        if addr:
            self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        wd = watchdog_usec if watchdog_usec is not None else os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_interval_s: float | None = None
        if wd and (pid is None or pid == str(os.getpid())):
            try:
                self.watchdog_interval_s = int(wd) / 1e6
            except ValueError:
                log.warning("watchdog_usec_invalid", value=wd)
        self._last_status = ""
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        if self._sock is None or self._addr is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._addr)
        except OSError as exc:  # systemd gone or socket full: never fatal, logged once until it works again
            if not self._failing:
                log.warning("sd_notify_failed", error=str(exc))
                self._failing = True
            return False
        if self._failing:
            log.info("sd_notify_recovered")
            self._failing = False
        return True

    def ready(self, status: str | None = None) -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
