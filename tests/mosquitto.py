"""A real mosquitto broker on a free loopback port, and mosquitto_sub / mosquitto_pub helpers.

Usable from any test (``from tests.mosquitto import Mosquitto``) and from the benchmarks::

    broker = Mosquitto(tmp_path)       # writes a config: listener PORT 127.0.0.1, allow_anonymous
    broker.start()
    ...
    broker.stop()                      # SIGTERM; start() again re-uses the same port

``persistence=True`` keeps retained messages and persistent sessions across stop()/start().
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout: float = 15.0, interval: float = 0.02) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class Mosquitto:
    def __init__(self, workdir: Path, *, port: int | None = None, persistence: bool = False) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 100000",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 1"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 15.0) -> None:
        for attempt in range(3):
            self._write_conf()
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            up = wait_until(
                lambda: self.proc is not None and (self.proc.poll() is not None or _port_open(self.port)), timeout
            )
            if up and self.proc.poll() is None:
                return
            err = self._reap()
            if attempt == 2:
                raise RuntimeError(f"mosquitto did not start on port {self.port}: {err}")
            time.sleep(0.5)  # the port may still be in TIME_WAIT / taken by a racing test

    def _reap(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            err = b""
        self.proc = None
        return err.decode(errors="replace")[-500:]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class MosquittoSub:
    """``mosquitto_sub`` in the background; every message is kept as (topic, payload, retained)."""

    def __init__(
        self,
        broker: Mosquitto,
        topics: list[str],
        *,
        qos: int = 1,
        client_id: str | None = None,
        persistent: bool = False,
    ) -> None:
        self.broker = broker
        self.probe = f"probe/{uuid.uuid4().hex}"
        args = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", str(qos),
                "-F", "%r %t %p", "-t", self.probe]
        for t in topics:
            args += ["-t", t]
        if client_id is not None:
            args += ["-i", client_id]
        if persistent:
            args += ["-c"]
        self.args = args
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> MosquittoSub:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        # subscribed once a probe published after start comes back
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mosquitto_pub(self.broker, self.probe, b"probe", qos=0)
            if wait_until(lambda: any(t == self.probe for t, _, _ in self.snapshot()), 0.5):
                return self
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"mosquitto_sub did not subscribe: {self.args}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip(b"\n")
            parts = line.split(b" ", 2)
            if len(parts) < 2:
                continue
            retained = parts[0] == b"1"
            topic = parts[1].decode()
            payload = parts[2] if len(parts) == 3 else b""
            with self._lock:
                self.messages.append((topic, payload, retained))

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.snapshot() if t == topic]

    def wait_for(self, pred: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 15.0) -> bool:
        return wait_until(lambda: pred(self.snapshot()), timeout)

    async def until(self, pred: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 15.0) -> bool:
        """Like wait_for, from a coroutine: polls without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while not pred(self.snapshot()):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def mosquitto_pub(broker: Mosquitto, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    args = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", str(qos), "-t", topic]
    args.append("-s" if data else "-n")  # -n: a zero-length message (clears a retained one)
    if retain:
        args.append("-r")
    subprocess.run(args, input=data, check=True, timeout=15, capture_output=True)


def read_retained(broker: Mosquitto, topic: str, timeout: float = 10.0) -> bytes | None:
    """The retained message on ``topic`` as a fresh ``mosquitto_sub`` sees it, or None."""
    try:
        r = subprocess.run(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", topic, "-C", "1",
             "-W", str(int(max(1, timeout))), "--retained-only"],
            capture_output=True, timeout=timeout + 5,
        )
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0 or not r.stdout:
        return None
    return r.stdout.rstrip(b"\n")
