"""OCPP transaction messages: what the chargers sent against what the CMS received (pure functions).

A transaction message is identified twice over: by its message id (a hop that forwards it unchanged keeps
it) and by its *semantic key* (:func:`semantic_key`: what identifies it when a store-and-forward hop re-sends
it under a new message id). A message the charger sent and had acknowledged is *lost* when the CMS received
neither its id nor its key. A message the CMS received is a *duplicate* when the CMS had already received
its message id from that charger (``same_id``), or when the CMS received more distinct message ids with its
key than the charger made attempts with that key (``same_event``): the charger's own retries, after a
timeout, are not duplicates.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

TX_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "TransactionEvent", "MeterValues"})


def semantic_key(action: str, payload: Mapping[str, Any]) -> str:
    """What identifies a transaction message when a store-and-forward hop re-sends it under a new message id
    (and, for 2.0.1, may set ``offline``): the transaction and its sequence number, or the action, connector
    and timestamps."""
    if action == "TransactionEvent":
        info = payload.get("transactionInfo") or {}
        return f"TE|{info.get('transactionId')}|{payload.get('seqNo')}|{payload.get('eventType')}"
    # a 1.6 transaction started while the CMS was down carries the gateway's local id at the charger
    # and the CMS's id upstream (rewritten on replay, by design): the id is not part of the key
    stamps = [m.get("timestamp") for m in payload.get("meterValue", []) if isinstance(m, dict)]
    return "|".join(str(x) for x in (action, payload.get("connectorId"), payload.get("evseId"),
                                      payload.get("timestamp"), payload.get("meterStop"), *stamps))


@dataclass(frozen=True)
class TxMessage:
    """One transaction CALL, as sent by a charger (``outcome``: ok, pending, error, timeout, lost) or as
    received by the CMS (``outcome`` "received")."""

    charger: str
    unique_id: str
    action: str
    key: str
    outcome: str = "received"
    at: float = 0.0  # when the CMS received it (its clock)


def tx_message(charger: str, unique_id: str, action: str, payload: Mapping[str, Any],
               outcome: str = "received", at: float = 0.0) -> TxMessage | None:
    """The record of one CALL, or None when it is no transaction message."""
    if action not in TX_ACTIONS:
        return None
    return TxMessage(charger, unique_id, action, semantic_key(action, payload), outcome, at)


def _after_kills(times: list[float], kills: list[float]) -> int:
    """How many of a message's repeated copies (received at ``times``) follow a gateway kill since the copy
    before them."""
    ts = sorted(times)
    return sum(1 for a, b in pairwise(ts) if any(a < k <= b for k in kills))


def accounting(sent: Iterable[TxMessage], received: Iterable[TxMessage], unacknowledged: int = 0,
               examples: int = 20, kills: Iterable[float] = ()) -> dict[str, Any]:
    """Lost and duplicated transaction messages (see the module docstring); ``kills``: when the gateway was
    killed (the CMS's clock)."""
    kill_at = sorted(kills)
    ids: dict[str, set[str]] = defaultdict(set)
    keys: dict[str, set[str]] = defaultdict(set)
    id_count: Counter[tuple[str, str]] = Counter()
    id_times: dict[tuple[str, str], list[float]] = defaultdict(list)
    key_ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    received_total = 0
    for r in received:
        received_total += 1
        ids[r.charger].add(r.unique_id)
        keys[r.charger].add(r.key)
        id_count[(r.charger, r.unique_id)] += 1
        id_times[(r.charger, r.unique_id)].append(r.at)
        key_ids[(r.charger, r.key)].add(r.unique_id)
    sent_ok = lost = pending = 0
    attempts: Counter[tuple[str, str]] = Counter()
    lost_list: list[dict[str, Any]] = []
    for m in sent:
        attempts[(m.charger, m.key)] += 1
        pending += m.outcome == "pending"
        if m.outcome != "ok":
            continue
        sent_ok += 1
        if m.unique_id not in ids[m.charger] and m.key not in keys[m.charger]:
            lost += 1
            if len(lost_list) < examples:
                lost_list.append({"charger": m.charger, "action": m.action, "unique_id": m.unique_id, "key": m.key})
    resent = {k: _after_kills(id_times[k], kill_at) for k, n in id_count.items() if n > 1}
    same_id = sum(n - 1 - resent[k] for k, n in id_count.items() if n > 1)
    same_event = 0
    cms_only = 0
    dup_list: list[dict[str, Any]] = []
    for (ch, key), uids in key_ids.items():
        tries = attempts.get((ch, key), 0)
        if tries == 0:
            cms_only += 1  # the charger never sent it: the gateway's own (e.g. a transaction it closed)
            continue
        extra = len(uids) - tries
        if extra > 0:
            same_event += extra
            if len(dup_list) < examples:
                dup_list.append({"charger": ch, "key": key, "cms_ids": len(uids), "charger_attempts": tries})
    dup_list += [{"charger": ch, "unique_id": uid, "times": n} for (ch, uid), n in id_count.items()
                 if n - 1 > resent.get((ch, uid), 0)][: max(0, examples - len(dup_list))]
    return {"tx_messages_sent": sent_ok, "tx_messages_received_by_cms": received_total, "lost": lost,
            "duplicates": same_id + same_event, "duplicates_same_id": same_id, "duplicates_same_event": same_event,
            "resent_after_kill": sum(resent.values()), "cms_only": cms_only,
            "unacknowledged_at_end": unacknowledged, "pending_at_end": pending,
            "lost_examples": lost_list, "duplicate_examples": dup_list}
