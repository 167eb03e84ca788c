"""The gateway killed again and again during a replay, and a disk that fills up during an outage."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import threading
from pathlib import Path

from gateway.ocpp_proxy.store import Store

from .conftest import Cms, site_text, wait_for
from .test_exact import T0, RawCharger

CHARGER_201 = """
[[chargers]]
id = "CP201"
ocpp_version = "2.0.1"
kind = "ac"
circuit = "p1"
phases = 3
max_current_a = 32
failsafe_current_a = 6
"""


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.lines: list[str] = []
        self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode())

    @classmethod
    async def spawn(cls, cfg: Path, fsize_limit: int | None = None) -> Proc:
        """Start the controller; the lines it logged before listening are the new Proc's first ``lines``."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        def limit() -> None:
            if fsize_limit is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), no signal
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.ocpp_proxy",
            str(cfg),
            stdout=asyncio.subprocess.PIPE,
            env=env,
            preexec_fn=limit,
        )
        assert proc.stdout is not None
        early: list[str] = []
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, "the gateway exited"
            early.append(line)
            if line.startswith("ocpp_proxy_listening"):
                started = cls(proc, int(line.split("port=")[1].split()[0]))
                started.lines[:0] = early
                return started

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._task

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 10)
        await self._task


def _mv(i: int) -> str:
    return (
        f'[2,"mv-{i}","MeterValues",{{"evseId":1,"meterValue":[{{"timestamp":"{T0}","sampledValue":'
        f'[{{"value":{i}.5,"measurand":"Energy.Active.Import.Register"}}]}}]}}]'
    )


def _te(i: int, event: str) -> str:
    return (
        f'[2,"te-{i}","TransactionEvent",{{"eventType":"{event}","timestamp":"{T0}","triggerReason":"Authorized",'
        f'"seqNo":{i},"transactionInfo":{{"transactionId":"k1"}},"evse":{{"id":1,"connectorId":1}}}}]'
    )


async def test_sigkill_loop_during_replay_no_message_counted_twice(tmp_path: Path) -> None:
    cms = Cms()  # down: the outage
    cfg = tmp_path / "site.toml"
    cfg.write_text(site_text(tmp_path / "state", cms.port, chargers=CHARGER_201))
    gw = await Proc.spawn(cfg)
    sent = [_te(0, "Started"), *[_mv(i) for i in range(1, 299)], _te(299, "Ended")]
    ch = await RawCharger.open(gw.port, "CP201", "2.0.1")
    for raw in sent:
        assert (await ch.call(raw))[0] == 3
    await ch.close()
    kills = 0
    try:
        await cms.start()
        for _ in range(5):
            if kills:
                gw = await Proc.spawn(cfg)
            ch = await RawCharger.open(gw.port, "CP201", "2.0.1")
            seen = len(cms.raw)
            await wait_for(lambda seen=seen: len(cms.raw) >= seen + 30, 20, what="replay under way")
            await gw.kill()
            kills += 1
            await ch.close()
        gw = await Proc.spawn(cfg)
        ch = await RawCharger.open(gw.port, "CP201", "2.0.1")

        def got() -> list[str]:
            return [r for c, r in cms.raw if c == "CP201" and json.loads(r)[2] in ("MeterValues", "TransactionEvent")]

        await wait_for(lambda: {json.loads(r)[1] for r in got()} >= {json.loads(r)[1] for r in sent}, 60, what="all")
        await asyncio.sleep(0.3)
        received = got()
        first: dict[str, str] = {}
        for r in received:
            first.setdefault(json.loads(r)[1], r)
        # every message exactly as sent, in order; a repeat (if any) carries the same id and bytes, so a CMS
        # recognises it: counted by message id, nothing is counted twice
        assert list(first.values()) == sent
        repeats = len(received) - len(first)
        assert all(r == first[json.loads(r)[1]] for r in received)
        assert repeats <= kills, f"{repeats} repeats for {kills} kills"
        print(f"\nsigkill loop: {kills} kills, {len(sent)} messages, {repeats} repeated (same id)")
        await ch.close()
    finally:
        await gw.stop()
        await cms.stop()


