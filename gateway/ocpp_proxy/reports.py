"""2.0.1 GetChargingProfiles: what the CMS reads back is what it set.

The charger reports every profile it holds, the gateway's reserved ones (fail-safe, site limit)
included, and not the CMS's profiles the gateway merged instead of installing. The gateway collects
the charger's ReportChargingProfiles for the request and reports to the CMS: the charger's own
profiles without the reserved ones, plus the merged CMS profiles matching the request. With
``ocpp.gateway_profiles_report = "ems"`` the reserved profiles are reported, apart, with
chargingLimitSource "EMS" (an external limit, which is what they are) instead of hidden.
"""

from __future__ import annotations

from typing import Any

MAX_PROFILES_PER_REPORT = 20


def _matches(prof: dict[str, Any], evse: int, source: str, request: dict[str, Any]) -> bool:
    want_evse = request.get("evseId")
    if isinstance(want_evse, int) and want_evse != evse:
        return False
    crit = request.get("chargingProfile") or {}
    ids = crit.get("chargingProfileId")
    if isinstance(ids, list) and prof.get("id") not in ids:
        return False
    purpose = crit.get("chargingProfilePurpose")
    if purpose is not None and prof.get("chargingProfilePurpose") != purpose:
        return False
    level = crit.get("stackLevel")
    if level is not None and prof.get("stackLevel") != level:
        return False
    sources = crit.get("chargingLimitSource")
    return not (isinstance(sources, list) and source not in sources)


def cms_view(
    charger_reports: list[dict[str, Any]],
    merged: list[tuple[int, dict[str, Any]]],
    reserved: frozenset[int],
    request: dict[str, Any],
    mode: str,
) -> list[dict[str, Any]]:
    """The reports for the CMS (payloads without requestId/tbc): ``charger_reports`` are the charger's
    ReportChargingProfiles payloads, ``merged`` the (evse id, profile) the gateway holds for the CMS."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for rep in charger_reports:
        raw_evse = rep.get("evseId")
        evse = raw_evse if isinstance(raw_evse, int) else 0
        source = str(rep.get("chargingLimitSource") or "CSO")
        for prof in rep.get("chargingProfile") or []:
            if not isinstance(prof, dict):
                continue
            if prof.get("id") in reserved:
                if mode == "ems":
                    groups.setdefault((evse, "EMS"), []).append(prof)
                continue
            groups.setdefault((evse, source), []).append(prof)
    for evse, prof in merged:
        if _matches(prof, evse, "CSO", request):
            have = groups.setdefault((evse, "CSO"), [])
            if all(p.get("id") != prof.get("id") for p in have):
                have.append(prof)
    out = []
    for (evse, source), profs in sorted(groups.items()):
        for i in range(0, len(profs), MAX_PROFILES_PER_REPORT):
            chunk = profs[i : i + MAX_PROFILES_PER_REPORT]
            out.append({"chargingLimitSource": source, "evseId": evse, "chargingProfile": chunk})
    return out
