"""Writes tests/corpus/configs/: broken (and a few valid) site configs, and cases.toml with each one's expected
exit code, key path and reason substring. Run it after changing the list; the files are committed.

    PYTHONPATH=. python tests/corpus/build_configs.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent / "configs"

BASE = """\
[site]
id = "corpus"
state_dir = "state"

[service]
voltage_ll_v = 400
limit_a = 100
margin_a = 5

[[circuits]]
id = "p1"
parent = "service"
limit_a = 63

[[chargers]]
id = "A"
circuit = "p1"
phases = 3
max_current_a = 32
failsafe_current_a = 8

[[meters]]
id = "m1"
circuit = "p1"
host = "127.0.0.1"
port = 5020

[ocpp]
listen_port = 9000

[mqtt]
host = "127.0.0.1"
"""


def sub(old: str, new: str, base: str = BASE) -> str:
    assert base.count(old) == 1, old
    return base.replace(old, new)


def after(section_line: str, text: str) -> str:
    """Insert lines right after a section header."""
    return sub(section_line + "\n", section_line + "\n" + text + "\n")


def deep_arrays(depth: int) -> str:
    return sub('state_dir = "state"', 'state_dir = "state"\nk = ' + "[" * depth + "]" * depth)


def deep_tables(depth: int) -> str:
    return sub('state_dir = "state"', 'state_dir = "state"\nk = ' + "{a = " * depth + "1" + "}" * depth)


# name -> (content, exit code, key path, reason substring)
CASES: dict[str, tuple[str | bytes, int, str, str]] = {
    # -- valid ------------------------------------------------------------------------------------
    "ok-base.toml": (BASE, 0, "", "configuration OK"),
    "ok-lan-with-password.toml": (
        sub("[ocpp]\n", '[ocpp]\nlisten_host = "0.0.0.0"\n', BASE.replace(
            "failsafe_current_a = 8\n", 'failsafe_current_a = 8\nocpp = { password = "s3cret-pass" }\n')),
        0, "", "configuration OK"),
    "ok-lan-allow-unauthenticated.toml": (
        sub("[ocpp]\n", '[ocpp]\nlisten_host = "0.0.0.0"\n', BASE.replace(
            "failsafe_current_a = 8\n", "failsafe_current_a = 8\nocpp = { allow_unauthenticated = true }\n")),
        0, "", "configuration OK"),
    "ok-ipv6-loopback.toml": (sub("[ocpp]\n", '[ocpp]\nlisten_host = "::1"\n'), 0, "", "configuration OK"),
    # -- reading: decoding, size, syntax, nesting, digits -----------------------------------------
    "not-utf-8.toml": (BASE.encode().replace(b'id = "corpus"', b'id = "caf\xe9"'), 2, "", "not UTF-8"),
    "latin1-comment.toml": (b"# r\xe9glages\n" + BASE.encode(), 2, "", "not UTF-8"),
    "binary.bin": (bytes(range(256)) * 8, 2, "", "not a text file"),
    "utf-16.toml": (BASE.encode("utf-16"), 2, "", "not a text file"),
    "nul-in-value.toml": (BASE.encode().replace(b'"corpus"', b'"cor\x00pus"'), 2, "", "NUL byte"),
    "empty.toml": ("", 2, "site", "required table is missing"),
    "syntax-error.toml": (sub("limit_a = 100", "limit_a = = 100"), 2, "", "TOML syntax error"),
    "unterminated-string.toml": (sub('id = "corpus"', 'id = "corpus'), 2, "", "TOML syntax error"),
    "duplicate-key.toml": (sub("limit_a = 100", "limit_a = 100\nlimit_a = 90"), 2, "", "TOML syntax error"),
    "5000-digit-integer.toml": (sub("limit_a = 100", "limit_a = " + "9" * 5000), 2, "", "number out of range"),
    "400-digit-integer.toml": (sub("limit_a = 100", "limit_a = " + "9" * 400), 2, "service.limit_a", "out of range"),
    "3000-deep-arrays.toml": (deep_arrays(3000), 2, "", "nested too deeply"),
    "5000-deep-arrays.toml": (deep_arrays(5000), 2, "", "nested too deeply"),
    "40-deep-arrays.toml": (deep_arrays(40), 2, "", "nested too deeply"),
    "3000-deep-inline-tables.toml": (deep_tables(3000), 2, "", "nested too deeply"),
    # -- numbers: every key a sane range ----------------------------------------------------------
    "limit-1.7e308.toml": (sub("limit_a = 100", "limit_a = 1.7e308"), 2, "service.limit_a", "out of range"),
    "limit-1e6.toml": (sub("limit_a = 100", "limit_a = 1e6"), 2, "service.limit_a", "must be <="),
    "limit-inf.toml": (sub("limit_a = 100", "limit_a = inf"), 2, "service.limit_a", "finite"),
    "limit-nan.toml": (sub("limit_a = 100", "limit_a = nan"), 2, "service.limit_a", "finite"),
    "limit-negative.toml": (sub("limit_a = 63", "limit_a = -63"), 2, "circuits[0].limit_a", "must be >"),
    "limit-string.toml": (sub("limit_a = 100", 'limit_a = "100"'), 2, "service.limit_a", "expected a number"),
    "limit-bool.toml": (sub("limit_a = 100", "limit_a = true"), 2, "service.limit_a", "expected a number"),
    "margin-negative.toml": (sub("margin_a = 5", "margin_a = -5"), 2, "service.margin_a", "must be >="),
    "charger-max-1e9.toml": (sub("max_current_a = 32", "max_current_a = 1e9"), 2, "chargers[0].max_current_a",
                             "must be <="),
    "charger-failsafe-huge.toml": (sub("failsafe_current_a = 8", "failsafe_current_a = 1e300"), 2,
                                   "chargers[0].failsafe_current_a", "out of range"),
    "ct-ratio-1e300.toml": (after("port = 5020", "ct_ratio = 1e300"), 2, "meters[0].ct_ratio", "out of range"),
    "ct-ratio-1e6.toml": (after("port = 5020", "ct_ratio = 1e6"), 2, "meters[0].ct_ratio", "must be <="),
    "ct-ratio-zero.toml": (after("port = 5020", "ct_ratio = 0"), 2, "meters[0].ct_ratio", "must be >"),
    "stale-1e300.toml": (after("port = 5020", "stale_after_s = 1e300"), 2, "meters[0].stale_after_s", "out of range"),
    "stale-3601.toml": (after("port = 5020", "stale_after_s = 3601"), 2, "meters[0].stale_after_s", "must be <="),
    "stale-below-poll.toml": (after("port = 5020", "stale_after_s = 0.5"), 2, "meters[0].stale_after_s",
                              "longer than poll_interval_s"),
    "frozen-polls-99999999999.toml": (after("port = 5020", "frozen_polls = 99999999999"), 2,
                                      "meters[0].frozen_polls", "must be <="),
    "frozen-polls-400-digit.toml": (after("port = 5020", "frozen_polls = " + "9" * 400), 2,
                                    "meters[0].frozen_polls", "out of range"),
    "frozen-polls-float.toml": (after("port = 5020", "frozen_polls = 1.5"), 2, "meters[0].frozen_polls",
                                "expected an integer"),
    "poll-zero.toml": (after("port = 5020", "poll_interval_s = 0"), 2, "meters[0].poll_interval_s", "must be >="),
    "poll-1e300.toml": (after("port = 5020", "poll_interval_s = 1e300"), 2, "meters[0].poll_interval_s",
                        "out of range"),
    "meter-timeout-huge.toml": (after("port = 5020", "timeout_s = 1e9"), 2, "meters[0].timeout_s", "must be <="),
    "meter-max-current-1e300.toml": (after("port = 5020", "max_current_a = 1e300"), 2, "meters[0].max_current_a",
                                     "out of range"),
    "meter-port-70000.toml": (sub("port = 5020", "port = 70000"), 2, "meters[0].port", "must be <="),
    "tick-1e-300.toml": (BASE + "\n[control]\ntick_s = 1e-300\n", 2, "control.tick_s", "must be >="),
    "ramp-1e300.toml": (BASE + "\n[control]\nramp_up_a_per_s = 1e300\n", 2, "control.ramp_up_a_per_s",
                        "out of range"),
    "grace-1e9.toml": (BASE + "\n[control]\nnoncompliance_grace_s = 1e9\n", 2, "control.noncompliance_grace_s",
                       "must be <="),
    "lease-1e300.toml": (sub("listen_port = 9000", "listen_port = 9000\nlease_s = 1e300"), 2, "ocpp.lease_s",
                         "out of range"),
    "heartbeat-interval-huge.toml": (sub("listen_port = 9000", "listen_port = 9000\nheartbeat_interval_s = 10000000"),
                                     2, "ocpp.heartbeat_interval_s", "must be <="),
    "profile-id-2^40.toml": (sub("listen_port = 9000", "listen_port = 9000\nlimit_profile_id = 1099511627776"), 2,
                             "ocpp.limit_profile_id", "must be <="),
    "mqtt-heartbeat-1e300.toml": (sub('[mqtt]\nhost = "127.0.0.1"', '[mqtt]\nhost = "127.0.0.1"\nheartbeat_s = 1e300'),
                                  2, "mqtt.heartbeat_s", "out of range"),
    "priority-weight-1e300.toml": (BASE + "\n[priorities.default]\nweight = 1e300\n", 2, "priorities.default.weight",
                                   "out of range"),
    # -- ids --------------------------------------------------------------------------------------
    "charger-id-100000.toml": (sub('id = "A"', 'id = "' + "A" * 100_000 + '"'), 2, "chargers[0].id", "too long"),
    "charger-id-49.toml": (sub('id = "A"', 'id = "' + "A" * 49 + '"'), 2, "chargers[0].id", "too long"),
    "charger-id-nul.toml": (sub('id = "A"', 'id = "A\\u0000B"'), 2, "chargers[0].id", "not allowed"),
    "charger-id-newline.toml": (sub('id = "A"', 'id = "A\\nB"'), 2, "chargers[0].id", "not allowed"),
    "charger-id-space.toml": (sub('id = "A"', 'id = "A B"'), 2, "chargers[0].id", "not allowed"),
    "charger-id-slash.toml": (sub('id = "A"', 'id = "A/B"'), 2, "chargers[0].id", "'/'"),
    "charger-id-percent.toml": (sub('id = "A"', 'id = "A%2FB"'), 2, "chargers[0].id", "not allowed"),
    "charger-id-unicode.toml": (sub('id = "A"', 'id = "caf\u00e9"'), 2, "chargers[0].id", "not allowed"),
    "charger-id-empty.toml": (sub('id = "A"', 'id = ""'), 2, "chargers[0].id", "must not be empty"),
    "charger-id-number.toml": (sub('id = "A"', "id = 7"), 2, "chargers[0].id", "expected a string"),
    "meter-id-nul.toml": (sub('id = "m1"', 'id = "m\\u00001"'), 2, "meters[0].id", "not allowed"),
    "circuit-id-200.toml": (sub('id = "p1"', 'id = "' + "p" * 200 + '"'), 2, "circuits[0].id", "too long"),
    "site-id-wildcard.toml": (sub('id = "corpus"', 'id = "site/#"'), 2, "site.id", "not allowed"),
    "site-name-control-chars.toml": (sub('id = "corpus"', 'id = "corpus"\nname = "a\\u001b[2Jb"'), 2, "site.name",
                                     "printable"),
    # -- units, types, unknown keys ---------------------------------------------------------------
    "limit-kw-for-limit-a.toml": (sub("limit_a = 100", "limit_kw = 69"), 2, "service.limit_a", "wrong unit"),
    "circuit-limit-w.toml": (sub("limit_a = 63", "limit_w = 43000"), 2, "circuits[0].limit_a", "wrong unit"),
    "charger-max-current-ma.toml": (sub("max_current_a = 32", "max_current_ma = 32000"), 2,
                                    "chargers[0].max_current_a", "wrong unit"),
    "stale-after-ms.toml": (after("port = 5020", "stale_after_ms = 3000"), 2, "meters[0].stale_after_ms",
                            "wrong unit"),
    "limit-a-typo.toml": (sub("limit_a = 100", "limita = 100"), 2, "service.limit_a", "did you mean"),
    "unknown-key.toml": (after("port = 5020", "colour = \"red\""), 2, "meters[0].colour", "unknown key"),
    "chargers-not-array.toml": (sub("[[chargers]]", "[chargers]"), 2, "chargers", "array of tables"),
    # -- the state directory ----------------------------------------------------------------------
    "state-dir-is-a-file.toml": (sub('state_dir = "state"', 'state_dir = "/etc/passwd"'), 2, "site.state_dir",
                                 "not a directory"),
    "state-dir-under-a-file.toml": (sub('state_dir = "state"', 'state_dir = "/etc/passwd/state"'), 2,
                                    "site.state_dir", "not a directory"),
    "state-dir-nul.toml": (sub('state_dir = "state"', 'state_dir = "st\\u0000ate"'), 2, "site.state_dir", "NUL"),
    # -- listeners --------------------------------------------------------------------------------
    "tls-port-equals-listen-port.toml": (
        sub("listen_port = 9000", 'listen_port = 9000\ntls_listen_port = 9000\nserver_cert_file = "/nonexistent.crt"'
            '\nserver_key_file = "/nonexistent.key"'), 2, "ocpp.tls_listen_port", "must differ from listen_port"),
    "tls-cert-missing.toml": (
        sub("listen_port = 9000", 'listen_port = 9000\ntls_listen_port = 9443\nserver_cert_file = "/nonexistent.crt"'
            '\nserver_key_file = "/nonexistent.key"'), 2, "ocpp.server_cert_file", "No such file"),
    "tls-cert-is-a-directory.toml": (
        sub("listen_port = 9000", 'listen_port = 9000\ntls_listen_port = 9443\nserver_cert_file = "/etc"'
            '\nserver_key_file = "/etc"'), 2, "ocpp.server_cert_file", "is a directory"),
    "tls-cert-not-a-certificate.toml": (
        sub("listen_port = 9000", 'listen_port = 9000\ntls_listen_port = 9443\nserver_cert_file = "/etc/passwd"'
            '\nserver_key_file = "/etc/passwd"'), 2, "ocpp.server_cert_file", "cannot load"),
    "tls-port-without-cert.toml": (sub("listen_port = 9000", "listen_port = 9000\ntls_listen_port = 9443"), 2,
                                   "ocpp.tls_listen_port", "needs server_cert_file"),
    "cms-ca-missing.toml": (sub("listen_port = 9000", 'listen_port = 9000\ncms_ca_file = "/nonexistent-ca.pem"'), 2,
                            "ocpp.cms_ca_file", "cannot read"),
    "listen-host-invalid.toml": (sub("listen_port = 9000", 'listen_port = 9000\nlisten_host = "not a host!!"'), 2,
                                 "ocpp.listen_host", "not a valid host"),
    "listen-host-label-too-long.toml": (
        sub("listen_port = 9000", f'listen_port = 9000\nlisten_host = "{"h" * 64}.lan"'),
        2, "ocpp.listen_host", "not a valid host"),
    "listen-port-70000.toml": (sub("listen_port = 9000", "listen_port = 70000"), 2, "ocpp.listen_port", "must be <="),
    "meter-host-invalid.toml": (sub('host = "127.0.0.1"\nport = 5020', 'host = "meter one"\nport = 5020'), 2,
                                "meters[0].host", "not a valid host"),
    "mqtt-host-invalid.toml": (sub('[mqtt]\nhost = "127.0.0.1"', '[mqtt]\nhost = "broker:1883"'), 2, "mqtt.host",
                               "not a valid host"),
    "mqtt-ca-missing.toml": (sub('[mqtt]\nhost = "127.0.0.1"', '[mqtt]\nhost = "127.0.0.1"\n[mqtt.tls]\n'
                                 'ca_file = "/nonexistent/ca.pem"'), 2, "mqtt.tls.ca_file", "cannot read"),
    "cms-url-bad-host.toml": (sub("listen_port = 9000", 'listen_port = 9000\ncms_url = "wss://not a host/ocpp"'), 2,
                              "ocpp.cms_url", "not a valid host"),
    "cms-url-bad-port.toml": (sub("listen_port = 9000", 'listen_port = 9000\ncms_url = "wss://cms.example:99999/ocpp"'),
                              2, "ocpp.cms_url", "not a valid URL"),
    "cms-url-http.toml": (sub("listen_port = 9000", 'listen_port = 9000\ncms_url = "https://cms.example/ocpp"'), 2,
                          "ocpp.cms_url", "ws:// or wss://"),
    # -- authentication ---------------------------------------------------------------------------
    "lan-without-password.toml": (sub("[ocpp]\n", '[ocpp]\nlisten_host = "0.0.0.0"\n'), 2, "chargers[0].ocpp.password",
                                  "no password"),
    "lan-ip-without-password.toml": (sub("[ocpp]\n", '[ocpp]\nlisten_host = "192.168.1.10"\n'), 2,
                                     "chargers[0].ocpp.password", "not loopback"),
    "profile-2-without-tls.toml": (
        sub("failsafe_current_a = 8\n",
            'failsafe_current_a = 8\nocpp = { security_profile = 2, password = "s3cret-pass" }\n'),
        2, "chargers[0].ocpp.security_profile", "needs TLS"),
    "profile-3-without-tls.toml": (
        sub("failsafe_current_a = 8\n", "failsafe_current_a = 8\nocpp = { security_profile = 3 }\n"),
        2, "chargers[0].ocpp.security_profile", "needs TLS"),
    "short-password.toml": (
        sub("failsafe_current_a = 8\n", 'failsafe_current_a = 8\nocpp = { password = "short" }\n'),
        2, "chargers[0].ocpp.password", "at least 8"),
    "allow-unauthenticated-with-password.toml": (
        sub("failsafe_current_a = 8\n",
            'failsafe_current_a = 8\nocpp = { password = "s3cret-pass", allow_unauthenticated = true }\n'),
        2, "chargers[0].ocpp.allow_unauthenticated", "contradicts"),
}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for old in HERE.iterdir():
        if old.name != "cases.toml":
            old.unlink()
    lines = ["# expected outcome of `ems-gateway check-config FILE` per corpus file (written by build_configs.py)", ""]
    for name, (content, code, key, reason) in CASES.items():
        data = content.encode() if isinstance(content, str) else content
        (HERE / name).write_bytes(data)
        lines += [f"[{json.dumps(name)}]", f"exit = {code}", f"key = {json.dumps(key)}",
                  f"reason = {json.dumps(reason)}", ""]
    (HERE / "cases.toml").write_text("\n".join(lines))
    print(f"{len(CASES)} configs in {HERE}")


if __name__ == "__main__":
    main()
