"""The OCPP frame corpus (tests/corpus/ocpp/frames.json) sent by a raw WebSocket client as a configured charger:
each frame is answered by the gateway with the expected CALLERROR, dropped (nothing answers it and the CMS never
sees it), relayed to the CMS, or relayed and refused by the CMS (its CALLERROR passed back); after every frame
the gateway still answers a Heartbeat, and its task is alive."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.ocpp.conftest import Cms, wait_for

FRAMES: list[dict[str, str]] = json.loads((Path(__file__).resolve().parent / "ocpp" / "frames.json").read_text())
IDENTITY = {"2.0.1": ("CP201", None), "1.6": ("CP16", "secret-cp16")}


def _wire(frame: str) -> str | bytes:
    return bytes.fromhex(frame[4:]) if frame.startswith("hex:") else frame


async def _until_probe(ws: Any, probe: str) -> list[Any]:
    """Everything the gateway sends until the answer to our Heartbeat ``probe`` (answering its own CALLs)."""
    got: list[Any] = []
    async with asyncio.timeout(10):
        while True:
            f = json.loads(await ws.recv())
            if f[0] == 2:
                await ws.send(json.dumps([3, f[1], {"status": "Accepted"}]))
                continue
            if f[1] == probe:
                return got
            got.append(f)


@pytest.mark.parametrize("version", ["2.0.1", "1.6"])
async def test_frame_corpus(version: str, cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port, ocpp_extra="max_frame_bytes = 16384")
    cid, password = IDENTITY[version]
    headers = [] if password is None else [("Authorization", "Basic " + base64.b64encode(
        f"{cid}:{password}".encode()).decode())]
    sub = "ocpp2.0.1" if version == "2.0.1" else "ocpp1.6"
    ws = await connect(f"ws://127.0.0.1:{gw.ctrl.port}/ocpp/{cid}", subprotocols=[sub],  # type: ignore[list-item]
                       additional_headers=headers, max_size=None)
    cases = [f for f in FRAMES if f["version"] == version]
    wrong: list[tuple[str, str, list[Any]]] = []
    try:
        await wait_for(lambda: cid in cms.conns, what="upstream")
        for i, case in enumerate(cases):
            kind, _, rest = case["expect"].partition(":")
            mid, _, code = rest.partition(":")
            await ws.send(_wire(case["frame"]))
            probe = f"probe-{i}"
            await ws.send(json.dumps([2, probe, "Heartbeat", {}]))
            got = await _until_probe(ws, probe)  # the gateway is alive and serving after this frame
            errors = [f for f in got if f[0] == 4 and f[1] == mid]
            if kind == "callerror":
                ok = bool(errors) and errors[0][2] == code
            elif kind == "dropped":
                ok = not any(f[1] == mid for f in got) and not any(f'"{mid}"' in r for _, r in cms.raw)
            else:  # relayed: the CMS got it (cmserror: and answered it with that CALLERROR, passed back)
                assert kind in ("relayed", "cmserror")
                with contextlib.suppress(AssertionError, TimeoutError):
                    await wait_for(lambda m=mid: any(f'"{m}"' in r for _, r in cms.raw), what=case["name"])
                answered = (not errors) if kind == "relayed" else bool(errors) and errors[0][2] == code
                ok = answered and any(f'"{mid}"' in r for _, r in cms.raw)
            if not ok:
                wrong.append((case["name"], case["expect"], got))
            assert gw.task is not None and not gw.task.done(), case["name"]
        assert not wrong, "\n".join(map(str, wrong))
        # a frame the gateway refused was never relayed
        refused = {f["expect"].split(":")[1] for f in cases if f["expect"].startswith(("callerror", "dropped"))}
        leaked = [(m, r[:80]) for _, r in cms.raw for m in refused if m not in ("-1", "none") and f'"{m}"' in r]
        assert not leaked, leaked[:3]
    finally:
        await ws.close()
