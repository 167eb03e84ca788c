"""The charger's socket: frames written in order, and one outstanding CALL towards the charger."""

from __future__ import annotations

from typing import Any

from structlog.typing import FilteringBoundLogger
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from gateway.ocpp_proxy.frames import CALL, call_text, new_message_id
from gateway.ocpp_proxy.ports import Spawn
from gateway.ocpp_proxy.relay import CallChannel, OutCall
from gateway.ocpp_proxy.typed import Call, action_of, payload_of


class ChargerLink:
    def __init__(
        self, ws: ServerConnection, charger_id: str, call_timeout_s: float, spawn: Spawn, log: FilteringBoundLogger
    ) -> None:
        self.ws = ws
        self._spawn = spawn
        self._log = log
        self._sends = 0  # frames handed to ws.send and not yet written (a CALL written at once must not pass them)
        self.calls = CallChannel("to_charger", charger_id, ws.send, call_timeout_s, send_now=self._write_now)

    def own_call(self, call: Call, key: str | None = None) -> OutCall:
        """One of the gateway's own CALLs (an ``ocpp`` call dataclass). With ``key``, a newer CALL of the same
        key replaces one still waiting to be sent."""
        return self.own_dict_call(action_of(call), payload_of(call), key)

    def own_dict_call(self, action: str, payload: dict[str, Any], key: str | None = None) -> OutCall:
        """A CALL whose payload is JSON already (a commissioning read-back handed over the control socket)."""
        mid = new_message_id()
        return self.calls.submit(OutCall(mid, call_text(mid, action, payload), action, True, payload, key=key))

    def own_json_call(self, action: str, payload_json: str, key: str | None = None) -> OutCall:
        """A CALL whose payload is serialised already (:func:`~gateway.ocpp_proxy.policy.set_profile_json`)."""
        mid = new_message_id()
        return self.calls.submit(OutCall(mid, f'[{CALL},"{mid}","{action}",{payload_json}]', action, True, key=key))

    async def send(self, text: str, *, counted: bool = False) -> None:
        if not counted:
            self._sends += 1
        try:
            await self.ws.send(text)
        except ConnectionClosed:
            self._log.info("charger_send_failed_closed")
        finally:
            self._sends -= 1

    def send_soon(self, text: str) -> None:
        self._sends += 1  # from now: a CALL written at once would overtake it
        self._spawn(self.send(text, counted=True))

    def _write_now(self, text: str) -> bool:
        """Write a text frame to the charger's socket at once, as ``ws.send`` does when it need not wait: the
        connection open, no other frame waiting to be written before it, the write buffer below its limit.
        False: not written (the caller sends it with ``ws.send``, which waits or fails as it must)."""
        ws = self.ws
        if (
            self._sends
            or ws.protocol.state is not State.OPEN
            or ws.send_in_progress is not None
            or ws.paused
            or ws.transport.is_closing()
        ):
            return False
        ws.protocol.send_text(text.encode())
        ws.send_data()
        return True
