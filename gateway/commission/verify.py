"""Step 6, maintenance: the non-disruptive checks compared with the last report (pure).

A changed firmware, a lost fail-safe profile, a charger no longer following its limit, a new or a
missing charger, a meter whose sign check now fails: each is a change, raised as an event and shown.
"""

from __future__ import annotations

from typing import Any


def compare(previous: dict[str, Any], current: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    old = {c["id"]: c for c in (previous.get("inventory") or {}).get("chargers", [])}
    new = {c["id"]: c for c in (current.get("inventory") or {}).get("chargers", [])}
    for cid in sorted(new.keys() - old.keys()):
        fw = new[cid]["firmware"]
        out.append({"kind": "new_charger", "charger": cid, "text": f"new charger {cid} (firmware {fw})"})
    for cid in sorted(old.keys() - new.keys()):
        out.append({"kind": "charger_removed", "charger": cid, "text": f"charger {cid} is no longer configured"})
    for cid in sorted(old.keys() & new.keys()):
        a, b = old[cid], new[cid]
        if b["online"] and a["firmware"] and b["firmware"] != a["firmware"]:
            out.append({"kind": "firmware_changed", "charger": cid,
                        "text": f"{cid}: firmware {a['firmware']} -> {b['firmware']}: smart-charging behaviour "
                        "may have changed, repeat the load test"})
        if b["online"] and a["failsafe_installed"] and not b["failsafe_installed"]:
            out.append({"kind": "profile_lost", "charger": cid, "text": f"{cid}: its fail-safe profile is no longer "
                        "installed"})
        if b["online"] and a["purpose"] != b["purpose"]:
            out.append({"kind": "purpose_changed", "charger": cid,
                        "text": f"{cid}: it now takes its limit as {b['purpose']} (was {a['purpose']})"})
        if a["follows_limit"] != "NO" and b["follows_limit"] == "NO":
            out.append({"kind": "noncompliant", "charger": cid, "text": f"{cid}: it no longer follows its limit"})
        if a["online"] and not b["online"]:
            out.append({"kind": "offline", "charger": cid, "text": f"{cid}: offline (online at the last report)"})
    findings = (previous.get("wiring") or {}).get("findings", [])
    prev_sign = {f["meter"]: f["ok"] for f in findings if f["check"] == "sign"}
    for f in (current.get("wiring") or {}).get("findings", []):
        if f["check"] == "sign" and not f["ok"] and prev_sign.get(f["meter"], True):
            out.append({"kind": "meter_sign", "charger": "", "text": f"meter {f['meter']}: {f['detail']}"})
    return out
