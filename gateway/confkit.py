"""Strict readers for TOML configuration tables.

Every section parser reads its table through :class:`Table`, which knows the dotted key
path of every value, refuses wrong types with that path, and refuses keys nobody read
(`Table.done`). Units are part of key names (``limit_a``, ``max_power_w``, ``tick_s``), so
a key with the wrong unit suffix is an unknown key, reported with the key that was meant.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from gateway.errors import ConfigError

T = TypeVar("T")
# builtins under other names, for annotations inside Table (whose methods are called str, float...)
_S: TypeAlias = str
_F: TypeAlias = float
_I: TypeAlias = int
_B: TypeAlias = bool

_UNITS = {"a", "v", "w", "kw", "kva", "s", "ms", "pct", "hz", "wh", "kwh", "ma", "mw", "min", "h"}

MAX_FILE_BYTES = 4 * 1024 * 1024  # a site config larger than this is refused unread (a 200-charger site is 60 kB)
MAX_DEPTH = 16  # tables and arrays nested deeper than this are refused
MAX_ABS_NUMBER = 1e12  # no key takes a number beyond this (each has its own, tighter range)
MAX_ABS_INT = 2**53  # integers beyond this do not survive a float conversion exactly
# identities (charger, meter, circuit, priority ids): printable, no space, no '/', at most ID_MAX_LEN
ID_MAX_LEN = 48  # OCPP's CiString48 for a charge point identity
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+~*=|-]*")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file. Whatever makes it unreadable (missing, too large, not UTF-8 text, a syntax error,
    nesting too deep, a number Python cannot hold) is a ConfigError with the file and the reason."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError("", f"cannot read config: {exc.strerror or exc}", file=str(p)) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError("", f"file too large: more than {MAX_FILE_BYTES // (1024 * 1024)} MiB", file=str(p))
    return parse_toml(decode_text(raw, file=str(p)), file=str(p))


def decode_text(raw: bytes, *, file: str = "config") -> str:
    """UTF-8 text without NUL bytes, or a ConfigError naming the first offending byte."""
    nul = raw.find(b"\0")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise ConfigError("", f"not a text file: NUL byte at offset {nul}", file=file, line=line)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            "", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}", file=file, line=line
        ) from None


def _depth(value: object) -> int:
    """How deeply tables and arrays nest in a parsed document (iterative: no recursion limit)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children: list[object] = list(v.values())
        elif isinstance(v, list):
            children = list(v)
        else:
            continue
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            break
        stack.extend((c, d + 1) for c in children)
    return deepest


def parse_toml(text: str, *, file: str = "config") -> dict[str, Any]:
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError("", f"file too large: more than {MAX_FILE_BYTES // (1024 * 1024)} MiB", file=file)
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ConfigError("", f"nested too deeply (more than {MAX_DEPTH} levels)", file=file) from None
    except ValueError as exc:  # TOMLDecodeError, and integers past Python's digit limit
        if not isinstance(exc, tomllib.TOMLDecodeError):
            raise ConfigError("", f"a number out of range: {str(exc)[:120]}", file=file) from None
        msg = str(exc)
        line = getattr(exc, "lineno", None)
        if line is None and "(at line " in msg:
            try:
                line = int(msg.split("(at line ", 1)[1].split(",", 1)[0])
            except ValueError:
                line = None
        raise ConfigError("", f"TOML syntax error: {msg}", file=file, line=line) from exc
    if _depth(data) > MAX_DEPTH:
        raise ConfigError("", f"nested too deeply (more than {MAX_DEPTH} levels)", file=file)
    return data


def check_ident(key_path: str, v: str, what: str = "id") -> str:
    """An identity: 1..ID_MAX_LEN characters, letters, digits and ``._:@+~*=|-``, starting with a letter
    or digit (no spaces, '/', NUL or control characters: it is a URL path segment and an MQTT topic level)."""
    if len(v) > ID_MAX_LEN:
        raise ConfigError(key_path, f"{what} too long: {len(v)} characters, at most {ID_MAX_LEN}")
    if not _ID_RE.fullmatch(v):
        bad = next((c for c in v if not _ID_RE.fullmatch("a" + c)), v[:1])
        raise ConfigError(
            key_path,
            f"{what} {v[:60]!r}: character {bad!r} not allowed (letters, digits and ._:@+~*=|- only, starting "
            f"with a letter or digit)",
        )
    return v


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


