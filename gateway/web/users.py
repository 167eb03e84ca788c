"""The web users file: one user a line, ``name:role:scrypt$n$r$p$salt$hash`` (salt and hash in hex).

Passwords are stored only as scrypt hashes (``hashlib.scrypt``, n=2**14, r=8, p=1, 16-byte salt, 32-byte
key). The file is written atomically, never world-readable: an existing file keeps its owner, group and mode; a new
one is 0640 root:ems-gateway where that group exists (the daemon's), else 0600. Lines starting with ``#`` and
blank lines are ignored.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["viewer", "technician"]
ROLES: tuple[Role, ...] = ("viewer", "technician")
_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
MAX_USERS_FILE_BYTES = 1 << 20


class UsersFileError(ValueError):
    """The users file is malformed (line and reason)."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    hash: str  # scrypt$n$r$p$salt_hex$key_hex


def valid_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${key.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash; a malformed hash never matches."""
    try:
        kind, n, r, p, salt_hex, key_hex = stored.split("$")
        if kind != "scrypt":
            return False
        n_i, r_i, p_i = int(n), int(r), int(p)
        if not (2 <= n_i <= 2**20 and 1 <= r_i <= 32 and 1 <= p_i <= 16):
            return False
        key = bytes.fromhex(key_hex)
        got = hashlib.scrypt(
            password.encode("utf-8"), salt=bytes.fromhex(salt_hex), n=n_i, r=r_i, p=p_i, dklen=len(key),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, key)


@functools.cache
def dummy_hash() -> str:
    """A hash to verify against for an unknown user: the answer takes as long as for a known one."""
    return hash_password("", salt=b"\0" * 16)


def parse_users(text: str) -> dict[str, User]:
    users: dict[str, User] = {}
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise UsersFileError(f"line {i}: expected name:role:hash")
        name, role, h = parts
        if not valid_name(name):
            raise UsersFileError(f"line {i}: invalid user name {name[:64]!r}")
        if role not in ROLES:
            raise UsersFileError(f"line {i}: role must be one of {', '.join(ROLES)} (got {role[:32]!r})")
        if not h.startswith("scrypt$") or h.count("$") != 5:
            raise UsersFileError(f"line {i}: the password hash is not an scrypt hash")
        if name in users:
            raise UsersFileError(f"line {i}: user {name!r} appears twice")
        users[name] = User(name, role, h)
    return users


def load_users(path: str | Path) -> dict[str, User]:
    """The users in ``path``; a missing file is no users. Raises UsersFileError or OSError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return {}
    if len(raw) > MAX_USERS_FILE_BYTES:
        raise UsersFileError(f"larger than {MAX_USERS_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsersFileError(f"not UTF-8: {exc}") from None
    return parse_users(text)


def render_users(users: dict[str, User]) -> str:
    head = "# ems-gateway web users: name:role:scrypt hash (written by `ems-gateway web-user add`)\n"
    return head + "".join(f"{u.name}:{u.role}:{u.hash}\n" for u in users.values())


DAEMON_GROUP = "ems-gateway"  # the unit's Group=: it must be able to read the file


def _ownership(p: Path) -> tuple[int, int | None, int | None]:
    """(mode, uid, gid) for the new file: an existing file's, else 0640 root:ems-gateway when that group
    exists (the daemon runs as ems-gateway), else 0600 for the caller."""
    try:
        st = p.stat()
        return st.st_mode & 0o777, st.st_uid, st.st_gid
    except FileNotFoundError:
        pass
    try:
        import grp

        return 0o640, None, grp.getgrnam(DAEMON_GROUP).gr_gid
    except (KeyError, ImportError):
        return 0o600, None, None


def save_users(path: str | Path, users: dict[str, User]) -> None:
    """Write atomically (temp file, fsync, rename), keeping an existing file's owner, group and mode."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    mode, uid, gid = _ownership(p)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if uid is not None or gid is not None:
            with contextlib.suppress(PermissionError):  # not root: the caller's own file
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(fd, mode & 0o640)  # never world-readable, never executable
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render_users(users))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
