"""CALL bookkeeping for one direction of one socket: at most one CALL outstanding.

CALLs relayed for the other side and the gateway's own CALLs share one :class:`CallChannel`
per direction; a CALL waits in the queue until the previous one was answered (or timed out).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.errors import OcppError
from gateway.ocpp_proxy.frames import Frame

log = structlog.get_logger(__name__)


class CallFailed(OcppError):
    """A CALL got no answer: timeout, or the socket closed."""


@dataclass
class OutCall:
    message_id: str
    text: str
    action: str
    own: bool  # the gateway's own CALL: its answer is consumed, not forwarded
    payload: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    result: asyncio.Future[Frame] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    written: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    on_answer: Callable[[OutCall, Frame | None], None] | None = None


class CallChannel:
    def __init__(
        self,
        name: str,
        charger_id: str,
        send: Callable[[str], Awaitable[None]] | None,
        timeout_s: float,
        send_now: Callable[[str], bool] | None = None,
    ) -> None:
        self.name = name
        self.charger_id = charger_id
        self._send = send
        # writes a frame to the socket at once when it need not wait (False: it must go through `send`)
        self._send_now = send_now
        self.timeout_s = timeout_s
        self.in_flight: OutCall | None = None
        self.queue: deque[OutCall] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.late_own: deque[str] = deque(maxlen=64)  # own ids that timed out: drop their late answers

    def attach(self, send: Callable[[str], Awaitable[None]] | None) -> None:
        self._send = send
        if send is None:
            self.fail_all("socket closed")
        else:
            self._pump()

    @property
    def connected(self) -> bool:
        return self._send is not None

    def submit(self, out: OutCall) -> OutCall:
        if out.key is not None:
            for i, q in enumerate(self.queue):
                if q.key == out.key:
                    # a newer value of the same thing replaces the one not yet sent
                    self.queue[i] = out
                    _resolve_superseded(q, out)
                    self._pump()
                    return out
        self.queue.append(out)
        self._pump()
        return out

    def _pump(self) -> None:
        if self.in_flight is not None or not self.queue or self._send is None:
            return
        out = self.queue.popleft()
        self.in_flight = out
        send = self._send
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.timeout_s, self._timeout, out)
        if self._send_now is not None:
            try:
                done = self._send_now(out.text)
            except Exception as exc:
                self._not_written(out, exc)
                return
            if done:  # on the socket now: no task, no loop iteration
                if not out.written.done():
                    out.written.set_result(None)
                return
        task = loop.create_task(self._write(send, out))
        task.add_done_callback(_consume)

    async def _write(self, send: Callable[[str], Awaitable[None]], out: OutCall) -> None:
        try:
            await send(out.text)
        except Exception as exc:  # the socket went away: the CALL cannot be answered
            self._not_written(out, exc)
            return
        if not out.written.done():
            out.written.set_result(None)

    def _not_written(self, out: OutCall, exc: Exception) -> None:
        log.info("call_not_written", charger=self.charger_id, channel=self.name, action=out.action, error=str(exc))
        if not out.written.done():
            out.written.set_exception(CallFailed(str(exc)))
            out.written.exception()
        self._finish(out, None)

    def _timeout(self, out: OutCall) -> None:
        if self.in_flight is out:
            log.warning(
                "call_timeout", charger=self.charger_id, channel=self.name, action=out.action, message_id=out.message_id
            )
            if out.own:
                self.late_own.append(out.message_id)
            self._finish(out, None)

    def _finish(self, out: OutCall, frame: Frame | None) -> None:
        if self.in_flight is out:
            self.in_flight = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if not out.result.done():
            if frame is None:
                out.result.set_exception(CallFailed(f"{out.action}: no answer"))
                out.result.exception()  # mark retrieved: nobody may await it
            else:
                out.result.set_result(frame)
        if out.on_answer is not None:
            cb, out.on_answer = out.on_answer, None
            try:
                cb(out, frame)
            except Exception:
                log.exception("answer_handler_failed", charger=self.charger_id, action=out.action)
        if self._send is not None:
            self._pump()

    def on_answer(self, frame: Frame) -> OutCall | None:
        """A CALLRESULT/CALLERROR arrived: the CALL it answers, if it is the one in flight."""
        out = self.in_flight
        if out is None or out.message_id != frame.message_id:
            return None
        self._finish(out, frame)
        return out

    def fail_all(self, reason: str) -> None:
        outs = ([self.in_flight] if self.in_flight is not None else []) + list(self.queue)
        self.queue.clear()
        self._send = None
        for out in outs:
            self._finish(out, None)
        if outs:
            log.info("calls_failed", charger=self.charger_id, channel=self.name, count=len(outs), reason=reason)


def _resolve_superseded(old: OutCall, new: OutCall) -> None:
    def chain(fut: asyncio.Future[Any], dst: asyncio.Future[Any]) -> None:
        if dst.done():
            return
        if fut.cancelled():
            dst.cancel()
        elif fut.exception() is not None:
            dst.set_exception(fut.exception())  # type: ignore[arg-type]
            dst.exception()
        else:
            dst.set_result(fut.result())

    new.result.add_done_callback(lambda f: chain(f, old.result))
    new.written.add_done_callback(lambda f: chain(f, old.written))


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("call_write_failed", error=str(task.exception()))
