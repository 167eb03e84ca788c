"""Replay of the durable queue to the CMS, in order, once the link is up; transaction messages wait for it."""

from __future__ import annotations

import asyncio

from structlog.typing import FilteringBoundLogger

from gateway.ocpp_proxy.cms_link import CmsLink
from gateway.ocpp_proxy.config import OcppConfig
from gateway.ocpp_proxy.frames import CALLRESULT, call_text, new_message_id, set_member
from gateway.ocpp_proxy.observe import Observer
from gateway.ocpp_proxy.offline import Backlog
from gateway.ocpp_proxy.ports import SessionEvents
from gateway.ocpp_proxy.relay import CallFailed, OutCall
from gateway.ocpp_proxy.store import QueuedMessage, Store
from gateway.ocpp_proxy.txids import TxIds


class Replay:
    def __init__(
        self,
        charger_id: str,
        version: str,
        ocpp: OcppConfig,
        store: Store,
        cms: CmsLink,
        observer: Observer,
        txids: TxIds,
        backlog: Backlog,
        events: SessionEvents,
        log: FilteringBoundLogger,
    ) -> None:
        self.id = charger_id
        self.version = version
        self.ocpp = ocpp
        self.store = store
        self.cms = cms
        self.observer = observer
        self.txids = txids
        self.backlog = backlog
        self.events = events
        self.log = log
        self._drained = asyncio.Event()  # set while no replay is under way
        self._drained.set()

    @property
    def draining(self) -> bool:
        """A replay is under way: transaction messages go to the queue (after it) until it is done."""
        return not self._drained.is_set()

    @draining.setter
    def draining(self, on: bool) -> None:
        if on:
            self._drained.clear()
        else:
            self._drained.set()

    async def drained(self, timeout_s: float) -> bool:
        """Wait, at most ``timeout_s``, until no replay is under way; whether it is over."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    async def drain(self) -> None:
        """Replay the durable queue in order; only then relay transaction messages live.

        Each row goes out as the charger sent it, with its own message id (a repeat after a crash is
        recognisable); the CMS's answer is recorded on the row before anything else is sent, answered
        rows are never sent again and are deleted a batch at a time."""
        store = self.store
        if self.backlog.boot is not None:
            boot = self.backlog.boot
            try:
                ans = await self.cms.own_dict_call("BootNotification", boot).result
                if ans.kind == CALLRESULT:
                    self.backlog.boot = None
            except CallFailed:
                return
        await store.delete_answered(self.id)  # answered before a crash or a lost link: never sent again
        while self.cms.online:
            batch = store.pending(self.id, self.ocpp.replay_batch_messages)
            if not batch:
                if self.backlog.writing:
                    await asyncio.sleep(0.005)  # a row being written: it goes first
                    continue
                self.draining = False
                self.log.info("replay_done")
                return
            for m in batch:
                if not await self._replay_one(m):
                    return  # the link went down: replay resumes on reconnect (answered rows are skipped)
            await store.delete_answered(self.id)

    def text(self, raw: str, action: str) -> str:
        """What goes to the CMS for a queued CALL: its text, the 1.6 transaction id and the offline
        marking (if configured) spliced in; every other byte as the charger sent it."""
        if self.version == "1.6" and action in ("StopTransaction", "MeterValues"):
            return self.txids.up(raw)
        if self.version == "2.0.1" and action == "TransactionEvent" and self.ocpp.offline_mark_events:
            return set_member(raw, (3,), "offline", True)
        return raw

    async def _replay_one(self, m: QueuedMessage) -> bool:
        store = self.store
        if m.raw is not None and m.message_id is not None:
            mid, text = m.message_id, self.text(m.raw, m.action)
        else:  # a row queued by an older gateway: only its payload was kept
            mid = new_message_id()
            text = self.text(call_text(mid, m.action, m.payload), m.action)
        try:
            ans = await self.cms.calls.submit(OutCall(mid, text, m.action, True, m.payload)).result
        except CallFailed:
            return False
        if ans.kind == CALLRESULT:
            self.observer.answer(m.action, m.payload, ans.payload)
            cms_id = ans.payload.get("transactionId")
            if m.action == "StartTransaction" and isinstance(m.local_tx, int) and isinstance(cms_id, int):
                await store.map_tx(self.id, m.local_tx, cms_id, seq=m.seq, answer=ans.raw)
                self.log.info("tx_id_mapped", local_tx=m.local_tx, cms_tx=cms_id)
                self.events.event("replayed", charger=self.id, action=m.action, seq=m.seq)
                return True
        else:
            self.log.warning("replay_rejected", action=m.action, seq=m.seq, error=ans.payload.get("code"))
        # on disk (group-committed with the other chargers' writes) before the next row goes out: a kill
        # repeats at most the one row in flight, with its own message id
        await asyncio.wrap_future(store.answered(m.seq, ans.raw))
        self.events.event("replayed", charger=self.id, action=m.action, seq=m.seq)
        return True
