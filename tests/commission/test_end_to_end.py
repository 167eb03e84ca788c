"""``ems-gateway commission`` end to end: the real command (a subprocess) against the gateway running a
simulated site (chargers on OCPP 1.6J and 2.0.1, Modbus meters), and the report it leaves."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sitesim.site import MeterFault

from gateway.commission.runner import Options, commission
from gateway.ctl import CtlClient
from tests.commission.rig import Rig, running, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("pdftotext") is None,
                                reason="needs chromium and poppler-utils (./dev install)")


async def cli(*args: str, timeout_s: float = 400.0) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "commission", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(timeout_s):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def pdf_png_and_text(pdf: Path, tmp: Path) -> tuple[bytes, str]:
    """The first page as PNG (pdftoppm) and the whole text (pdftotext)."""
    subprocess.run(["pdftoppm", "-r", "40", "-png", "-f", "1", "-l", "1", str(pdf), str(tmp / "page")],
                   check=True, timeout=60)
    png = next(tmp.glob("page*.png")).read_bytes()
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True,
                          timeout=60).stdout
    return png, text


def limits_received(rig: Rig, cid: str) -> list[float]:
    """Every limit profile the simulated charger received (the rig's own recording)."""
    out = []
    for c in rig.sim.chargers[cid].calls_received:
        if c.action != "SetChargingProfile":
            continue
        p = c.payload
        prof = p.get("csChargingProfiles") or p.get("chargingProfile") or {}
        raw = prof.get("chargingSchedule")
        sched: dict[str, Any] = raw[0] if isinstance(raw, list) else (raw or {})
        if prof.get("stackLevel") == 1:
            out.append(float(sched["chargingSchedulePeriod"][0]["limit"]))
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_commission_all_steps_then_verify_after_a_firmware_update(tmp_path: Path) -> None:
    async with running() as rig:
        out_dir = tmp_path / "report"
        # --hold-s only bounds the waits (every charger here follows); the shortest lease the daemon takes
        code, text = await cli("--socket", str(rig.socket), "--all", "--report", str(out_dir), "--hold-s", "20",
                               "--lease-s", "2")
        assert code == 0, text
        assert "PASS" in text
        result = json.loads((out_dir / "report.json").read_text())
        pdf = out_dir / "report.pdf"
        assert pdf.stat().st_size > 10_000

        # the PDF: rendered to PNG, and its text has every section
        png, text_pdf = await asyncio.to_thread(pdf_png_and_text, pdf, tmp_path)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
        for section in ("Circuit tree, limits, meters and CT placement", "Setpoints and fail-safe",
                        "Load calculation (NEC 625.42(A), 750.30)", "Meter wiring", "Simulated-load test",
                        "Fail-safe test", "Inventory", "Marking and signatures", "Authority having jurisdiction",
                        result["config_hash"], "PASS: every check passed"):
            assert section in text_pdf, section
        assert "SimVendor" in text_pdf and "sim-1" in text_pdf

        # the figures against the rig's recording
        inv = {c["id"]: c for c in result["inventory"]["chargers"]}
        assert {inv[c]["ocpp_version"] for c in inv} == {"1.6", "2.0.1"}
        assert all(inv[c]["firmware"] == "sim-1" and inv[c]["follows_limit"] == "yes" for c in inv)
        service = next(t for t in result["load_tests"] if t["circuit"] == "service")
        assert service["steady_before"]
        assert {r["charger"] for r in service["results"] if r["status"] == "pass"} == {"CP1", "CP2", "CP3", "DC1"}
        for r in service["results"]:
            # the lowered limit is one the charger really received; its EV cannot have followed faster than it
            # responds (1.5 s in the rig), and the charger reports every second
            assert any(abs(x - r["limit_lowered"]) < 0.05 for x in limits_received(rig, r["charger"])), r
            assert 1.0 <= r["under_s"] <= 1.5 + 1.0 + 1.5, r
            assert r["accepted_s"] <= r["under_s"]
        p1 = next(t for t in result["load_tests"] if t["circuit"] == "p1")
        assert {r["charger"] for r in p1["results"]} == {"CP1", "CP2"}
        assert all(r["passed"] for r in p1["results"])
        fs = {x["charger"]: x for x in result["failsafe_test"]}
        for cid, x in fs.items():
            assert x["installed"] and x["tested"] and x["passed"], json.dumps(x)
            assert x["during"] == pytest.approx(rig.sim.site.chargers[cid].failsafe_limit)
        phase = [f for f in result["wiring"]["findings"] if f["check"] == "phase"]
        assert len(phase) == 3 and all(f["ok"] for f in phase)

        # maintenance: nothing changed, then a charger reboots with a new firmware
        code, text = await cli("--socket", str(rig.socket), "--verify", "--no-pdf")
        assert code == 0, text
        rig.app.verify_delay_s = 0.5  # the daemon verifies by itself after the reboot (60 s on a site)
        sim = rig.sim.chargers["CP2"]
        sim.firmware = "sim-2"
        boots = sim.boots
        await sim.disconnect()
        assert await wait_for(lambda: sim.boots > boots and sim.online, 20)
        assert await wait_for(lambda: rig.app.ocpp.boots["CP2"]["firmware"] == "sim-2", 10)
        state = Path(rig.app.site.state_dir) / "commission"

        def daemon_verified() -> bool:
            return any("CP2: firmware sim-1 -> sim-2" in p.read_text() for p in state.glob("verify-*/report.json"))

        assert await wait_for(daemon_verified, 30), "the daemon did not verify after the new firmware"
        code, text = await cli("--socket", str(rig.socket), "--verify", "--no-pdf")
        assert code == 1, text
        assert "CP2: firmware sim-1 -> sim-2" in text


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_wiring_faults_and_a_charger_that_ignores_limits_are_found_and_named(tmp_path: Path) -> None:
    faults = {"m-p1": MeterFault.parse("swap:L1-L2,invert")}
    async with running(faults=faults, can_export=True, noncompliant=("CP3",)) as rig:
        client = CtlClient(rig.socket)
        try:
            # CP3 never follows, so every wait on it runs to hold_s: 10 s is still several times what a charger
            # that follows needs here (the EV's 1.5 s, a report a second); the panel's own load test is the
            # first test's (its findings here are the phase step's and the service's)
            result, files = await commission(
                client, Options(inventory=True, wiring=True, load_test=True, hold_s=10.0, recover_s=10.0,
                                sub_circuits=False),
                report_dir=tmp_path, pdf=False)
        finally:
            await client.close()
    findings: list[dict[str, Any]] = result["wiring"]["findings"]
    bad = {(f["meter"], f["check"], f["charger"]): f for f in findings if not f["ok"]}
    sign = bad[("m-p1", "sign", "")]
    assert "invert = true for meter m-p1" in sign["fix"]
    for cid in ("CP1", "CP2"):
        f = bad[("m-p1", "phase", cid)]
        assert "set phase_map = ['L2', 'L1', 'L3']" in f["fix"], f
    assert ("m-main", "sign", "") not in bad
    ignored = bad[("m-main", "phase", "CP3")]
    assert "ignores its limit" in ignored["detail"]
    service = {r["charger"]: r for r in next(t for t in result["load_tests"] if t["circuit"] == "service")["results"]}
    assert service["CP3"]["status"] == "FAIL: it does not follow its limit"
    assert service["DC1"]["passed"]
    html = await asyncio.to_thread(Path(files["html"]).read_text)
    assert "ACTION NEEDED" in html and "CP3: FAIL: it does not follow its limit" in html
