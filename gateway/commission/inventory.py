"""Step 1, inventory: every charger and meter as the running daemon knows it (pure)."""

from __future__ import annotations

from typing import Any

from gateway.ocpp_proxy.policy import purpose


def _stack_level(caps: dict[str, Any]) -> str:
    for k in ("ChargeProfileMaxStackLevel", "SmartChargingCtrlr.ProfileStackLevel"):
        if caps.get(k) not in (None, ""):
            return str(caps[k])
    return "?"


def follows_limit(st: dict[str, Any]) -> str:
    """yes / NO / unknown, from the accepted-limit feedback and the compliance monitor."""
    if st.get("noncompliant"):
        return "NO"
    act = st.get("actuation") or {}
    if act.get("controlled"):
        return "yes"
    return "unknown"


def chargers(site: dict[str, Any], status: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    ocpp = site["ocpp"]
    for ch in site["chargers"]:
        st = status["chargers"].get(ch["id"], {})
        boot = st.get("boot") or {}
        act = st.get("actuation") or {}
        caps = st.get("caps") or {}
        mode = st.get("purpose_mode") or "max"
        accepted = []
        if act.get("failsafe_installed"):
            accepted.append(f"fail-safe @ {ocpp['failsafe_stack_level']}")
        if act.get("accepted_limit") is not None:
            accepted.append(f"limit @ {ocpp['limit_stack_level']}")
        out.append({
            "id": ch["id"],
            "vendor": boot.get("vendor", ""),
            "model": boot.get("model", ""),
            "serial": boot.get("serial", ""),
            "firmware": boot.get("firmware", ""),
            "ocpp_version": ch["ocpp_version"],
            "security_profile": ch["security_profile"],
            "online": bool(st.get("online")),
            "purpose": purpose(ch["ocpp_version"], mode),
            "profiles_accepted": ", ".join(accepted) or "none",
            "max_stack_level": _stack_level(caps),
            "failsafe_installed": bool(act.get("failsafe_installed")),
            "follows_limit": follows_limit(st),
            "kind": ch["kind"],
            "unit": ch["unit"],
        })
    return out


def meters(site: dict[str, Any], status: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for m in site["meters"]:
        r = status["meters"].get(m["id"])
        out.append({
            **m,
            "reading_a": None if r is None else [round(a, 1) for a in r["current_a"]],
            "total_power_w": None if r is None else r.get("total_power_w"),
            "valid": None if r is None else r["valid"],
            "reason": "" if r is None else r.get("reason", ""),
        })
    return out