async def test_disk_full_periodic_dropped_transaction_refused_site_keeps_controlling(tmp_path: Path) -> None:
    cms = Cms()  # down
    cfg = tmp_path / "site.toml"
    cfg.write_text(site_text(tmp_path / "state", cms.port, chargers=CHARGER_201))
    gw = await Proc.spawn(cfg, fsize_limit=256 * 1024)
    ch = await RawCharger.open(gw.port, "CP201", "2.0.1")
    try:
        await wait_for(lambda: ch.calls, what="the fail-safe profile")
        sample = '{"value":1,"context":"Other","measurand":"Energy.Active.Import.Register"}'
        samples = ",".join([sample] * 40)  # about 3 kB a message
        i = 0
        while not any("queue_write_refused" in ln for ln in gw.lines):
            i += 1
            assert i < 2000, "the file-size limit never bit"
            raw = (
                f'[2,"big-{i}","MeterValues",{{"evseId":1,"meterValue":[{{"timestamp":"{T0}","sampledValue":'
                f"[{samples}]}}]}}]"
            )
            ans = await ch.call(raw)
            assert ans[0] == 3, "a periodic message is always answered (kept, or dropped when full)"
        assert any("queue_full" in ln for ln in gw.lines), "the operator is told"
        # a transaction's begin or end that cannot be kept is refused: the charger keeps it and retries
        big_te = _te(1, "Ended").replace(
            '"connectorId":1}}', f'"connectorId":1}},"meterValue":[{{"timestamp":"{T0}","sampledValue":[{samples}]}}]}}'
        )
        for j in range(50):
            ans = await ch.call(big_te.replace('"te-1"', f'"end-{j}"'))
            if ans[0] == 4:
                break
        assert ans[0] == 4 and ans[2] == "InternalError", ans
        # the site keeps working: answered, and a reconnecting charger gets its fail-safe profile again
        assert (await ch.call('[2,"hb","Heartbeat",{}]'))[0] == 3
        await ch.close()
        ch = await RawCharger.open(gw.port, "CP201", "2.0.1")
        await wait_for(lambda: any(c[2] == "SetChargingProfile" for c in ch.calls), what="control after disk full")
        assert gw.proc.returncode is None
    finally:
        await ch.close()
        await gw.stop()


async def test_a_charger_that_connects_on_a_full_disk_is_still_managed(tmp_path: Path) -> None:
    """Issue 13, finding 2: saving a newly connected charger's learned capabilities fails on a full disk; it
    still gets its fail-safe profile (the store writes behind, from memory; this controller runs without the
    control loop, so no limit profile follows here)."""
    cms = Cms()  # down
    cfg = tmp_path / "site.toml"
    cfg.write_text(site_text(tmp_path / "state", cms.port, chargers=CHARGER_201))
    gw = await Proc.spawn(cfg)
    await gw.stop()  # the store exists; from now on it cannot grow
    db = max((p for p in (tmp_path / "state").iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    gw = await Proc.spawn(cfg, fsize_limit=max(db.stat().st_size, 4096))
    ch = await RawCharger.open(gw.port, "CP201", "2.0.1")
    try:
        await wait_for(lambda: any(c[2] == "SetChargingProfile" for c in ch.calls),
                       what="the fail-safe profile on a full disk")
        purposes = [json.dumps(c[3]) for c in ch.calls if c[2] == "SetChargingProfile"]
        assert any('"stackLevel": 0' in p or '"stackLevel":0' in p for p in purposes), purposes
        assert (await ch.call('[2,"hb","Heartbeat",{}]'))[0] == 3
        assert gw.proc.returncode is None
        # the capabilities could not be saved (reported), and that did not stop the charger's set-up
        assert any("ocpp_store_write_failed" in ln and "caps" in ln for ln in gw.lines), gw.lines[-20:]
    finally:
        await ch.close()
        await gw.stop()


async def test_a_store_that_cannot_be_opened_falls_back_to_memory_and_still_manages(tmp_path: Path) -> None:
    """A disk so full that the store cannot even be created: the controller says so and keeps the store in
    memory, and a charger still gets its fail-safe profile (nothing about control waits for the disk)."""
    cms = Cms()  # down
    cfg = tmp_path / "site.toml"
    cfg.write_text(site_text(tmp_path / "state", cms.port, chargers=CHARGER_201))
    gw = await Proc.spawn(cfg, fsize_limit=4096)
    ch = await RawCharger.open(gw.port, "CP201", "2.0.1")
    try:
        assert any("ocpp_store_unavailable" in ln for ln in gw.lines), gw.lines[-10:]
        await wait_for(lambda: any(c[2] == "SetChargingProfile" for c in ch.calls), what="the fail-safe profile")
        assert (await ch.call('[2,"hb","Heartbeat",{}]'))[0] == 3
        assert gw.proc.returncode is None
    finally:
        await ch.close()
        await gw.stop()


def test_a_token_verdict_is_known_before_its_write_is_committed(tmp_path: Path) -> None:
    """The CMS accepts a token and goes away a moment later: the offline answer must already know it, though
    the cache is written behind (the writer thread is held here so that nothing is committed yet)."""
    store = Store(tmp_path / "s.db")
    gate = threading.Event()
    try:
        store.submit(lambda db: gate.wait(5))  # the writer is busy: what follows waits in its queue
        store.remember_token("OK-1", "Accepted")
        assert store.token_status("OK-1") == "Accepted"
        gate.set()
        store.flush()
        assert store.token_status("OK-1") == "Accepted"  # from the table now
        assert not store._tokens  # the overlay is emptied once committed
    finally:
        gate.set()
        store.close()
