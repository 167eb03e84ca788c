"""The retained last will: a gateway process killed outright shows as offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.mosquitto import Mosquitto, MosquittoSub, read_retained

ROOT = "ems/t-site/"
REPO = Path(__file__).resolve().parents[2]


def test_last_will_when_killed(mosquitto: Mosquitto, tmp_path: Path) -> None:
    sub = MosquittoSub(mosquitto, [ROOT + "status", ROOT + "site"]).start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.telemetry.lastwill_client", str(mosquitto.port), str(tmp_path / "state")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert sub.wait_for(lambda ms: (ROOT + "status", b"online", False) in ms and bool(sub.on(ROOT + "site")),
                            timeout=30), proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
        assert json.loads(sub.on(ROOT + "site")[-1])["mode"] == "normal"
        assert read_retained(mosquitto, ROOT + "status") == b"online"
        proc.send_signal(signal.SIGKILL)  # no clean shutdown: the broker sends the will
        proc.wait(timeout=10)
        assert sub.wait_for(lambda ms: sub.on(ROOT + "status")[-1:] == [b"offline"], timeout=20)
        assert read_retained(mosquitto, ROOT + "status") == b"offline"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        sub.stop()