class Table:
    """A TOML table being read, at a dotted ``path``."""

    def __init__(self, data: Mapping[_S, Any], path: _S = "") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"expected a table, got {_type_name(data)}")
        self.data = data
        self.path = path
        self._used: set[_S] = set()

    # -- helpers -------------------------------------------------------------------
    def key_path(self, key: _S) -> _S:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: _S, reason: _S) -> ConfigError:
        return ConfigError(self.key_path(key), reason)

    def has(self, key: _S) -> _B:
        return key in self.data

    def keys(self) -> Iterator[_S]:
        return iter(self.data.keys())

    def _get(self, key: _S, required: _B) -> Any:
        self._used.add(key)
        if key not in self.data:
            if required:
                raise self.error(key, self._missing(key))
            return None
        return self.data[key]

    def _missing(self, key: _S) -> _S:
        """ "required key is missing", with the key given under another unit or spelling when there is one."""
        stem, _, unit = key.rpartition("_")
        for k in self.data:
            kstem, _, kunit = k.rpartition("_")
            if stem and kstem == stem and kunit.lower() in _UNITS and kunit != unit:
                return (
                    f"required key is missing; found {k!r}: wrong unit, this key is {key!r} "
                    f"(units are part of key names)"
                )
            if k != key and k.replace("_", "").replace("-", "").lower() == key.replace("_", "").lower():
                return f"required key is missing; found {k!r}: did you mean {key!r}?"
        return "required key is missing"

    def ident(self, key: _S, default: _S | None = None, *, what: _S = "id") -> _S:
        """A required (or defaulted) identity string, checked with `check_ident`."""
        return check_ident(self.key_path(key), self.str(key, default, required=default is None), what)

    # -- scalars -------------------------------------------------------------------
    def str(self, key: _S, default: _S | None = None, *, required: _B = False) -> _S:
        v = self._get(key, required and default is None)
        if v is None:
            if default is None:
                raise self.error(key, self._missing(key))
            return default
        if not isinstance(v, _S):
            raise self.error(key, f"expected a string, got {_type_name(v)}")
        if not v.strip():
            raise self.error(key, "must not be empty")
        return _S(v)

    def opt_str(self, key: _S) -> _S | None:
        v = self._get(key, False)
        if v is None:
            return None
        if not isinstance(v, _S):
            raise self.error(key, f"expected a string, got {_type_name(v)}")
        return v

    def choice(self, key: _S, choices: tuple[_S, ...], default: _S | None = None) -> _S:
        v = self.str(key, default)
        if v not in choices:
            raise self.error(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {v!r}")
        return v

    def float(
        self,
        key: _S,
        default: _F | None = None,
        *,
        min: _F | None = None,
        max: _F | None = None,
        gt: _F | None = None,
    ) -> _F:
        v = self._get(key, default is None)
        if v is None:
            assert default is not None
            return float(default)
        return self._check_number(key, v, min=min, max=max, gt=gt)

    def opt_float(
        self,
        key: _S,
        *,
        min: _F | None = None,
        max: _F | None = None,
        gt: _F | None = None,
    ) -> _F | None:
        v = self._get(key, False)
        if v is None:
            return None
        return self._check_number(key, v, min=min, max=max, gt=gt)

    def _check_number(
        self, key: _S, v: Any, *, min: _F | None, max: _F | None, gt: _F | None
    ) -> _F:
        if isinstance(v, _B) or not isinstance(v, _I | _F):
            raise self.error(key, f"expected a number, got {_type_name(v)}")
        if isinstance(v, _I) and abs(v) > MAX_ABS_INT:
            raise self.error(key, f"out of range: a {len(_S(abs(v)))}-digit number")
        f = float(v)
        if not math.isfinite(f):
            raise self.error(key, "must be a finite number")
        if abs(f) > MAX_ABS_NUMBER:
            raise self.error(key, f"out of range: {f:g} (no key takes a number beyond {MAX_ABS_NUMBER:g})")
        if min is not None and f < min:
            raise self.error(key, f"must be >= {min:g}, got {f:g}")
        if max is not None and f > max:
            raise self.error(key, f"must be <= {max:g}, got {f:g}")
        if gt is not None and f <= gt:
            raise self.error(key, f"must be > {gt:g}, got {f:g}")
        return f

    def int(
        self,
        key: _S,
        default: _I | None = None,
        *,
        min: _I | None = None,
        max: _I | None = None,
    ) -> _I:
        v = self._get(key, default is None)
        if v is None:
            assert default is not None
            return default
        if isinstance(v, _B) or not isinstance(v, _I):
            raise self.error(key, f"expected an integer, got {_type_name(v)}")
        if abs(v) > MAX_ABS_INT:
            raise self.error(key, f"out of range: a {len(_S(abs(v)))}-digit integer")
        if min is not None and v < min:
            raise self.error(key, f"must be >= {min}, got {v}")
        if max is not None and v > max:
            raise self.error(key, f"must be <= {max}, got {v}")
        return v

    def bool(self, key: _S, default: _B | None = None) -> _B:
        v = self._get(key, default is None)
        if v is None:
            assert default is not None
            return default
        if not isinstance(v, _B):
            raise self.error(key, f"expected true or false, got {_type_name(v)}")
        return v

    def str_list(self, key: _S, default: tuple[_S, ...] = ()) -> tuple[_S, ...]:
        v = self._get(key, False)
        if v is None:
            return default
        if not isinstance(v, list) or not all(isinstance(x, _S) for x in v):
            raise self.error(key, "expected an array of strings")
        return tuple(v)

    def raw(self, key: _S) -> Any:
        return self._get(key, False)

    # -- nested --------------------------------------------------------------------
    def table(self, key: _S) -> Table | None:
        v = self._get(key, False)
        if v is None:
            return None
        if not isinstance(v, Mapping):
            raise self.error(key, f"expected a table, got {_type_name(v)}")
        return Table(v, self.key_path(key))

    def tables(self, key: _S) -> list[Table]:
        """An array of tables (``[[key]]``)."""
        v = self._get(key, False)
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.error(key, f"expected an array of tables ([[{key}]]), got {_type_name(v)}")
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, Mapping):
                raise ConfigError(f"{self.key_path(key)}[{i}]", f"expected a table, got {_type_name(item)}")
            out.append(Table(item, f"{self.key_path(key)}[{i}]"))
        return out

    def subtables(self, key: _S) -> list[tuple[_S, Table]]:
        """A table of named tables (``[key.name]``)."""
        t = self.table(key)
        if t is None:
            return []
        out = []
        for name in list(t.data.keys()):
            sub = t.table(name)
            assert sub is not None
            out.append((name, sub))
        return out

    def done(self) -> None:
        """Refuse keys that no parser read."""
        for key in self.data:
            if key in self._used:
                continue
            hint = _unit_hint(key, self._used)
            raise self.error(key, "unknown key" + (f" ({hint})" if hint else ""))


