"""The upstream socket to the CMS: connect with backoff, read its frames, one outstanding CALL towards it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from structlog.typing import FilteringBoundLogger
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from gateway.backoff import Backoff
from gateway.errors import OcppError
from gateway.ocpp_proxy.config import OcppConfig
from gateway.ocpp_proxy.frames import call_text, new_message_id
from gateway.ocpp_proxy.ports import SessionEvents
from gateway.ocpp_proxy.relay import CallChannel, OutCall
from gateway.ocpp_proxy.upstream import UpstreamTarget, open_upstream


class CmsLink:
    """``on_frame`` gets every frame the CMS sends; ``on_up`` runs when the link is up and returns the task
    to cancel when it goes down (the replay); ``on_down`` runs after that. ``close_charger`` closes the
    charger's socket (strict offline: no CMS, no charger)."""

    def __init__(
        self,
        charger_id: str,
        target: UpstreamTarget | None,
        ocpp: OcppConfig,
        events: SessionEvents,
        log: FilteringBoundLogger,
        *,
        on_frame: Callable[[str | bytes], Awaitable[None]],
        on_up: Callable[[], asyncio.Task[Any]],
        on_down: Callable[[], None],
        close_charger: Callable[[int, str], Awaitable[None]],
        is_closed: Callable[[], bool],
    ) -> None:
        self.id = charger_id
        self.target = target
        self.ocpp = ocpp
        self.events = events
        self.log = log
        self._on_frame, self._on_up, self._on_down = on_frame, on_up, on_down
        self._close_charger = close_charger
        self._is_closed = is_closed
        self.up: ClientConnection | None = None
        self.calls = CallChannel("to_cms", charger_id, None, ocpp.call_timeout_s)

    @property
    def online(self) -> bool:
        return self.up is not None

    def own_dict_call(self, action: str, payload: dict[str, Any]) -> OutCall:
        mid = new_message_id()
        return self.calls.submit(OutCall(mid, call_text(mid, action, payload), action, True, payload))

    async def send(self, text: str) -> None:
        up = self.up
        if up is None:
            return
        try:
            await up.send(text)
        except ConnectionClosed:
            self.log.info("cms_send_failed_closed")

    async def close(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            await up.close()

    async def run(self) -> None:
        assert self.target is not None
        target, oc = self.target, self.ocpp
        backoff = Backoff(oc.reconnect_min_s, oc.reconnect_max_s)
        while not self._is_closed():
            try:
                up = await open_upstream(target, max_size=oc.max_frame_bytes * 4, open_timeout_s=oc.call_timeout_s)
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError, OcppError, ConnectionClosed) as exc:
                refused = refusal(exc)
                delay = backoff.next_delay()
                if refused is not None:
                    # the CMS answered and said no: retrying at full speed cannot help
                    delay = max(delay, oc.reconnect_refused_s)
                    self.log.warning("cms_refused", url=target.url, reason=refused, retry_s=round(delay, 1))
                    self.events.event("cms_refused", charger=self.id, reason=refused)
                else:
                    self.log.info("cms_connect_failed", url=target.url, error=str(exc) or type(exc).__name__)
                if oc.strict_offline:
                    self.log.warning("charger_closed_strict_offline")
                    await self._close_charger(1011, "CMS unavailable")
                    return
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            await self._serve(up)
            if self._is_closed():
                return
            self.events.event("cms_link_down", charger=self.id)
            self.events.changed(self.id)
            if oc.strict_offline:
                self.log.warning("charger_closed_strict_offline")
                await self._close_charger(1011, "CMS unavailable")
                return
            await asyncio.sleep(backoff.next_delay())

    async def _serve(self, up: ClientConnection) -> None:
        """One connection: relay what the CMS sends until it closes."""
        self.up = up
        self.calls.attach(up.send)
        self.events.event("cms_link_up", charger=self.id)
        self.events.changed(self.id)
        drain = self._on_up()  # sets the replay going before any frame is read (nothing awaited since `up`)
        try:
            async for raw in up:
                try:
                    await self._on_frame(raw)
                except ConnectionClosed:
                    if self._is_closed():
                        raise
                except Exception:
                    self.log.exception("cms_frame_failed")
        except ConnectionClosed:
            pass
        finally:
            drain.cancel()
            self.up = None
            self._on_down()
            self.calls.attach(None)


def refusal(exc: BaseException) -> str | None:
    """Why the CMS refused a connection it answered (HTTP status, subprotocol), or None for a network failure."""
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, OcppError) and "subprotocol" in str(exc):
        return "subprotocol"
    if isinstance(exc, InvalidHandshake) and "subprotocol" in str(exc).lower():
        return "subprotocol"
    return None
