"""The local OCPP controller: charger-side server, per-charger CMS upstream, limits as profiles."""
