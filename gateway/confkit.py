"""Strict readers for TOML configuration tables.

Every section parser reads its table through :class:`Table`, which knows the dotted key
path of every value, refuses wrong types with that path, and refuses keys nobody read
(`Table.done`). Units are part of key names (``limit_a``, ``max_power_w``, ``tick_s``), so
a key with the wrong unit suffix is an unknown key, reported with the key that was meant.
"""

from __future__ import annotations

import math
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


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; syntax errors become ConfigError with the line number."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config: {exc.strerror or exc}", file=str(p)) from exc
    return parse_toml(text, file=str(p))


def parse_toml(text: str, *, file: str = "config") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        line = getattr(exc, "lineno", None)
        if line is None and "(at line " in msg:
            try:
                line = int(msg.split("(at line ", 1)[1].split(",", 1)[0])
            except ValueError:
                line = None
        raise ConfigError("", f"TOML syntax error: {msg}", file=file, line=line) from exc


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
                raise self.error(key, "required key is missing")
            return None
        return self.data[key]

    # -- scalars -------------------------------------------------------------------
    def str(self, key: _S, default: _S | None = None, *, required: _B = False) -> _S:
        v = self._get(key, required and default is None)
        if v is None:
            if default is None:
                raise self.error(key, "required key is missing")
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
        f = float(v)
        if not math.isfinite(f):
            raise self.error(key, "must be a finite number")
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
