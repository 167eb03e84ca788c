"""A real mosquitto broker on a loopback port for the rig (stop/start keeps the port: a broker outage)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from hil.sim import SimError

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class Broker:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if shutil.which("mosquitto") is None:
            raise SimError("mosquitto is not installed (apt-get install mosquitto)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} {HOST}\nallow_anonymous true\nlog_dest file {self.dir}/mosquitto.log\n"
                        "max_queued_messages 100000\n")
        for _ in range(3):
            self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None and not port_open(self.port):
                time.sleep(0.05)
            if self.proc.poll() is None and port_open(self.port):
                return
            self.stop()
            time.sleep(0.5)
        raise SimError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
