"""[mqtt] section: the MQTT telemetry link to the cloud. Absent section = telemetry off."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.confkit import Table, check_host, check_readable_file

MqttProtocol = Literal["5", "3.1.1"]


@dataclass(frozen=True)
class MqttTlsConfig:
    ca_file: str | None = None  # None: the system's CA store
    cert_file: str | None = None  # client certificate (mutual TLS), with key_file
    key_file: str | None = None


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int = 1883
    protocol: MqttProtocol = "5"
    tls: MqttTlsConfig | None = None
    username: str | None = None
    password: str | None = None
    topic_root: str | None = None  # None: "ems/<site_id>/"; always ends with "/"
    qos: int = 1  # telemetry values; events, replies and status always use QoS 1
    keepalive_s: int = 30
    charger_min_interval_s: float = 5.0  # a charger's topic is published at most this often
    heartbeat_s: float = 60.0  # unchanged values are republished at least this often
    queue_max: int = 10_000  # bounded outbox: latest value per topic (events spill to disk)
    reconnect_max_s: int = 30  # reconnect backoff doubles from 1 s up to this

    def root_for(self, site_id: str) -> str:
        return self.topic_root if self.topic_root is not None else f"ems/{site_id}/"

    def client_id_for(self, site_id: str) -> str:
        return f"ems-gateway-{site_id}"


def _check_topic_root(t: Table, root: str) -> str:
    if not root.strip():
        raise t.error("topic_root", "must not be empty")
    if any(c in root for c in "+#\0"):
        raise t.error("topic_root", "must not contain MQTT wildcards ('+', '#') or NUL")
    if root.startswith("/") or root.startswith("$"):
        raise t.error("topic_root", "must not start with '/' or '$'")
    if not root.endswith("/"):
        root += "/"
    if "//" in root:
        raise t.error("topic_root", "must not contain empty levels ('//')")
    return root


def parse_mqtt(t: Table | None) -> MqttConfig | None:
    if t is None:
        return None
    tls: MqttTlsConfig | None = None
    tls_t = t.table("tls")
    if tls_t is not None:
        tls = MqttTlsConfig(
            ca_file=tls_t.opt_str("ca_file"),
            cert_file=tls_t.opt_str("cert_file"),
            key_file=tls_t.opt_str("key_file"),
        )
        if (tls.cert_file is None) != (tls.key_file is None):
            missing = "key_file" if tls.key_file is None else "cert_file"
            raise tls_t.error(missing, "a client certificate needs both cert_file and key_file")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path is not None:
                check_readable_file(tls_t.key_path(key), path)
        tls_t.done()
    protocol_raw = t.choice("protocol", ("5", "3.1.1"), "5")
    protocol: MqttProtocol = "5" if protocol_raw == "5" else "3.1.1"
    username = t.opt_str("username")
    password = t.opt_str("password")
    if password is not None and username is None:
        raise t.error("password", "a password needs a username")
    root_raw = t.opt_str("topic_root")
    c = MqttConfig(
        host=check_host(t, "host"),
        port=t.int("port", 8883 if tls is not None else 1883, min=1, max=65535),
        protocol=protocol,
        tls=tls,
        username=username,
        password=password,
        topic_root=None if root_raw is None else _check_topic_root(t, root_raw),
        qos=t.int("qos", 1, min=0, max=1),
        keepalive_s=t.int("keepalive_s", 30, min=5, max=3600),
        charger_min_interval_s=t.float("charger_min_interval_s", 5.0, min=0, max=3600),
        heartbeat_s=t.float("heartbeat_s", 60.0, gt=0, max=86400),
        queue_max=t.int("queue_max", 10_000, min=10, max=10_000_000),
        reconnect_max_s=t.int("reconnect_max_s", 30, min=1, max=3600),
    )
    if c.heartbeat_s < c.charger_min_interval_s:
        raise t.error(
            "heartbeat_s",
            f"must be >= charger_min_interval_s ({c.charger_min_interval_s:g} s)",
        )
    t.done()
    return c
