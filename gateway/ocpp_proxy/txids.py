"""1.6 transaction ids: a transaction started offline has a local (negative) id until the CMS gives its own.

The ids are spliced into the frame's text: every other byte stays as sent.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.ocpp_proxy.frames import splice, value_span
from gateway.ocpp_proxy.store import Store


class TxIds:
    def __init__(self, store: Store, charger_id: str) -> None:
        self._store = store
        self._id = charger_id

    def up(self, raw: str) -> str:
        """A charger's StopTransaction or MeterValues: the CMS's id for a local one."""
        span = value_span(raw, (3, "transactionId"))
        if span is None:
            return raw
        tx = json.loads(raw[span[0] : span[1]])
        if isinstance(tx, int) and not isinstance(tx, bool) and tx < 0:
            cms = self._store.cms_tx(self._id, tx)
            if cms is not None:
                return raw[: span[0]] + str(cms) + raw[span[1] :]
        return raw

    def down(self, raw: str, p: dict[str, Any]) -> str:
        """A CMS CALL naming a transaction (RemoteStopTransaction, a TxProfile): the charger's local id."""
        tx = p.get("transactionId")
        if isinstance(tx, int) and not isinstance(tx, bool):
            local = self._store.local_tx(self._id, tx)
            if local is not None:
                return splice(raw, (3, "transactionId"), local)
        prof = p.get("csChargingProfiles")
        if isinstance(prof, dict) and isinstance(prof.get("transactionId"), int):
            local = self._store.local_tx(self._id, prof["transactionId"])
            if local is not None:
                return splice(raw, (3, "csChargingProfiles", "transactionId"), local)
        return raw