def _unit_hint(key: str, known: set[str]) -> str:
    stem, _, unit = key.rpartition("_")
    if stem and unit.lower() in _UNITS:
        for k in sorted(known):
            kstem, _, kunit = k.rpartition("_")
            if kstem == stem and kunit != unit:
                return f"wrong unit: this key is '{k}'; units are part of key names"
    close = [k for k in sorted(known) if k.replace("_", "") == key.replace("_", "").replace("-", "")]
    if close:
        return f"did you mean '{close[0]}'?"
    return ""


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def valid_host(host: str) -> bool:
    """An IP address (v4 or v6) or a DNS name (RFC 1123 labels)."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in name.split("."))


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or "localhost": reachable from this machine only."""
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(t: Table, key: str, default: str | None = None) -> str:
    """A host key: an IP address or a DNS name."""
    host = t.str(key, default, required=default is None)
    if not valid_host(host):
        raise t.error(key, f"not a valid host name or IP address: {host[:80]!r}")
    return host


def check_readable_file(key_path: str, path: str) -> str:
    """A file the daemon must read at start (a certificate, a key, a CA): it exists and can be read now."""
    if "\0" in path:
        raise ConfigError(key_path, "must not contain NUL")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except IsADirectoryError:
        raise ConfigError(key_path, f"{path!r} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(key_path, f"cannot read {path!r}: {exc.strerror or exc}") from None
    return path
