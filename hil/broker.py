"""A real mosquitto broker on a free loopback port: for the HIL rig, the benchmarks and the tests::

    broker = Mosquitto(tmp_path)       # writes a config: listener PORT 127.0.0.1, allow_anonymous
    broker.start()
    ...
    broker.stop()                      # SIGTERM; start() again re-uses the same port

``persistence=True`` keeps retained messages and persistent sessions across stop()/start().
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from hil.support import HOST, free_port, port_open, stop_process, wait_until_sync


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
        if os.geteuid() == 0:
            # started as root, mosquitto drops to its own user, which cannot write its log or its persistence
            # file into a private (0700) test directory: sessions would then not survive a broker restart
            lines.append("user root")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 1"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 15.0) -> None:
        for attempt in range(3):
            self._write_conf()
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            up = wait_until_sync(
                lambda: self.proc is not None and (self.proc.poll() is not None or port_open(self.port)), timeout
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
        stop_process(self.proc)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


__all__ = ["HOST", "Mosquitto", "free_port"]
