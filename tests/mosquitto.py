"""mosquitto_sub / mosquitto_pub helpers for the tests; the broker itself is ``hil.broker.Mosquitto``."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, cast

from hil.broker import HOST, Mosquitto
from hil.support import free_port, stop_process, wait_until, wait_until_sync

__all__ = ["HOST", "Mosquitto", "MosquittoSub", "free_port", "mosquitto_pub", "read_retained", "running_broker"]


Message = tuple[str, bytes, bool]  # (topic, payload, retained)


class MessagesPred(Protocol):
    """A condition on the messages received so far (``lambda ms, n=i: ...`` binding a loop variable included)."""

    def __call__(self, messages: list[Message], /) -> bool: ...


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
            if wait_until_sync(lambda: any(t == self.probe for t, _, _ in self.snapshot()), 0.5):
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

    def last_json(self, topic: str) -> dict[str, Any] | None:
        """The last message on ``topic`` as JSON (None: none yet, or an empty one)."""
        msgs = self.on(topic)
        return cast(dict[str, Any], json.loads(msgs[-1])) if msgs and msgs[-1] else None

    def wait_for(self, pred: MessagesPred, timeout: float = 15.0) -> bool:
        return wait_until_sync(lambda: pred(self.snapshot()), timeout)

    async def until(self, pred: MessagesPred, timeout: float = 15.0) -> bool:
        """Like wait_for, from a coroutine: polls without blocking the event loop."""
        return await wait_until(lambda: pred(self.snapshot()), timeout, 0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


@contextlib.contextmanager
def running_broker(workdir: Path) -> Iterator[Mosquitto]:
    """A real mosquitto (``listener PORT 127.0.0.1``, anonymous) for the length of the block."""
    broker = Mosquitto(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


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
